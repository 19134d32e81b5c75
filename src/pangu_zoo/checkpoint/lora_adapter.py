"""A LoRA adapter folder of this project: `lora_config.json` (rank, alpha, dropout, targets and the base model it
was made for) and `lora_adapter.safetensors` (the adapter tensors under the model's parameter names,
`<linear path>.lora.a` [rank, in] and `.lora.b` [out, rank]). Both files are written atomically.

A Hugging Face `peft` adapter folder (`adapter_config.json`) is another layout: `pangu_zoo.checkpoint.peft_gpt2`
converts GPT-2 ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pangu_zoo.checkpoint.io import atomic_path, load_weights, save_weights
from pangu_zoo.errors import CheckpointError, ConfigError
from pangu_zoo.lora_config import LoraConfig

CONFIG_NAME = "lora_config.json"
WEIGHTS_NAME = "lora_adapter.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
FORMAT = "pangu_zoo-lora"


def is_adapter_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def is_peft_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / PEFT_CONFIG_NAME).is_file() and not is_adapter_folder(path)


def write_adapter(directory: str | os.PathLike, config: LoraConfig, base_model: dict[str, Any],
                  weights: dict[str, np.ndarray]) -> None:
    """Write the adapter tensors and `{"format", "lora": config, "base_model": base_model}` into `directory`."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"cannot create {directory}: {error}") from error
    save_weights(weights, directory / WEIGHTS_NAME)
    description = {"format": FORMAT, "lora": config.to_dict(), "base_model": base_model}
    with atomic_path(directory / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")


def read_adapter(directory: str | os.PathLike) -> tuple[LoraConfig, dict[str, Any], dict[str, np.ndarray]]:
    """(settings, base model description, tensors) of an adapter folder written by `write_adapter`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"LoRA adapter folder {directory} does not exist")
    if is_peft_folder(directory):
        raise CheckpointError(f"{directory} holds a Hugging Face peft adapter ({PEFT_CONFIG_NAME}); convert it with "
                              "`pangu lora import-peft` first")
    config_file = directory / CONFIG_NAME
    if not config_file.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}; is it a LoRA adapter folder?")
    try:
        description = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(description, dict) or description.get("format") != FORMAT:
            raise CheckpointError(f"{config_file} is not a {FORMAT} description")
        config = LoraConfig.from_dict(description["lora"])
        base_model = dict(description.get("base_model") or {})
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ConfigError) as error:
        raise CheckpointError(f"{config_file} is not a valid LoRA adapter description: {error}") from error
    return config, base_model, load_weights(directory / WEIGHTS_NAME)
