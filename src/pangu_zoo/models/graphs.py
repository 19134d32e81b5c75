"""Compiled entry points over a shared `Backbone`: full forward, prefill and one-token decode.

Each wrapper is its own cell, compiled in GRAPH_MODE (see `pangu_zoo.runtime`), and `auto_prefix=False`
keeps the released parameter names. The KV cache travels as
explicit flat arguments and results (keys of every layer, then values), which keeps per-call overhead
low and lets the decode graph be exported as it is.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops


class ForwardGraph(nn.Cell):
    """(input_ids, position_ids [B, S], bias [B, 1, S, S]) -> logits [B, S, V]."""

    def __init__(self, backbone) -> None:
        super().__init__(auto_prefix=False)
        self.backbone = backbone

    def construct(self, input_ids, position_ids, bias):
        hidden = self.backbone(input_ids, position_ids, bias)
        return self.backbone.logits(hidden)


class PrefillGraph(nn.Cell):
    """(input_ids, position_ids [B, P], bias [B, 1, P, P], last_index [B]) ->
    (logits at last_index [B, V], k_0..k_{L-1}, v_0..v_{L-1} each [B, n, P, d])."""

    def __init__(self, backbone) -> None:
        super().__init__(auto_prefix=False)
        self.backbone = backbone

    def construct(self, input_ids, position_ids, bias, last_index):
        hidden, keys, values = self.backbone.prefill(input_ids, position_ids, bias)
        batch = hidden.shape[0]
        rows = ops.arange(0, batch, dtype=ms.int32)
        last = ops.gather_nd(hidden, ops.stack((rows, last_index), axis=1))
        return (self.backbone.logits(last),) + keys + values


class DecodeGraph(nn.Cell):
    """(input_ids, position_ids [B], bias [B, 1, 1, T], slot [B, 1, T, 1] bool, k_0.., v_0.. [B, n, T, d]) ->
    (logits [B, V], updated k_0.., v_0..)."""

    def __init__(self, backbone) -> None:
        super().__init__(auto_prefix=False)
        self.backbone = backbone
        self.num_layers = backbone.num_layers

    def construct(self, input_ids, position_ids, bias, slot, *cache):
        keys = cache[:self.num_layers]
        values = cache[self.num_layers:]
        batch = input_ids.shape[0]
        hidden, keys, values = self.backbone.step(input_ids.reshape(batch, 1), position_ids.reshape(batch, 1),
                                                  bias, slot, keys, values)
        logits = self.backbone.logits(hidden)
        return (logits.reshape(batch, -1),) + keys + values


GRAPHS = {"forward": ForwardGraph, "prefill": PrefillGraph, "decode": DecodeGraph}
