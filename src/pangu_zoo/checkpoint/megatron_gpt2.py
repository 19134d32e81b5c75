"""`megatron-gpt2`: GPT-2 in the standard Megatron-LM layout (formats.md §4), read and written.

Names below `language_model.`: `embedding.word_embeddings.weight` (tied output head), `embedding.position_embeddings
.weight`, `encoder.layers.{i}.{input_layernorm, self_attention.query_key_value, self_attention.dense,
post_attention_layernorm, mlp.dense_h_to_4h, mlp.dense_4h_to_h}.{weight, bias}` and `encoder.final_layernorm.*`,
torch [out, in] weights. Megatron before 2.6 said `transformer` for `encoder` and `attention` for
`self_attention`; both spellings are read, the current one is written (checkpoint_version 3.0).

Query, key and value are one fused [3h, h] weight whose rows are grouped per head, [heads, (q, k, v), head_dim]
(checkpoint_version >= 2), so that splitting rows across tensor-parallel ranks hands each rank whole heads.
Versions 0 ([3, heads, head_dim]) and 1.0 ([heads, head_dim, 3]), per rank, are reordered on reading as
Megatron's loader does; a missing version means 0, as there.

The word table is padded to a multiple of 128 x TP rows (Megatron's --make-vocab-size-divisible-by default) by
repeating its last row, and the padding is dropped on reading.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import partial

import numpy as np

from pangu_zoo.checkpoint.deferred import Tensor, then
from pangu_zoo.checkpoint.formats import Format, register
from pangu_zoo.checkpoint.lazy import LazyWeights
from pangu_zoo.checkpoint.megatron_config import Family, Shapes
from pangu_zoo.checkpoint.megatron_files import MegatronCheckpoint
from pangu_zoo.checkpoint.megatron_layers import (
    FINAL_LAYERNORM,
    MEGATRON_POSITION,
    MEGATRON_WORD,
    POSITION,
    WORD,
    MegatronState,
    layer_to_megatron,
    lazy_weights,
    respell,
    stored,
)
from pangu_zoo.checkpoint.megatron_release import read_merged, stack_shapes, write_release
from pangu_zoo.checkpoint.parameter_shapes import parameter_shapes
from pangu_zoo.checkpoint.tensor_parallel import pad_rows
from pangu_zoo.config import ModelConfig
from pangu_zoo.errors import CheckpointError

NAME = "megatron-gpt2"
CHECKPOINT_VERSION = 3.0
FAMILY = Family(name="gpt2", fmt=NAME, top_query_layer=False, vocab_divisible_by=128, default_vocab=50257,
                tokenizer_type="GPT2BPETokenizer")
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.")


def fuse_qkv(query: np.ndarray, key: np.ndarray, value: np.ndarray, heads: int) -> np.ndarray:
    """Megatron's fused query_key_value rows from three [h, ...] tensors: [heads, (q, k, v), head_dim]."""
    per_head = [x.reshape(heads, -1, *x.shape[1:]) for x in (query, key, value)]
    return np.stack(per_head, axis=1).reshape(-1, *query.shape[1:])


def qkv_part(fused: np.ndarray, heads: int, part: int) -> np.ndarray:
    """Query (part 0), key (1) or value (2) [h, ...] out of a fused QKV tensor: the inverse of `fuse_qkv`."""
    grouped = fused.reshape(heads, 3, -1, *fused.shape[1:])
    return np.ascontiguousarray(grouped[:, part]).reshape(-1, *fused.shape[1:])


def current_qkv_order(fused: np.ndarray, version: float, heads: int, tp: int) -> np.ndarray:
    """A merged fused QKV tensor saved by checkpoint `version` in today's order. Each of the `tp` ranks stored its
    own heads: version 0 as [3, heads/tp, head_dim], version 1.0 as [heads/tp, head_dim, 3]."""
    if version >= 2.0:
        return fused
    rest, local = fused.shape[1:], heads // tp
    if version == 0:
        ordered = fused.reshape(tp, 3, local, -1, *rest).swapaxes(1, 2)
    elif version == 1.0:
        ordered = np.moveaxis(fused.reshape(tp, local, -1, 3, *rest), 3, 2)
    else:
        raise CheckpointError(f"unknown Megatron checkpoint_version {version}; known: 0, 1.0, 2.0 and later")
    return np.ascontiguousarray(ordered).reshape(fused.shape)


