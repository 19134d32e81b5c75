"""Building the training step: the one code path shared by `train.py` and the parallel dry run.

`build_train_step` places the plan on the network (strategies, stages, optimizer-shard flags), wraps it
for pipelining and returns the `TrainOneStep` cell.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import lazy_inline, nn

from pangu_zoo.config import ParallelConfig
from pangu_zoo.models.loss import LanguageModelWithLoss
from pangu_zoo.parallel.context import SHARDED_MODES
from pangu_zoo.parallel.grad_norm import norm_weights
from pangu_zoo.parallel.placement import place_training_network
from pangu_zoo.training.optimizer import build_optimizer
from pangu_zoo.training.step import TrainOneStep, dynamic_loss_scale


class PipelinedLanguageModelWithLoss(LanguageModelWithLoss):
    """The loss network as a pipeline's unit: `lazy_inline` lets the compiler build one subgraph per
    micro-batch call instead of inlining the whole network micro_batch_num times."""

    @lazy_inline
    def __init__(self, model) -> None:
        super().__init__(model)


def build_train_step(model, parallel: ParallelConfig, optimizer: str, learning_rate,
                     clip_norm: float = 1.0, opt_offload: bool = False) -> TrainOneStep:
    """LanguageModelWithLoss -> (plan placed when the context shards) -> PipelineCell -> TrainOneStep."""
    mode = ms.get_auto_parallel_context("parallel_mode")
    pipelined = parallel.pipeline_stage > 1
    network = PipelinedLanguageModelWithLoss(model) if pipelined else LanguageModelWithLoss(model)
    if mode in SHARDED_MODES:
        place_training_network(network, parallel)
    micro_batches = parallel.micro_batch_num if pipelined else 1
    if pipelined:
        network = nn.PipelineCell(network, micro_batches)
    opt = build_optimizer(model.trainable_params(), optimizer, learning_rate, offload=opt_offload)
    weights = sharded_norm_weights(opt.parameters, parallel) if mode in SHARDED_MODES else None
    return TrainOneStep(network, opt, dynamic_loss_scale(), clip_norm=clip_norm, micro_batches=micro_batches,
                        norm_weights=weights)


def sharded_norm_weights(parameters, parallel: ParallelConfig) -> tuple[float, ...]:
    """The per-gradient factors of the global norm for the plan in the current auto-parallel context."""
    from mindspore.parallel._auto_parallel_context import auto_parallel_context

    threshold = auto_parallel_context().get_parallel_optimizer_threshold()  # -1: MindSpore's default
    described = [(p.name, tuple(p.shape), p.itemsize) for p in parameters]
    return norm_weights(described, parallel, None if threshold < 0 else threshold)
