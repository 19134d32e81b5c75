"""The `hf-gpt2` format: a Hugging Face GPT-2 folder (`config.json`, `model.safetensors` and, when given, the
tokenizer's files) that `transformers.GPT2LMHeadModel.from_pretrained` loads.

The names and orientation are those of `pangu_zoo.checkpoint.hf_gpt2` (reference formats.md §1, §2.3): HF's fused
`c_attn` [in, 3*out] is split into our query/key/value weights [out, in], the rest keeps HF's Conv1D [in, out].
Reading takes `model.safetensors` (or its sharded index) tensor by tensor, or else `pytorch_model.bin` through
`torch.load(weights_only=True)` only, which refuses pickles that would run code; torch is needed for that alone.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pangu_zoo.checkpoint import hf_gpt2
from pangu_zoo.checkpoint.formats import Format, Weights, refuse_tp, register
from pangu_zoo.checkpoint.hf_weights import WEIGHTS_NAME, open_hf_weights
from pangu_zoo.checkpoint.lazy import LazyWeights, TensorSpec, param_dtype_of, spec_of, stored_as
from pangu_zoo.checkpoint.mindformers import POSITION, WORD
from pangu_zoo.checkpoint.pretrained import CONFIG_NAME, read_config
from pangu_zoo.checkpoint.safetensors_stream import write_safetensors
from pangu_zoo.checkpoint.tokenizer_files import copy_tokenizer
from pangu_zoo.config import ModelConfig
from pangu_zoo.errors import CheckpointError, ConfigError

PREFIX = "transformer."
HEAD = "lm_head.weight"
# OpenAI's names for the GPT-2 tokenizer files -> the ones transformers looks for
TOKENIZER_RENAMES = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}

# HF name (without "transformer.") -> ours, for the tensors that are copied as they are
TOP_LEVEL = {"wte.weight": WORD, "wpe.weight": POSITION,
             "ln_f.weight": "backbone.layernorm.gamma", "ln_f.bias": "backbone.layernorm.beta"}
IN_LAYER = {"ln_1.weight": "layernorm1.gamma", "ln_1.bias": "layernorm1.beta",
            "attn.c_proj.weight": "attention.projection.weight", "attn.c_proj.bias": "attention.projection.bias",
            "ln_2.weight": "layernorm2.gamma", "ln_2.bias": "layernorm2.beta",
            "mlp.c_fc.weight": "output.mapping.weight", "mlp.c_fc.bias": "output.mapping.bias",
            "mlp.c_proj.weight": "output.projection.weight", "mlp.c_proj.bias": "output.projection.bias"}
QKV = ("dense1", "dense2", "dense3")
_LAYER_NAME = re.compile(r"h\.(\d+)\.(.+)")
_BUFFERS = (".attn.bias", ".attn.masked_bias")


# reading

def _check_tied_head(source: LazyWeights) -> None:
    """Our head is the word table; an `lm_head.weight` equal to it (tied, as .bin files save it) is fine."""
    table = next((n for n in (PREFIX + "wte.weight", "wte.weight") if n in source), None)
    if HEAD in source and table is not None and not np.array_equal(source[HEAD], source[table]):
        raise CheckpointError(f"{HEAD} differs from the word embedding wte.weight (an untied head, "
                              "tie_word_embeddings false); this model's output head is the word table, so it cannot "
                              "hold these weights")


def _third(load: Callable[[], np.ndarray], j: int, transpose: bool) -> np.ndarray:
    fused = load()
    width = fused.shape[-1] // 3
    part = fused[..., j * width:(j + 1) * width]
    return np.ascontiguousarray(part.T if transpose else part)


def _zoo_weights(source: LazyWeights) -> LazyWeights:
    """`source` (HF names) as lazy weights under our names; the fused q/k/v tensors are read once for all three."""
    specs: dict[str, TensorSpec] = {}
    loads: dict[str, Callable[[], np.ndarray]] = {}
    origin: dict[str, str] = {}
    cache: dict[str, np.ndarray] = {}

    def fused(full: str) -> np.ndarray:
        if full not in cache:
            cache.clear()
            cache[full] = source[full]
        return cache[full]

    def add(ours: str, full: str, spec: TensorSpec, load: Callable[[], np.ndarray]) -> None:
        if ours in specs:
            raise CheckpointError(f"the GPT-2 weights hold both {origin[ours]!r} and {full!r}, the same parameter")
        specs[ours], loads[ours], origin[ours] = spec, load, full

    for full in source:
        name = full.removeprefix(PREFIX)
        if name == HEAD or name.endswith(_BUFFERS):
            continue
        spec = source.spec(full)
        match = _LAYER_NAME.fullmatch(name)
        if name in TOP_LEVEL:
            add(TOP_LEVEL[name], full, spec, partial(source.__getitem__, full))
        elif match and match[2] in IN_LAYER:
            add(f"backbone.blocks.{match[1]}.{IN_LAYER[match[2]]}", full, spec, partial(source.__getitem__, full))
        elif match and match[2] in ("attn.c_attn.weight", "attn.c_attn.bias"):
            if spec.shape[-1] % 3:
                raise CheckpointError(f"{full} has shape {spec.shape}, whose last dimension is not query, key and "
                                      "value of equal width")
            weight = match[2].endswith("weight")
            part = (spec.shape[-1] // 3, *spec.shape[:-1]) if weight else (spec.shape[-1] // 3,)
            for j, dense in enumerate(QKV):
                ours = f"backbone.blocks.{match[1]}.attention.{dense}.{'weight' if weight else 'bias'}"
                add(ours, full, TensorSpec(part, spec.dtype, spec.stored),
                    partial(_third, partial(fused, full), j, weight))
        else:
            raise CheckpointError(f"{full!r} is not a GPT-2 weight (is this a GPT2LMHeadModel checkpoint?)")
    return LazyWeights(specs, lambda ours: loads[ours]())


def read(path: str | os.PathLike, *, config_hint: ModelConfig | None = None) -> tuple[ModelConfig, LazyWeights]:
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"Hugging Face folder {directory} does not exist")
    values = read_config(directory)
    if not hf_gpt2.is_hf_gpt2_config(values):
        raise CheckpointError(f"{directory / CONFIG_NAME} is not a GPT-2 config (no model_type gpt2 or n_embd); "
                              "a zoo model directory? read it as zoo")
    try:
        config = hf_gpt2.config_from_hf(values)
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {error}") from error
    source = open_hf_weights(directory)
    _check_tied_head(source)
    weights = _zoo_weights(source)
    return config.replace(param_dtype=param_dtype_of(weights)), weights


# writing

def hf_config(config: ModelConfig) -> dict[str, Any]:
    """The GPT2Config (as config.json holds it) of a GPT-2 `config`."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.max_position_embeddings,
        "n_embd": config.hidden_size, "n_layer": config.num_layers, "n_head": config.num_heads,
        "n_inner": config.ffn_hidden_size, "activation_function": "gelu_new",
        "resid_pdrop": config.dropout_rate, "embd_pdrop": config.dropout_rate, "attn_pdrop": config.dropout_rate,
        "layer_norm_epsilon": config.layernorm_epsilon, "initializer_range": config.initializer_range,
        "bos_token_id": config.eos_token_id, "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id, "scale_attn_weights": True, "tie_word_embeddings": True,
        "use_cache": True, "dtype": config.param_dtype,
    }


