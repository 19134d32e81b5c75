"""Model, parallel and MoE configuration dataclasses and the named size presets.

`ModelConfig.num_layers` follows the reference's meaning: it counts every transformer layer, so a
PanGu-alpha model has `num_layers - 1` ordinary blocks plus the top-query layer, and a GPT-2 model
has `num_layers` blocks.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from pangu_zoo.errors import ConfigError

FAMILIES = ("pangu_alpha", "gpt2")
DTYPES = ("float32", "float16", "bfloat16")
ACTIVATIONS = ("gelu", "fast_gelu")
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def normalize_dtype(name: str) -> str:
    """Map 'fp32'/'fp16'/'bf16' (the reference's spelling) and full names to a full dtype name."""
    full = _DTYPE_ALIASES.get(name, name)
    if full not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; use one of fp32, fp16, bf16")
    return full


@dataclass
class MoEConfig:
    """Mixture-of-experts settings (used by the MoE model; expert_num 1 means a dense FFN)."""

    expert_num: int = 1
    num_experts_chosen: int = 1
    capacity_factor: float = 1.1
    aux_loss_factor: float = 0.05

    def __post_init__(self) -> None:
        if self.expert_num < 1:
            raise ConfigError(f"expert_num ({self.expert_num}) must be at least 1.")
        if not 1 <= self.num_experts_chosen <= self.expert_num:
            raise ConfigError(
                f"num_experts_chosen ({self.num_experts_chosen}) must be between 1 and expert_num "
                f"({self.expert_num})."
            )
        if self.capacity_factor < 1.0:
            raise ConfigError(f"capacity_factor ({self.capacity_factor}) must be >= 1.0.")
        if not 0.0 <= self.aux_loss_factor < 1.0:
            raise ConfigError(f"aux_loss_factor ({self.aux_loss_factor}) must be in [0, 1).")


@dataclass
class ParallelConfig:
    """How a model is placed on devices: data, operator-level (model), pipeline and expert parallelism."""

    data_parallel: int = 1
    model_parallel: int = 1
    pipeline_stage: int = 1
    micro_batch_num: int = 1
    optimizer_shard: bool = False
    vocab_emb_dp: bool = True
    gradient_aggregation_group: int = 4
    expert_parallel: int = 1
    recompute: bool = False

    def __post_init__(self) -> None:
        for name in ("data_parallel", "model_parallel", "pipeline_stage", "micro_batch_num",
                     "gradient_aggregation_group", "expert_parallel"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} ({value!r}) must be a positive integer.")

    @property
    def device_num(self) -> int:
        return self.data_parallel * self.model_parallel * self.pipeline_stage

    @property
    def micro_batches(self) -> int:
        """Micro-batches per step: `micro_batch_num` when pipelining; one batch otherwise (as the reference)."""
        return self.micro_batch_num if self.pipeline_stage > 1 else 1

    def global_batch(self, per_batch_size: int) -> int:
        """Rows of one step, as the reference (§6.2): per_batch_size x data_parallel per micro-batch, times the
        micro-batches of a pipeline."""
        return per_batch_size * self.data_parallel * self.micro_batches


@dataclass
class ModelConfig:
    """Shape and numerics of one PanGu-alpha or GPT-2 model."""

    family: str = "pangu_alpha"
    vocab_size: int = 40000
    hidden_size: int = 2560
    num_layers: int = 32
    num_heads: int = 32
    ffn_hidden_size: int | None = None
    max_position_embeddings: int = 1024
    layernorm_epsilon: float = 1e-5
    hidden_act: str = "gelu"
    dropout_rate: float = 0.1
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    initializer_range: float = 0.02
    eod_token_id: int = 6
    pad_token_id: int = 6
    eos_token_id: int = 9
    moe: MoEConfig = field(default_factory=MoEConfig)

    def __post_init__(self) -> None:
        if isinstance(self.moe, dict):
            self.moe = MoEConfig(**self.moe)
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown model family {self.family!r}; use one of {', '.join(FAMILIES)}")
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size
        self.param_dtype = normalize_dtype(self.param_dtype)
        self.compute_dtype = normalize_dtype(self.compute_dtype)
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported; use gelu or fast_gelu")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_hidden_size",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} ({value!r}) must be a positive integer.")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})."
            )
        if self.family == "pangu_alpha" and self.num_layers < 2:
            raise ConfigError(
                f"a PanGu-alpha model needs num_layers >= 2 (blocks plus the top-query layer), "
                f"got {self.num_layers}."
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ConfigError(f"dropout_rate ({self.dropout_rate}) must be in [0, 1).")
        for name in ("eod_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name} ({value}) is outside the vocabulary (size {self.vocab_size}).")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def has_top_query_layer(self) -> bool:
        return self.family == "pangu_alpha"

    @property
    def num_blocks(self) -> int:
        """Ordinary pre-LN blocks (PanGu-alpha keeps one layer for the top-query layer)."""
        return self.num_layers - 1 if self.has_top_query_layer else self.num_layers

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def count_parameters(config: ModelConfig) -> int:
    """Number of trainable parameters, computed from the shapes (tied head, no buffers)."""
    h, f = config.hidden_size, config.ffn_hidden_size
    attention = 4 * h * h + 4 * h
    ffn = h * f + f + f * h + h
    layer_norms = 4 * h
    per_layer = attention + ffn + layer_norms
    embeddings = config.vocab_size * h + config.max_position_embeddings * h
    if config.has_top_query_layer:
        embeddings += config.max_position_embeddings * h
    return embeddings + config.num_layers * per_layer + 2 * h


_PANGU = dict(family="pangu_alpha", vocab_size=40000, max_position_embeddings=1024,
              eod_token_id=6, pad_token_id=6, eos_token_id=9)
_GPT2 = dict(family="gpt2", vocab_size=50257, max_position_embeddings=1024,
             eod_token_id=50256, pad_token_id=50256, eos_token_id=50256)

# Sizes from the reference presets (pangu_alpha_config.py) and the GPT-2 releases. The 350M PanGu-alpha
# shape comes from third-party ports (24 layers including the top-query layer); it is unverified.
PRESETS: dict[str, dict[str, Any]] = {
    "pangu_alpha_350m": dict(_PANGU, hidden_size=1024, num_layers=24, num_heads=16),
    "pangu_alpha_1.3b": dict(_PANGU, hidden_size=1024, num_layers=16, num_heads=32),
    "pangu_alpha_2.6b": dict(_PANGU, hidden_size=2560, num_layers=32, num_heads=32),
    "pangu_alpha_13b": dict(_PANGU, hidden_size=5120, num_layers=40, num_heads=40),
    "pangu_alpha_200b": dict(_PANGU, hidden_size=16384, num_layers=64, num_heads=128),
    "pangu_alpha_tiny": dict(_PANGU, hidden_size=64, num_layers=3, num_heads=4, max_position_embeddings=1024),
    "gpt2": dict(_GPT2, hidden_size=768, num_layers=12, num_heads=12),
    "gpt2-medium": dict(_GPT2, hidden_size=1024, num_layers=24, num_heads=16),
    "gpt2-large": dict(_GPT2, hidden_size=1280, num_layers=36, num_heads=20),
    "gpt2-xl": dict(_GPT2, hidden_size=1600, num_layers=48, num_heads=25),
    "gpt2-tiny": dict(_GPT2, hidden_size=64, num_layers=2, num_heads=4),
}

# The reference's `--mode` values and a few common spellings.
ALIASES = {
    "350m": "pangu_alpha_350m", "1.3b": "pangu_alpha_1.3b", "2.6b": "pangu_alpha_2.6b",
    "13b": "pangu_alpha_13b", "200b": "pangu_alpha_200b", "gpt2-small": "gpt2", "gpt2_small": "gpt2",
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """Return the `ModelConfig` of a named preset (`'2.6B'`, `'pangu_alpha_13b'`, `'gpt2-medium'`, ...)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}")
    return ModelConfig(**{**PRESETS[key], **overrides})
