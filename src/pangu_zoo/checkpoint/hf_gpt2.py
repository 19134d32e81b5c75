"""Hugging Face GPT-2 layout <-> this project's names (released PanGu-alpha naming scheme).

HF's Conv1D stores weights [in, out]; our query/key/value weights are [out, in] (so they are split
out of `c_attn` and transposed) while projection/mapping weights are [in, out] like Conv1D.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pangu_zoo.config import ModelConfig
from pangu_zoo.errors import CheckpointError, ConfigError

# HF activation names whose math equals our tanh-GELU.
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def is_hf_gpt2_config(values: dict[str, Any]) -> bool:
    return "family" not in values and (values.get("model_type") == "gpt2" or "n_embd" in values)


def config_from_hf(values: dict[str, Any]) -> ModelConfig:
    act = values.get("activation_function", "gelu_new")
    if act not in _TANH_GELU:
        raise ConfigError(f"GPT-2 activation {act!r} is not supported; supported: {', '.join(_TANH_GELU)}")
    n_embd = values.get("n_embd", 768)
    eos = values.get("eos_token_id", 50256)
    return ModelConfig(
        family="gpt2",
        vocab_size=values.get("vocab_size", 50257),
        hidden_size=n_embd,
        num_layers=values.get("n_layer", 12),
        num_heads=values.get("n_head", 12),
        ffn_hidden_size=values.get("n_inner") or 4 * n_embd,
        max_position_embeddings=values.get("n_positions", 1024),
        layernorm_epsilon=values.get("layer_norm_epsilon", 1e-5),
        hidden_act="gelu",
        dropout_rate=0.0,
        eod_token_id=eos,
        pad_token_id=values.get("pad_token_id") or eos,
        eos_token_id=eos,
    )


def _strip(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in state.items():
        if name.endswith(_IGNORED_SUFFIXES) or name == "lm_head.weight":
            continue
        out[name.removeprefix("transformer.")] = value
    return out


def state_from_hf(state: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """HF GPT-2 state dict (with or without `transformer.`, with or without attn.bias buffers) -> ours."""
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
