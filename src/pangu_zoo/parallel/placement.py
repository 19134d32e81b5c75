"""Placing a parallel plan on the cells: shard strategies on primitives (§7.2), pipeline stages (§7.3) and
`parallel_optimizer=False` on the parameters optimizer sharding skips.

The model code only names its primitives; this module maps each one to its entry of
`pangu_zoo.parallel.strategy.strategy_table`. Placement is inert outside (SEMI_)AUTO_PARALLEL.
"""

from __future__ import annotations

from pangu_zoo.config import ParallelConfig
from pangu_zoo.parallel.openpangu_placement import openpangu_placement_map, place_openpangu
from pangu_zoo.parallel.strategy import head_vocab_parallel, layer_stages, optimizer_shardable, strategy_table

# primitive inside the FFN's Gelu -> suffix of its activation entry: elementwise on one tensor, with a constant,
# or on two tensors of the activation's shape
GELU_OPS = {"square": "", "sigmoid": "", "cubic_mul": ".const", "linear_add": ".const", "linear_mul": ".const",
            "inner_mul": ".pair", "gate_mul": ".pair"}


def _gelu_ops(entry: str) -> dict[str, str]:
    return {f"output.activation.{path}": entry + suffix for path, suffix in GELU_OPS.items()}


# primitive path inside a transformer Block -> strategy table entry
BLOCK_OPS = {
    "layernorm1.norm": "layernorm",
    "layernorm2.norm": "layernorm",
    "residual_add": "residual.add",
    **{f"attention.dense{i}.matmul": "attention.dense.matmul" for i in (1, 2, 3)},
    **{f"attention.dense{i}.bias_add": "attention.dense.bias_add" for i in (1, 2, 3)},
    "attention.split_heads": "attention.split_heads.transpose",
    "attention.scores_matmul": "attention.scores.batch_matmul",
    "attention.scale_mul": "attention.scale.mul",
    "attention.mask_add": "attention.mask.add",
    "attention.softmax": "attention.softmax",
    "attention.prob_dropout.dropout": "attention.prob_dropout",
    "attention.context_matmul": "attention.context.batch_matmul",
    "attention.merge_heads": "attention.merge_heads.transpose",
    "attention.cache_keep_mul": "attention.cache_keep.mul",
    "attention.cache_new_mul": "attention.cache_new.mul",
    "attention.cache_add": "attention.cache.add",
    "attention.projection.matmul": "attention.projection.matmul",
    "attention.projection.bias_add": "attention.projection.bias_add",
    "attention.dropout.dropout": "attention.dropout",
    "output.mapping.matmul": "ffn.mapping.matmul",
    "output.mapping.bias_add": "ffn.mapping.bias_add",
    **_gelu_ops("ffn.activation"),
    "output.projection.matmul": "ffn.projection.matmul",
    "output.projection.bias_add": "ffn.projection.bias_add",
    "output.dropout.dropout": "ffn.dropout",
}
# primitive path inside a Block whose FFN is a mixture of experts (the attention and norms as BLOCK_OPS)
MOE_FFN_OPS = {
    "output.router.matmul": "moe.router.matmul",
    "output.router.softmax": "moe.router.softmax",
    "output.not_chosen": "moe.not_chosen",
    "output.remaining_mul": "moe.route.mul",
    "output.remaining_sum": "moe.route.reduce",
    "output.remaining_div": "moe.route.div",
    "output.argmax": "moe.route.reduce",
    "output.expert_onehot": "moe.route.onehot",
    "output.density_mean": "moe.route.reduce",
    "output.proxy_mean": "moe.route.reduce",
    "output.balance_mul": "moe.route.token_pair",
    "output.balance_mean": "moe.balance.reduce",
    "output.balance_add": "moe.balance.add",
    "output.chosen_add": "moe.route.add",
    "output.slot_cumsum": "moe.route.reduce",
    "output.slot_offset_add": "moe.route.add",
    "output.slot_pick_mul": "moe.route.mul",
    "output.slot_pick_sum": "moe.route.reduce",
    "output.keep_less": "moe.route.token_scalar",
    "output.keep_cast": "moe.route.token_cast",
    "output.gate_keep_mul": "moe.route.token_pair",
    "output.kept_mul": "moe.route.mul",
    "output.kept_count": "moe.route.reduce",
    "output.held_add": "moe.route.add",
    "output.slot_clip": "moe.route.token_scalar",
    "output.slot_index_cast": "moe.route.token_cast",
    "output.slot_onehot": "moe.route.onehot",
    "output.gate_expert_mul": "moe.route.mul",
    "output.combine_mul": "moe.combine.pair",
    "output.combine_add": "moe.combine.pair",
    "output.combine_sum": "moe.combine.reduce",
    "output.combine_eps_add": "moe.combine.eps_add",
    "output.combine_div": "moe.combine.pair",
    "output.dispatch_ne": "moe.dispatch.compare",
    "output.dispatch_cast": "moe.dispatch.cast",
    "output.dispatch_matmul": "moe.tokens.batch_matmul",
    "output.to_experts": "moe.experts.transpose",
    "output.mapping.matmul": "moe.mapping.batch_matmul",
    "output.mapping.bias_add": "moe.mapping.bias_add",
    **_gelu_ops("moe.activation"),
    "output.projection.matmul": "moe.projection.batch_matmul",
    "output.projection.bias_add": "moe.projection.bias_add",
    "output.from_experts": "moe.experts.transpose",
    "output.combine_matmul": "moe.tokens.batch_matmul",
    "output.dropout.dropout": "moe.dropout",
}
ATTENTION_AND_NORM_OPS = {path: entry for path, entry in BLOCK_OPS.items() if not path.startswith("output.")}
# primitive path inside the Backbone -> entry (blocks are handled by BLOCK_OPS)
BACKBONE_OPS = {
    "word_embedding.gather": "word_embedding.gather",
    "position_embedding.gather": "position_embedding.gather",
    "embedding_sum.add": "embedding.add",
    "embedding_sum.dropout.dropout": "embedding.dropout",
    "layernorm.norm": "layernorm",
    "head.matmul": "head.matmul",
    "aux_add": "moe.aux.add",  # sums the layers' load-balance losses
}
TOP_QUERY_OPS = {"top_query_embedding.gather": "top_query_embedding.gather"}
# Linear inside a Block -> how the table splits it, which its LoRA adapter (models/lora.py) follows
LINEAR_SPLITS = {**{f"attention.dense{i}": "column" for i in (1, 2, 3)}, "attention.projection": "row",
                 "output.mapping": "column", "output.projection": "row"}
