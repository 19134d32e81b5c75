"""The parameters a `ModelConfig` describes, `{our name: shape}` in the model's own order, without building it."""

from __future__ import annotations

from pangu_zoo.checkpoint.mindformers import POSITION, TOP_QUERY, WORD
from pangu_zoo.config import ModelConfig
from pangu_zoo.errors import ConfigError


def _layer(prefix: str, hidden: int, ffn: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {f"{prefix}layernorm1.gamma": (hidden,), f"{prefix}layernorm1.beta": (hidden,)}
    for dense in ("dense1", "dense2", "dense3", "projection"):
        shapes[f"{prefix}attention.{dense}.weight"] = (hidden, hidden)
        shapes[f"{prefix}attention.{dense}.bias"] = (hidden,)
    shapes[f"{prefix}layernorm2.gamma"] = (hidden,)
    shapes[f"{prefix}layernorm2.beta"] = (hidden,)
    shapes[f"{prefix}output.mapping.weight"] = (hidden, ffn)
    shapes[f"{prefix}output.mapping.bias"] = (ffn,)
    shapes[f"{prefix}output.projection.weight"] = (ffn, hidden)
    shapes[f"{prefix}output.projection.bias"] = (hidden,)
    return shapes


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    if config.moe.expert_num > 1:
        raise ConfigError(f"moe.expert_num is {config.moe.expert_num}: mixture-of-experts checkpoints are not "
                          "supported")
    h, f = config.hidden_size, config.ffn_hidden_size
    shapes: dict[str, tuple[int, ...]] = {WORD: (config.vocab_size, h), POSITION: (config.max_position_embeddings, h)}
    for i in range(config.num_blocks):
        shapes.update(_layer(f"backbone.blocks.{i}.", h, f))
    shapes["backbone.layernorm.gamma"] = (h,)
    shapes["backbone.layernorm.beta"] = (h,)
    if config.has_top_query_layer:
        shapes[TOP_QUERY] = (config.max_position_embeddings, h)
        shapes.update(_layer("backbone.top_query_layer.", h, f))
    return shapes
