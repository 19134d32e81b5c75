"""Dtype names, casts and dropout: the small pieces every model cell uses."""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

_MS_DTYPES = {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}


def ms_dtype(name: str):
    return _MS_DTYPES[name]


def _cast(x, dtype):
    return x if x.dtype == dtype else ops.cast(x, dtype)


class Dropout(nn.Cell):
    """Dropout with its primitive exposed for sharding; the identity when not training or p == 0."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.dropout = ops.Dropout(keep_prob=1.0 - p)

    def construct(self, x):
        if not self.training or self.p == 0.0:
            return x
        out, _ = self.dropout(x)
        return out
