"""Building the training step: the one code path shared by `train.py` and the parallel dry run.

`configure_parallel` applies the reference's `set_auto_parallel_context` settings (§6.5) for a plan;
`build_train_step` places the plan on the network (strategies, stages, optimizer-shard flags), wraps it
for pipelining and returns the `TrainOneStep` cell.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import lazy_inline, nn

from pangu.config import ParallelConfig
from pangu.models.loss import LanguageModelWithLoss
from pangu.parallel.placement import place_training_network
from pangu.training.optimizer import build_optimizer
from pangu.training.step import TrainOneStep, dynamic_loss_scale

SHARDED_MODES = ("semi_auto_parallel", "auto_parallel")
PARALLEL_MODES = ("stand_alone", "data_parallel", *SHARDED_MODES)


class PipelinedLanguageModelWithLoss(LanguageModelWithLoss):
    """The loss network as a pipeline's unit: `lazy_inline` lets the compiler build one subgraph per
    micro-batch call instead of inlining the whole network micro_batch_num times."""

    @lazy_inline
    def __init__(self, model) -> None:
        super().__init__(model)


def configure_parallel(parallel: ParallelConfig, device_num: int, parallel_mode: str = "semi_auto_parallel",
                       full_batch: bool = True, strategy_load_file: str = "", strategy_save_file: str = "",
                       optimizer_shard_threshold_kb: int | None = None) -> None:
    """Reset and set the auto-parallel context as the reference's train.py does (§6.5)."""
    from mindspore.parallel import set_algo_parameters
    from mindspore.parallel._cost_model_context import _set_multi_subgraphs

    ms.reset_auto_parallel_context()
    if parallel_mode == "stand_alone":
        return
    settings = dict(parallel_mode=parallel_mode, gradients_mean=parallel_mode == "data_parallel",
                    device_num=device_num)
    if parallel_mode in SHARDED_MODES:
        settings.update(dataset_strategy="full_batch" if full_batch else "data_parallel",
                        enable_parallel_optimizer=parallel.optimizer_shard,
                        pipeline_stages=parallel.pipeline_stage)
        if parallel.pipeline_stage > 1:
            settings["loss_repeated_mean"] = True
        if strategy_load_file:
            settings["strategy_ckpt_load_file"] = strategy_load_file
        if strategy_save_file:
            settings["strategy_ckpt_save_file"] = strategy_save_file
        if parallel.optimizer_shard and optimizer_shard_threshold_kb is not None:
            settings["parallel_optimizer_config"] = {"parallel_optimizer_threshold": optimizer_shard_threshold_kb}
    ms.set_auto_parallel_context(**settings)
    if parallel_mode in SHARDED_MODES:
        set_algo_parameters(elementwise_op_strategy_follow=True)
        if parallel_mode == "auto_parallel":
            set_algo_parameters(elementwise_op_strategy_follow=False, fully_use_devices=False)
        _set_multi_subgraphs()


def build_train_step(model, parallel: ParallelConfig, optimizer: str, learning_rate,
                     clip_norm: float = 1.0) -> TrainOneStep:
    """LanguageModelWithLoss -> (plan placed when the context shards) -> PipelineCell -> TrainOneStep."""
    mode = ms.get_auto_parallel_context("parallel_mode")
    pipelined = parallel.pipeline_stage > 1
    network = PipelinedLanguageModelWithLoss(model) if pipelined else LanguageModelWithLoss(model)
    if mode in SHARDED_MODES:
        place_training_network(network, parallel)
    micro_batches = parallel.micro_batch_num if pipelined else 1
    if pipelined:
        network = nn.PipelineCell(network, micro_batches)
    opt = build_optimizer(model.trainable_params(), optimizer, learning_rate)
    return TrainOneStep(network, opt, dynamic_loss_scale(), clip_norm=clip_norm, micro_batches=micro_batches)
