"""The checkpoint formats `pangu convert` reads and writes, by name.

Every format goes through one common representation, this project's: a `ModelConfig` and `{our parameter name:
numpy array}` under the released PanGu-alpha names. A format is a reader (files -> config + weights) and/or a
writer (config + weights -> files); `pangu_zoo.checkpoint.convert` chains one format's reader to another's writer.

* `read(path, *, config_hint)` returns `(config, weights)`. `weights` may be a lazy mapping that loads one tensor
  when it is asked for, so that a conversion never holds the model twice. Layouts without a config of their own
  (released, mindformers, Megatron) take their shape from `config_hint` and raise `ConfigError` without one.
* `write(config, weights, path, *, tp=1, tokenizer_path=None)` writes to `path` exactly (a file or a directory,
  as the format is), which the caller has chosen as a temporary name; it reads `weights` one name at a time.

Each format module calls `register(Format(...))` when imported, and `convert.py` imports every format module, so
the registry is full wherever conversions run. Writers that cannot split a model over tensor-parallel ranks call
`refuse_tp`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pangu_zoo.config import ModelConfig
from pangu_zoo.errors import ConfigError

Weights = Mapping[str, np.ndarray]


class Reader(Protocol):
    def __call__(self, path: str | os.PathLike, *, config_hint: ModelConfig | None) -> tuple[ModelConfig, Weights]:
        ...


class Writer(Protocol):
    def __call__(self, config: ModelConfig, weights: Weights, path: str | os.PathLike, *, tp: int = 1,
                 tokenizer_path: str | os.PathLike | None = None) -> None:
        ...


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    read: Reader | None = None
    write: Writer | None = None


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    if fmt.name in FORMATS and FORMATS[fmt.name] != fmt:
        raise ValueError(f"checkpoint format {fmt.name!r} is registered twice")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str, *, reading: bool) -> Format:
    """The format called `name` that can read (or write); ConfigError naming the ones that can otherwise."""
    able = sorted(n for n, f in FORMATS.items() if (f.read if reading else f.write) is not None)
    fmt = FORMATS.get(name)
    if fmt is None or (fmt.read if reading else fmt.write) is None:
        role = "source" if reading else "destination"
        known = "" if fmt is None else f" ({name} can only be {'written' if reading else 'read'})"
        raise ConfigError(f"unknown {role} format {name!r}{known}; use one of {', '.join(able)}")
    return fmt


def require_config(config_hint: ModelConfig | None, fmt: str) -> ModelConfig:
    """The hint a layout without a config of its own needs, or ConfigError saying how to give one."""
    if config_hint is None:
        raise ConfigError(f"a {fmt} checkpoint carries no model config: pass --mode PRESET or --config FILE")
    return config_hint


def refuse_tp(tp: int, fmt: str) -> None:
    if tp != 1:
        raise ConfigError(f"the {fmt} format holds one unsplit model; --tp {tp} is for the Megatron formats")
