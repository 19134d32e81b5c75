"""The strategy-table entries of the ops openPangu-Embedded's cells add (`models/openpangu_layers.py`): RMSNorm,
rotary embeddings, the row-parallel output projections of [out, in] weights and the SwiGLU MLP.

Its other ops use the entries every family shares (`strategy.strategy_table`): q/k/v are column-parallel by heads
as `attention.dense.*`, the attention core is split by (key/value) heads as `attention.*`, the word table and the
head as `word_embedding.gather` / `head.matmul`. With grouped-query attention each device holds
num_key_value_heads / mp key/value heads with the query heads that share them, which `check_plan` requires.
"""

from __future__ import annotations

from pangu_zoo.config import ParallelConfig

Strategy = tuple[tuple[int, ...], ...]


def openpangu_strategies(parallel: ParallelConfig) -> dict[str, Strategy]:
    dp, mp = parallel.data_parallel, parallel.model_parallel
    rows, heads, angles = (dp, 1, 1), (dp, mp, 1, 1), (dp, 1, 1, 1)
    return {
        "rmsnorm.square": (rows,),
        "rmsnorm.mean": (rows,),
        "rmsnorm.add_eps": (rows, ()),
        "rmsnorm.rsqrt": (rows,),
        "rmsnorm.normalize": (rows, rows),
        "rmsnorm.scale": (rows, (1,)),
        "rotary.position_cast": ((dp, 1),),
        "rotary.angles": (angles, (1,)),
        "rotary.cos": (angles,),
        "rotary.sin": (angles,),
        "rotary.split": (heads,),  # q [B, n, S, d] and k [B, kv, S, d]: the head axis split, d whole
        "rotary.neg": (heads,),
        "rotary.concat": (heads, heads),
        "rotary.cos_mul": (heads, angles),
        "rotary.sin_mul": (heads, angles),
        "rotary.add": (heads, heads),
        "attention.o_proj.matmul": ((dp, mp), (1, mp)),  # weight [out, in]: row-parallel, then allreduce
        "ffn.gate.matmul": ((dp, 1), (mp, 1)),  # gate_proj and up_proj [out, in]: column-parallel
        "ffn.sigmoid": ((dp, mp),),
        "ffn.silu_mul": ((dp, mp), (dp, mp)),
        "ffn.gate_mul": ((dp, mp), (dp, mp)),
        "ffn.down.matmul": ((dp, mp), (1, mp)),  # down_proj [out, in]: row-parallel
    }


def openpangu_input_shapes(model, batch: int, seq: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """The input shapes of the entries above in training, as the cells lay them out."""
    h, d, f, n = model.hidden_size, model.head_dim, model.ffn_hidden_size, model.num_heads
    tokens = batch * seq
    hidden, per_row = (batch, seq, h), (batch, seq, 1)
    q, half, angles = (batch, n, seq, d), (batch, n, seq, d // 2), (batch, 1, seq, d)
    return {
        "rmsnorm.square": (hidden,),
        "rmsnorm.mean": (hidden,),
        "rmsnorm.add_eps": (per_row, ()),
        "rmsnorm.rsqrt": (per_row,),
        "rmsnorm.normalize": (hidden, per_row),
        "rmsnorm.scale": (hidden, (h,)),
        "rotary.position_cast": ((batch, seq),),
        "rotary.angles": ((batch, 1, seq, 1), (d,)),
        "rotary.cos": (angles,),
        "rotary.sin": (angles,),
        "rotary.split": (q,),
        "rotary.neg": (half,),
        "rotary.concat": (half, half),
        "rotary.cos_mul": (q, angles),
        "rotary.sin_mul": (q, angles),
        "rotary.add": (q, q),
        "attention.o_proj.matmul": ((tokens, n * d), (h, n * d)),
        "ffn.gate.matmul": ((tokens, h), (f, h)),
        "ffn.sigmoid": ((tokens, f),),
        "ffn.silu_mul": ((tokens, f), (tokens, f)),
        "ffn.gate_mul": ((tokens, f), (tokens, f)),
        "ffn.down.matmul": ((tokens, f), (h, f)),
    }
