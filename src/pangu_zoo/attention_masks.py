"""Attention masks as additive fp32 biases, built on the host with NumPy.

A mask is 1 where a query may attend to a key and 0 elsewhere; a bias is 0 / MASK_VALUE (-10000, as the
reference adds (1 - mask) * -10000 before the softmax). The model and the decoding loop both build them, so
this module sits below both (outside `pangu_zoo.models`, whose package imports the model classes).
"""

from __future__ import annotations

import numpy as np

MASK_VALUE = -10000.0


def causal_padding_mask(padding_mask: np.ndarray) -> np.ndarray:
    """padding_mask [B, S] (1 = real token) -> mask [B, S, S]: causal and only real keys."""
    padding_mask = np.asarray(padding_mask, dtype=bool)
    seq = padding_mask.shape[1]
    causal = np.tril(np.ones((seq, seq), dtype=bool))
    return causal[None, :, :] & padding_mask[:, None, :]


def visible_keys_mask(visible: np.ndarray) -> np.ndarray:
    """visible [B, S] (1 = a key later positions may see) -> mask [B, S, S]: causal over the visible keys, and
    every position sees itself, so the row of a hidden token is never empty."""
    visible = np.asarray(visible, dtype=bool)
    return causal_padding_mask(visible) | np.eye(visible.shape[1], dtype=bool)[None]


def mask_to_bias(mask: np.ndarray) -> np.ndarray:
    """mask [B, S, T] of 0/1 -> bias [B, 1, S, T] fp32."""
    mask = np.asarray(mask)
    return np.where(mask[:, None, :, :] != 0, 0.0, MASK_VALUE).astype(np.float32)


def decode_bias(lengths: np.ndarray, cache_len: int, visible: np.ndarray | None = None) -> np.ndarray:
    """Bias for one decode step: row b may attend to cache slots 0..lengths[b] -> [B, 1, 1, T]. With
    `visible` [B, T] (bool), only the visible slots before lengths[b], and its own slot lengths[b]."""
    slots = np.arange(cache_len)[None, :]
    lengths = np.asarray(lengths)[:, None]
    allowed = slots <= lengths if visible is None else ((slots < lengths) & visible) | (slots == lengths)
    return np.where(allowed, 0.0, MASK_VALUE).astype(np.float32)[:, None, None, :]


def beside_cache_bias(cached: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Bias for new positions that attend beside an unchanged cache (the in-place cache graphs): cached [B, S, T]
    (the cache slots each new position may see) and new [B, S, S] (the new positions it may see, itself
    included) -> [B, 1, S, T + S]."""
    return mask_to_bias(np.concatenate((np.asarray(cached, bool), np.asarray(new, bool)), axis=-1))


def step_bias_beside(lengths: np.ndarray, cache_len: int, visible: np.ndarray) -> np.ndarray:
    """`decode_bias` for a token that attends beside the cache: the visible slots before lengths[b], then itself
    -> [B, 1, 1, T + 1]."""
    lengths = np.asarray(lengths)
    cached = (np.arange(cache_len)[None, :] < lengths[:, None]) & np.asarray(visible, bool)
    return beside_cache_bias(cached[:, None, :], np.ones((len(lengths), 1, 1), dtype=bool))


def slot_onehot(lengths: np.ndarray, cache_len: int) -> np.ndarray:
    """Boolean one-hot [B, 1, T, 1] of the cache slot each row writes this step (its current length)."""
    slots = np.arange(cache_len)[None, :] == np.asarray(lengths)[:, None]
    return slots[:, None, :, None]
