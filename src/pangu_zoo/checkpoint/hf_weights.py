"""The weight files of Hugging Face model folders, any architecture: `model.safetensors`, sharded safetensors
(`model-00001-of-00003.safetensors` ... with `model.safetensors.index.json`) or `pytorch_model.bin`, read tensor by
tensor (`LazyWeights`), and written as one file or as shards of a given size.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pangu_zoo.checkpoint.io import atomic_path
from pangu_zoo.checkpoint.lazy import BFLOAT16, LazyWeights, TensorSpec
from pangu_zoo.checkpoint.safetensors_stream import SafetensorsFile, write_safetensors
from pangu_zoo.errors import CheckpointError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
TORCH_NAME = "pytorch_model.bin"
SHARD_NAME = "model-{:05d}-of-{:05d}.safetensors"


def torch_weights(path: Path) -> LazyWeights:
    """A `pytorch_model.bin` through `torch.load(weights_only=True)`, which refuses pickles that would run code."""
    try:
        import torch
    except ImportError as error:
        raise CheckpointError(f"{path} is a PyTorch pickle and reading it needs torch "
                              f"(pip install 'pangu-zoo[torch]'), or give a folder with {WEIGHTS_NAME}") from error
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"refusing to read {path}: it holds Python objects besides tensors, and unpickling "
                              f"them could run code; only plain tensor state dicts are read ({first_line})") from error
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"cannot read {path} (truncated, or not a PyTorch file?): {error}") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict (it holds a {type(state).__name__})")
    tensors = {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}

    def spec(value) -> TensorSpec:
        if value.dtype == torch.bfloat16:
            return TensorSpec(tuple(value.shape), np.float32, BFLOAT16)
        return TensorSpec(tuple(value.shape), str(value.dtype).removeprefix("torch."))

    def load(name: str) -> np.ndarray:
        value = tensors[name].detach()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()

    return LazyWeights({name: spec(value) for name, value in tensors.items()}, load)


def sharded_weights(index_file: Path) -> LazyWeights:
    """The shards a `model.safetensors.index.json` names, as one mapping."""
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
        files = {name: index_file.parent / shard for name, shard in weight_map.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{index_file} is not a safetensors index (with a weight_map): {error}") from error
    shards = {path: SafetensorsFile(path) for path in sorted(set(files.values()))}
    specs = {}
    for name, path in files.items():
        if name not in shards[path].specs:
            raise CheckpointError(f"{index_file} places {name!r} in {path.name}, which does not hold it")
        specs[name] = shards[path].specs[name]
    return LazyWeights(specs, lambda name: shards[files[name]].read(name))


def open_hf_weights(directory: Path) -> LazyWeights:
    """The weights of a Hugging Face folder: `model.safetensors`, its sharded index, or `pytorch_model.bin`."""
    if (directory / WEIGHTS_NAME).is_file():
        return SafetensorsFile(directory / WEIGHTS_NAME).lazy()
    if (directory / INDEX_NAME).is_file():
        return sharded_weights(directory / INDEX_NAME)
    if (directory / TORCH_NAME).is_file():
        return torch_weights(directory / TORCH_NAME)
    raise CheckpointError(f"{directory} has no weights file (looked for {WEIGHTS_NAME}, {INDEX_NAME}, {TORCH_NAME})")


def _stored_bytes(spec: TensorSpec) -> int:
    return spec.size * (2 if spec.stored == BFLOAT16 else np.dtype(spec.stored).itemsize)


def _shards(specs: list[tuple[str, TensorSpec]], max_shard_bytes: int | None) -> list[list[tuple[str, TensorSpec]]]:
    """Tensors in order, cut into runs of at most `max_shard_bytes` (a larger tensor gets a shard of its own)."""
    shards: list[list[tuple[str, TensorSpec]]] = [[]]
    size = 0
    for name, spec in specs:
        nbytes = _stored_bytes(spec)
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, spec))
        size += nbytes
    return shards


def _remove_stale(directory: Path, keep: set[str]) -> None:
    """Delete weight files of an earlier save (one file or shards) that this save did not write."""
    stale = [directory / WEIGHTS_NAME, directory / INDEX_NAME, *directory.glob("model-*-of-*.safetensors")]
    for path in stale:
        if path.name not in keep and path.is_file():
            try:
                path.unlink()
            except OSError as error:
                raise CheckpointError(f"cannot remove the stale weights file {path}: {error}") from error


def write_hf_weights(directory: Path, specs: list[tuple[str, TensorSpec]], load: Callable[[str], np.ndarray],
                     max_shard_bytes: int | None = None) -> list[Path]:
    """Write the tensors `specs` lists (name and how to store it; `load(name)` gives each in turn) as
    `model.safetensors`, or as shards of at most `max_shard_bytes` with their index when they need more than one.
    Each file is written atomically; weight files of an earlier save are removed. Returns the files written."""
    shards = _shards(specs, max_shard_bytes)
    names = [WEIGHTS_NAME] if len(shards) == 1 else [SHARD_NAME.format(i + 1, len(shards)) for i in range(len(shards))]
    written = []
    for name, shard in zip(names, shards, strict=True):
        with atomic_path(directory / name) as tmp:
            write_safetensors(tmp, shard, load, metadata={"format": "pt"})
        written.append(directory / name)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(_stored_bytes(spec) for _, spec in specs)},
                 "weight_map": {tensor: name for name, shard in zip(names, shards, strict=True) for tensor, _ in shard}}
        with atomic_path(directory / INDEX_NAME) as tmp:
            tmp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        written.append(directory / INDEX_NAME)
    _remove_stale(directory, {path.name for path in written})
    return written