def _check_gpt2(config: ModelConfig) -> None:
    if config.family != "gpt2":
        raise ConfigError(f"hf-gpt2 holds GPT-2 models; this is a {config.family} model (its top-query layer has "
                          "no GPT-2 counterpart)")
    if config.hidden_act != "gelu":
        raise ConfigError(f"hidden_act {config.hidden_act!r} has no Hugging Face GPT-2 counterpart (gelu_new is "
                          "this project's gelu, the tanh approximation)")


def _fuse(parts: list[np.ndarray], axis: int) -> np.ndarray:
    return np.concatenate([part.T if axis else part for part in parts], axis=axis)


def _hf_tensors(config: ModelConfig, weights: Weights) -> dict[str, tuple[TensorSpec, Callable[[], np.ndarray]]]:
    """HF name -> (how to store it, how to make it from `weights`), in GPT2LMHeadModel's order."""
    out: dict[str, tuple[TensorSpec, Callable[[], np.ndarray]]] = {}

    def copy(hf_name: str, ours: str) -> None:
        out[PREFIX + hf_name] = (stored_as(spec_of(weights, ours), config.param_dtype),
                                 partial(weights.__getitem__, ours))

    top = {ours: hf_name for hf_name, ours in TOP_LEVEL.items()}
    copy(top[WORD], WORD)
    copy(top[POSITION], POSITION)
    for i in range(config.num_blocks):
        ours = f"backbone.blocks.{i}."
        for hf_name, our_name in IN_LAYER.items():
            copy(f"h.{i}.{hf_name}", ours + our_name)
        for kind, axis in (("weight", 1), ("bias", 0)):
            names = [f"{ours}attention.{dense}.{kind}" for dense in QKV]
            spec = spec_of(weights, names[0])
            shape = (spec.shape[1], 3 * spec.shape[0]) if axis else (3 * spec.shape[0],)
            load = partial(lambda names, axis: _fuse([weights[n] for n in names], axis), names, axis)
            out[f"{PREFIX}h.{i}.attn.c_attn.{kind}"] = (
                stored_as(TensorSpec(shape, spec.dtype), config.param_dtype), load)
    copy(top["backbone.layernorm.gamma"], "backbone.layernorm.gamma")
    copy(top["backbone.layernorm.beta"], "backbone.layernorm.beta")
    return out


def write(config: ModelConfig, weights: Weights, path: str | os.PathLike, *, tp: int = 1,
          tokenizer_path: str | os.PathLike | None = None) -> None:
    refuse_tp(tp, "hf-gpt2")
    _check_gpt2(config)
    directory = Path(path)
    directory.mkdir()
    tensors = _hf_tensors(config, weights)
    write_safetensors(directory / WEIGHTS_NAME, [(name, spec) for name, (spec, _) in tensors.items()],
                      lambda name: tensors[name][1](), metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(hf_config(config), indent=2) + "\n", encoding="utf-8")
    if tokenizer_path is not None:
        copy_tokenizer(tokenizer_path, directory, TOKENIZER_RENAMES)


FORMAT = register(Format("hf-gpt2", "Hugging Face GPT-2 folder (config.json + model.safetensors)", read, write))
