"""LoRA adapter settings: which linear layers get a low-rank update, of what rank and scale.

A LoRA adapter adds `(alpha / rank) * dropout(x) @ A^T @ B^T` to a linear layer's output, with A [rank, in] and
B [out, rank] (Hu et al., 2021; Hugging Face `peft` uses the same formula and names). The targets name the
linear layers of every transformer layer: the attention's query, key, value and output projections and the
FFN's two matrices. `target_ranks` / `target_alphas` give some targets their own rank or alpha (an imported
`peft` adapter whose fused GPT-2 `c_attn` has another rank than `c_proj`); every other target uses `rank` and
`alpha`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from pangu_zoo.errors import ConfigError

# target name -> the linear layer inside a transformer Block (models/layers.py names)
TARGET_LINEARS = {
    "query": "attention.dense1",
    "key": "attention.dense2",
    "value": "attention.dense3",
    "attention_output": "attention.projection",
    "ffn_mapping": "output.mapping",
    "ffn_projection": "output.projection",
}
ATTENTION_TARGETS = ("query", "key", "value", "attention_output")


def parse_targets(text: str) -> tuple[str, ...]:
    """'query,value' -> ('query', 'value'); 'attention' and 'ffn' stand for their projections, 'all' for both."""
    groups = {"attention": ATTENTION_TARGETS, "ffn": ("ffn_mapping", "ffn_projection"), "all": tuple(TARGET_LINEARS)}
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        for name in groups.get(part, (part,)):
            if name and name not in names:
                names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class LoraConfig:
    """Rank, alpha, dropout and targets of the adapters of one model (validated on creation)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ATTENTION_TARGETS
    target_ranks: dict[str, int] = field(default_factory=dict)
    target_alphas: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if not self.targets:
            raise ConfigError("LoRA needs at least one target; choose from " + ", ".join(TARGET_LINEARS))
        unknown = [t for t in (*self.targets, *self.target_ranks, *self.target_alphas) if t not in TARGET_LINEARS]
        if unknown:
            raise ConfigError(f"unknown LoRA target(s) {', '.join(map(repr, unknown))}; choose from "
                              f"{', '.join(TARGET_LINEARS)} (or attention, ffn, all)")
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"LoRA targets {self.targets} name a layer twice")
        for target in self.targets:
            rank, alpha = self.rank_of(target), self.alpha_of(target)
            if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
                raise ConfigError(f"LoRA rank ({rank}) of {target} must be a positive integer")
            if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
                raise ConfigError(f"LoRA alpha ({alpha}) of {target} must be a positive number")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout ({self.dropout}) must be in [0, 1)")

    def rank_of(self, target: str) -> int:
        return self.target_ranks.get(target, self.rank)

    def alpha_of(self, target: str) -> float:
        return self.target_alphas.get(target, self.alpha)

    def scaling_of(self, target: str) -> float:
        """alpha / rank: the factor of B·A in the layer's update."""
        return self.alpha_of(target) / self.rank_of(target)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["targets"] = list(self.targets)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoraConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown LoRA config field(s): {', '.join(unknown)}")
        return cls(**values)
