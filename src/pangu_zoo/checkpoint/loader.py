"""One loader for every checkpoint layout `--load_ckpt_path` names, shared by predict.py and train.py.

* a model directory: this project's (`config.json` + weights) or a Hugging Face GPT-2 folder;
* the released PanGu-alpha layout: per-rank slices + strategy file + `.npy` tables (`released.py`);
* one mindformers-named `.ckpt` file (MSM / mindformers training output, `mindformers.py`).

The last two carry no config, so the caller's preset name or `ModelConfig` shapes the model, and their
activation is set explicitly (tanh-GELU unless `hidden_act` is passed; see `released.RELEASED_HIDDEN_ACT`).

The format modules beside this one read files into `{name: array}`; this is the one checkpoint module that
builds models, so it sits above `pangu_zoo.models`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pangu_zoo.checkpoint.io import load_weights
from pangu_zoo.checkpoint.mindformers import state_from_mindformers
from pangu_zoo.checkpoint.released import RELEASED_HIDDEN_ACT, is_released_layout, read_released_weights
from pangu_zoo.config import ModelConfig
from pangu_zoo.models import build_model, from_pretrained

log = logging.getLogger(__name__)


def checkpoint_path(path: str | os.PathLike, name: str | None = None) -> Path:
    """`path/name` when that sub-directory exists (the reference's `--load_ckpt_name`), otherwise `path`.

    The reference passes names such as "filerted" that are slice-file prefixes, not folders; those fall back
    to `path`."""
    directory = Path(path)
    if name and (directory / name).is_dir():
        return directory / name
    return directory


def load_mindformers_file(path: Path, config: ModelConfig | str, **overrides: Any):
    """A model shaped by `config` holding the weights of one mindformers-named `.ckpt` file."""
    overrides.setdefault("hidden_act", RELEASED_HIDDEN_ACT)
    model = build_model(config, **overrides)
    model.load_state_dict(state_from_mindformers(load_weights(path)))
    return model


def load_released_checkpoint(directory: str | os.PathLike, config: ModelConfig | str,
                             strategy_file: str | os.PathLike | None = None, **overrides: Any):
    """Build the model `config` describes (a ModelConfig or a preset name, plus field overrides) and load the
    released PanGu-alpha checkpoint in `directory` into it (standalone, one device).

    The activation is tanh-GELU, the released weights' own, whatever `config` says: pass `hidden_act="fast_gelu"`
    for slices trained with MSM's later Ascend code, which switched to fast_gelu."""
    overrides.setdefault("hidden_act", RELEASED_HIDDEN_ACT)
    model = build_model(config, **overrides)
    expected = {name: tuple(p.shape) for name, p in model.named_weights()}
    model.load_state_dict(read_released_weights(directory, expected, strategy_file))
    return model


def load_model(path: str | os.PathLike, config: ModelConfig | str, strategy_file: str | os.PathLike | None = None,
               **overrides: Any):
    """A model from any layout predict.py and train.py accept (see the module docstring).

    `config` (a preset name such as the reference's `--mode`, or a `ModelConfig`) shapes the layouts without a
    config of their own; `strategy_file` is the released slices' strategy (found in the folder when None);
    `overrides` replace config fields of every layout (e.g. `dropout_rate`, `param_dtype`, `hidden_act`).
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".ckpt":
        log.info("%s: a single mindformers-named checkpoint file", path)
        return load_mindformers_file(path, config, **overrides)
    if path.is_dir() and not (path / "config.json").exists() and is_released_layout(path):
        log.info("%s: released PanGu-alpha slices", path)
        return load_released_checkpoint(path, config, strategy_file=strategy_file, **overrides)
    return from_pretrained(path, **overrides)
