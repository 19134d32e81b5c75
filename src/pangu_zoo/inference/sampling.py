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
    filtered = filter_top_k_top_p(logits / config.temperature, config.top_k, config.top_p)
    probs = _softmax(filtered)
    draws = rng.random(probs.shape[0])[:, None]
    return np.minimum((np.cumsum(probs, axis=-1) < draws).sum(axis=-1), probs.shape[-1] - 1)
