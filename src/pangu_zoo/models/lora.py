"""LoRA: low-rank adapters on a model's linear layers, trained while every base weight stays frozen.

`apply_lora(model, rank, alpha, dropout, targets)` gives each targeted `Linear` of every transformer layer
(the PanGu-alpha top-query layer included) a `LoRA` cell, which adds `(alpha / rank) * dropout(x) @ A^T @ B^T`
to its output, and freezes the base parameters, so `model.trainable_params()` (what the optimizer takes) holds
only the adapters. The adapter parameters are named `<linear path>.lora.a` ([rank, in]) and `.lora.b`
([out, rank]). `merge_lora(model)` folds `(alpha / rank) * B @ A` into each base weight, in the weight's own
orientation ([out, in] for query/key/value, [in, out] for the other projections), and removes the adapters.

Like the layers, the cell only names its primitives (`down`, `up`, `scale_mul`, `add`, `dropout.dropout`);
`pangu_zoo.parallel.placement` shards them as their base Linear is sharded.
"""

from __future__ import annotations

import math
import os

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import HeUniform, initializer

from pangu_zoo.checkpoint import lora_adapter
from pangu_zoo.errors import CheckpointError, ConfigError
from pangu_zoo.lora_config import ATTENTION_TARGETS, TARGET_LINEARS, LoraConfig
from pangu_zoo.models.layers import Dropout, Linear, _cast


class LoRA(nn.Cell):
    """The update of one Linear: `y + (alpha / rank) * dropout(x) @ A^T @ B^T` for tokens x [N, in], y [N, out].

    A [rank, in] starts Kaiming-uniform with a = sqrt(5) (bound 1/sqrt(in)) and B [out, rank] at zero, as in
    `peft`, so a new adapter leaves the model unchanged. Matmuls run in the base layer's compute dtype."""

    def __init__(self, n_in: int, n_out: int, rank: int, alpha: float, dropout: float, dtype, compute_dtype) -> None:
        super().__init__()
        self.a = Parameter(initializer(HeUniform(negative_slope=math.sqrt(5)), [rank, n_in], dtype), name="a")
        self.b = Parameter(initializer("zeros", [n_out, rank], dtype), name="b")
        self.rank, self.alpha = rank, alpha
        self.compute_dtype = compute_dtype
        self.scaling = ms.Tensor(alpha / rank, compute_dtype)
        self.dropout = Dropout(dropout)
        self.down = ops.MatMul(transpose_b=True)  # x [N, in] . A^T -> [N, rank]
        self.up = ops.MatMul(transpose_b=True)  # [N, rank] . B^T -> [N, out]
        self.scale_mul = ops.Mul()
        self.add = ops.Add()

    def construct(self, x, y):
        cdt = self.compute_dtype
        low = self.down(_cast(self.dropout(x), cdt), _cast(self.a, cdt))
        return self.add(y, self.scale_mul(self.up(low, _cast(self.b, cdt)), self.scaling))


def _layer_paths(model) -> list[str]:
    """Every transformer layer of a CausalLM: the blocks, then the PanGu-alpha top-query layer."""
    paths = [f"backbone.blocks.{i}" for i in range(len(model.backbone.blocks))]
    return paths + (["backbone.top_query_layer"] if model.backbone.has_top_query else [])


def _find_linear(model, path: str, target: str) -> Linear:
    cell = model
    for part in path.split("."):
        cell = getattr(cell, part, None)
    if not isinstance(cell, Linear):
        # e.g. the FFN of a mixture-of-experts layer, whose experts are not Linear cells
        raise ConfigError(f"LoRA target {target!r} needs a linear layer at {path}, which this model does not have "
                          f"there; target the attention projections ({', '.join(ATTENTION_TARGETS)}) instead")
    return cell


def targeted_linears(model, targets) -> dict[str, tuple[str, Linear]]:
    """Linear path -> (target, Linear) for each target in every transformer layer."""
    return {f"{layer}.{TARGET_LINEARS[t]}": (t, _find_linear(model, f"{layer}.{TARGET_LINEARS[t]}", t))
            for layer in _layer_paths(model) for t in targets}


def lora_config_of(model) -> LoraConfig | None:
    """The adapters' settings of a model, or None when it has none."""
    return getattr(model, "lora_config", None)


def _require_lora(model) -> LoraConfig:
    config = lora_config_of(model)
    if config is None:
        raise ConfigError("the model has no LoRA adapters (apply_lora or load_adapter first)")
    return config


def _drop_compiled_graphs(model) -> None:
    model._graphs.clear()  # graphs compiled before the change would keep the old cells


def apply_lora(model, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets=ATTENTION_TARGETS) -> LoraConfig:
    """Add fresh adapters to `model` (B = 0: the outputs are unchanged) and freeze its base parameters."""
    config = LoraConfig(rank=rank, alpha=alpha, dropout=dropout, targets=tuple(targets))
    apply_lora_config(model, config)
    return config


