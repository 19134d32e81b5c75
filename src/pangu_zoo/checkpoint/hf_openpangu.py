"""openPangu-Embedded's Hugging Face folders (formats.md §6): `config.json` (model_type "PanguEmbedded") and
`model.safetensors` or shards with `model.safetensors.index.json`, read and written tensor by tensor.

The tensor names are Hugging Face's (`model.layers.{i}.self_attn.q_proj.weight`, `lm_head.weight`, ...); the model
holds them under its backbone, `backbone.` + the Hugging Face name, in the same [out, in] orientation, so nothing is
transposed or renamed beyond that prefix. Buffers (`rotary_emb.inv_freq`, which the released 7B files carry) are
not weights: the frequencies follow from `rope_theta`. bf16 tensors are read as fp32 and become parameters of
`param_dtype` (fp32 unless asked otherwise); saving writes the weights in `param_dtype`.

Every shape number is read from the folder's config.json; a missing one is an error rather than a default
taken from another model size. What the model cannot compute is refused naming the field: rope scaling, an
activation other than silu, an MLP with biases.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from pangu_zoo.checkpoint.hf_weights import open_hf_weights, write_hf_weights
from pangu_zoo.checkpoint.io import atomic_path
from pangu_zoo.checkpoint.lazy import LazyWeights, TensorSpec, stored_as
from pangu_zoo.config import OpenPanguConfig
from pangu_zoo.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

MODEL_TYPE = "PanguEmbedded"
ARCHITECTURE = "PanguEmbeddedForCausalLM"
CONFIG_NAME = "config.json"
PREFIX = "backbone."  # our name = PREFIX + Hugging Face's
HEAD = "lm_head.weight"
EMBEDDING = "model.embed_tokens.weight"
BUFFER_SUFFIXES = (".rotary_emb.inv_freq",)
# fields that fix the shapes: never defaulted
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads")
# the other fields, with PanguEmbeddedConfig's defaults (configuration_openpangu_dense.py)
OPTIONAL = {"max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bias": True,
            "hidden_act": "silu", "attention_dropout": 0.0, "initializer_range": 0.02, "bos_token_id": 1,
            "eos_token_id": 45892, "pad_token_id": 0}


def is_openpangu_config(values: dict[str, Any]) -> bool:
    return values.get("model_type") == MODEL_TYPE or ARCHITECTURE in (values.get("architectures") or ())


def _rope_theta(values: dict[str, Any]) -> float:
    """rope_theta (transformers 5 writes it inside `rope_parameters`), refusing any rope scaling."""
    parameters = values.get("rope_parameters") or {}
    for field in ("rope_scaling", "rope_parameters"):
        setting = values.get(field) or {}
        rope_type = setting.get("rope_type", setting.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"{field} {setting!r} is not supported: only the default rotary embedding is")
    theta = values.get("rope_theta", parameters.get("rope_theta"))
    if theta is None:
        raise ConfigError("rope_theta missing; an openPangu config.json gives it")
    return float(theta)


def config_from_hf(values: dict[str, Any], **overrides: Any) -> OpenPanguConfig:
    """The `OpenPanguConfig` of a config.json's fields; `overrides` set this project's fields (param_dtype, ...)
    or replace any other."""
    missing = [name for name in REQUIRED if values.get(name) is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)} missing; an openPangu config.json gives every shape")
    if values.get("mlp_bias"):
        raise ConfigError("mlp_bias true is not supported: openPangu's MLP has no biases")
    fields = {name: values[name] for name in REQUIRED}
    fields.update({name: default if values.get(name) is None else values[name] for name, default in OPTIONAL.items()})
    eos = fields["eos_token_id"]
    fields["eos_token_id"] = eos[0] if isinstance(eos, list) and eos else eos
    if values.get("head_dim") is not None:
        fields["head_dim"] = values["head_dim"]
    fields["rope_theta"] = _rope_theta(values)
    return OpenPanguConfig(**fields).replace(**overrides)


def hf_config(config: OpenPanguConfig) -> dict[str, Any]:
    """config.json of `config`, with the fields and names of the released files."""
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim, "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings, "rope_theta": config.rope_theta,
        "rope_scaling": None, "rms_norm_eps": config.rms_norm_eps, "bias": config.bias,
        "attention_dropout": config.attention_dropout, "initializer_range": config.initializer_range,
        "tie_word_embeddings": config.tie_word_embeddings, "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
        "torch_dtype": config.torch_dtype, "use_cache": True,
    }


def _check_tied_head(source: LazyWeights) -> None:
    """A tied model's head is the word table; a saved `lm_head.weight` must then equal it."""
    if HEAD in source and EMBEDDING in source and not np.array_equal(source[HEAD], source[EMBEDDING]):
        raise CheckpointError(f"tie_word_embeddings is true but {HEAD} differs from {EMBEDDING}; set "
                              "tie_word_embeddings false in config.json if the head is its own matrix")


def _our_weights(source: LazyWeights, config: OpenPanguConfig) -> LazyWeights:
    """The folder's tensors under our names, buffers (and a tied model's copy of the word table) left out."""
    skip = {HEAD} if config.tie_word_embeddings else set()
    kept = {name: source.spec(name) for name in source if not name.endswith(BUFFER_SUFFIXES) and name not in skip}
    if len(kept) < len(source):
        log.debug("not loaded (buffers or the tied head): %s", sorted(set(source) - set(kept)))
    return LazyWeights({PREFIX + name: spec for name, spec in kept.items()},
                       lambda ours: source[ours.removeprefix(PREFIX)])


def read(path: str | os.PathLike, values: dict[str, Any], **overrides: Any) -> tuple[OpenPanguConfig, LazyWeights]:
    """(config, weights under our names) of the folder `path`, whose config.json holds `values`."""
    directory = Path(path)
    try:
        config = config_from_hf(values, **overrides)
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {error}") from error
    source = open_hf_weights(directory)
    if config.tie_word_embeddings:
        _check_tied_head(source)
    return config, _our_weights(source, config)


def write(config: OpenPanguConfig, weights: dict[str, np.ndarray], directory: str | os.PathLike,
          max_shard_bytes: int | None = None) -> None:
    """Write `weights` (our names, fp32/fp16 arrays) in Hugging Face's layout: tensors stored in
    `config.param_dtype` (bf16 as bf16), one `model.safetensors` or shards of at most `max_shard_bytes`."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"cannot create {directory}: {error}") from error
    names = {ours.removeprefix(PREFIX): ours for ours in weights}
    specs = [(hf_name, stored_as(TensorSpec(weights[ours].shape, weights[ours].dtype), config.param_dtype))
             for hf_name, ours in names.items()]
    write_hf_weights(directory, specs, lambda hf_name: weights[names[hf_name]], max_shard_bytes)
    with atomic_path(directory / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(hf_config(config), indent=2) + "\n", encoding="utf-8")
