"""Packing a stream of token ids into fixed-length training samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class SequencePacker:
    """Concatenate documents back to back and cut consecutive samples of exactly `seq_length` ids (int32).

    Documents cross sample boundaries. The ids left over at the end (fewer than `seq_length`) are dropped;
    `finish()` says how many.
    """

    def __init__(self, seq_length: int):
        self.seq_length = seq_length
        self._pending: list[np.ndarray] = []
        self._pending_count = 0

    def add(self, ids: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Append `ids`; return the samples [seq_length] int32 completed by them (maybe none)."""
        chunk = np.asarray(ids, dtype=np.int32)
        if chunk.size == 0:
            return []
        self._pending.append(chunk)
        self._pending_count += chunk.size
        if self._pending_count < self.seq_length:
            return []
        stream = np.concatenate(self._pending)
        complete = stream.size // self.seq_length * self.seq_length
        samples = list(stream[:complete].reshape(-1, self.seq_length))
        rest = stream[complete:]
        self._pending = [rest] if rest.size else []
        self._pending_count = rest.size
        return samples

    def finish(self) -> int:
        """Drop what is left (an incomplete sample) and return its length."""
        dropped = self._pending_count
        self._pending, self._pending_count = [], 0
        return dropped
