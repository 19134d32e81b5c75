"""Linear warm-up then cosine decay, as the reference `LearningRate` (cosine counts from step 0)."""

from __future__ import annotations

import math

import mindspore as ms
from mindspore import nn, ops

from pangu_zoo.errors import ConfigError


def check_schedule(start_lr: float, end_lr: float, warmup_steps: int, decay_steps: int) -> None:
    """Raise `ConfigError` (naming the train.py option) for a schedule that divides by zero or is not a rate."""
    if decay_steps < 1:
        raise ConfigError(f"--decay_steps ({decay_steps}) must be at least 1: the cosine decay divides by it")
    if warmup_steps < 0:
        raise ConfigError(f"--warmup_step ({warmup_steps}) must be 0 (no warm-up) or more")
    for option, value in (("--start_lr", start_lr), ("--end_lr", end_lr)):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{option} ({value}) must be a finite learning rate of 0 or more")


def learning_rate_at(step: int, start_lr: float, end_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """lr = start * step / warmup while step < warmup, else end + (start - end)(1 + cos(pi min(step, D) / D)) / 2."""
    if warmup_steps > 0 and step < warmup_steps:
        return start_lr * step / warmup_steps
    progress = min(step, decay_steps) / decay_steps
    return end_lr + 0.5 * (start_lr - end_lr) * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(nn.learning_rate_schedule.LearningRateSchedule):
    """The same schedule as a graph cell: global_step (int32 scalar tensor) -> lr (fp32)."""

    def __init__(self, start_lr: float, end_lr: float, warmup_steps: int, decay_steps: int) -> None:
        super().__init__()
        check_schedule(start_lr, end_lr, warmup_steps, decay_steps)
        self.start_lr, self.end_lr = start_lr, end_lr
        self.warmup_steps = float(max(warmup_steps, 0))
        self.decay_steps = float(decay_steps)

    def construct(self, global_step):
        step = ops.cast(global_step, ms.float32)
        progress = ops.minimum(step, self.decay_steps) / self.decay_steps
        cosine = self.end_lr + 0.5 * (self.start_lr - self.end_lr) * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps > 0:
            warm = self.start_lr * step / self.warmup_steps
            return ops.select(step < self.warmup_steps, warm, cosine)
        return cosine
