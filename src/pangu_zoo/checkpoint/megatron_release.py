"""The steps both Megatron formats share: reading the shards into one lazily merged state with its config, the
shapes that config is checked against, and writing a release checkpoint split into tensor-parallel ranks."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from pangu_zoo.checkpoint.deferred import Tensor
from pangu_zoo.checkpoint.megatron_config import Family, Shapes, check_writable, config_from_checkpoint, megatron_args
from pangu_zoo.checkpoint.megatron_files import MegatronCheckpoint, read_checkpoint, write_checkpoint
from pangu_zoo.checkpoint.megatron_layers import layer_indices
from pangu_zoo.checkpoint.tensor_parallel import merge_lazily, padded_vocab_size, split_state
from pangu_zoo.config import ModelConfig


def read_merged(path: str | os.PathLike, family: Family, config_hint: ModelConfig | None,
                spelled: Callable[[Mapping[str, np.ndarray]], dict], shapes: Callable[..., Shapes]):
    """(checkpoint, its ranks merged lazily under this format's spelling, the config) of a Megatron folder."""
    checkpoint = read_checkpoint(path)
    merged = merge_lazily([spelled(shard) for shard in checkpoint.shards])
    config = config_from_checkpoint(family, config_hint, checkpoint.args, shapes(merged, checkpoint),
                                    len(checkpoint.shards))
    return checkpoint, merged, config


def stack_shapes(merged: Mapping[str, Tensor], checkpoint: MegatronCheckpoint, word: Tensor, position: Tensor,
                 layer: re.Pattern, mlp_name: str) -> Shapes:
    """The sizes a checkpoint shows: hidden, padded vocabulary, positions, layers and FFN width."""
    mlp = merged.get(mlp_name)
    return Shapes(hidden_size=word.shape[1], padded_vocab=word.shape[0], max_position_embeddings=position.shape[0],
                  megatron_layers=layer_indices(merged, layer),
                  ffn_hidden_size=mlp.shape[0] if mlp is not None else 4 * word.shape[1],
                  param_dtype=checkpoint.param_dtype)


def write_release(config: ModelConfig, weights: Mapping[str, np.ndarray], path: str | os.PathLike, tp: int,
                  family: Family, to_megatron: Callable, version: float | None) -> None:
    """A release checkpoint of `config` split into `tp` ranks, with the args Megatron checks."""
    check_writable(config, family, tp)
    padded = padded_vocab_size(config.vocab_size, family.vocab_divisible_by, tp)
    state = to_megatron(config, weights, padded)
    write_checkpoint(Path(path), split_state(state, tp), megatron_args(config, family, tp, padded), version)
