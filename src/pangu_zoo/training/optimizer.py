"""Optimizers as the reference builds them: AdamWeightDecay(0.9, 0.95, 1e-8) or Lamb, weight decay 0.1
on every parameter except LayerNorm parameters and biases."""

from __future__ import annotations

from mindspore import nn

from pangu_zoo.errors import ConfigError


def decays(name: str) -> bool:
    lowered = name.lower()
    return "layernorm" not in lowered and "bias" not in lowered


def parameter_groups(params, weight_decay: float = 0.1) -> list[dict]:
    params = list(params)
    decay = [p for p in params if decays(p.name)]
    no_decay = [p for p in params if not decays(p.name)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # MindSpore refuses an empty group, which LoRA training (adapter matrices only, all decayed) would leave
    return [group for group in groups if group["params"]] + [{"order_params": params}]


def build_optimizer(params, name: str, learning_rate, weight_decay: float = 0.1, offload: bool = False):
    """`offload`: AdamWeightDecay with fp32 state and update on the host (pangu_zoo.training.offload)."""
    groups = parameter_groups(params, weight_decay)
    if offload:
        if name != "adam":
            raise ConfigError(f"--opt_offload 1 offloads AdamWeightDecay; it cannot offload {name!r}")
        from pangu_zoo.training.offload import HostAdamWeightDecay

        return HostAdamWeightDecay(groups, learning_rate, beta1=0.9, beta2=0.95, eps=1e-8)
    if name == "adam":
        return nn.AdamWeightDecay(groups, learning_rate=learning_rate, beta1=0.9, beta2=0.95, eps=1e-8)
    if name == "lamb":
        return nn.Lamb(groups, learning_rate=learning_rate)
    raise ConfigError(f"unknown optimizer {name!r}; use adam or lamb")
