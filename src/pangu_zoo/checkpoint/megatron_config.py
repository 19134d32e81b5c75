"""The `ModelConfig` a Megatron checkpoint describes, and the `args` written into one (formats.md §4.1, §5.1).

Megatron saves its command-line arguments with the weights, and its loader checks the model-shape ones
(`num_layers`, `hidden_size`, `num_attention_heads`, `max_position_embeddings`, `padded_vocab_size`,
`make_vocab_size_divisible_by`, `tokenizer_type`, the parallel sizes) against the flags it is launched with;
the GPU port (Megatron 1.1) calls tensor parallelism `model_parallel_size`, so both names are written.

Reading, the shape comes from the saved args and the tensors; a config given by the user (--mode / --config)
supplies what Megatron does not store (the unpadded vocabulary, token ids, dropout) and must agree with both;
the dtype is the tensors' own.
Without args (the port's own converter saves none) the config must be given: the head count is in no tensor.
Saved args that change the math this model computes are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pangu_zoo.checkpoint.tensor_parallel import padded_vocab_size
from pangu_zoo.config import ModelConfig
from pangu_zoo.errors import CheckpointError, ConfigError

# Megatron argument -> the value this model computes; a checkpoint saved with another value is refused.
# These are also written, so a reader of the args sees what the weights expect.
MATH_ARGS = {
    "apply_residual_connection_post_layernorm": False,
    "untie_embeddings_and_output_weights": False,
    "add_bias_linear": True,
    "swiglu": False,
    "group_query_attention": False,
    "normalization": "LayerNorm",
    "position_embedding_type": "learned_absolute",
    "use_rotary_position_embeddings": False,
    "apply_layernorm_1p": False,
}


@dataclass(frozen=True)
class Family:
    """What differs between the Megatron layouts of the two model families."""

    name: str  # the zoo family
    fmt: str  # the format's name, for messages
    top_query_layer: bool  # Megatron's num_layers counts the blocks only; ours also the top-query layer
    vocab_divisible_by: int  # Megatron's --make-vocab-size-divisible-by as the layout's tools use it
    default_vocab: int  # the released tokenizer's vocabulary, assumed when the padding fits it
    tokenizer_type: str


@dataclass(frozen=True)
class Shapes:
    """What the tensors of a merged checkpoint say about the model."""

    hidden_size: int
    padded_vocab: int
    max_position_embeddings: int
    megatron_layers: int
    ffn_hidden_size: int
    param_dtype: str


def megatron_args(config: ModelConfig, family: Family, tp: int, padded_vocab: int) -> dict[str, Any]:
    layers = config.num_layers - 1 if family.top_query_layer else config.num_layers
    return {
        "num_layers": layers,
        "hidden_size": config.hidden_size,
        "ffn_hidden_size": config.ffn_hidden_size,
        "num_attention_heads": config.num_heads,
        "kv_channels": config.head_dim,
        "max_position_embeddings": config.max_position_embeddings,
        "seq_length": config.max_position_embeddings,
        "vocab_size": config.vocab_size,
        "padded_vocab_size": padded_vocab,
        "make_vocab_size_divisible_by": family.vocab_divisible_by,
        "tokenizer_type": family.tokenizer_type,
        "tensor_model_parallel_size": tp,
        "model_parallel_size": tp,
        "pipeline_model_parallel_size": 1,
        "layernorm_epsilon": config.layernorm_epsilon,
        "hidden_dropout": config.dropout_rate,
        "attention_dropout": config.dropout_rate,
        "bias_gelu_fusion": True,  # Megatron's fused bias-GELU is the tanh approximation this model uses
        "openai_gelu": False,
        "consumed_train_samples": 0,
        "consumed_valid_samples": 0,
        **MATH_ARGS,
    }


def check_writable(config: ModelConfig, family: Family, tp: int) -> None:
    """ConfigError unless `config` is of the layout's family and `tp` ranks can share its heads and FFN equally."""
    if config.family != family.name:
        other = "megatron-pangu" if family.name == "gpt2" else "megatron-gpt2"
        raise ConfigError(f"{family.fmt} holds {family.name} models, not {config.family}; use {other}")
    if not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"--tp must be a positive integer, got {tp!r}")
    for field in ("num_heads", "ffn_hidden_size"):
        if getattr(config, field) % tp:
            raise ConfigError(f"--tp {tp} does not divide {field} ({getattr(config, field)}): each tensor-parallel "
                              "rank must hold an equal share")


