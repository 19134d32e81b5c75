"""One training step with dynamic loss scaling (overflowing steps are skipped) and global-norm clipping.

MindSpore's own `TrainOneStepWithLossScaleCell` checks overflow with an Ascend-only status op on CPU,
so overflow is detected here from the gradients themselves: the global norm is finite exactly when
every gradient is.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.context import ParallelMode

LOSS_SCALE_INIT = 2.0 ** 32
LOSS_SCALE_FACTOR = 2
LOSS_SCALE_WINDOW = 1000


def dynamic_loss_scale(initial: float = LOSS_SCALE_INIT) -> nn.DynamicLossScaleUpdateCell:
    return nn.DynamicLossScaleUpdateCell(loss_scale_value=initial, scale_factor=LOSS_SCALE_FACTOR,
                                         scale_window=LOSS_SCALE_WINDOW)


# Per-gradient maps go through HyperMap: a Python comprehension over the gradient tuple made the compile
# time and memory of the step grow quadratically with the number of parameters.
_scale_grad = ops.MultitypeFuncGraph("scale_grad")
_square_sum = ops.MultitypeFuncGraph("square_sum")
_clear_grad = ops.MultitypeFuncGraph("clear_grad")


@_scale_grad.register("Tensor", "Tensor")
def _scale(factor, grad):
    return grad * ops.cast(factor, grad.dtype)


@_square_sum.register("Number", "Tensor")
def _squares(weight, grad):
    return ops.reduce_sum(ops.square(ops.cast(grad, ms.float32))) * weight


@_clear_grad.register("Tensor", "Tensor")
def _clear(accumulated, grad):
    return ops.assign(accumulated, ops.zeros_like(ops.depend(accumulated, grad)))


class TrainOneStep(nn.Cell):
    """network(*inputs) -> loss; returns (loss, overflow, loss_scale, global_norm).

    Gradients are unscaled, clipped to `clip_norm` by their global norm (grads * clip / max(norm, clip)),
    and applied only when none overflowed; the loss scale halves on overflow and doubles after
    `LOSS_SCALE_WINDOW` good steps. Under data parallelism the gradients are averaged across ranks first.

    Under a sharded plan each rank holds gradient slices: `norm_weights` (from `pangu_zoo.parallel.grad_norm`)
    scales each square sum by 1 / (ranks of the stage holding the same slice) and one all-reduce over every rank
    sums them, so all ranks clip by the same global norm and agree on skipping an overflowing step.

    With `micro_batches` > 1 the network is a `nn.PipelineCell` whose loss is the sum over micro-batches:
    each micro-batch gets 1/micro_batches of the loss scale, the compiler accumulates gradients into
    `accu_grads.*` (read here unless the optimizer is sharded, which takes the reduced slices), and the
    accumulators are cleared after the update. The returned loss is the micro-batch mean.
    """

    def __init__(self, network, optimizer, scale_update_cell, clip_norm: float = 1.0,
                 micro_batches: int = 1, norm_weights: tuple[float, ...] | None = None) -> None:
        super().__init__(auto_prefix=False)
        self.network = network
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.scale_update = scale_update_cell
        self.scale_sense = Parameter(Tensor(scale_update_cell.get_loss_scale(), ms.float32), name="scale_sense")
        self.clip_norm = clip_norm
        mode = ms.get_auto_parallel_context("parallel_mode")
        self.reducer = None
        if mode in (ParallelMode.DATA_PARALLEL, ParallelMode.HYBRID_PARALLEL):
            self.reducer = nn.DistributedGradReducer(self.weights, mean=True)
        self.micro_batches = micro_batches
        self.accumulate = micro_batches > 1
        if self.accumulate:
            self.accu_grads = self.weights.clone(prefix="accu_grads", init="zeros")
            self.opt_shard = bool(ms.get_auto_parallel_context("enable_parallel_optimizer"))
        self.hyper_map = ops.HyperMap()
        self.norm_weights = norm_weights if norm_weights is not None else (1.0,) * len(self.weights)
        self.norm_allreduce = None
        if norm_weights is not None:
            self.norm_allreduce = ops.AllReduce()
            self.norm_allreduce.add_prim_attr("global_norm", True)  # findable in the compiled graph's IR

    def construct(self, *inputs):
        loss = self.network(*inputs)
        scale = self.scale_sense * 1.0
        sens = ops.ones_like(loss) * ops.cast(scale / self.micro_batches, loss.dtype)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        if self.reducer is not None:
            grads = self.reducer(grads)
        if self.accumulate and not self.opt_shard:
            grads = ops.depend(self.accu_grads, grads)
        grads = self.hyper_map(ops.partial(_scale_grad, 1.0 / scale), grads)
        square_sum = ops.addn(self.hyper_map(_square_sum, self.norm_weights, grads))
        if self.norm_allreduce is not None:
            square_sum = self.norm_allreduce(square_sum)
        global_norm = ops.sqrt(square_sum)
        overflow = ops.logical_not(ops.isfinite(global_norm))
        overflow = self.scale_update(self.scale_sense, overflow)
        factor = self.clip_norm / ops.maximum(global_norm, self.clip_norm)
        grads = self.hyper_map(ops.partial(_scale_grad, factor), grads)
        if not overflow:
            loss = ops.depend(loss, self.optimizer(grads))
        if self.accumulate:
            loss = ops.depend(loss, self.hyper_map(_clear_grad, self.accu_grads, grads))
            loss = loss / self.micro_batches
        return loss, overflow, scale, global_norm
