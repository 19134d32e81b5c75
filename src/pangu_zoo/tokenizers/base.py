"""The small interface every tokenizer of this package provides."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

from pangu_zoo.errors import InputError
from pangu_zoo.tokenizers.pool import EncodePool


class Tokenizer(ABC):
    """Text <-> token ids. Subclasses are picklable (they rebuild from their files) for worker pools.

    Special ids are looked up by piece in the vocabulary, never hard-coded.
    """

    kind: str = ""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no BOS/EOS is added."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (any int sequence or 1-D array)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special ones included."""

    @abstractmethod
    def token_to_id(self, piece: str) -> int:
        """Id of one vocabulary piece; `InputError` when the piece is not in the vocabulary."""

    @property
    @abstractmethod
    def eot_id(self) -> int:
        """End-of-text id (generation stops here)."""

    @property
    @abstractmethod
    def pad_id(self) -> int:
        """Padding id (the training loss ignores inputs equal to it)."""

    @property
    @abstractmethod
    def document_separator_id(self) -> int:
        """The id the reference preprocessing appends after each paragraph (its `--eot`)."""

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode several texts in this process; subclasses override when the backend batches natively."""
        return [self.encode(text) for text in texts]

    def encode_batch(self, texts: Iterable[str], num_workers: int = 1,
                     chunk_size: int = 64) -> list[list[int]]:
        """Encode many texts, with `num_workers` worker processes when it is above 1. Order is kept."""
        with EncodePool(self, num_workers) as pool:
            return list(pool.imap(texts, chunk_size=chunk_size))

    def split_for_workers(self, text: str, part_chars: int) -> list[str]:
        """Parts of a long `text` that worker processes may `prepare` apart, `combine` of their results being
        `encode(text)`. One part unless the tokenizer knows where its work can be cut."""
        return [text]

    def prepare(self, part: str):
        """A worker's share of encoding one part of `split_for_workers` (the part itself by default)."""
        return part

    def combine(self, prepared: Sequence) -> list[int]:
        """Token ids of the text whose parts' `prepare` results are `prepared`, in order."""
        return self.encode("".join(prepared))

    def warm_up(self) -> None:
        """Load whatever is loaded lazily (called once in each worker process)."""
        self.encode("warm up")

    def check_ids(self, ids: Sequence[int]) -> list[int]:
        """`ids` as a list of Python ints, or `InputError` naming the first id outside [0, vocab_size)."""
        values = [int(i) for i in ids]
        for position, value in enumerate(values):
            if not 0 <= value < self.vocab_size:
                raise InputError(f"token id {value} at position {position} is outside the vocabulary "
                                 f"[0, {self.vocab_size}) of the {self.kind} tokenizer")
        return values
