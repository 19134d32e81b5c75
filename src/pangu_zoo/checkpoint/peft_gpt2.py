"""GPT-2 LoRA adapters in the Hugging Face `peft` layout: `adapter_config.json` + `adapter_model.safetensors` with
keys `base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight` ([r, in]) and `.lora_B.weight` ([out, r]).

peft's update of a layer is `(lora_alpha / r) * B @ A` in nn.Linear orientation ([out, in]) whatever the layer
stores, `fan_in_fan_out: true` telling it that GPT-2's Conv1D weights are [in, out]; so A and B copy as they are
for `attn.c_proj`, `mlp.c_fc` and `mlp.c_proj`. GPT-2 fuses query, key and value into one `c_attn` ([in, 3h])
where this model has three layers with one adapter each:

- written, they become one `c_attn` adapter of rank r_q + r_k + r_v: A is the three A's stacked, B the three B's
  on the block diagonal (zero rows for a part without adapter), and lora_alpha is scaled with the rank so that
  lora_alpha / r stays the three parts' (equal) alpha / r. B_c @ A_c stacks B_q A_q, B_k A_k, B_v A_v: exact.
- read, a `c_attn` adapter of rank r gives each of query, key and value the shared A and its third of B's rows,
  with the same rank and alpha: exact again.

Ranks and alphas that differ between modules go through peft's `rank_pattern` / `alpha_pattern`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pangu_zoo.checkpoint.io import atomic_path, read_json_object
from pangu_zoo.checkpoint.safetensors_stream import SafetensorsFile
from pangu_zoo.errors import CheckpointError, ConfigError
from pangu_zoo.lora_config import TARGET_LINEARS, LoraConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
QKV = ("query", "key", "value")
C_ATTN = "attn.c_attn"
# our target -> GPT-2 module inside transformer.h.{i} (query, key and value share c_attn)
MODULES = {"attention_output": "attn.c_proj", "ffn_mapping": "mlp.c_fc", "ffn_projection": "mlp.c_proj"}
_KEY = re.compile(r"base_model\.model\.transformer\.h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)"
                  r"\.lora_([AB])\.weight")
# peft options whose other value changes the math this model computes
_REFUSED = {"use_dora": False, "lora_bias": False, "bias": "none", "modules_to_save": None,
            "trainable_token_indices": None, "layer_replication": None, "target_parameters": None,
            "alora_invocation_tokens": None}


def _ours(layer: int, target: str, matrix: str) -> str:
    return f"backbone.blocks.{layer}.{TARGET_LINEARS[target]}.lora.{matrix}"


def _peft_key(layer: int, module: str, matrix: str) -> str:
    return f"{KEY_PREFIX}transformer.h.{layer}.{module}.lora_{matrix}.weight"


def _common(values: list) -> Any:
    return Counter(values).most_common(1)[0][0]


# writing

def to_peft(config: LoraConfig, weights: dict[str, np.ndarray], base_model: dict[str, Any],
            base_model_name_or_path: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(adapter_config.json values, adapter tensors) of GPT-2 adapters given under our names; `base_model` is
    the description the adapter folder keeps (family, num_layers)."""
    if base_model.get("family") != "gpt2":
        raise ConfigError(f"peft adapters are written for GPT-2 models; this adapter is for a "
                          f"{base_model.get('family')} model (keep it in this project's adapter format)")
    num_layers = int(base_model["num_layers"])
    qkv = [t for t in QKV if t in config.targets]
    modules: dict[str, tuple[int, float]] = {}  # GPT-2 module -> (rank, alpha)
    if qkv:
        scalings = {config.scaling_of(t) for t in qkv}
        if len(scalings) > 1:
            raise ConfigError(f"query, key and value adapters with different alpha/rank ({sorted(scalings)}) cannot "
                              "be fused into GPT-2's one c_attn adapter")
        rank = sum(config.rank_of(t) for t in qkv)
        modules[C_ATTN] = (rank, scalings.pop() * rank)
    for target in config.targets:
        if target in MODULES:
            modules[MODULES[target]] = (config.rank_of(target), config.alpha_of(target))
    tensors: dict[str, np.ndarray] = {}
    for i in range(num_layers):
        if qkv:
            a_parts = [weights[_ours(i, t, "a")] for t in qkv]
            hidden = a_parts[0].shape[1]
            fused_b = np.zeros((3 * hidden, modules[C_ATTN][0]), np.float32)
            column = 0
            for t in qkv:
                part, b = QKV.index(t), weights[_ours(i, t, "b")]
                fused_b[part * hidden:(part + 1) * hidden, column:column + b.shape[1]] = b
                column += b.shape[1]
            tensors[_peft_key(i, C_ATTN, "A")] = np.concatenate(a_parts, axis=0).astype(np.float32)
            tensors[_peft_key(i, C_ATTN, "B")] = fused_b
        for target in config.targets:
            if target in MODULES:
                for matrix in "AB":
                    tensors[_peft_key(i, MODULES[target], matrix)] = weights[_ours(i, target, matrix.lower())]
    # the unfused modules give r and lora_alpha (c_attn, fused, usually differs and goes in the patterns)
    rank, alpha = _common([v for m, v in modules.items() if m != C_ATTN] or [modules[C_ATTN]])
    values = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": rank, "lora_alpha": alpha, "lora_dropout": config.dropout, "fan_in_fan_out": True, "bias": "none",
        "target_modules": list(modules),
        "rank_pattern": {m: r for m, (r, _) in modules.items() if r != rank},
        "alpha_pattern": {m: a for m, (_, a) in modules.items() if a != alpha},
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": None,
    }
    return values, tensors


