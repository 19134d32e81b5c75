"""Megatron tensor parallelism on numpy arrays: vocab padding, splitting a full state into shards, merging shards.

Which parameters are split follows Megatron's parallel layers (formats.md §4.3, §5.3):

* column-parallel, split along dim 0: query/key/value (fused or separate) and MLP `dense_h_to_4h`, weights and
  biases, and the word embedding's vocabulary rows;
* row-parallel, split along dim 1: the attention output `dense` and MLP `dense_4h_to_h` weights (their biases are
  added once, after the ranks' partial sums, so they are replicated);
* replicated: LayerNorms, position and top-query embeddings and the row-parallel biases.

Merging concatenates the split ones and keeps rank 0's copy of the rest, as Megatron's `merge_mp_partitions.py`
does; splitting is its inverse (`split_full_model_into_mp_model.py`), except that sizes the ranks cannot share
equally are refused instead of padded. Names are Megatron's flattened below `language_model.`.
"""

from __future__ import annotations

import re

import numpy as np

from pangu_zoo.checkpoint.deferred import Tensor, concatenated, load
from pangu_zoo.errors import CheckpointError

_COLUMN_PARALLEL = re.compile(r"(^|\.)((query_key_value|query|key|value|dense_h_to_4h)\.(weight|bias)"
                              r"|word_embeddings\.weight)$")
_ROW_PARALLEL = re.compile(r"(^|\.)(dense|dense_4h_to_h)\.weight$")


def partition_dim(name: str) -> int | None:
    """The dimension Megatron splits parameter `name` along, or None when every rank holds all of it."""
    if _COLUMN_PARALLEL.search(name):
        return 0
    if _ROW_PARALLEL.search(name):
        return 1
    return None


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Megatron's padded vocabulary: the smallest multiple of `divisible_by * tp` that holds `vocab_size` rows."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def pad_rows(table: np.ndarray, rows: int) -> np.ndarray:
    """`table` grown to `rows` rows by repeating its last row, as Megatron's own checkpoint saver pads."""
    extra = rows - table.shape[0]
    if extra <= 0:
        return table
    return np.concatenate([table, np.repeat(table[-1:], extra, axis=0)])


def split_state(state: dict[str, np.ndarray], tp: int) -> list[dict[str, np.ndarray]]:
    """The `tp` shards of a full state (views, no copies); ranks get equal consecutive slices."""
    shards: list[dict[str, np.ndarray]] = [{} for _ in range(tp)]
    for name, value in state.items():
        dim = partition_dim(name)
        if dim is None or tp == 1:
            pieces = [value] * tp
        else:
            if value.shape[dim] % tp:
                raise CheckpointError(f"{name} has {value.shape[dim]} entries along dim {dim}, which {tp} "
                                      "tensor-parallel ranks cannot share equally")
            pieces = np.split(value, tp, axis=dim)
        for shard, piece in zip(shards, pieces, strict=True):
            shard[name] = piece
    return shards


def merge_lazily(shards: list[dict[str, np.ndarray]]) -> dict[str, Tensor]:
    """One full state from tensor-parallel shards (rank order), each split parameter concatenated only when asked
    for; CheckpointError when the shards do not fit together."""
    names = set(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if set(shard) != names:
            odd = sorted(names.symmetric_difference(shard))
            raise CheckpointError(f"tensor-parallel rank {rank} holds other parameters than rank 0: {odd[:5]}")
    merged: dict[str, Tensor] = {}
    for name, first in shards[0].items():
        for rank, shard in enumerate(shards[1:], start=1):
            if shard[name].shape != first.shape:
                raise CheckpointError(f"{name} has shape {tuple(shard[name].shape)} on tensor-parallel rank {rank} "
                                      f"but {tuple(first.shape)} on rank 0")
        dim = partition_dim(name)
        merged[name] = first if dim is None or len(shards) == 1 else concatenated([s[name] for s in shards], dim)
    return merged


def merge_states(shards: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`merge_lazily`, every parameter made now."""
    return {name: load(item) for name, item in merge_lazily(shards).items()}
