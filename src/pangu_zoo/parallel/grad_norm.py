"""Counting rule of the global gradient norm under a sharded plan.

Under operator-level parallelism a rank holds slices of the gradients: column/row-parallel weights are split
over the model-parallel ways, LayerNorm parameters, most biases and the position tables are whole on every rank,
and with optimizer sharding MindSpore also splits a weight's first axis over all the ranks that held the same
slice. Each rank's sum of squares therefore covers part of the model, some of it held by other ranks too.

The norm is made global as the reference does (pangu_alpha.md §6.2), with one all-reduce over every rank:
each rank divides the square sum of a gradient by the number of ranks of its stage that hold the same slice
(`copies`), so every slice is counted once per stage, and the sum over all ranks adds the stages together.
Data-parallel replicas hold equal gradients (they are reduced before the norm), which is why they count as
copies of one slice. The tied word table of a pipeline sits on the first and the last stage, each with its own
part of the gradient; both parts are counted, as in the reference.
"""

from __future__ import annotations

import math

from pangu_zoo.config import ParallelConfig
from pangu_zoo.parallel.strategy import head_vocab_parallel, optimizer_shardable

MINDSPORE_OPT_SHARD_THRESHOLD_KB = 64  # MindSpore's default parallel_optimizer_threshold

# parameter name suffix -> the axis that the strategy table (§7.2) splits over the model-parallel ways
_MODEL_PARALLEL_AXIS = {
    **{f"attention.dense{i}.weight": 0 for i in (1, 2, 3)},  # [out, in], column-parallel
    **{f"attention.dense{i}.bias": 0 for i in (1, 2, 3)},
    "attention.projection.weight": 0,  # [in, out], row-parallel
    "output.mapping.weight": 1,  # [in, out], column-parallel
    "output.mapping.bias": 0,
    "output.projection.weight": 0,  # row-parallel
    # LoRA adapters (A [r, in], B [out, r]) split as their base layer: B by output rows on column-parallel layers,
    # A by input columns on row-parallel ones; the other matrix is whole
    **{f"attention.dense{i}.lora.b": 0 for i in (1, 2, 3)},
    "attention.projection.lora.a": 1,
    "output.mapping.lora.b": 0,
    "output.projection.lora.a": 1,
    # openPangu: every weight [out, in]; q/k/v and gate/up column-parallel, o/down row-parallel
    **{f"self_attn.{p}_proj.{kind}": 0 for p in "qkv" for kind in ("weight", "bias")},
    "self_attn.o_proj.weight": 1,
    "mlp.gate_proj.weight": 0,
    "mlp.up_proj.weight": 0,
    "mlp.down_proj.weight": 1,
}
# the word table and an untied head [vocab, h], split by rows when the head is vocab-parallel
_VOCAB_TABLES = ("word_embedding.embedding_table", "embed_tokens.weight", "lm_head.weight")


def model_parallel_axis(name: str, parallel: ParallelConfig) -> int | None:
    """The axis of a parameter split over the model-parallel ways, or None when every rank holds it whole."""
    if parallel.model_parallel == 1:
        return None
    if name.endswith(_VOCAB_TABLES):
        return 0 if head_vocab_parallel(parallel) else None
    for suffix, axis in _MODEL_PARALLEL_AXIS.items():
        if name.endswith(suffix):
            return axis
    return None


def optimizer_sharded(name: str, shape: tuple[int, ...], item_bytes: int, parallel: ParallelConfig,
                      threshold_kb: float | None = None, stage_shared: bool = False) -> bool:
    """Whether MindSpore's parallel optimizer splits this parameter: enabled, not opted out, not shared between
    pipeline stages, at least `threshold_kb` (whole parameter), and a first axis divisible by the ranks it splits
    over (the model-parallel parts of axis 0 times the replicas of the slice)."""
    if not parallel.optimizer_shard or stage_shared or not optimizer_shardable(name):
        return False
    threshold = MINDSPORE_OPT_SHARD_THRESHOLD_KB if threshold_kb is None else threshold_kb
    if math.prod(shape) * item_bytes / 1024 < threshold:
        return False
    slices, first_axis_parts = _slices(name, shape, parallel)
    split = _replicas(slices, parallel) * first_axis_parts
    return shape[0] >= split and shape[0] % split == 0


def _slices(name: str, shape: tuple[int, ...], parallel: ParallelConfig) -> tuple[int, int]:
    """(distinct slices of a parameter within a stage, parts its first axis is cut into) under the strategy table:
    MoE expert weights [E, in, out] are split over the expert-parallel ways (axis 0) and inside each expert over mp
    (the projection's bias [E, 1, h] over ep only); other parameters over mp along `model_parallel_axis`."""
    if len(shape) == 3 and (".output.mapping." in name or ".output.projection." in name):
        ep, mp = parallel.expert_parallel, parallel.model_parallel
        return (ep, ep) if name.endswith("projection.bias") else (ep * mp, ep)
    axis = model_parallel_axis(name, parallel)
    if axis is None:
        return 1, 1
    return parallel.model_parallel, parallel.model_parallel if axis == 0 else 1


def _replicas(slices: int, parallel: ParallelConfig) -> int:
    """Ranks of one stage that hold the same slice."""
    return parallel.data_parallel * parallel.model_parallel // slices


def gradient_copies(name: str, shape: tuple[int, ...], item_bytes: int, parallel: ParallelConfig,
                    threshold_kb: float | None = None, stage_shared: bool = False) -> int:
    """How many ranks of a stage hold the same slice of this parameter's gradient when the norm is taken."""
    if optimizer_sharded(name, shape, item_bytes, parallel, threshold_kb, stage_shared):
        return 1
    return _replicas(_slices(name, shape, parallel)[0], parallel)


def stage_shared(name: str, parallel: ParallelConfig) -> bool:
    """The tied word table is used by the first stage (embedding) and the last (head) of a pipeline."""
    return parallel.pipeline_stage > 1 and name.endswith("word_embedding.embedding_table")


def norm_weights(parameters, parallel: ParallelConfig, threshold_kb: float | None = None) -> tuple[float, ...]:
    """1 / copies for each (name, shape, item_bytes) in optimizer order: the factor of each square sum."""
    return tuple(1.0 / gradient_copies(name, tuple(shape), item_bytes, parallel, threshold_kb,
                                       stage_shared(name, parallel))
                 for name, shape, item_bytes in parameters)


def compiled_copies(full_shape, gradient_slice_shape, parallel: ParallelConfig) -> int:
    """The same count read from a compiled layout: ranks of a stage / distinct slices of the gradient."""
    slices = math.prod(full_shape) // math.prod(gradient_slice_shape)
    return parallel.data_parallel * parallel.model_parallel // slices