def write_peft(directory: str | os.PathLike, config: LoraConfig, weights: dict[str, np.ndarray],
               base_model: dict[str, Any], base_model_name_or_path: str | None = None) -> None:
    """Write a peft adapter folder that `peft.PeftModel.from_pretrained` puts on a transformers GPT-2."""
    values, tensors = to_peft(config, weights, base_model, base_model_name_or_path)
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"cannot create {directory}: {error}") from error
    from safetensors.numpy import save_file

    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(tmp),
                  metadata={"format": "pt"})
    with atomic_path(directory / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")


# reading

def _pattern_value(patterns: dict[str, Any], module_name: str, default: Any) -> Any:
    """peft's lookup (`get_pattern_key`): the first pattern that matches the end of the module's name."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module_name):
            return value
    return default


def _check_options(values: dict[str, Any], source: str) -> None:
    if values.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{source} is a {values.get('peft_type')} adapter; only LoRA adapters are read")
    for option, plain in _REFUSED.items():
        if values.get(option, plain) not in (plain, [], {}):
            raise CheckpointError(f"{source} sets {option}={values[option]!r}, which this model cannot compute; "
                                  f"only plain LoRA adapters ({option}={plain!r}) are read")


def from_peft(values: dict[str, Any], tensors: dict[str, np.ndarray], source: str = "the peft adapter"
              ) -> tuple[LoraConfig, dict[str, Any], dict[str, np.ndarray]]:
    """(settings, base model description, tensors under our names) of a GPT-2 peft adapter."""
    _check_options(values, source)
    found: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        match = _KEY.fullmatch(key)
        if not match:
            raise CheckpointError(f"{source} holds {key!r}, which is not a LoRA matrix of a GPT-2 attention or MLP "
                                  "layer (only c_attn, c_proj and c_fc adapters are read)")
        found.setdefault((int(match[1]), match[2]), {})[match[3]] = np.asarray(value, np.float32)
    if not found:
        raise CheckpointError(f"{source} holds no LoRA tensors")
    num_layers = 1 + max(layer for layer, _ in found)
    lora_alpha, rank_patterns = values.get("lora_alpha", 8), values.get("rank_pattern") or {}
    alpha_patterns, rslora = values.get("alpha_pattern") or {}, bool(values.get("use_rslora", False))
    per_target: dict[str, dict[int, tuple[int, float]]] = {}  # target -> layer -> (rank, alpha)
    ours: dict[str, np.ndarray] = {}
    hidden = None
    for (layer, module), pair in sorted(found.items()):
        if set(pair) != {"A", "B"} or pair["A"].shape[0] != pair["B"].shape[1]:
            raise CheckpointError(f"{source}: layer {layer} {module} needs lora_A [r, in] and lora_B [out, r] of one "
                                  f"rank, got {({m: t.shape for m, t in pair.items()})}")
        a, b = pair["A"], pair["B"]
        rank, name = a.shape[0], f"transformer.h.{layer}.{module}"
        if _pattern_value(rank_patterns, name, values.get("r", rank)) != rank:
            raise CheckpointError(f"{source}: {name} has rank {rank} but adapter_config.json says "
                                  f"{_pattern_value(rank_patterns, name, values.get('r'))}")
        alpha = float(_pattern_value(alpha_patterns, name, lora_alpha))
        if rslora:  # peft scales by alpha / sqrt(r); this model by alpha / r
            alpha *= math.sqrt(rank)
        hidden = hidden or (b.shape[0] if module == "mlp.c_proj" else a.shape[1])
        if module == C_ATTN:
            if b.shape[0] % 3:
                raise CheckpointError(f"{source}: {name} lora_B has {b.shape[0]} rows, not query, key and value")
            width = b.shape[0] // 3
            parts = {target: b[j * width:(j + 1) * width] for j, target in enumerate(QKV)}
        else:
            parts = {next(t for t, m in MODULES.items() if m == module): b}
        for target, part in parts.items():
            ours[_ours(layer, target, "a")], ours[_ours(layer, target, "b")] = a, np.ascontiguousarray(part)
            per_target.setdefault(target, {})[layer] = (rank, alpha)
    targets = [t for t in (*QKV, *MODULES) if t in per_target]
    for target in targets:
        if len(set(per_target[target].values())) > 1 or len(per_target[target]) != num_layers:
            raise CheckpointError(f"{source}: the {target} adapters differ in rank or alpha between layers, or some "
                                  "layers have none; this model needs one rank and alpha per target in every layer")
    settings = {t: per_target[t][0] for t in targets}
    rank, alpha = _common([r for r, _ in settings.values()]), _common([a for _, a in settings.values()])
    try:
        config = LoraConfig(rank=rank, alpha=alpha, dropout=float(values.get("lora_dropout", 0.0)),
                            targets=tuple(targets),
                            target_ranks={t: r for t, (r, _) in settings.items() if r != rank},
                            target_alphas={t: a for t, (_, a) in settings.items() if a != alpha})
    except ConfigError as error:
        raise CheckpointError(f"{source}: {error}") from error
    return config, {"family": "gpt2", "num_layers": num_layers, "hidden_size": hidden}, ours


def read_peft(directory: str | os.PathLike) -> tuple[LoraConfig, dict[str, Any], dict[str, np.ndarray]]:
    """`from_peft` of a peft adapter folder (adapter_config.json + adapter_model.safetensors)."""
    directory = Path(directory)
    config_file, weights_file = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_file.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}; is it a Hugging Face peft adapter folder?")
    if not weights_file.is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS_NAME} (adapters saved as .bin are not read)")
    values = read_json_object(config_file)
    source = SafetensorsFile(weights_file)
    return from_peft(values, {name: source.read(name) for name in source.specs}, str(directory))
