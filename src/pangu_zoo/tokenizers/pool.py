"""Worker processes that each hold one copy of a tokenizer, for encoding large corpora."""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from pangu_zoo.errors import ConfigError

if TYPE_CHECKING:  # the interface uses this pool for `encode_batch`; at run time any tokenizer object will do
    from pangu_zoo.tokenizers.base import Tokenizer

_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    # Each worker is one core's worth of work: keep the Rust BPE from starting its own thread pool.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = tokenizer
    tokenizer.warm_up()


def _encode_chunk(texts: list[str]) -> list[list[int]]:
    assert _worker_tokenizer is not None
    return _worker_tokenizer.encode_many(texts)


def _chunks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(texts)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class EncodePool:
    """Encode texts in `num_workers` processes (in this process when it is 1), keeping the input order.

    Workers are started with "spawn": forking a process that already runs MindSpore or Rust threads can hang.
    """

    def __init__(self, tokenizer: Tokenizer, num_workers: int = 1):
        if num_workers < 1:
            raise ConfigError(f"num_workers ({num_workers}) must be at least 1")
        self.tokenizer = tokenizer
        self.num_workers = num_workers
        self._pool = None
        if num_workers > 1:
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(num_workers, initializer=_init_worker, initargs=(tokenizer,))

    def imap(self, texts: Iterable[str], chunk_size: int = 64) -> Iterator[list[int]]:
        """Token ids of each text, in input order, computed lazily chunk by chunk."""
        chunks = _chunks(texts, chunk_size)
        if self._pool is None:
            results = map(self.tokenizer.encode_many, chunks)
        else:
            results = self._pool.imap(_encode_chunk, chunks)
        for encoded_chunk in results:
            yield from encoded_chunk

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> EncodePool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
