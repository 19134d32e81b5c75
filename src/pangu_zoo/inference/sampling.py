"""Choosing the next token from logits on the host (NumPy).

Order of operations: penalties (reference formula, on generated tokens) -> temperature -> top-k ->
top-p -> draw. With `do_sample=False` the choice is the argmax of the penalised logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pangu_zoo.errors import InputError


@dataclass
class SamplingConfig:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise InputError(f"temperature ({self.temperature}) must be > 0")
        if self.top_k < 0:
            raise InputError(f"top_k ({self.top_k}) must be >= 0 (0 disables it)")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p ({self.top_p}) must be in (0, 1]")


def apply_penalties(logits: np.ndarray, counts: np.ndarray, frequency: float, presence: float) -> np.ndarray:
    """logits - counts * frequency - (counts > 0) * presence (counts = occurrences in generated tokens)."""
    if frequency == 0.0 and presence == 0.0:
        return logits
    return logits - counts * frequency - (counts > 0) * presence


def filter_top_k_top_p(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Set logits outside the top-k and outside the smallest set with probability >= top_p to -inf."""
    out = logits.astype(np.float64, copy=True)
    vocab = out.shape[-1]
    if 0 < top_k < vocab:
        kth = np.partition(out, vocab - top_k, axis=-1)[:, vocab - top_k][:, None]
        out[out < kth] = -np.inf
    if top_p < 1.0:
        order = np.argsort(-out, axis=-1)
        sorted_logits = np.take_along_axis(out, order, axis=-1)
        probs = _softmax(sorted_logits)
        cumulative = np.cumsum(probs, axis=-1)
        # keep a token if the mass before it is below top_p (so at least one token stays)
        drop_sorted = (cumulative - probs) >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        out[drop] = -np.inf
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def choose_next(logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator,
                counts: np.ndarray | None = None) -> np.ndarray:
    """logits [B, V] -> next token ids [B]."""
    if counts is not None:
        logits = apply_penalties(logits, counts, config.frequency_penalty, config.presence_penalty)
    if not config.do_sample:
        return np.argmax(logits, axis=-1)
    return draw(logits, config, rng.random(logits.shape[0]))


SMALL_K = 16  # up to this k, k passes of argmax beat a partition of the whole vocabulary (50k ids: 0.2 vs 6 ms)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices [B, k] of each row's k largest scores (in no particular order)."""
    if k > SMALL_K:
        return np.argpartition(scores, -k, axis=-1)[:, -k:]
    work = scores.copy()
    rows = np.arange(scores.shape[0])
    chosen = np.empty((scores.shape[0], k), dtype=np.int64)
    for j in range(k):
        chosen[:, j] = np.argmax(work, axis=-1)
        work[rows, chosen[:, j]] = -np.inf
    return chosen


def draw(logits: np.ndarray, config: SamplingConfig, uniforms: np.ndarray) -> np.ndarray:
    """Sample each row of (penalised) logits [B, V] with temperature, top-k and top-p, using one uniform number in
    [0, 1) per row: the token where the cumulative probability, in token order, passes it.

    With top-k the work is done on the k kept tokens only (a partition instead of a pass over the sorted
    vocabulary); they are kept in token order, so a row gets the token a pass over the whole vocabulary would."""
    scaled = logits / config.temperature
    vocab = scaled.shape[-1]
    kept = None
    if 0 < config.top_k < vocab:
        kept = np.sort(top_k_indices(scaled, config.top_k), axis=-1)
        scaled = np.take_along_axis(scaled, kept, axis=-1)
    probs = _softmax(filter_top_k_top_p(scaled, 0, config.top_p))
    choice = np.minimum((np.cumsum(probs, axis=-1) < uniforms[:, None]).sum(axis=-1), probs.shape[-1] - 1)
    return choice if kept is None else np.take_along_axis(kept, choice[:, None], axis=-1)[:, 0]
