"""The released PanGu-alpha checkpoint layout (MSM README "Download Checkpoint"; pangu_alpha.md §3.2), one device.

    DIR/                              (or DIR itself holds the files below)
      checkpoint_file/filerted_{r}.ckpt   one slice per rank r = 0..N-1 ("filerted" as MSM's code spells it;
                                          "filtered_{r}.ckpt" as its README spells it is accepted too)
      checkpoint_file/word_embedding.npy, position_embedding.npy, top_query_embedding.npy
      strategy_load_ckpt/strategy.ckpt    the training job's parallel strategy (protobuf written by
                                          `strategy_ckpt_save_file`); any `*strategy*.ckpt` in DIR,
                                          DIR/strategy_load_ckpt or DIR/checkpoint_file is found too

The slices are merged with MindSpore's own `build_searched_strategy` + `merge_sliced_parameter`, the names go
through `pangu_zoo.checkpoint.mindformers`, and the three embedding tables always come from the `.npy` files (as
in MSM). N is the device count of the strategy (512 for the released 2.6B and 13B sets); every rank's file must
exist, but only one rank per distinct slice is read, so memory stays near one copy of the model.

Not supported: optimizer-sharded layouts (`opt_weight_shard_size > 1`) and pipeline-stage-prefixed strategies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pangu_zoo.checkpoint import mindformers
from pangu_zoo.errors import CheckpointError

SLICE_PREFIXES = ("filerted_", "filtered_")
EMBEDDING_FILES = {
    "word_embedding.npy": mindformers.WORD,
    "position_embedding.npy": mindformers.POSITION,
    "top_query_embedding.npy": mindformers.TOP_QUERY,
}
STRATEGY_DIR = "strategy_load_ckpt"
# The released weights were trained by the PCL original code with MindSpore nn.GELU, which in MindSpore 1.x is
# the tanh approximation; MSM's fast_gelu on Ascend came later (2021-09-17). See docs/architecture.md.
RELEASED_HIDDEN_ACT = "gelu"
SLICE_DIR = "checkpoint_file"


def slice_dir(directory: Path) -> Path:
    return directory / SLICE_DIR if (directory / SLICE_DIR).is_dir() else directory


def slice_files(folder: Path) -> tuple[str, dict[int, Path]]:
    """The slice prefix used in `folder` and {rank: file}."""
    for prefix in SLICE_PREFIXES:
        found = {}
        for path in folder.glob(f"{prefix}*.ckpt"):
            rank = path.stem[len(prefix):]
            if rank.isdigit():
                found[int(rank)] = path
        if found:
            return prefix, found
    return SLICE_PREFIXES[0], {}


def is_released_layout(directory: str | os.PathLike) -> bool:
    """True when `directory` holds released-style slices (`filerted_0.ckpt`, ...) directly or in checkpoint_file/."""
    directory = Path(directory)
    return directory.is_dir() and bool(slice_files(slice_dir(directory))[1])


def find_strategy_file(directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    exact = directory / STRATEGY_DIR / "strategy.ckpt"
    if exact.is_file():
        return exact
    for folder in (directory, directory / STRATEGY_DIR, directory / SLICE_DIR):
        found = sorted(p for p in folder.glob("*strategy*.ckpt") if p.is_file()) if folder.is_dir() else []
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise CheckpointError(f"{folder} holds several strategy files ({', '.join(p.name for p in found)}); "
                                  "pass the right one as strategy_file=")
    raise CheckpointError(
        f"no strategy file found for {directory} (looked for {STRATEGY_DIR}/strategy.ckpt and *strategy*.ckpt); "
        "pass the training job's parallel strategy file as strategy_file="
    )


def rank_ranges(numbers: list[int]) -> str:
    parts, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts)


def parameter_layout(strategy: dict[str, Any], name: str) -> tuple[list[int], list[int]]:
    layout = strategy[name]
    try:
        dev_matrix = [int(d) for d in layout.dev_matrix[0].dim]
        tensor_map = [int(d) for d in layout.tensor_map[0].dim]
    except (IndexError, AttributeError) as error:
        raise CheckpointError(f"the strategy entry for {name!r} has no device matrix / tensor map") from error
    if int(getattr(layout, "opt_weight_shard_size", 0) or 0) > 1:
        raise CheckpointError(f"{name!r} is optimizer-sharded in the strategy (opt_weight_shard_size "
                              f"{layout.opt_weight_shard_size}); merging such slices is not supported")
    return dev_matrix, tensor_map


def slice_key(rank: int, dev_matrix: list[int], tensor_map: list[int]) -> tuple[int, ...]:
    """Which slice of the parameter `rank` holds (MindSpore's tensor_map counts device dims from the right)."""
    coords = []
    for size in reversed(dev_matrix):
        rank, c = divmod(rank, size)
        coords.append(c)  # coords[k] = coordinate along dev_matrix[-1 - k]
    return tuple(coords[t] if t >= 0 else 0 for t in tensor_map)


def _read_slice(path: Path) -> dict[str, Any]:
    import mindspore as ms

    try:
        return ms.load_checkpoint(str(path))
    except Exception as error:  # MindSpore raises ValueError/RuntimeError for corrupt or foreign files
        raise CheckpointError(f"cannot read slice {path}: {error}") from error


@dataclass
class SliceSet:
    """The slice files of a released layout and its strategy, checked against each other."""

    folder: Path
    files: dict[int, Path]  # rank -> slice file
    strategy_path: Path
    strategy: dict[str, Any]  # MindSpore's build_searched_strategy of it
    layouts: dict[str, tuple[list[int], list[int]]]  # name -> (device matrix, tensor map)
    plans: dict[str, list[int]]  # name -> for each rank, the first rank holding the same slice

    @property
    def needed(self) -> list[int]:
        """Rank 0 and one representative rank per distinct slice of each parameter: the only files read."""
        return sorted({0} | {r for plan in self.plans.values() for r in plan})


def open_slices(directory: str | os.PathLike, strategy_file: str | os.PathLike | None = None) -> SliceSet:
    import mindspore as ms

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"released checkpoint directory {directory} does not exist")
    folder = slice_dir(directory)
    prefix, files = slice_files(folder)
    if not files:
        raise CheckpointError(f"{folder} has no slice files ({SLICE_PREFIXES[0]}0.ckpt, ...); "
                              "is this the released checkpoint_file folder?")
    strategy_path = Path(strategy_file) if strategy_file is not None else find_strategy_file(directory)
    if not strategy_path.is_file():
        raise CheckpointError(f"strategy file {strategy_path} does not exist")
    try:
        strategy = ms.build_searched_strategy(str(strategy_path))
    except Exception as error:
        raise CheckpointError(f"cannot read strategy file {strategy_path}: {error}") from error
    if not strategy:
        raise CheckpointError(f"strategy file {strategy_path} holds no parameter layouts")

    layouts = {name: parameter_layout(strategy, name) for name in strategy}
    num_ranks = max(int(np.prod(dev)) for dev, _ in layouts.values())
    missing = sorted(set(range(num_ranks)) - set(files))
    if missing:
        raise CheckpointError(
            f"{folder} lacks slice files for rank(s) {rank_ranges(missing)} of {num_ranks} "
            f"(expected {prefix}0.ckpt ... {prefix}{num_ranks - 1}.ckpt, as the strategy {strategy_path.name} says)"
        )
    extra = sorted(set(files) - set(range(num_ranks)))
    if extra:
        raise CheckpointError(f"{folder} has slices for rank(s) {rank_ranges(extra)} but the strategy "
                              f"{strategy_path.name} describes only {num_ranks} ranks; is it the right strategy?")

    plans: dict[str, list[int]] = {}
    for name, (dev, tmap) in layouts.items():
        count = int(np.prod(dev))
        first: dict[tuple[int, ...], int] = {}
        plans[name] = [first.setdefault(slice_key(r, dev, tmap), r) for r in range(count)]
    return SliceSet(folder, files, strategy_path, strategy, layouts, plans)