def _check_math_args(args: Mapping[str, Any], fmt: str) -> None:
    for name, computed in MATH_ARGS.items():
        value = args.get(name)
        if value is not None and value != computed:
            raise CheckpointError(f"the {fmt} checkpoint was saved with {name}={value!r}; this model computes "
                                  f"{name}={computed!r} only")


def _vocab_size(hint: ModelConfig | None, args: Mapping[str, Any], family: Family, shapes: Shapes, tp: int) -> int:
    if hint is not None:
        return hint.vocab_size
    if isinstance(args.get("vocab_size"), int):
        return args["vocab_size"]
    divisible_by = args.get("make_vocab_size_divisible_by", family.vocab_divisible_by)
    if padded_vocab_size(family.default_vocab, divisible_by, tp) == shapes.padded_vocab:
        return family.default_vocab
    raise ConfigError(f"the {family.fmt} checkpoint's word table has {shapes.padded_vocab} (padded) rows and the "
                      "vocabulary size is not stored: pass --mode PRESET or --config FILE")


def _compare(found: Mapping[str, Any], config: ModelConfig, fmt: str) -> None:
    for field, value in found.items():
        if value is not None and getattr(config, field) != value:
            raise CheckpointError(f"the {fmt} checkpoint has {field} {value}, but the given config says "
                                  f"{getattr(config, field)}")


def config_from_checkpoint(family: Family, hint: ModelConfig | None, args: Mapping[str, Any], shapes: Shapes,
                           tp: int) -> ModelConfig:
    """The config of a merged checkpoint: the hint checked against args and tensors, or one built from them."""
    _check_math_args(args, family.fmt)
    layers = shapes.megatron_layers + (1 if family.top_query_layer else 0)
    found = {"hidden_size": shapes.hidden_size, "num_layers": layers,
             "num_heads": args.get("num_attention_heads"), "ffn_hidden_size": shapes.ffn_hidden_size,
             "max_position_embeddings": shapes.max_position_embeddings}
    if args.get("num_layers") is not None and args["num_layers"] != shapes.megatron_layers:
        raise CheckpointError(f"the {family.fmt} checkpoint's args say num_layers {args['num_layers']}, but it "
                              f"holds {shapes.megatron_layers} layers")
    vocab = _vocab_size(hint, args, family, shapes, tp)
    if vocab > shapes.padded_vocab:
        raise CheckpointError(f"the {family.fmt} checkpoint's word table has {shapes.padded_vocab} rows, fewer "
                              f"than the vocabulary ({vocab})")
    if hint is not None:
        if hint.family != family.name:
            raise ConfigError(f"{family.fmt} holds a {family.name} model, but the given config is {hint.family}")
        _compare(found, hint, family.fmt)
        return hint.replace(param_dtype=shapes.param_dtype)  # the dtype the tensors are in, whatever a preset says
    if found["num_heads"] is None:
        raise ConfigError(f"the {family.fmt} checkpoint saved no args, so its head count is unknown: pass "
                          "--mode PRESET or --config FILE")
    ids = ({"eod_token_id": vocab - 1, "pad_token_id": vocab - 1, "eos_token_id": vocab - 1}
           if family.name == "gpt2" else {})
    return ModelConfig(family=family.name, vocab_size=vocab, **found,
                       layernorm_epsilon=args.get("layernorm_epsilon", 1e-5),
                       dropout_rate=args.get("hidden_dropout", 0.1), param_dtype=shapes.param_dtype, **ids)
