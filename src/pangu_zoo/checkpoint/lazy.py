"""Weights that are read one tensor at a time, so a conversion holds one tensor rather than the whole model.

`LazyWeights` is a `{name: numpy array}` mapping whose arrays are loaded when asked for; each one's shape and
dtype are known beforehand (from the file's header), which is what writers need to lay out their own headers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from pangu_zoo.errors import CheckpointError

BFLOAT16 = "bfloat16"


@dataclass(frozen=True)
class TensorSpec:
    """Shape and in-memory dtype of a tensor, and the dtype it is stored in (bf16 is held as fp32 in memory,
    since NumPy has no bf16)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    stored: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if not self.stored:
            object.__setattr__(self, "stored", self.dtype.name)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


class LazyWeights(Mapping[str, np.ndarray]):
    """`{name: array}` that calls `load(name)` on each lookup (nothing is cached) and checks the result
    against the name's `TensorSpec`."""

    def __init__(self, specs: Mapping[str, TensorSpec], load: Callable[[str], np.ndarray]):
        self._specs = dict(specs)
        self._load = load

    def __getitem__(self, name: str) -> np.ndarray:
        spec = self._specs[name]
        value = self._load(name)
        if tuple(value.shape) != spec.shape:
            raise CheckpointError(f"{name}: read an array of shape {tuple(value.shape)} where the file's header "
                                  f"says {spec.shape}; the file is corrupt")
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def spec(self, name: str) -> TensorSpec:
        return self._specs[name]


def spec_of(weights: Mapping[str, np.ndarray], name: str) -> TensorSpec:
    """The spec of `weights[name]`, without loading it when `weights` is lazy."""
    if isinstance(weights, LazyWeights):
        return weights.spec(name)
    value = weights[name]
    return TensorSpec(tuple(value.shape), value.dtype)


def param_dtype_of(weights: Mapping[str, np.ndarray]) -> str:
    """The `ModelConfig.param_dtype` the stored floating-point tensors share: float16 or bfloat16 when all of them
    are, float32 otherwise (a mix is widened to fp32, which holds every value of both exactly)."""
    stored = {spec.stored for name in weights if (spec := spec_of(weights, name)).dtype.kind == "f"}
    return stored.pop() if stored in ({"float16"}, {BFLOAT16}) else "float32"


def stored_as(spec: TensorSpec, param_dtype: str) -> TensorSpec:
    """How a writer that can store bf16 stores `spec`: the fp32 tensors of a bf16 model as bf16, the rest as
    they are."""
    stored = BFLOAT16 if param_dtype == BFLOAT16 and spec.dtype == np.float32 else spec.dtype.name
    return TensorSpec(spec.shape, spec.dtype, stored)
