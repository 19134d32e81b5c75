"""AdamWeightDecay with its state and update on the host (`--opt_offload 1`), as the reference's heterogeneous MoE
training (pangu_alpha.md §8): the device runs forward, backward and the global norm; the moments live in host memory
and the update runs on the CPU.

MindSpore 2.10 has no offload context any more, but still ships the reference's host kernel,
`FusedCastAdamWeightDecay` (CPU only): m and v in fp32 whatever the parameter's dtype, the update computed in fp32
and cast back to an fp16 parameter. Its arithmetic is MindSpore's AdamWeightDecay (no bias correction):
m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g², w -= lr (m / (sqrt(v) + eps) + decay w).
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.common.parameter import ParameterTuple
from mindspore.ops.operations import FusedCastAdamWeightDecay

_update = ops.MultitypeFuncGraph("host_adam_update")


@_update.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                  "Tensor", "Tensor")
def _apply(opt, lr, beta1, beta2, eps, one, decay, param, m, v, grad):
    return opt(param, m, v, lr, beta1, beta2, eps, decay, grad, one)


def fp32_moment(param, prefix: str):
    """A zero fp32 state tensor for `param`, cloned from it so that a sharded plan gives it the parameter's layout
    (plain new Parameters do not follow an optimizer-sharded slice)."""
    moment = param.clone(init="zeros")
    moment.name = f"{prefix}.{param.name}"
    if moment.dtype != ms.float32:
        moment.set_dtype(ms.float32)
    return moment


class HostAdamWeightDecay(nn.Optimizer):
    """AdamWeightDecay whose update runs on the host CPU with fp32 moments (`FusedCastAdamWeightDecay`)."""

    def __init__(self, params, learning_rate, beta1: float = 0.9, beta2: float = 0.95, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(learning_rate, params, weight_decay)
        self.beta1 = Tensor(beta1, ms.float32)
        self.beta2 = Tensor(beta2, ms.float32)
        self.eps = Tensor(eps, ms.float32)
        self.one = Tensor(1.0, ms.float32)  # the kernel divides the gradient by this "global norm"
        self.moments1 = ParameterTuple(fp32_moment(p, "adam_m") for p in self._parameters)
        self.moments2 = ParameterTuple(fp32_moment(p, "adam_v") for p in self._parameters)
        # the kernel takes the decay as an fp32 tensor: one per parameter (the groups' static values)
        decays = self.weight_decay if self.is_group else (self.weight_decay,) * len(self._parameters)
        self.decays = tuple(Tensor(float(decay), ms.float32) for decay in decays)
        self.host_update = FusedCastAdamWeightDecay()
        self.host_update.set_device("CPU")
        self.hyper_map = ops.HyperMap()

    def construct(self, gradients):
        gradients = self.flatten_gradients(gradients)
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        update = ops.partial(_update, self.host_update, lr, self.beta1, self.beta2, self.eps, self.one)
        return self.hyper_map(update, self.decays, self._parameters, self.moments1, self.moments2, gradients)
