"""The auto-parallel context of a run: the reference's `set_auto_parallel_context` settings (§6.5), shared by
training, sharded inference and the dry runs."""

from __future__ import annotations

import mindspore as ms

from pangu_zoo.config import ParallelConfig

SHARDED_MODES = ("semi_auto_parallel", "auto_parallel")


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
                        pipeline_stages=parallel.pipeline_stage,
                        # experts split over devices: tokens move by AllToAll (MindSpore's default is off, which
                        # gathers and scatters whole tensors instead)
                        enable_alltoall=parallel.expert_parallel > 1)
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