def to_megatron(config: ModelConfig, weights: Mapping[str, np.ndarray], padded_vocab: int) -> dict[str, np.ndarray]:
    """The full (one-rank) Megatron state of a zoo GPT-2, word table padded to `padded_vocab` rows; bf16 models'
    tensors as bf16 bits. Each source tensor is read once and can be dropped after."""
    bf16 = config.param_dtype == "bfloat16"
    state = {MEGATRON_WORD: stored(pad_rows(weights[WORD], padded_vocab), bf16),
             MEGATRON_POSITION: stored(weights[POSITION], bf16)}
    for i in range(config.num_blocks):
        ours, theirs = f"backbone.blocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            qkv = [weights[f"{ours}attention.dense{j}.{kind}"] for j in (1, 2, 3)]
            state[f"{theirs}self_attention.query_key_value.{kind}"] = stored(fuse_qkv(*qkv, config.num_heads), bf16)
        state.update(layer_to_megatron(weights, ours, theirs, "self_attention", bf16))
    state.update({"encoder." + theirs: stored(weights[ours], bf16) for ours, theirs in FINAL_LAYERNORM.items()})
    return state


def from_megatron(config: ModelConfig, merged: Mapping[str, Tensor], version: float,
                  tp: int) -> dict[str, Tensor]:
    """Zoo weights from a merged Megatron GPT-2 state (the padding rows dropped), the cut-out and transposed ones
    made when asked for."""
    state = MegatronState(merged, NAME)
    h, vocab, heads = config.hidden_size, config.vocab_size, config.num_heads
    out: dict[str, Tensor] = {
        WORD: then(state.take(MEGATRON_WORD), lambda rows: rows[:vocab], (vocab, h)),
        POSITION: state.take(MEGATRON_POSITION, (config.max_position_embeddings, h))}
    for i in range(config.num_blocks):
        ours, theirs = f"backbone.blocks.{i}.", f"encoder.layers.{i}.self_attention.query_key_value."
        for kind, shape in (("weight", (3 * h, h)), ("bias", (3 * h,))):
            fused = state.take(theirs + kind, shape)
            if version < 2.0:
                fused = then(fused, partial(current_qkv_order, version=version, heads=heads, tp=tp))
            for j in (1, 2, 3):
                out[f"{ours}attention.dense{j}.{kind}"] = then(fused, partial(qkv_part, heads=heads, part=j - 1),
                                                               (h, *shape[1:]))
        out.update(state.layer(f"encoder.layers.{i}.", ours, "self_attention", h, config.ffn_hidden_size))
    out.update({ours: state.take("encoder." + theirs, (h,)) for ours, theirs in FINAL_LAYERNORM.items()})
    state.check_all_used()
    return out


def _current_names(shard: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Names of Megatron before 2.6 (`transformer.`, `.attention.`) spelled as today's."""
    return respell(shard, ("transformer.", "encoder."), ("attention", "self_attention"))


def _shapes(merged: Mapping[str, Tensor], checkpoint: MegatronCheckpoint) -> Shapes:
    word = merged.get(MEGATRON_WORD)
    position = merged.get(MEGATRON_POSITION)
    if word is None or position is None or len(word.shape) != 2 or len(position.shape) != 2:
        raise CheckpointError(f"{checkpoint.files[0]} holds no {NAME} embeddings ({MEGATRON_WORD}, "
                              f"{MEGATRON_POSITION}); is it a GPT model?")
    if any(name.startswith(("topQueryEmbedding.", "encoder.topQueryLayer.")) for name in merged):
        raise CheckpointError(f"{checkpoint.files[0]} holds a PanGu-alpha top-query layer; read it as megatron-pangu")
    return stack_shapes(merged, checkpoint, word, position, _LAYER, "encoder.layers.0.mlp.dense_h_to_4h.weight")


def read(path: str | os.PathLike, *, config_hint: ModelConfig | None) -> tuple[ModelConfig, LazyWeights]:
    checkpoint, merged, config = read_merged(path, FAMILY, config_hint, _current_names, _shapes)
    version = checkpoint.version if checkpoint.version is not None else 0
    weights = from_megatron(config, merged, version, len(checkpoint.shards))
    return config, lazy_weights(weights, list(parameter_shapes(config)))


def write(config: ModelConfig, weights: Mapping[str, np.ndarray], path: str | os.PathLike, *, tp: int = 1,
          tokenizer_path: str | os.PathLike | None = None) -> None:
    """A release checkpoint split into `tp` ranks. Megatron takes its tokenizer files on its own command line
    (--vocab-file, --merge-file), so `tokenizer_path` is not copied."""
    write_release(config, weights, path, tp, FAMILY, to_megatron, CHECKPOINT_VERSION)


FORMAT = register(Format(NAME, "GPT-2 in Megatron-LM's layout (mp_rank_XX/model_optim_rng.pt per tensor-parallel "
                               "rank; Megatron-DeepSpeed global_stepN files are read too)", read=read, write=write))
