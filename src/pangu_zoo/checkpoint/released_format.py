"""The `released` format (read only): the released PanGu-alpha layout, per-rank slices + strategy file + three
`.npy` tables (`pangu_zoo.checkpoint.released`), merged one parameter at a time.

Only the slice files' indexes are read up front; each parameter's distinct slices are then read from their
files, merged with MindSpore's `merge_sliced_parameter` and handed on before the next one, so converting holds
one parameter's slices rather than every slice file. The layout carries no config: `--mode`/`--config` give it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from pangu_zoo.checkpoint import mindformers
from pangu_zoo.checkpoint.ckpt_stream import CkptFile
from pangu_zoo.checkpoint.formats import Format, register, require_config
from pangu_zoo.checkpoint.lazy import LazyWeights, TensorSpec, param_dtype_of
from pangu_zoo.checkpoint.parameter_shapes import parameter_shapes
from pangu_zoo.checkpoint.released import EMBEDDING_FILES, SliceSet, open_slices, read_embeddings
from pangu_zoo.config import ModelConfig
from pangu_zoo.errors import CheckpointError


def merged_shape(slice_shape: tuple[int, ...], dev_matrix: list[int], tensor_map: list[int]) -> tuple[int, ...]:
    """The whole parameter's shape: each dimension the tensor map splits is that many slices long."""
    return tuple(d * (dev_matrix[-1 - t] if t >= 0 else 1) for d, t in zip(slice_shape, tensor_map, strict=True))


def _merge(found: SliceSet, indexes: dict[int, CkptFile], name: str) -> np.ndarray:
    import mindspore as ms

    distinct = {}
    for rank in sorted(set(found.plans[name])):
        if name not in indexes[rank].specs:
            raise CheckpointError(f"slice {found.files[rank].name} lacks {name!r} that rank 0 holds")
        distinct[rank] = ms.Parameter(ms.Tensor(indexes[rank].read(name)), name=name)
    parts = [distinct[rank] for rank in found.plans[name]]
    try:
        merged = ms.merge_sliced_parameter(parts, found.strategy)
    except (ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"cannot merge the slices of {name!r} (slice shape {tuple(parts[0].shape)}) with "
                              f"the layout in {found.strategy_path.name}: {error}") from error
    return merged.asnumpy()


def _table(folder: Path, file_name: str, ours: str) -> tuple[TensorSpec, Callable[[], np.ndarray]]:
    path = folder / file_name
    if not path.is_file():
        read_embeddings(folder, {ours})  # raises the error that names the missing download
    try:
        header = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header only
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    spec = TensorSpec(header.shape, header.dtype)
    del header
    return spec, lambda: read_embeddings(folder, {ours})[ours]


def read(path: str | os.PathLike, *, config_hint: ModelConfig | None = None) -> tuple[ModelConfig, LazyWeights]:
    config = require_config(config_hint, "released")
    found = open_slices(path)
    indexes = {rank: CkptFile(found.files[rank]) for rank in found.needed}
    specs: dict[str, TensorSpec] = {}
    loads: dict[str, Callable[[], np.ndarray]] = {}
    for name, spec in indexes[0].specs.items():
        ours = mindformers.map_name(name)
        if ours is None:
            continue
        if ours in specs:
            raise CheckpointError(f"{found.files[0]} holds two names for the parameter {ours!r} ({name!r} is one)")
        if name in found.strategy:
            if len(found.layouts[name][1]) != len(spec.shape):
                raise CheckpointError(f"the strategy {found.strategy_path.name} maps {name!r} over "
                                      f"{len(found.layouts[name][1])} dimensions, its slices have shape {spec.shape}")
            specs[ours] = TensorSpec(merged_shape(spec.shape, *found.layouts[name]), spec.dtype, spec.stored)
            loads[ours] = partial(_merge, found, indexes, name)
        else:  # not in the strategy: saved whole on every rank
            specs[ours], loads[ours] = spec, partial(indexes[0].read, name)
    wanted = parameter_shapes(config)
    for file_name, ours in EMBEDDING_FILES.items():
        if ours in wanted:  # the tables always come from the .npy files, as in MSM
            specs[ours], loads[ours] = _table(found.folder, file_name, ours)
    weights = LazyWeights(specs, lambda ours: loads[ours]())
    return config.replace(param_dtype=param_dtype_of(weights)), weights


FORMAT = register(Format("released", "the released PanGu-alpha slices + strategy + .npy tables (read only)", read))
