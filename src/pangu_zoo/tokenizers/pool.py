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


# A task for a worker: texts to encode whole, or one part of a long text (`Tokenizer.split_for_workers`);
# `last` marks a long text's last part. Long texts are cut so that two workers can share one big document.
PART_CHARS = 1 << 15


def _run_task(task: tuple[bool, list[str] | str, bool]) -> tuple[bool, object, bool]:
    is_part, payload, last = task
    assert _worker_tokenizer is not None
    return is_part, (_worker_tokenizer.prepare(payload) if is_part else _worker_tokenizer.encode_many(payload)), last


def _tasks(tokenizer: Tokenizer, texts: Iterable[str], chunk_size: int,
           part_chars: int) -> Iterator[tuple[bool, list[str] | str, bool]]:
    """Short texts in chunks of at most `chunk_size` texts and about `part_chars` characters; a longer text,
    when its tokenizer can cut it, as parts of about `part_chars` characters."""
    chunk: list[str] = []
    chunk_chars = 0
    for text in texts:
        parts = tokenizer.split_for_workers(text, part_chars) if len(text) > part_chars else [text]
        if len(parts) > 1:
            if chunk:
                yield False, chunk, True
                chunk, chunk_chars = [], 0
            yield from ((True, part, index == len(parts) - 1) for index, part in enumerate(parts))
            continue
        chunk.append(text)
        chunk_chars += len(text)
        if len(chunk) >= chunk_size or chunk_chars >= part_chars:
            yield False, chunk, True
            chunk, chunk_chars = [], 0
    if chunk:
        yield False, chunk, True


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

    def imap(self, texts: Iterable[str], chunk_size: int = 64, part_chars: int = PART_CHARS) -> Iterator[list[int]]:
        """Token ids of each text, in input order, computed lazily chunk by chunk.

        With workers, a text longer than `part_chars` characters is prepared in parts by several workers and
        combined here (for PanGu-alpha: segmented line by line, then one SentencePiece call).
        """
        if self._pool is None:
            for encoded_chunk in map(self.tokenizer.encode_many, _chunks(texts, chunk_size)):
                yield from encoded_chunk
            return
        prepared = []
        for is_part, result, last in self._pool.imap(_run_task, _tasks(self.tokenizer, texts, chunk_size,
                                                                        part_chars)):
            if not is_part:
                yield from result
                continue
            prepared.append(result)
            if last:
                yield self.tokenizer.combine(prepared)
                prepared = []

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> EncodePool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
