"""Model directories: `config.json` + weights, saved by this project or by Hugging Face (GPT-2, openPangu-Embedded).

Our directories hold `config.json` (a `ModelConfig`, recognised by its `family` key) and exactly one of
`model.safetensors` or `model.ckpt`: saving removes the other format's file, and loading refuses a directory
holding both (which one is current cannot be told). Hugging Face GPT-2 directories hold their own
`config.json` and `model.safetensors` and/or `pytorch_model.bin` (Hub folders often carry both, the same
weights); safetensors is preferred there, as transformers does. openPangu-Embedded models are read from and saved
in their Hugging Face layout (`hf_openpangu`), one file or shards.

This module reads and writes the files only: `read_pretrained` returns the config and the weights, and
`pangu_zoo.models.from_pretrained` builds the model from them, so checkpoint formats never import the models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pangu_zoo.checkpoint import hf_gpt2, hf_openpangu
from pangu_zoo.checkpoint.io import atomic_path, load_weights, read_json_object, save_weights
from pangu_zoo.checkpoint.released import is_released_layout
from pangu_zoo.config import ModelConfig
from pangu_zoo.errors import CheckpointError, ConfigError

CONFIG_NAME = "config.json"
OUR_WEIGHTS = ("model.safetensors", "model.ckpt")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def read_config(directory: Path) -> dict[str, Any]:
    """The JSON object in a model directory's config.json (`CheckpointError` naming what is wrong)."""
    if not directory.exists():
        raise CheckpointError(f"model directory {directory} does not exist")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; pass the folder holding config.json")
    config_file = directory / CONFIG_NAME
    if not config_file.is_file():
        if is_released_layout(directory):
            raise CheckpointError(
                f"{directory} holds a released PanGu-alpha checkpoint (per-rank slices, no {CONFIG_NAME}); load it "
                "with pangu_zoo.checkpoint.loader.load_released_checkpoint(directory, preset_name)"
            )
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}; is it a saved model directory?")
    return read_json_object(config_file)


def _find(directory: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory} has no weights file (looked for {', '.join(names)})")


def our_weights_file(directory: Path) -> Path:
    """The one weights file of our model directory (refused when both formats are there)."""
    present = [directory / name for name in OUR_WEIGHTS if (directory / name).is_file()]
    if len(present) > 1:
        raise CheckpointError(
            f"{directory} holds more than one weights file ({', '.join(p.name for p in present)}) and which one "
            "is current cannot be told; delete the stale one (save_pretrained keeps only the one it writes)"
        )
    return _find(directory, OUR_WEIGHTS)


def read_pretrained(path: str | os.PathLike, **overrides: Any) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """The config a directory describes and its weights under our names.

    `overrides` replace config fields (e.g. `param_dtype="float16"`, `dropout_rate=0.0`).
    """
    directory = Path(path)
    values = read_config(directory)
    if hf_openpangu.is_openpangu_config(values):
        return hf_openpangu.read(directory, values, **overrides)
    try:
        if hf_gpt2.is_hf_gpt2_config(values):
            config = hf_gpt2.config_from_hf(values)
            raw = load_weights(_find(directory, HF_WEIGHTS))
            config = config.replace(**overrides) if overrides else config
            hf_gpt2.check_precision(values, config)  # an override may lower the compute precision
            weights = hf_gpt2.state_from_hf(raw, config)
        else:
            config = ModelConfig.from_dict({**values, **overrides})
            weights = load_weights(our_weights_file(directory))
    except ConfigError as error:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {error}") from error
    return config, weights


def _remove_stale_weights(directory: Path, keep: Path) -> None:
    """Delete our other-format weights file, which loading would otherwise have to choose against."""
    for name in OUR_WEIGHTS:
        stale = directory / name
        if stale != keep and stale.is_file():
            try:
                stale.unlink()
            except OSError as error:
                raise CheckpointError(f"cannot remove the stale weights file {stale}: {error}") from error


def save_pretrained(model, directory: str | os.PathLike, weights_format: str = "safetensors") -> None:
    """Write `config.json` and `model.<format>` into `directory` (created if needed), atomically per file,
    and remove a `model.*` weights file of the other format left by an earlier save."""
    if weights_format not in ("safetensors", "ckpt"):
        raise CheckpointError(f"unknown weights format {weights_format!r}; use safetensors or ckpt")
    if model.config.family == "openpangu":  # its own Hugging Face layout, which transformers' tools read
        if weights_format != "safetensors":
            raise CheckpointError("openPangu models are saved in Hugging Face's layout, as safetensors")
        hf_openpangu.write(model.config, model.state_dict(), directory)
        return
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"cannot create {directory}: {error}") from error
    written = directory / f"model.{weights_format}"
    save_weights(model.state_dict(), written)
    _remove_stale_weights(directory, keep=written)
    with atomic_path(directory / CONFIG_NAME) as tmp:
        tmp.write_text(model.config.to_json() + "\n", encoding="utf-8")
