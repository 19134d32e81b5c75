"""Weights on disk as `{name: numpy array}`: safetensors or MindSpore `.ckpt`, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pangu_zoo.errors import CheckpointError

WEIGHT_FORMATS = ("safetensors", "ckpt")


def read_json_object(path: Path) -> dict:
    """The JSON object a config file holds (`CheckpointError` when it is not valid JSON or not an object)."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return values


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it to `final` only if the block succeeds."""
    final = Path(final)
    # keep the real suffix last: some writers (MindSpore's) append theirs otherwise
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_weights(weights: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write `weights` to `path`; the format follows the suffix (.safetensors or .ckpt)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    if fmt not in WEIGHT_FORMATS:
        raise CheckpointError(f"cannot write weights to {path}: use a .safetensors or .ckpt file name")
    with atomic_path(path) as tmp:
        if fmt == "safetensors":
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp))
        else:
            import mindspore as ms

            ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in weights.items()], str(tmp))


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a .safetensors, .ckpt or PyTorch .bin file into `{name: numpy array}`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from pangu_zoo.checkpoint.safetensors_stream import SafetensorsFile

            # tensor by tensor into arrays of their own: `safetensors.numpy.load_file` reads the whole file into a
            # buffer first and its `safe_open` maps it, either of which holds the file in memory besides the arrays
            try:
                weights = SafetensorsFile(path)
                return {name: weights.read(name) for name in weights.specs}
            except CheckpointError as error:
                raise CheckpointError(f"cannot read weights from {path}: {error}") from error
        if path.suffix == ".ckpt":
            import mindspore as ms

            return {k: _to_numpy(v) for k, v in ms.load_checkpoint(str(path)).items()}
        if path.suffix in (".bin", ".pt", ".pth"):
            return _load_torch(path)
    except CheckpointError:
        raise
    except Exception as error:  # the libraries raise many types for corrupt files
        raise CheckpointError(f"cannot read weights from {path}: {error}") from error
    raise CheckpointError(f"unknown weights format {path.suffix!r} for {path}")


def _to_numpy(tensor) -> np.ndarray:
    import mindspore as ms

    if tensor.dtype == ms.bfloat16:
        tensor = tensor.astype(ms.float32)
    return tensor.asnumpy()


def _load_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as error:
        raise CheckpointError(
            f"{path} is a PyTorch file and reading it needs torch (pip install torch); "
            "or convert it to model.safetensors"
        ) from error
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for name, value in state.items():
        if hasattr(value, "detach"):
            value = value.detach()
            if value.dtype == torch.bfloat16:
                value = value.float()
            out[name] = value.numpy()
    return out
