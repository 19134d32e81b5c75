"""`megatron-pangu`: PanGu-alpha in the layout of its GPU port (Megatron 1.1; formats.md §5), read and written.

Names below `language_model.`, as the port's `change_MspCkpt_ToMgt.py` fills them from the released weights:

| Megatron | zoo (released name) |
|---|---|
| `embedding.word_embeddings.weight` | `backbone.word_embedding.embedding_table` (rows padded) |
| `embedding.position_embeddings.weight` | `backbone.position_embedding.embedding_table` |
| `topQueryEmbedding.top_query_embeddings.weight` | `backbone.top_query_embedding.embedding_table` |
| `transformer.layers.{i}.attention.query/key/value.*` | `backbone.blocks.{i}.attention.dense1/2/3.*` (no transpose) |
| `transformer.layers.{i}.attention.dense.weight` | `...attention.projection.weight` (transposed) |
| `transformer.layers.{i}.mlp.dense_h_to_4h/dense_4h_to_h.weight` | `...output.mapping/projection.weight` (transposed) |
| `transformer.layers.{i}.input_layernorm/post_attention_layernorm.*` | `...layernorm1/layernorm2.gamma/beta` |
| `transformer.topQueryLayer.*` | `backbone.top_query_layer.*` (same rules) |
| `transformer.final_layernorm.*` | `backbone.layernorm.gamma/beta` |

The port's `--num-layers` counts the blocks only (2.6B: 31), ours also the top-query layer (32). Its
`--make-vocab-size-divisible-by` defaults to 1, so the word table is padded only to a multiple of TP, by repeating
its last row; the padding is dropped on reading. The top-query embedding is a plain embedding, replicated on
every tensor-parallel rank. `encoder.` / `.self_attention.` spellings of later Megatron versions are read too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

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

NAME = "megatron-pangu"
FAMILY = Family(name="pangu_alpha", fmt=NAME, top_query_layer=True, vocab_divisible_by=1, default_vocab=40000,
                tokenizer_type="GPT2BPETokenizer")  # the port's README launches with this tokenizer type
TOP_QUERY = "backbone.top_query_embedding.embedding_table"
MEGATRON_TOP_QUERY = "topQueryEmbedding.top_query_embeddings.weight"
_LAYER = re.compile(r"transformer\.layers\.(\d+)\.")
_QKV = (("dense1", "query"), ("dense2", "key"), ("dense3", "value"))


def _layers(config: ModelConfig) -> list[tuple[str, str]]:
    """(zoo prefix, Megatron prefix) of every layer, the top-query layer last."""
    blocks = [(f"backbone.blocks.{i}.", f"transformer.layers.{i}.") for i in range(config.num_blocks)]
    return [*blocks, ("backbone.top_query_layer.", "transformer.topQueryLayer.")]


def to_megatron(config: ModelConfig, weights: Mapping[str, np.ndarray], padded_vocab: int) -> dict[str, np.ndarray]:
    """The full (one-rank) GPU-port state of a zoo PanGu-alpha, word table padded to `padded_vocab` rows; bf16
    models' tensors as bf16 bits. Each source tensor is read once and can be dropped after."""
    bf16 = config.param_dtype == "bfloat16"
    state = {MEGATRON_WORD: stored(pad_rows(weights[WORD], padded_vocab), bf16),
             MEGATRON_POSITION: stored(weights[POSITION], bf16), MEGATRON_TOP_QUERY: stored(weights[TOP_QUERY], bf16)}
    for ours, theirs in _layers(config):
        for dense, megatron in _QKV:
            for kind in ("weight", "bias"):
                state[f"{theirs}attention.{megatron}.{kind}"] = stored(weights[f"{ours}attention.{dense}.{kind}"], bf16)
        state.update(layer_to_megatron(weights, ours, theirs, "attention", bf16))
    state.update({"transformer." + theirs: stored(weights[ours], bf16) for ours, theirs in FINAL_LAYERNORM.items()})
    return state


def from_megatron(config: ModelConfig, merged: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Zoo weights from a merged GPU-port state (the padding rows dropped), the transposed ones made when asked."""
    state = MegatronState(merged, NAME)
    h, table = config.hidden_size, (config.max_position_embeddings, config.hidden_size)
    vocab = config.vocab_size
    out: dict[str, Tensor] = {
        WORD: then(state.take(MEGATRON_WORD), lambda rows: rows[:vocab], (vocab, h)),
        POSITION: state.take(MEGATRON_POSITION, table), TOP_QUERY: state.take(MEGATRON_TOP_QUERY, table)}
    for ours, theirs in _layers(config):
        for dense, megatron in _QKV:
            out[f"{ours}attention.{dense}.weight"] = state.take(f"{theirs}attention.{megatron}.weight", (h, h))
            out[f"{ours}attention.{dense}.bias"] = state.take(f"{theirs}attention.{megatron}.bias", (h,))
        out.update(state.layer(theirs, ours, "attention", h, config.ffn_hidden_size))
    out.update({ours: state.take("transformer." + theirs, (h,)) for ours, theirs in FINAL_LAYERNORM.items()})
    state.check_all_used()
    return out


def _port_names(shard: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Later Megatron spellings (`encoder.`, `.self_attention.`) as the port's."""
    return respell(shard, ("encoder.", "transformer."), ("self_attention", "attention"))


def _shapes(merged: Mapping[str, Tensor], checkpoint: MegatronCheckpoint) -> Shapes:
    word, position = merged.get(MEGATRON_WORD), merged.get(MEGATRON_POSITION)
    if (word is None or position is None or MEGATRON_TOP_QUERY not in merged or len(word.shape) != 2
            or len(position.shape) != 2):
        raise CheckpointError(f"{checkpoint.files[0]} holds no PanGu-alpha embeddings ({MEGATRON_WORD}, "
                              f"{MEGATRON_TOP_QUERY}); is it a megatron-gpt2 checkpoint?")
    mlp = "transformer.topQueryLayer.mlp.dense_h_to_4h.weight"
    return stack_shapes(merged, checkpoint, word, position, _LAYER, mlp)


def read(path: str | os.PathLike, *, config_hint: ModelConfig | None) -> tuple[ModelConfig, LazyWeights]:
    _, merged, config = read_merged(path, FAMILY, config_hint, _port_names, _shapes)
    return config, lazy_weights(from_megatron(config, merged), list(parameter_shapes(config)))


def write(config: ModelConfig, weights: Mapping[str, np.ndarray], path: str | os.PathLike, *, tp: int = 1,
          tokenizer_path: str | os.PathLike | None = None) -> None:
    """A release checkpoint split into `tp` ranks. The port takes its tokenizer on its own command line
    (--vocab-file), so `tokenizer_path` is not copied."""
    # the port's tools save no checkpoint_version; its attention has no fused QKV whose order a version would name
    write_release(config, weights, path, tp, FAMILY, to_megatron, None)


FORMAT = register(Format(NAME, "PanGu-alpha in its GPU port's Megatron layout (mp_rank_XX/model_optim_rng.pt per "
                               "tensor-parallel rank, topQueryLayer)", read=read, write=write))
