"""The `zoo` format: this project's model directory, `config.json` (a `ModelConfig`) + `model.safetensors` or
`model.ckpt` (`pangu_zoo.checkpoint.pretrained`), read lazily and written as `model.safetensors`.

A bf16 model's weights are written as fp32 holding bf16 values, as `save_pretrained` does, so that the directory
loads wherever NumPy does.
"""

from __future__ import annotations

import os
from pathlib import Path

from pangu_zoo.checkpoint import hf_gpt2
from pangu_zoo.checkpoint.ckpt_stream import CkptFile
from pangu_zoo.checkpoint.formats import Format, Weights, refuse_tp, register
from pangu_zoo.checkpoint.lazy import LazyWeights, spec_of, stored_as
from pangu_zoo.checkpoint.pretrained import CONFIG_NAME, our_weights_file, read_config
from pangu_zoo.checkpoint.safetensors_stream import SafetensorsFile, write_safetensors
from pangu_zoo.checkpoint.tokenizer_files import copy_tokenizer
from pangu_zoo.config import ModelConfig
from pangu_zoo.errors import CheckpointError, ConfigError

WEIGHTS_NAME = "model.safetensors"


def open_weights(path: Path) -> LazyWeights:
    """A .safetensors or .ckpt file as lazy weights."""
    return (SafetensorsFile(path) if path.suffix == ".safetensors" else CkptFile(path)).lazy()


def read(path: str | os.PathLike, *, config_hint: ModelConfig | None = None) -> tuple[ModelConfig, LazyWeights]:
    directory = Path(path)
    values = read_config(directory)
    if hf_gpt2.is_hf_gpt2_config(values):
        raise CheckpointError(f"{directory} is a Hugging Face GPT-2 folder: read it as hf-gpt2")
    try:
        config = ModelConfig.from_dict(values)
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {error}") from error
    return config, open_weights(our_weights_file(directory))


def write(config: ModelConfig, weights: Weights, path: str | os.PathLike, *, tp: int = 1,
          tokenizer_path: str | os.PathLike | None = None) -> None:
    refuse_tp(tp, "zoo")
    directory = Path(path)
    directory.mkdir()
    specs = [(name, stored_as(spec_of(weights, name), "float32")) for name in weights]
    write_safetensors(directory / WEIGHTS_NAME, specs, weights.__getitem__, metadata={"format": "np"})
    (directory / CONFIG_NAME).write_text(config.to_json() + "\n", encoding="utf-8")
    if tokenizer_path is not None:
        copy_tokenizer(tokenizer_path, directory)


FORMAT = register(Format("zoo", "this project's model directory (config.json + model.safetensors)", read, write))
