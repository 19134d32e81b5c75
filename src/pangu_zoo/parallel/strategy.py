"""Parallel plans as data: the plan checks (§7.1), the shard strategy of every op (§7.2) and the pipeline
stage of every layer (§7.3) of the reference, computed from a `ParallelConfig`.

This module only describes the plan; placing it on the cells (`primitive.shard(...)`, `pipeline_stage`)
and compiling it are separate steps, so the table can be read and tested on its own.
"""

from __future__ import annotations

import math

from pangu_zoo.config import ModelConfig, ParallelConfig
from pangu_zoo.errors import ConfigError
from pangu_zoo.parallel.openpangu_strategy import openpangu_input_shapes, openpangu_strategies

Strategy = tuple[tuple[int, ...], ...]


def head_vocab_parallel(parallel: ParallelConfig) -> bool:
    """The tied head and word table are split over mp unless vocab_emb_dp, which pipelining turns off."""
    return not parallel.vocab_emb_dp or parallel.pipeline_stage > 1


def check_plan(model: ModelConfig, parallel: ParallelConfig, device_num: int,
               per_batch_size: int | None = None) -> list[str]:
    """Raise `ConfigError` for a plan the reference or MindSpore's parallel compiler rejects, with one readable
    line, before anything is compiled; return warnings for plans that run badly."""
    dp, mp, stages = parallel.data_parallel, parallel.model_parallel, parallel.pipeline_stage
    if per_batch_size is not None:
        check_batch(model, parallel, per_batch_size)
    if dp * mp * stages != device_num:
        raise ConfigError(f"data_parallel ({dp}) x model_parallel ({mp}) x pipeline_stage ({stages}) = "
                          f"{dp * mp * stages}, but device_num is {device_num}; they must be equal.")
    if device_num & (device_num - 1):
        raise ConfigError(f"device_num ({device_num}) must be a power of 2 for parallel training.")
    for name, value in (("num_heads", model.num_heads), ("hidden_size", model.hidden_size),
                        ("ffn_hidden_size", model.ffn_hidden_size)):
        if value % mp:
            raise ConfigError(f"{name} ({value}) must be a multiple of model_parallel ({mp}).")
    if model.num_key_value_heads % mp:
        raise ConfigError(f"num_key_value_heads ({model.num_key_value_heads}) must be a multiple of model_parallel "
                          f"({mp}): each device holds whole key/value heads with the query heads that share them "
                          "(grouped-query attention).")
    if stages > 1 and getattr(model, "tie_word_embeddings", False):
        raise ConfigError("an openPangu model with tie_word_embeddings cannot be pipelined here (the head's word "
                          "table would sit on two stages); use --stage_num 1")
    if (device_num // stages) % (dp * mp):
        raise ConfigError(f"each pipeline stage has {device_num // stages} devices, which data_parallel ({dp}) x "
                          f"model_parallel ({mp}) must divide.")
    if head_vocab_parallel(parallel) and model.vocab_size % mp:
        raise ConfigError(f"vocab_size ({model.vocab_size}) must be a multiple of model_parallel ({mp}) when the "
                          "word table is split (vocab_emb_dp off, or pipeline stages > 1).")
    if stages > model.num_layers:
        raise ConfigError(f"pipeline_stage ({stages}) is more than the model's layers ({model.num_layers}).")
    experts, ep = model.moe.expert_num, parallel.expert_parallel
    if experts > 1 and (experts % ep or dp % ep):
        raise ConfigError(f"expert_num ({experts}) and data_parallel ({dp}) must be multiples of "
                          f"expert_parallel ({ep}).")
    if experts > 1 and stages > 1:
        raise ConfigError("mixture-of-experts plans with pipeline stages are not supported: MindSpore 2.10's "
                          "compiler does not finish a pipelined MoE step (stage 0 ran 14 min without end, where the "
                          "same plan without stages compiles in 5 s); use --stage_num 1 (dp x mp x ep)")
    if stages > 1 and parallel.micro_batch_num < 2:
        raise ConfigError(f"pipeline_stage ({stages}) > 1 needs micro_batch_num (--micro_size) of at least 2: "
                          "MindSpore splits each batch into micro-batches for the pipeline.")
    warnings = []
    if stages == 1 and parallel.micro_batch_num > 1:
        warnings.append(f"--micro_size ({parallel.micro_batch_num}) is ignored without pipeline stages, as in the "
                        "reference: a step takes one batch.")
    if stages > 1 and parallel.micro_batch_num < stages:
        warnings.append(f"micro_batch_num ({parallel.micro_batch_num}) < pipeline_stage ({stages}): the pipeline "
                        "bubble leaves most devices idle; use at least as many micro batches as stages.")
    return warnings


def check_batch(model: ModelConfig, parallel: ParallelConfig, per_batch_size: int) -> None:
    """The batch of a plan: per_batch_size rows per data-parallel replica in every micro-batch (§6.2)."""
    if not isinstance(per_batch_size, int) or per_batch_size < 1:
        raise ConfigError(f"--per_batch_size ({per_batch_size}) must be a positive integer: the rows each "
                          "data-parallel replica takes per micro-batch.")
    if model.max_position_embeddings < 2:
        raise ConfigError(f"--seq_length ({model.max_position_embeddings}) must be at least 2.")


def batch_description(parallel: ParallelConfig, per_batch_size: int) -> str:
    """'global batch N = per_batch_size x data_parallel [x micro-batches]' for logs and reports."""
    terms = [f"{per_batch_size} per replica", f"{parallel.data_parallel} data-parallel"]
    if parallel.micro_batches > 1:
        terms.append(f"{parallel.micro_batches} micro-batches")
    return f"global batch {parallel.global_batch(per_batch_size)} = " + " x ".join(terms)


def strategy_table(parallel: ParallelConfig) -> dict[str, Strategy]:
    """Op -> shard strategy (one tuple per input, `()` for a scalar), as reference §7.2, for the tensor ranks
    the cells use: the residual stream is [B, S, h], linear layers work on tokens [B*S, h]."""
    dp, mp = parallel.data_parallel, parallel.model_parallel
    vocab_split = head_vocab_parallel(parallel)
    vp = mp if vocab_split else 1  # how the logits' vocabulary axis is split
    return {
        "input.slice": ((dp, 1),),
        "input.loss_mask_cast": ((dp, 1),),  # the dataset's loss mask [B, S]
        "input.mask_cast": ((dp, 1, 1),),
        "input.mask_sub": ((), (dp, 1, 1)),
        "input.mask_mul": ((dp, 1, 1), ()),
        "input.mask_expand": ((dp, 1, 1),),
        # the tied table has one layout for both users: split by rows exactly when the head is vocab-parallel
        "word_embedding.gather": ((mp, 1), (dp, 1)) if vocab_split else ((1, 1), (dp, 1)),
        "position_embedding.gather": ((1, 1), (dp, 1)),
        "top_query_embedding.gather": ((1, 1), (dp, 1)),
        "embedding.add": ((dp, 1, 1), (dp, 1, 1)),
        "embedding.dropout": ((dp, 1, 1),),
        "layernorm": ((dp, 1, 1), (1,), (1,)),
        "attention.dense.matmul": ((dp, 1), (mp, 1)),  # Q/K/V, weight [out, in]: column-parallel by heads
        "attention.dense.bias_add": ((dp, mp), (mp,)),
        "attention.split_heads.transpose": ((dp, 1, mp, 1),),
        "attention.scores.batch_matmul": ((dp, mp, 1, 1), (dp, mp, 1, 1)),
        "attention.scale.mul": ((dp, mp, 1, 1), ()),
        "attention.mask.add": ((dp, 1, 1, 1), (dp, mp, 1, 1)),
        "attention.softmax": ((dp, mp, 1, 1),),
        "attention.prob_dropout": ((dp, mp, 1, 1),),
        "attention.context.batch_matmul": ((dp, mp, 1, 1), (dp, mp, 1, 1)),
        "attention.merge_heads.transpose": ((dp, mp, 1, 1),),
        # decode: the new key/value [B, n, 1, d] is written into the cache [B, n, T, d] at a 0/1 slot [B, 1, T, 1]
        "attention.cache_keep.mul": ((dp, mp, 1, 1), (dp, 1, 1, 1)),
        "attention.cache_new.mul": ((dp, mp, 1, 1), (dp, 1, 1, 1)),
        "attention.cache.add": ((dp, mp, 1, 1), (dp, mp, 1, 1)),
        "attention.projection.matmul": ((dp, mp), (mp, 1)),  # weight [in, out]: row-parallel, then allreduce
        "attention.projection.bias_add": ((dp, 1), (1,)),
        "attention.dropout": ((dp, 1, 1),),
        "residual.add": ((dp, 1, 1), (dp, 1, 1)),
        "ffn.mapping.matmul": ((dp, 1), (1, mp)),
        "ffn.mapping.bias_add": ((dp, mp), (mp,)),
        "ffn.activation": ((dp, mp),),
        "ffn.activation.const": ((dp, mp), ()),
        "ffn.activation.pair": ((dp, mp), (dp, mp)),
        "ffn.projection.matmul": ((dp, mp), (mp, 1)),
        "ffn.projection.bias_add": ((dp, 1), (1,)),
        "ffn.dropout": ((dp, 1),),
        "head.matmul": ((dp, 1), (mp, 1)) if vocab_split else ((dp, 1), (1, 1)),
        "loss.aux_sum": ((1,),),
        "loss.aux_add": ((), ()),
        **moe_strategies(parallel),
        **openpangu_strategies(parallel),
        **lora_strategies(parallel),
        "loss.max": ((dp, vp),),
        "loss.sub": ((dp, vp), (dp, 1)),
        "loss.exp": ((dp, vp),),
        "loss.sum_exp": ((dp, vp),),
        "loss.log": ((dp, 1),),
        "loss.onehot": ((dp, vp), (), ()),
        "loss.pick_mul": ((dp, vp), (dp, vp)),
        "loss.pick_sum": ((dp, vp),),
        "loss.log_softmax": ((dp, 1),),
        "loss.pick_gather": ((dp, 1), (dp, 1)),
        "loss.nll_sub": ((dp, 1), (dp, 1)),
        "loss.mask_cast": ((dp,),),
        "loss.mask_mul": ((dp,), (dp,)),
        "loss.masked_sum": ((dp,),),
        "loss.mask_sum": ((dp,),),
    }


def lora_strategies(parallel: ParallelConfig) -> dict[str, Strategy]:
    """LoRA adapters (`pangu_zoo.models.lora`) split as their base Linear: on a column-parallel layer (query/key/value,
    FFN mapping) A [r, in] is whole and B [out, r] split by output rows like the weight; on a row-parallel one
    (attention output, FFN projection) A is split by input columns like the weight (x·Aᵀ is all-reduced) and B is
    whole. Either way the update has the layout of the base layer's output, to which it is added."""
    dp, mp = parallel.data_parallel, parallel.model_parallel
    return {
        "lora.column.dropout": ((dp, 1),),
        "lora.column.down": ((dp, 1), (1, 1)),
        "lora.column.up": ((dp, 1), (mp, 1)),
        "lora.column.scale": ((dp, mp), ()),
        "lora.column.add": ((dp, mp), (dp, mp)),
        "lora.row.dropout": ((dp, mp),),
        "lora.row.down": ((dp, mp), (1, mp)),
        "lora.row.up": ((dp, 1), (1, 1)),
        "lora.row.scale": ((dp, 1), ()),
        "lora.row.add": ((dp, 1), (dp, 1)),
    }


def lora_input_shapes(model: ModelConfig, batch: int, seq: int, rank: int = 8) -> dict[str, tuple]:
    """The input shapes of the LoRA ops on the FFN (the larger layers): mapping h -> f, projection f -> h."""
    h, f, tokens = model.hidden_size, model.ffn_hidden_size, batch * seq
    shapes = {}
    for split, n_in, n_out in (("column", h, f), ("row", f, h)):
        shapes.update({
            f"lora.{split}.dropout": ((tokens, n_in),),
            f"lora.{split}.down": ((tokens, n_in), (rank, n_in)),
            f"lora.{split}.up": ((tokens, rank), (n_out, rank)),
            f"lora.{split}.scale": ((tokens, n_out), ()),
            f"lora.{split}.add": ((tokens, n_out), (tokens, n_out)),
        })
    return shapes


def moe_strategies(parallel: ParallelConfig) -> dict[str, Strategy]:
    """The MoE FFN's ops (`pangu_zoo.models.moe`): routing split by group (G = dp), experts split over the ep
    ways of each group with G factored as (ep, dp/ep), so moving tokens to and from the experts is one
    AllToAll each way in the ep group (docs/moe.md); inside an expert the FFN is split over mp as the dense one."""
    dp, mp, ep = parallel.data_parallel, parallel.model_parallel, parallel.expert_parallel
    r = max(dp // ep, 1)
    by_group = ((dp, 1, 1),)
    pair = ((dp, 1, 1), (dp, 1, 1))
    table = {
        "moe.router.matmul": ((dp, 1), (1, 1)),
        "moe.router.softmax": by_group,
        "moe.not_chosen": ((), (dp, 1, 1)),
        "moe.route.mul": pair,
        "moe.route.add": pair,
        "moe.route.reduce": by_group,
        "moe.route.div": pair,
        "moe.route.onehot": ((dp, 1, 1), (), ()),
        "moe.route.token_scalar": ((dp, 1), ()),
        "moe.route.token_pair": ((dp, 1), (dp, 1)),
        "moe.route.token_cast": ((dp, 1),),
        "moe.balance.reduce": ((dp, 1),),
        "moe.balance.add": ((), ()),
        "moe.aux.add": ((1,), (1,)),  # the layers' load-balance losses, each [1]
        "moe.combine.pair": ((dp, 1, 1, 1), (dp, 1, 1, 1)),
        "moe.combine.reduce": ((dp, 1, 1, 1),),
        "moe.combine.eps_add": ((dp, 1, 1, 1), ()),
        "moe.dispatch.compare": ((dp, 1, 1), ()),
        "moe.dispatch.cast": by_group,
        "moe.tokens.batch_matmul": pair,  # dispatch [G, T, E*C]^T x [G, T, h]; combine [G, T, E*C] x [G, E*C, h]
        "moe.experts.transpose": ((ep, r, 1, 1, 1),),
        "moe.mapping.batch_matmul": ((ep, r, 1), (ep, 1, mp)),
        "moe.mapping.bias_add": ((ep, r, mp), (ep, 1, mp)),
        "moe.activation": ((ep, r, mp),),
        "moe.activation.const": ((ep, r, mp), ()),
        "moe.activation.pair": ((ep, r, mp), (ep, r, mp)),
        "moe.projection.batch_matmul": ((ep, r, mp), (ep, mp, 1)),
        "moe.projection.bias_add": ((ep, r, 1), (ep, 1, 1)),
        "moe.dropout": ((dp, 1, 1),),
    }
    return table


def moe_input_shapes(model: ModelConfig, batch: int, seq: int, groups: int,
                     expert_parallel: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """The input shapes of the MoE FFN's ops in training (capacity from the config)."""
    h, f, e = model.hidden_size, model.ffn_hidden_size, model.moe.expert_num
    t = batch * seq // groups
    c = math.ceil(model.moe.num_experts_chosen * t * model.moe.capacity_factor / e)
    r = groups // expert_parallel
    per_token, slots = (groups, t, e), (groups, t, e, c)
    return {
        "moe.router.matmul": ((batch * seq, h), (h, e)),
        "moe.router.softmax": (per_token,),
        "moe.not_chosen": ((), per_token),
        "moe.route.mul": (per_token, per_token),
        "moe.route.add": (per_token, per_token),
        "moe.route.reduce": (per_token,),
        "moe.route.div": (per_token, per_token),
        "moe.route.onehot": (per_token, (), ()),
        "moe.route.token_scalar": ((groups, t), ()),
        "moe.route.token_pair": ((groups, t), (groups, t)),
        "moe.route.token_cast": ((groups, t),),
        "moe.balance.reduce": ((groups, e),),
        "moe.balance.add": ((), ()),
        "moe.aux.add": ((1,), (1,)),
        "moe.combine.pair": (slots, slots),
        "moe.combine.reduce": (slots,),
        "moe.combine.eps_add": ((groups, t, 1, 1), ()),
        "moe.dispatch.compare": ((groups, t, e * c), ()),
        "moe.dispatch.cast": ((groups, t, e * c),),
        "moe.tokens.batch_matmul": ((groups, t, e * c), (groups, t, h)),
        "moe.experts.transpose": ((expert_parallel, r, e, c, h),),
        "moe.mapping.batch_matmul": ((e, groups * c, h), (e, h, f)),
        "moe.mapping.bias_add": ((e, groups * c, f), (e, 1, f)),
        "moe.activation": ((e, groups * c, f),),
        "moe.activation.const": ((e, groups * c, f), ()),
        "moe.activation.pair": ((e, groups * c, f), (e, groups * c, f)),
        "moe.projection.batch_matmul": ((e, groups * c, f), (e, f, h)),
        "moe.projection.bias_add": ((e, groups * c, h), (e, 1, h)),
        "moe.dropout": ((batch, seq, h),),
    }


def op_input_shapes(model: ModelConfig, batch: int, seq: int, groups: int = 1,
                    expert_parallel: int = 1) -> dict[str, tuple[tuple[int, ...], ...]]:
    """The input shapes of each op of `strategy_table` for a global batch, as the cells lay them out (MoE routing
    groups: `groups` = data-parallel ways)."""
    h, n, d, f, v = model.hidden_size, model.num_heads, model.head_dim, model.ffn_hidden_size, model.vocab_size
    tokens, p = batch * seq, model.max_position_embeddings
    heads, hidden, square = (batch, n, seq, d), (batch, seq, h), (batch, seq, seq)
    return {
        "input.slice": ((batch, seq + 1),),
        "input.loss_mask_cast": ((batch, seq),),
        "input.mask_cast": (square,),
        "input.mask_sub": ((), square),
        "input.mask_mul": (square, ()),
        "input.mask_expand": (square,),
        "word_embedding.gather": ((v, h), (batch, seq)),
        "position_embedding.gather": ((p, h), (batch, seq)),
        "top_query_embedding.gather": ((p, h), (batch, seq)),
        "embedding.add": (hidden, hidden),
        "embedding.dropout": (hidden,),
        "layernorm": (hidden, (h,), (h,)),
        "attention.dense.matmul": ((tokens, h), (h, h)),
        "attention.dense.bias_add": ((tokens, h), (h,)),
        "attention.split_heads.transpose": ((batch, seq, n, d),),
        "attention.scores.batch_matmul": (heads, heads),
        "attention.scale.mul": (heads, ()),  # q and k, each scaled before q·kᵀ
        "attention.mask.add": ((batch, 1, seq, seq), (batch, n, seq, seq)),
        "attention.softmax": ((batch, n, seq, seq),),
        "attention.prob_dropout": ((batch, n, seq, seq),),
        "attention.context.batch_matmul": ((batch, n, seq, seq), heads),
        "attention.merge_heads.transpose": (heads,),
        "attention.cache_keep.mul": (heads, (batch, 1, seq, 1)),
        "attention.cache_new.mul": ((batch, n, 1, d), (batch, 1, seq, 1)),
        "attention.cache.add": (heads, heads),
        "attention.projection.matmul": ((tokens, h), (h, h)),
        "attention.projection.bias_add": ((tokens, h), (h,)),
        "attention.dropout": (hidden,),
        "residual.add": (hidden, hidden),
        "ffn.mapping.matmul": ((tokens, h), (h, f)),
        "ffn.mapping.bias_add": ((tokens, f), (f,)),
        "ffn.activation": ((tokens, f),),
        "ffn.activation.const": ((tokens, f), ()),
        "ffn.activation.pair": ((tokens, f), (tokens, f)),
        "ffn.projection.matmul": ((tokens, f), (f, h)),
        "ffn.projection.bias_add": ((tokens, h), (h,)),
        "ffn.dropout": ((tokens, h),),
        "head.matmul": ((tokens, h), (v, h)),
        "loss.aux_sum": ((1,),),
        "loss.aux_add": ((), ()),
        **moe_input_shapes(model, batch, seq, groups, expert_parallel),
        **openpangu_input_shapes(model, batch, seq),
        **lora_input_shapes(model, batch, seq),
        "loss.max": ((tokens, v),),
        "loss.sub": ((tokens, v), (tokens, 1)),
        "loss.exp": ((tokens, v),),
        "loss.sum_exp": ((tokens, v),),
        "loss.log": ((tokens, 1),),
        "loss.onehot": ((tokens, v), (), ()),
        "loss.pick_mul": ((tokens, v), (tokens, v)),
        "loss.pick_sum": ((tokens, v),),
        "loss.log_softmax": ((tokens, v),),
        "loss.pick_gather": ((tokens, v), (tokens, 1)),
        "loss.nll_sub": ((tokens, 1), (tokens, 1)),
        "loss.mask_cast": ((tokens,),),
        "loss.mask_mul": ((tokens,), (tokens,)),
        "loss.masked_sum": ((tokens,),),
        "loss.mask_sum": ((tokens,),),
    }


def rank_stage(rank: int, device_num: int, stages: int) -> int:
    """The pipeline stage of a rank: MindSpore gives each stage a contiguous block of device_num / stages ranks."""
    return rank // (device_num // stages)


def layer_stages(model: ModelConfig, parallel: ParallelConfig) -> dict[str, int]:
    """Pipeline stage of each part (§7.3): blocks by `min(i // max(L // P, 1), P - 1)` with L = num_layers;
    embeddings on stage 0; final LayerNorm, top-query layer and head on the last stage."""
    stages, per_stage = parallel.pipeline_stage, max(model.num_layers // parallel.pipeline_stage, 1)
    placement = {"embedding": 0}
    for i in range(model.num_blocks):
        placement[f"blocks.{i}"] = min(i // per_stage, stages - 1)
    placement["layernorm"] = stages - 1
    if model.has_top_query_layer:
        placement["top_query_embedding"] = stages - 1
        placement["top_query_layer"] = stages - 1
    placement["head"] = stages - 1
    return placement


def optimizer_shardable(parameter_name: str) -> bool:
    """Optimizer sharding skips LayerNorm/RMSNorm parameters, biases and embedding tables (parallel_optimizer=False)."""
    name = parameter_name.lower()
    return not ("norm" in name or name.endswith(".bias") or "embedding" in name or "embed_tokens" in name)
