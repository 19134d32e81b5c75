"""Model, parallel and MoE configuration dataclasses and the named size presets.

`ModelConfig.num_layers` follows the reference's meaning: it counts every transformer layer, so a
PanGu-alpha model has `num_layers - 1` ordinary blocks plus the top-query layer, and a GPT-2 model
has `num_layers` blocks.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

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
    def num_key_value_heads(self) -> int:
        """Multi-head attention: one key/value head per query head (`OpenPanguConfig` groups them)."""
        return self.num_heads

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


@dataclass
class OpenPanguConfig:
    """Shape and numerics of one openPangu-Embedded model (a Llama-style decoder: RMSNorm, rotary positions,
    grouped-query attention with q/k/v/o biases, SwiGLU MLP, untied head unless `tie_word_embeddings`).

    The fields keep the names of its Hugging Face `config.json` (model_type "PanguEmbedded", formats.md §6.1);
    `family`, `param_dtype`, `compute_dtype` and `dropout_rate` are this project's, as in `ModelConfig`, and
    the properties give the project's names (`num_layers`, `num_heads`, ...) to the code every family shares.
    `torch_dtype` is not stored: the weights are saved in `param_dtype`.
    """

    family: str = "openpangu"
    vocab_size: int = 153376
    hidden_size: int = 1536
    intermediate_size: int = 6144
    num_hidden_layers: int = 26
    num_attention_heads: int = 12
    num_key_value_heads: int = 6
    head_dim: int | None = None  # hidden_size // num_attention_heads when not given
    rope_theta: float = 4.0e6
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    bias: bool = True  # biases on q/k/v/o (the MLP has none)
    hidden_act: str = "silu"
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int = 1
    eos_token_id: int = 45892
    pad_token_id: int = 0
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    dropout_rate: float = 0.0  # on the attention and MLP outputs (Hugging Face's model has none)

    # the project's names for the fields above, accepted by `replace`
    ALIASES: ClassVar[dict[str, str]] = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
                                         "ffn_hidden_size": "intermediate_size", "layernorm_epsilon": "rms_norm_eps"}

    def __post_init__(self) -> None:
        if self.family != "openpangu":
            raise ConfigError(f"OpenPanguConfig is the openpangu family, got family {self.family!r}")
        if self.head_dim is None:
            self.head_dim = self.hidden_size // max(self.num_attention_heads, 1)
        self.param_dtype = normalize_dtype(self.param_dtype)
        self.compute_dtype = normalize_dtype(self.compute_dtype)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} ({value!r}) must be a positive integer.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                              f"num_key_value_heads ({self.num_key_value_heads}).")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim ({self.head_dim}) must be even: rotary embeddings turn pairs of channels.")
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported by openPangu; use silu")
        if not self.rope_theta > 0 or not self.rms_norm_eps > 0:
            raise ConfigError(f"rope_theta ({self.rope_theta}) and rms_norm_eps ({self.rms_norm_eps}) must be "
                              "positive.")
        for name in ("dropout_rate", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be in [0, 1).")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name} ({value!r}) is outside the vocabulary (size {self.vocab_size}).")

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def num_blocks(self) -> int:
        return self.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.num_attention_heads

    @property
    def ffn_hidden_size(self) -> int:
        return self.intermediate_size

    @property
    def layernorm_epsilon(self) -> float:
        return self.rms_norm_eps

    @property
    def eod_token_id(self) -> int:
        return self.eos_token_id

    @property
    def torch_dtype(self) -> str:
        """Hugging Face's name for the dtype of the saved weights: the parameters' own."""
        return self.param_dtype

    @property
    def has_top_query_layer(self) -> bool:
        return False

    @property
    def moe(self) -> MoEConfig:
        return MoEConfig()  # dense: one FFN per layer

    def replace(self, **changes: Any) -> OpenPanguConfig:
        changes = {self.ALIASES.get(k, k): v for k, v in changes.items()}
        moe = changes.pop("moe", None)  # accepted when it says dense, as every family's settings may carry it
        if isinstance(moe, dict):
            moe = MoEConfig(**moe)
        if moe is not None and moe.expert_num > 1:
            raise ConfigError("openPangu-Embedded is a dense model: mixture-of-experts settings do not apply to it")
        if "head_dim" not in changes and self.head_dim == self.hidden_size // self.num_attention_heads:
            changes["head_dim"] = None  # a derived head size follows new hidden_size / num_attention_heads
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OpenPanguConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown openPangu config field(s): {', '.join(unknown)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def config_from_dict(values: dict[str, Any]) -> ModelConfig | OpenPanguConfig:
    """The config a dict of fields describes (a saved `to_dict()`), by its `family`."""
    cls = OpenPanguConfig if values.get("family") == "openpangu" else ModelConfig
    return cls.from_dict(values)


def _count_openpangu(config: OpenPanguConfig) -> int:
    h, f, d = config.hidden_size, config.intermediate_size, config.head_dim
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    attention = h * q + 2 * h * kv + q * h + (q + 2 * kv + h if config.bias else 0)
    per_layer = attention + 3 * h * f + 2 * h
    tables = config.vocab_size * h * (1 if config.tie_word_embeddings else 2)
    return tables + config.num_hidden_layers * per_layer + h


def count_parameters(config: ModelConfig | OpenPanguConfig) -> int:
    """Number of trainable parameters, computed from the shapes (tied head, no buffers)."""
    if config.family == "openpangu":
        return _count_openpangu(config)
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
    # openPangu-Embedded (formats.md §6.1): the 1B's numbers come from its MindSpeed fine-tuning script (its
    # config.json was not available: tie_word_embeddings and rms_norm_eps are the 7B's), the 7B's from its files
    "openpangu_embedded_1b": dict(family="openpangu"),
    "openpangu_embedded_7b": dict(family="openpangu", hidden_size=4096, intermediate_size=12800,
                                  num_hidden_layers=34, num_attention_heads=32, num_key_value_heads=8,
                                  rope_theta=1.6e7),
    "openpangu_embedded_tiny": dict(family="openpangu", vocab_size=1024, hidden_size=64, intermediate_size=160,
                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    max_position_embeddings=1024, eos_token_id=2),
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
    if PRESETS[key]["family"] == "openpangu":  # overrides may use the project's names (num_layers, ...)
        return OpenPanguConfig(**PRESETS[key]).replace(**overrides)
    return ModelConfig(**{**PRESETS[key], **overrides})
