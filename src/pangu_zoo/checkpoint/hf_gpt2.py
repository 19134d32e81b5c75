"""Hugging Face GPT-2 layout <-> this project's names (released PanGu-alpha naming scheme).

HF's Conv1D stores weights [in, out]; our query/key/value weights are [out, in] (so they are split
out of `c_attn` and transposed) while projection/mapping weights are [in, out] like Conv1D.

What this model cannot compute is refused, naming the field: an output head (`lm_head.weight`) that differs
from the word table (ours is tied), `scale_attn_weights: false` and `scale_attn_by_inverse_layer_idx: true`
(we scale every layer's scores by 1/sqrt(head_dim) only). `reorder_and_upcast_attn: true` is accepted with
fp32 compute, where our scores and softmax are already fp32 (the flag changes precision, not the math), and
refused with fp16/bf16 compute, where our score matmul would run in the lower precision the flag avoids.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pangu_zoo.config import ModelConfig
from pangu_zoo.errors import CheckpointError, ConfigError

# HF activation names whose math equals our tanh-GELU.
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# HF attention options (with their defaults) whose other value changes the math.
_FIXED_ATTENTION_OPTIONS = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False}
_UPCAST_OPTION = "reorder_and_upcast_attn"


def is_hf_gpt2_config(values: dict[str, Any]) -> bool:
    return "family" not in values and (values.get("model_type") == "gpt2" or "n_embd" in values)


def _get(values: dict[str, Any], key: str, default: Any) -> Any:
    """`values[key]`, or `default` when it is absent or null (a 0 stays 0)."""
    value = values.get(key)
    return default if value is None else value


def _check_attention_options(values: dict[str, Any]) -> None:
    for field, default in _FIXED_ATTENTION_OPTIONS.items():
        value = _get(values, field, default)
        if bool(value) != default:
            raise ConfigError(f"{field}={value!r} is not supported: this model scales every layer's attention "
                              f"scores by 1/sqrt(head_dim) only ({field}={default} does that)")


def check_precision(values: dict[str, Any], config: ModelConfig) -> None:
    """Refuse `reorder_and_upcast_attn` unless the scores are computed in fp32, as the flag asks."""
    if _get(values, _UPCAST_OPTION, False) and config.compute_dtype != "float32":
        raise ConfigError(f"{_UPCAST_OPTION}=true asks for fp32 attention scores; with compute_dtype "
                          f"{config.compute_dtype} they would not be: load with compute_dtype='float32'")


def config_from_hf(values: dict[str, Any]) -> ModelConfig:
    act = _get(values, "activation_function", "gelu_new")
    if act not in _TANH_GELU:
        raise ConfigError(f"GPT-2 activation {act!r} is not supported; supported: {', '.join(_TANH_GELU)}")
    _check_attention_options(values)
    n_embd = _get(values, "n_embd", 768)
    eos = _get(values, "eos_token_id", 50256)
    config = ModelConfig(
        family="gpt2",
        vocab_size=_get(values, "vocab_size", 50257),
        hidden_size=n_embd,
        num_layers=_get(values, "n_layer", 12),
        num_heads=_get(values, "n_head", 12),
        ffn_hidden_size=_get(values, "n_inner", 4 * n_embd),
        max_position_embeddings=_get(values, "n_positions", 1024),
        layernorm_epsilon=_get(values, "layer_norm_epsilon", 1e-5),
        hidden_act="gelu",
        dropout_rate=0.0,
        eod_token_id=eos,
        pad_token_id=_get(values, "pad_token_id", eos),
        eos_token_id=eos,
    )
    check_precision(values, config)
    return config


def _strip(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in state.items():
        if name.endswith(_IGNORED_SUFFIXES) or name == "lm_head.weight":
            continue
        out[name.removeprefix("transformer.")] = value
    return out


def _check_tied_head(state: dict[str, np.ndarray]) -> None:
    """Our head is the word table; an `lm_head.weight` equal to it (tied, as saved in .bin files) is fine."""
    head = state.get("lm_head.weight")
    table = state.get("transformer.wte.weight", state.get("wte.weight"))
    if head is not None and table is not None and not np.array_equal(head, table):
        raise CheckpointError("lm_head.weight differs from the word embedding wte.weight (an untied head, "
                              "tie_word_embeddings false); this model's output head is the word table, so it "
                              "cannot hold these weights")


def state_from_hf(state: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """HF GPT-2 state dict (with or without `transformer.`, with or without attn.bias buffers) -> ours."""
    _check_tied_head(state)
    src = _strip(state)
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in src:
            raise CheckpointError(f"the GPT-2 weights lack {name!r} (is this a GPT-2 checkpoint of this size?)")
        used.add(name)
        return src[name]

    h = config.hidden_size
    out = {
        "backbone.word_embedding.embedding_table": take("wte.weight"),
        "backbone.position_embedding.embedding_table": take("wpe.weight"),
        "backbone.layernorm.gamma": take("ln_f.weight"),
        "backbone.layernorm.beta": take("ln_f.bias"),
    }
    for i in range(config.num_blocks):
        ours, hf = f"backbone.blocks.{i}.", f"h.{i}."
        c_attn_w, c_attn_b = take(hf + "attn.c_attn.weight"), take(hf + "attn.c_attn.bias")
        if c_attn_w.shape != (h, 3 * h):
            raise CheckpointError(
                f"{hf}attn.c_attn.weight has shape {tuple(c_attn_w.shape)}, expected {(h, 3 * h)}"
            )
        for j, dense in enumerate(("dense1", "dense2", "dense3")):
            out[ours + f"attention.{dense}.weight"] = np.ascontiguousarray(c_attn_w[:, j * h:(j + 1) * h].T)
            out[ours + f"attention.{dense}.bias"] = c_attn_b[j * h:(j + 1) * h]
        out[ours + "attention.projection.weight"] = take(hf + "attn.c_proj.weight")
        out[ours + "attention.projection.bias"] = take(hf + "attn.c_proj.bias")
        out[ours + "layernorm1.gamma"] = take(hf + "ln_1.weight")
        out[ours + "layernorm1.beta"] = take(hf + "ln_1.bias")
        out[ours + "layernorm2.gamma"] = take(hf + "ln_2.weight")
        out[ours + "layernorm2.beta"] = take(hf + "ln_2.bias")
        out[ours + "output.mapping.weight"] = take(hf + "mlp.c_fc.weight")
        out[ours + "output.mapping.bias"] = take(hf + "mlp.c_fc.bias")
        out[ours + "output.projection.weight"] = take(hf + "mlp.c_proj.weight")
        out[ours + "output.projection.bias"] = take(hf + "mlp.c_proj.bias")
    extra = sorted(set(src) - used)
    if extra:
        raise CheckpointError(f"unexpected GPT-2 weights (more layers than config.json says?): {extra[:5]}")
    return out