def apply_lora_config(model, config: LoraConfig) -> None:
    """`apply_lora` from a `LoraConfig` (which may give targets their own ranks and alphas)."""
    if lora_config_of(model) is not None:
        raise ConfigError("the model already has LoRA adapters; merge_lora(model) before adding others")
    linears = targeted_linears(model, config.targets)  # every target found before anything changes
    for param in model.get_parameters():
        param.requires_grad = False
    for path, (target, linear) in linears.items():
        weight = linear.weight
        n_out, n_in = weight.shape if linear.weight_out_in else weight.shape[::-1]
        linear.lora = LoRA(n_in, n_out, config.rank_of(target), config.alpha_of(target), config.dropout,
                           weight.dtype, linear.compute_dtype)
        for name, param in linear.lora.parameters_and_names():
            param.name = f"{path}.lora.{name}"  # the cell was attached after the model was named
    model.lora_config = config
    _drop_compiled_graphs(model)


def _adapters(model) -> dict[str, tuple[str, Linear]]:
    return targeted_linears(model, _require_lora(model).targets)


def _array(param) -> np.ndarray:
    value = ops.cast(param, ms.float32) if param.dtype == ms.bfloat16 else param.value()
    return value.asnumpy()


def _adapter_parameters(model) -> dict:
    return {f"{path}.lora.{name}": param for path, (_, linear) in _adapters(model).items()
            for name, param in (("a", linear.lora.a), ("b", linear.lora.b))}


def lora_state_dict(model) -> dict[str, np.ndarray]:
    """The adapter parameters as `{name: array}` (`<linear path>.lora.a` / `.lora.b`)."""
    return {name: _array(param) for name, param in _adapter_parameters(model).items()}


def load_lora_state_dict(model, weights) -> None:
    """Copy adapter weights into the model's adapters, checking every name and shape first."""
    params = _adapter_parameters(model)
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"the adapter does not fit the model's LoRA layers: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    for name, param in params.items():
        if tuple(weights[name].shape) != tuple(param.shape):
            raise CheckpointError(f"shape mismatch for {name}: the adapter has {tuple(weights[name].shape)}, the "
                                  f"model expects {tuple(param.shape)}")
    for name, param in params.items():
        param.set_data(ms.Tensor(np.asarray(weights[name], np.float32)).astype(param.dtype))


def merge_lora(model) -> None:
    """Fold every adapter into its base weight (W += (alpha / rank) * B @ A, transposed for [in, out] weights),
    remove the adapters and make every parameter trainable again; the model then saves as a plain one."""
    for _, linear in _adapters(model).values():
        lora = linear.lora
        delta = (lora.alpha / lora.rank) * (_array(lora.b).astype(np.float64) @ _array(lora.a).astype(np.float64))
        weight = _array(linear.weight).astype(np.float64) + (delta if linear.weight_out_in else delta.T)
        linear.weight.set_data(ms.Tensor(weight.astype(np.float32)).astype(linear.weight.dtype))
    _remove_adapters(model)


def _remove_adapters(model) -> None:
    for _, linear in _adapters(model).values():
        linear.lora = None
    for param in model.get_parameters():
        param.requires_grad = True
    model.lora_config = None
    _drop_compiled_graphs(model)


def base_model_description(config) -> dict:
    """What an adapter records of the model it was made for (checked when it is loaded)."""
    return {"family": config.family, "num_layers": config.num_layers, "hidden_size": config.hidden_size}


def save_adapter(model, directory: str | os.PathLike) -> None:
    """Write the adapters and their settings into `directory` (see `pangu_zoo.checkpoint.lora_adapter`)."""
    lora_adapter.write_adapter(directory, _require_lora(model), base_model_description(model.config),
                               lora_state_dict(model))


def add_adapter_weights(model, config: LoraConfig, base_model: dict, weights, source: str) -> None:
    """Adapters of `config` holding `weights`, after checking that they were made for a model like this one."""
    ours = base_model_description(model.config)
    for key, value in base_model.items():
        if key in ours and ours[key] != value:
            raise CheckpointError(f"{source} was made for a model with {key} {value!r}; this model has "
                                  f"{ours[key]!r}")
    apply_lora_config(model, config)
    try:
        load_lora_state_dict(model, weights)
    except CheckpointError:
        _remove_adapters(model)  # leave the model as it was
        raise


def load_adapter(model, directory: str | os.PathLike) -> LoraConfig:
    """Add the adapters saved in `directory` to `model` (its base weights are then frozen)."""
    config, base_model, weights = lora_adapter.read_adapter(directory)
    add_adapter_weights(model, config, base_model, weights, str(directory))
    return config
