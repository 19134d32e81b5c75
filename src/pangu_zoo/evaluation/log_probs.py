"""Log-probabilities of given labels under a model's logits, the quantity both evaluations score with."""

from __future__ import annotations

import numpy as np


def label_log_probs(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log_softmax(logits)[b, t, labels[b, t]] in float64 -> [B, S], one row at a time to bound memory."""
    out = np.empty(labels.shape, dtype=np.float64)
    for b in range(logits.shape[0]):
        row = logits[b].astype(np.float64)
        top = row.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(row - top).sum(axis=-1)) + top[:, 0]
        out[b] = np.take_along_axis(row, labels[b][:, None], axis=-1)[:, 0] - log_norm
    return out