# primitive path inside a LoRA cell -> entry suffix (the entry is `lora.<split>.<suffix>`)
LORA_OPS = {"dropout.dropout": "dropout", "down": "down", "up": "up", "scale_mul": "scale", "add": "add"}
# primitive path inside LanguageModelWithLoss -> entry
LOSS_OPS = {
    "slice_tokens": "input.slice",
    "slice_labels": "input.slice",
    "loss_mask_cast": "input.loss_mask_cast",
    "mask_cast": "input.mask_cast",
    "mask_sub": "input.mask_sub",
    "mask_mul": "input.mask_mul",
    "mask_expand": "input.mask_expand",
    **{f"loss.{name}": f"loss.{name}" for name in (
        "max", "sub", "exp", "sum_exp", "log", "onehot", "pick_mul", "pick_sum", "log_softmax", "pick_gather",
        "nll_sub", "mask_cast", "mask_mul", "masked_sum", "mask_sum", "aux_sum", "aux_add")},
}


def _attribute(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _lora_ops(block) -> dict[str, str]:
    """Primitive path inside a Block -> entry, for the LoRA adapters its linear layers carry (none without)."""
    ops = {}
    for linear_path, split in LINEAR_SPLITS.items():
        linear = block
        for part in linear_path.split("."):
            linear = getattr(linear, part, None)  # an MoE FFN has no mapping/projection Linear
        if getattr(linear, "lora", None) is not None:
            ops.update({f"{linear_path}.lora.{path}": f"lora.{split}.{entry}" for path, entry in LORA_OPS.items()})
    return ops


def _shard_all(root, ops: dict[str, str], table) -> None:
    for path, entry in ops.items():
        _attribute(root, path).shard(table[entry])


def model_placement_map(model) -> dict[str, str]:
    """Primitive path inside a CausalLM -> its strategy table entry, for every primitive of the model (a test
    checks that no primitive of the cells is missing, so a new op cannot stay unsharded silently)."""
    if model.config.family == "openpangu":  # its own cells
        return openpangu_placement_map(model)
    backbone = model.backbone
    entries = {f"backbone.{path}": entry for path, entry in BACKBONE_OPS.items()}
    blocks = [f"blocks.{i}" for i in range(len(backbone.blocks))]
    if backbone.has_top_query:
        entries.update({f"backbone.{path}": entry for path, entry in TOP_QUERY_OPS.items()})
        blocks.append("top_query_layer")
    for block in blocks:
        cell = _attribute(backbone, block)
        ops = {**ATTENTION_AND_NORM_OPS, **MOE_FFN_OPS} if cell.use_moe else BLOCK_OPS
        entries.update({f"backbone.{block}.{path}": entry for path, entry in {**ops, **_lora_ops(cell)}.items()})
    return entries


def network_placement_map(network) -> dict[str, str]:
    """The same for a LanguageModelWithLoss: its input and loss ops, then the model's."""
    entries = dict(LOSS_OPS)
    entries.update({f"model.{path}": entry for path, entry in model_placement_map(network.model).items()})
    return entries


def place_model(model, parallel: ParallelConfig) -> None:
    """Shard every op of a CausalLM and assign pipeline stages; mark parameters optimizer sharding skips."""
    _shard_all(model, model_placement_map(model), strategy_table(parallel))
    for name, param in model.parameters_and_names():
        if not optimizer_shardable(name):
            param.parallel_optimizer = False
    if model.config.family == "openpangu":
        place_openpangu(model, parallel)
        return
    backbone = model.backbone
    blocks = list(backbone.blocks) + ([backbone.top_query_layer] if backbone.has_top_query else [])
    for block in blocks:
        block.attention.sharded_cache_write = True
        if block.use_moe:  # routing groups never cross a data-parallel split
            block.output.groups, block.output.expert_parallel = parallel.data_parallel, parallel.expert_parallel
            block.output.record_stats = False
    if parallel.pipeline_stage > 1:
        stages = layer_stages(model.config, parallel)
        for name in ("word_embedding", "position_embedding", "embedding_sum"):
            getattr(backbone, name).pipeline_stage = stages["embedding"]
        for i, block in enumerate(backbone.blocks):
            block.pipeline_stage = stages[f"blocks.{i}"]
        backbone.layernorm.pipeline_stage = stages["layernorm"]
        backbone.head.pipeline_stage = stages["head"]
        # the tied head on the last stage uses the word table too (the reference's add_pipeline_stage)
        backbone.word_embedding.embedding_table.add_pipeline_stage(stages["head"])
        if backbone.has_top_query:
            backbone.top_query_embedding.pipeline_stage = stages["top_query_embedding"]
            backbone.top_query_layer.pipeline_stage = stages["top_query_layer"]


def place_training_network(network, parallel: ParallelConfig) -> None:
    """Place a LanguageModelWithLoss: the model, its input ops and the loss (last pipeline stage)."""
    place_model(network.model, parallel)
    _shard_all(network, LOSS_OPS, strategy_table(parallel))
    network.loss.vocab_parallel = head_vocab_parallel(parallel) and parallel.model_parallel > 1
    if parallel.pipeline_stage > 1:
        network.loss.pipeline_stage = parallel.pipeline_stage - 1
