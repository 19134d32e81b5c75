"""EOD reset: positions restart and attention stops at each end-of-document token (reference §5.2 rule)."""

from __future__ import annotations

import numpy as np


def eod_reset_positions_and_mask(tokens: np.ndarray, eod_id: int,
                                 mask_dtype: np.dtype = np.int8) -> tuple[np.ndarray, np.ndarray]:
    """Position ids and attention mask of packed model inputs.

    Args:
        tokens: [b, s] model inputs (the first s ids of each sample).
        eod_id: end-of-document id. The EOD belongs to the document it ends; the next token starts at
            position 0 and cannot see earlier documents.

    Returns:
        position_ids [b, s] int32, attention_mask [b, s, s] `mask_dtype` (1 = query may attend to key).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}")
    _, seq = tokens.shape
    is_eod = tokens == eod_id
    steps = np.arange(seq)
    # document number of each token: EODs strictly before it (exclusive cumulative sum)
    document = np.cumsum(is_eod, axis=1) - is_eod
    # first index of each token's document: one past the latest EOD strictly before it
    after_eod = np.maximum.accumulate(np.where(is_eod, steps + 1, 0), axis=1)
    document_start = np.concatenate([np.zeros_like(after_eod[:, :1]), after_eod[:, :-1]], axis=1)
    position_ids = (steps - document_start).astype(np.int32)
    causal = np.tril(np.ones((seq, seq), dtype=bool))
    same_document = document[:, :, None] == document[:, None, :]
    attention_mask = (same_document & causal).astype(mask_dtype)
    return position_ids, attention_mask


def loss_mask(tokens: np.ndarray, pad_id: int) -> np.ndarray:
    """[b, s] float32: 1 where the input token is not `pad_id` (the reference masks the loss by input)."""
    return (np.asarray(tokens) != pad_id).astype(np.float32)
