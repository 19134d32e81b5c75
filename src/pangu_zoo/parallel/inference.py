"""Sharded inference (`predict.py --distribute true`): the reference's predict plan (§6.5) placed on the
forward, prefill and decode graphs.

The plan is operator-level model parallelism over every device (dp 1, no pipeline), the plan the reference
uses up to 8 devices, with the word table whole on each device so that every rank gets whole logits and
draws the same next tokens. Each rank keeps the keys/values of its own heads: prefill returns them as
[B, n/mp, P, d], decode takes and returns them in that layout, so the cache never crosses devices. The
graphs' inputs are declared per graph (MindSpore's dataset strategy: which inputs a rank receives as
slices). That strategy requires the largest inputs to be split, so decode's bias and slot arrive split
along the cache axis as well; `ShardedGraph` cuts them out of the host arrays for its rank.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np

from pangu_zoo.config import ModelConfig, ParallelConfig
from pangu_zoo.errors import ConfigError
from pangu_zoo.parallel.context import configure_parallel
from pangu_zoo.parallel.placement import place_model
from pangu_zoo.parallel.strategy import check_plan


def inference_plan(config: ModelConfig, device_num: int) -> ParallelConfig:
    """Model parallel over all `device_num` devices, checked like a training plan (§7.1)."""
    if device_num < 2:
        raise ConfigError(f"sharded inference needs at least 2 devices, got {device_num}; run with "
                          "--distribute false on one device")
    parallel = ParallelConfig(data_parallel=1, model_parallel=device_num, pipeline_stage=1, micro_batch_num=1,
                              vocab_emb_dp=True, optimizer_shard=False)
    try:
        check_plan(config, parallel, device_num)
    except ConfigError as error:
        raise ConfigError(f"sharded inference splits the model over all {device_num} devices: {error}") from None
    return parallel


def input_strategies(graph: str, num_layers: int, mp: int) -> tuple[tuple[int, ...], ...]:
    """The dataset strategy of each graph's inputs (see `pangu_zoo.models.graphs` for the signatures)."""
    if graph == "forward":
        return (1, 1), (1, 1), (1, 1, 1, 1)
    if graph == "prefill":
        return (1, 1), (1, 1), (1, 1, 1, 1), (1,)
    if graph == "decode":
        return ((1,), (1,), (1, 1, 1, mp), (1, 1, mp, 1)) + ((1, mp, 1, 1),) * (2 * num_layers)
    raise ValueError(f"unknown graph {graph!r}")


# inputs the host builds whole and cuts for the rank: graph -> {input index: split axis}
HOST_SPLIT = {"decode": {2: 3, 3: 2}}


def local_part(array: np.ndarray, axis: int, rank: int, parts: int) -> np.ndarray:
    """The `rank`-th of `parts` equal slices of `array` along `axis` (rank r holds slice r)."""
    size = array.shape[axis]
    if size % parts:
        raise ConfigError(f"axis {axis} of an input has {size} entries, not divisible by {parts} devices")
    step = size // parts
    index = [slice(None)] * array.ndim
    index[axis] = slice(rank * step, (rank + 1) * step)
    return np.ascontiguousarray(array[tuple(index)])


class ShardedGraph:
    """A graph cell called with whole host inputs: declares its input layout, then hands the rank its slices."""

    def __init__(self, name: str, cell, num_layers: int, rank: int, mp: int) -> None:
        self.name, self.cell = name, cell
        self.strategies = input_strategies(name, num_layers, mp)
        self.rank, self.mp = rank, mp

    def _local(self, inputs) -> list:
        ms.set_auto_parallel_context(dataset_strategy=self.strategies)
        split = HOST_SPLIT.get(self.name, {})
        return [ms.Tensor(local_part(x.asnumpy(), split[i], self.rank, self.mp)) if i in split else x
                for i, x in enumerate(inputs)]

    def __call__(self, *inputs):
        return self.cell(*self._local(inputs))

    def compile(self, *inputs) -> None:
        self.cell.compile(*self._local(inputs))


def distribute_for_inference(model, device_num: int, rank: int, strategy_load_file: str = "") -> ParallelConfig:
    """Set the predict context (§6.5), place the plan on `model` and route its graphs through `ShardedGraph`.

    Call after the weights are loaded: each rank's parameters are cut to its slice when a graph is first
    compiled."""
    parallel = inference_plan(model.config, device_num)
    configure_parallel(parallel, device_num, "semi_auto_parallel", full_batch=False,
                       strategy_load_file=strategy_load_file)
    place_model(model, parallel)
    num_layers, mp = model.config.num_layers, parallel.model_parallel
    model.set_graph_wrapper(lambda name, cell: ShardedGraph(name, cell, num_layers, rank, mp))
    return parallel
