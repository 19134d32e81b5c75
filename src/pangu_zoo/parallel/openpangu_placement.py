"""Placing a parallel plan on openPangu-Embedded's cells (`models/openpangu_layers.py`): which strategy-table entry
each primitive takes, the sharded cache write and the pipeline stages (embedding and rotary angles on the first
stage, decoder layers spread as `strategy.layer_stages` says, final norm and head on the last)."""

from __future__ import annotations

from pangu_zoo.config import ParallelConfig
from pangu_zoo.parallel.strategy import layer_stages

RMSNORM_OPS = {name: f"rmsnorm.{name}" for name in ("square", "mean", "add_eps", "rsqrt", "normalize", "scale")}
ROTARY_OPS = {name: f"rotary.{name}" for name in ("split", "neg", "concat", "cos_mul", "sin_mul", "add")}
ANGLE_OPS = {"position_cast": "rotary.position_cast", "angle_mul": "rotary.angles", "cos": "rotary.cos",
             "sin": "rotary.sin"}
# Linear inside a decoder layer -> (matmul entry, bias entry)
LINEARS = {
    **{f"self_attn.{p}_proj": ("attention.dense.matmul", "attention.dense.bias_add") for p in "qkv"},
    "self_attn.o_proj": ("attention.o_proj.matmul", "attention.projection.bias_add"),
    "mlp.gate_proj": ("ffn.gate.matmul", None),
    "mlp.up_proj": ("ffn.gate.matmul", None),
    "mlp.down_proj": ("ffn.down.matmul", None),
}
LAYER_OPS = {
    **{f"input_layernorm.{path}": entry for path, entry in RMSNORM_OPS.items()},
    **{f"post_attention_layernorm.{path}": entry for path, entry in RMSNORM_OPS.items()},
    **{f"self_attn.rotary.{path}": entry for path, entry in ROTARY_OPS.items()},
    "residual_add": "residual.add",
    "self_attn.split_heads": "attention.split_heads.transpose",
    "self_attn.scale_mul": "attention.scale.mul",
    "self_attn.scores_matmul": "attention.scores.batch_matmul",
    "self_attn.mask_add": "attention.mask.add",
    "self_attn.softmax": "attention.softmax",
    "self_attn.prob_dropout.dropout": "attention.prob_dropout",
    "self_attn.context_matmul": "attention.context.batch_matmul",
    "self_attn.merge_heads": "attention.merge_heads.transpose",
    "self_attn.cache_keep_mul": "attention.cache_keep.mul",
    "self_attn.cache_new_mul": "attention.cache_new.mul",
    "self_attn.cache_add": "attention.cache.add",
    "self_attn.dropout.dropout": "attention.dropout",
    "mlp.sigmoid": "ffn.sigmoid",
    "mlp.silu_mul": "ffn.silu_mul",
    "mlp.gate_mul": "ffn.gate_mul",
    "mlp.dropout.dropout": "ffn.dropout",
}


def _linear_ops(layer) -> dict[str, str]:
    ops = {}
    for path, (matmul, bias_add) in LINEARS.items():
        ops[f"{path}.matmul"] = matmul
        linear = layer
        for part in path.split("."):
            linear = getattr(linear, part)
        if linear.has_bias:
            ops[f"{path}.bias_add"] = bias_add
    return ops


def openpangu_placement_map(model) -> dict[str, str]:
    """Primitive path inside an openPangu CausalLM -> its strategy-table entry, for every primitive."""
    backbone = model.backbone
    entries = {"backbone.model.embed_tokens.gather": "word_embedding.gather",
               "backbone.lm_head.matmul" if not backbone.tied else "backbone.head.matmul": "head.matmul"}
    entries.update({f"backbone.model.rotary.{path}": entry for path, entry in ANGLE_OPS.items()})
    entries.update({f"backbone.model.norm.{path}": entry for path, entry in RMSNORM_OPS.items()})
    for i, layer in enumerate(backbone.model.layers):
        ops = {**LAYER_OPS, **_linear_ops(layer)}
        entries.update({f"backbone.model.layers.{i}.{path}": entry for path, entry in ops.items()})
    return entries


def place_openpangu(model, parallel: ParallelConfig) -> None:
    """The rest of a plan once the primitives are sharded: the sharded cache write and the pipeline stages."""
    backbone = model.backbone
    for layer in backbone.model.layers:
        layer.self_attn.sharded_cache_write = True
    if parallel.pipeline_stage > 1:  # a tied head is refused with stages (strategy.check_plan)
        stages = layer_stages(model.config, parallel)
        backbone.model.embed_tokens.pipeline_stage = stages["embedding"]
        backbone.model.rotary.pipeline_stage = stages["embedding"]
        for i, layer in enumerate(backbone.model.layers):
            layer.pipeline_stage = stages[f"blocks.{i}"]
        backbone.model.norm.pipeline_stage = stages["layernorm"]
        backbone.lm_head.pipeline_stage = stages["head"]
