"""Tensors made when a writer asks for them: a merge of tensor-parallel pieces, a transpose, a cut out of a fused
tensor. Their shape and dtype are known beforehand, so a conversion can lay out its output first and then hold
one made tensor at a time, not a second copy of the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np


@dataclass(frozen=True)
class Deferred:
    shape: tuple[int, ...]
    dtype: np.dtype
    make: Callable[[], np.ndarray]


Tensor = np.ndarray | Deferred


def load(item: Tensor) -> np.ndarray:
    return item.make() if isinstance(item, Deferred) else item


def _apply(fn: Callable[[np.ndarray], np.ndarray], item: Tensor) -> np.ndarray:
    return fn(load(item))


def then(item: Tensor, fn: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...] | None = None) -> Deferred:
    """`fn(item)`, made when asked for; `shape` is the result's when `fn` changes it."""
    return Deferred(tuple(item.shape if shape is None else shape), np.dtype(item.dtype), partial(_apply, fn, item))


def concatenated(pieces: list[np.ndarray], axis: int) -> Deferred:
    shape = list(pieces[0].shape)
    shape[axis] = sum(piece.shape[axis] for piece in pieces)
    return Deferred(tuple(shape), np.dtype(pieces[0].dtype), partial(np.concatenate, pieces, axis=axis))
