"""Megatron checkpoint directories on disk: finding every tensor-parallel shard, reading each file with
`torch.load(weights_only=True)` and writing a release checkpoint (formats.md §4.1).

Read (`path` may be the save directory, an iteration directory, a rank directory or one shard file; every
rank of that iteration is read):

* Megatron: `latest_checkpointed_iteration.txt` holding an iteration number or `release`, then
  `iter_XXXXXXX/` (or `release/`) with one `mp_rank_XX/model_optim_rng.pt` per tensor-parallel rank, the
  weights under `model`;
* Megatron-DeepSpeed: `latest` holding `global_stepN`, then `global_stepN/mp_rank_XX_model_states.pt`, the
  weights under `module`.

Pipeline-parallel ranks (`mp_rank_XX_YYY`) and virtual-pipeline entries (`model0`, ...) are refused. Only
tensors, plain containers, `argparse.Namespace` (Megatron's saved `args`) and numpy arrays (its saved RNG
state) are accepted in a file: anything else would need its code run to be rebuilt, and is refused.

Written: `release/mp_rank_XX/model_optim_rng.pt` holding `args`, `iteration` and `model` (and
`checkpoint_version` when the layout has one), then `latest_checkpointed_iteration.txt` = `release`. A release
checkpoint carries weights only: Megatron starts it at iteration 0 and looks for no optimizer or RNG state. The
tracker is written last, so a directory left half-written is not one Megatron would load.

Names inside a shard are flattened with dots below `language_model.` (`embedding.word_embeddings.weight`,
`encoder.layers.0.input_layernorm.weight`, ...). Arrays share the tensors' memory (zip-format files are
memory-mapped); bf16 tensors travel as their uint16 bit patterns, since NumPy has no bf16. torch is imported
inside the functions only: the package imports without it.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pangu_zoo.checkpoint.io import atomic_path
from pangu_zoo.errors import CheckpointError

TRACKER = "latest_checkpointed_iteration.txt"
DEEPSPEED_TRACKER = "latest"
SHARD_FILE = "model_optim_rng.pt"
RELEASE = "release"
_RANK_DIR = re.compile(r"mp_rank_(\d+)$")
_PIPELINE_RANK = re.compile(r"mp_rank_\d+_\d+$")
_DEEPSPEED_FILE = re.compile(r"mp_rank_(\d+)_model_states\.pt$")
_VIRTUAL_PIPELINE_KEY = re.compile(r"model\d+$")
# `encoder` (Megatron >= 2.6) and `transformer` (older, and the PanGu-alpha port) hold flat dotted names; the
# embedding groups nest one module level (`word_embeddings` -> {`weight`}).
_FLAT_GROUPS = ("encoder", "transformer")


@dataclass
class MegatronCheckpoint:
    """The shards of one iteration (rank order), under flattened names, and what rank 0 saved beside them."""

    shards: list[dict[str, np.ndarray]]
    args: dict[str, Any] = field(default_factory=dict)
    version: float | None = None
    files: list[Path] = field(default_factory=list)
    param_dtype: str = "float32"  # the floating dtype holding most elements (bf16 shards hold uint16 bits)


def _torch():
    try:
        import torch
    except ImportError as error:
        raise CheckpointError("Megatron checkpoints are PyTorch files and need torch: "
                              "pip install 'pangu-zoo[torch]'") from error
    return torch


def _data_only_globals() -> list:
    """Classes the loader may rebuild without running code of the file's choosing: Megatron's saved args and
    numpy arrays (its RNG state; an array's items are unpickled under the same restrictions)."""
    from numpy._core import multiarray  # numpy.core.multiarray before numpy 2

    return [argparse.Namespace, multiarray._reconstruct, np.ndarray, np.dtype,
            *(type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG")]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[-1].strip() if text else type(error).__name__


def load_torch_file(file: Path) -> Any:
    """One PyTorch file, loaded without running code from it; CheckpointError for truncated, corrupt or unsafe files."""
    torch = _torch()
    allowed = _data_only_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            # mmap only works for the zip format (torch >= 1.6); the legacy format is read into memory
            return torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(error))
        if unsafe:
            raise CheckpointError(
                f"{file} holds a Python object ({unsafe.group(1)}) that only running code could rebuild; refused "
                "(PyTorch files are read with torch.load(weights_only=True)): re-save it with tensors and plain "
                "containers only"
            ) from None
        raise CheckpointError(f"cannot read {file}: the file is truncated or corrupt ({_first_line(error)})") from None
    except Exception as error:  # torch raises RuntimeError, EOFError, ValueError, ... for damaged files
        raise CheckpointError(f"cannot read {file}: the file is truncated or corrupt ({_first_line(error)})") from None


def _read_tracker(file: Path) -> str:
    text = file.read_text(encoding="utf-8", errors="replace").strip()
    if text == RELEASE or text.startswith("global_step"):
        return text
    if text.isdigit() and int(text) > 0:
        return f"iter_{int(text):07d}"
    raise CheckpointError(f"{file} should hold an iteration number or 'release', found {text[:40]!r}")


def _iteration_dir(path: Path) -> Path:
    """The directory holding the shards of the checkpoint `path` names."""
    if path.is_file():
        return path.parent.parent if path.name == SHARD_FILE else path.parent
    if not path.is_dir():
        raise CheckpointError(f"Megatron checkpoint {path} does not exist")
    if (path / SHARD_FILE).is_file():  # one rank's folder
        return path.parent
    named = []
    if (path / TRACKER).is_file():
        iteration = _read_tracker(path / TRACKER)
        # Megatron-DeepSpeed writes the Megatron tracker too, naming its own global_stepN folders
        named += [iteration, f"global_step{int(iteration[5:])}"] if iteration.startswith("iter_") else [iteration]
    if (path / DEEPSPEED_TRACKER).is_file():
        named.append(_read_tracker(path / DEEPSPEED_TRACKER))
    for name in named:
        if (path / name).is_dir():
            return path / name
    if named:
        raise CheckpointError(f"{path}'s tracker names {named[0]!r}, but {path / named[0]} does not exist")
    return path


def _ranked(found: dict[int, Path], where: Path) -> list[Path]:
    if sorted(found) != list(range(len(found))):
        raise CheckpointError(f"{where} holds tensor-parallel ranks {sorted(found)}; expected 0..{len(found) - 1}")
    return [found[rank] for rank in range(len(found))]


def shard_files(path: str | Path) -> list[Path]:
    """Every tensor-parallel shard file of the checkpoint at `path`, in rank order."""
    where = _iteration_dir(Path(path))
    entries = sorted(where.iterdir())
    if any(_PIPELINE_RANK.match(entry.name) for entry in entries):
        raise CheckpointError(f"{where} is pipeline-parallel (mp_rank_XX_YYY folders), which is not supported: "
                              "merge the pipeline stages with Megatron's tools first")
    megatron = {int(m.group(1)): entry / SHARD_FILE for entry in entries
                if (m := _RANK_DIR.match(entry.name)) and (entry / SHARD_FILE).is_file()}
    deepspeed = {int(m.group(1)): entry for entry in entries if (m := _DEEPSPEED_FILE.match(entry.name))}
    if megatron and deepspeed:
        raise CheckpointError(f"{where} holds both Megatron (mp_rank_XX/{SHARD_FILE}) and DeepSpeed "
                              "(mp_rank_XX_model_states.pt) shards; point at one checkpoint")
    if not megatron and not deepspeed:
        raise CheckpointError(
            f"{path} holds no Megatron checkpoint: expected {TRACKER}, iter_XXXXXXX/mp_rank_XX/{SHARD_FILE} or "
            "global_stepN/mp_rank_XX_model_states.pt"
        )
    return _ranked(megatron or deepspeed, where)


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """Tensors of a nested state under dotted names (anything else, e.g. None, is left out)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        elif hasattr(value, "detach"):
            out[name] = value.detach()
    return out


def _to_numpy(tensor) -> np.ndarray:
    """The tensor's memory as an array (no copy); bf16 as its uint16 bit patterns, since NumPy has no bf16."""
    torch = _torch()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def _main_dtype(tensors: Iterable) -> str:
    """The floating dtype holding most elements, as a config dtype name (float64 counts as float32)."""
    counts: dict[str, int] = {}
    for tensor in tensors:
        if tensor.is_floating_point():
            name = str(tensor.dtype).removeprefix("torch.")
            name = name if name in ("float16", "bfloat16") else "float32"
            counts[name] = counts.get(name, 0) + tensor.numel()
    return max(counts, key=counts.get) if counts else "float32"


def _model_state(saved: Any, file: Path) -> dict[str, Any]:
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{file} holds a {type(saved).__name__}, not a Megatron checkpoint dict")
    if any(isinstance(key, str) and _VIRTUAL_PIPELINE_KEY.match(key) for key in saved):
        raise CheckpointError(f"{file} holds virtual-pipeline model chunks (model0, model1, ...), which are not "
                              "supported")
    model = saved.get("model", saved.get("module"))
    if not isinstance(model, Mapping):
        raise CheckpointError(f"{file} holds no model weights (no 'model' entry, nor DeepSpeed's 'module')")
    return {name.removeprefix("language_model."): value for name, value in _flatten(model).items()}


def _args_dict(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, Mapping):
        return dict(args)
    return dict(vars(args))


def read_checkpoint(path: str | Path) -> MegatronCheckpoint:
    """Every shard of the checkpoint at `path`, with rank 0's args and checkpoint version."""
    files = shard_files(path)
    checkpoint = MegatronCheckpoint(shards=[], files=files)
    for rank, file in enumerate(files):
        saved = load_torch_file(file)
        tensors = _model_state(saved, file)
        if rank == 0:
            checkpoint.args = _args_dict(saved.get("args"))
            checkpoint.version = saved.get("checkpoint_version")
            checkpoint.param_dtype = _main_dtype(tensors.values())
        checkpoint.shards.append({name: _to_numpy(tensor) for name, tensor in tensors.items()})
    saved_tp = checkpoint.args.get("tensor_model_parallel_size", checkpoint.args.get("model_parallel_size"))
    if isinstance(saved_tp, int) and saved_tp != len(files):
        raise CheckpointError(f"the checkpoint was saved with tensor parallelism {saved_tp} but {len(files)} shard "
                              f"file(s) were found beside {files[0]}")
    return checkpoint


def _to_torch(array: np.ndarray):
    """A tensor sharing `array`'s memory when it is contiguous; uint16 arrays are bf16 bit patterns."""
    torch = _torch()
    array = np.ascontiguousarray(array)
    if array.dtype == np.uint16 or array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _nest(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Megatron's nesting of a flattened shard: `{'language_model': {'embedding': {'word_embeddings': {...}}}}`."""
    language_model: dict[str, Any] = {}
    for name, value in flat.items():
        group, rest = name.split(".", 1)
        if group in _FLAT_GROUPS:
            language_model.setdefault(group, {})[rest] = _to_torch(value)
        else:
            module, parameter = rest.rsplit(".", 1)
            language_model.setdefault(group, {}).setdefault(module, {})[parameter] = _to_torch(value)
    return {"language_model": language_model}


def write_checkpoint(directory: str | Path, shards: Iterable[Mapping[str, np.ndarray]], args: Mapping[str, Any],
                     version: float | None) -> None:
    """A release checkpoint in `directory`: one `release/mp_rank_XX/model_optim_rng.pt` per shard, then the tracker.
    uint16 arrays are stored as the bf16 tensors whose bits they hold."""
    torch = _torch()
    directory = Path(directory)
    for rank, shard in enumerate(shards):
        file = directory / RELEASE / f"mp_rank_{rank:02d}" / SHARD_FILE
        file.parent.mkdir(parents=True, exist_ok=True)
        saved: dict[str, Any] = {"args": argparse.Namespace(**args), "iteration": 0, "model": _nest(shard)}
        if version is not None:
            saved["checkpoint_version"] = version
        with atomic_path(file) as tmp:
            torch.save(saved, tmp)
    with atomic_path(directory / TRACKER) as tmp:
        tmp.write_text(RELEASE, encoding="utf-8")
