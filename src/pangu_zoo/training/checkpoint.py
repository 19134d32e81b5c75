"""Training checkpoints: model + optimizer state + loss scale + step and data position, saved atomically.

Files are `{prefix}-{step:08d}.ckpt` in the checkpoint folder; only the newest `keep` are kept. Resuming
reads the newest one, checks it against the network (names and shapes) before changing anything.
"""

from __future__ import annotations

import re
from pathlib import Path

import mindspore as ms
import numpy as np

from pangu_zoo.checkpoint.io import atomic_path
from pangu_zoo.errors import CheckpointError

_NAME = re.compile(r"^(?P<prefix>.+)-(?P<step>\d{8})\.ckpt$")


def checkpoint_files(directory: Path, prefix: str) -> list[Path]:
    """Checkpoints of `prefix` in `directory`, oldest first."""
    found = []
    for path in directory.glob(f"{prefix}-*.ckpt"):
        match = _NAME.match(path.name)
        if match and match["prefix"] == prefix:
            found.append((int(match["step"]), path))
    return [path for _, path in sorted(found)]


def save_training_checkpoint(train_cell, directory: Path, prefix: str, step: int, samples_seen: int,
                             keep: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{prefix}-{step:08d}.ckpt"
    with atomic_path(path) as tmp:
        ms.save_checkpoint(train_cell, str(tmp), append_dict={"step": step, "samples_seen": samples_seen})
    for old in checkpoint_files(directory, prefix)[:-keep] if keep > 0 else []:
        old.unlink()
    return path


def load_training_checkpoint(train_cell, path: Path) -> tuple[int, int]:
    """Restore every parameter of `train_cell` from `path`; return (step, samples_seen)."""
    try:
        saved = ms.load_checkpoint(str(path))
    except Exception as error:  # MindSpore raises ValueError/RuntimeError for corrupt files
        raise CheckpointError(f"cannot read training checkpoint {path}: {error}") from error
    if "step" not in saved or "samples_seen" not in saved:
        raise CheckpointError(f"{path} is not a training checkpoint of this project (no step / samples_seen)")
    params = {param.name: param for param in train_cell.get_parameters()}
    missing = sorted(set(params) - set(saved))
    if missing:
        raise CheckpointError(f"{path} does not match this model/optimizer: it lacks {len(missing)} parameter(s), "
                              f"e.g. {missing[:3]}")
    for name, param in params.items():
        if tuple(saved[name].shape) != tuple(param.shape):
            raise CheckpointError(f"{path}: shape mismatch for {name}: checkpoint has {tuple(saved[name].shape)}, "
                                  f"model expects {tuple(param.shape)}")
    step = int(np.asarray(saved["step"].asnumpy()).reshape(-1)[0])
    samples_seen = int(np.asarray(saved["samples_seen"].asnumpy()).reshape(-1)[0])
    ms.load_param_into_net(train_cell, {name: saved[name] for name in params}, strict_load=True)
    return step, samples_seen