def merge_slices(directory: str | os.PathLike, strategy_file: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Merge the per-rank slices of a released layout into `{mindformers/released name: full array}`."""
    import mindspore as ms

    found = open_slices(directory, strategy_file)
    files, strategy, plans, strategy_path = found.files, found.strategy, found.plans, found.strategy_path
    slices = {rank: _read_slice(files[rank]) for rank in found.needed}

    merged: dict[str, np.ndarray] = {}
    for name, param in slices[0].items():
        if mindformers.is_training_state(name):
            continue
        if name not in strategy:  # not in the strategy: saved whole on every rank
            merged[name] = _to_numpy(param)
            continue
        parts = []
        for rank in plans[name]:
            if name not in slices[rank]:
                raise CheckpointError(f"slice {files[rank].name} lacks {name!r} that rank 0 holds")
            parts.append(slices[rank][name])
        try:
            merged[name] = _to_numpy(ms.merge_sliced_parameter(parts, strategy))
        except (ValueError, TypeError, KeyError) as error:
            raise CheckpointError(
                f"cannot merge the slices of {name!r} (slice shape {tuple(parts[0].shape)}) with the layout in "
                f"{strategy_path.name}: {error}"
            ) from error
    return merged


def _to_numpy(param) -> np.ndarray:
    import mindspore as ms

    value = param.value() if hasattr(param, "value") else param
    if value.dtype == ms.bfloat16:
        value = value.astype(ms.float32)
    return value.asnumpy()


def read_embeddings(folder: Path, wanted: set[str]) -> dict[str, np.ndarray]:
    out = {}
    for file_name, ours in EMBEDDING_FILES.items():
        if ours not in wanted:
            continue
        path = folder / file_name
        if not path.is_file():
            raise CheckpointError(f"{folder} lacks {file_name}; the released layout keeps the {ours} table "
                                  "in that file (download the *_" + file_name.removesuffix(".npy") + " part)")
        try:
            out[ours] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"cannot read {path}: {error}") from error
    return out


def read_released_weights(directory: str | os.PathLike, expected: dict[str, tuple[int, ...]],
                          strategy_file: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The weights of a released layout under our names, checked against `expected` ({name: shape}, the
    model's parameters): the merged slices plus the embedding tables of the `.npy` files."""
    directory = Path(directory)
    weights = mindformers.state_from_mindformers(merge_slices(directory, strategy_file))
    weights.update(read_embeddings(slice_dir(directory), set(expected)))
    for name, value in weights.items():
        if name in expected and tuple(value.shape) != expected[name]:
            raise CheckpointError(
                f"shape mismatch for {name}: the released checkpoint in {directory} has {tuple(value.shape)}, "
                f"the model config expects {expected[name]}; the checkpoint (or its strategy file) is for "
                "another model size: pick the matching preset"
            )
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} parameter(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} parameter(s), e.g. {unexpected[:3]}")
        raise CheckpointError(f"the released checkpoint in {directory} does not match the model: "
                              + "; ".join(parts) + " (different number of layers?)")
    return weights

