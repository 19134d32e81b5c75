"""Compiled entry points over a shared `Backbone`: full forward, prefill, prompt chunks into the cache, the head,
and one-token decode.

Each wrapper is its own cell, compiled in GRAPH_MODE (see `pangu_zoo.runtime`), and `auto_prefix=False`
keeps the released parameter names. The KV cache travels as
explicit flat arguments and results (keys of every layer, then values), which keeps per-call overhead
low and lets the decode graph be exported as it is.

Prefill comes in two forms. `PrefillGraph` runs the whole padded prompt in one pass; MindSpore's CPU graphs keep
every intermediate of a graph alive until it ends (no reuse across layers), so its memory grows with
layers x batch x prompt² (15 GB for GPT-2 small at 8 x 512). `ExtendGraph` takes a chunk of the prompt and attends
over a cache of the final length (only read) and over the chunk itself, so a prompt runs as a few calls that each
hold one chunk's intermediates (chunk x cache instead of prompt²); it is the decode step (`StepGraph`) with S
positions.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import lazy_inline, nn, ops


class GraphCell(nn.Cell):
    """A compiled entry point. MindSpore assigns the call's phase name to `compile_phase` at every call, and the
    setter walks the whole cell tree below (a GPT-2 small cache graph: about 400 cells, 3.4 ms of a 19 ms decode
    step). The name matters while a graph is parsed, i.e. on the first call with new shapes, which brings a new
    name; so the walk runs only when the name differs from the one this cell last passed down."""

    @property
    def compile_phase(self):
        return self._compile_phase

    @compile_phase.setter
    def compile_phase(self, value):
        if value != self.__dict__.get("_phase_passed_down"):
            nn.Cell.compile_phase.fset(self, value)
            self.__dict__["_phase_passed_down"] = value
        self._compile_phase = value


class ForwardGraph(GraphCell):
    """(input_ids, position_ids [B, S], bias [B, 1, S, S]) -> logits [B, S, V]."""

    def __init__(self, backbone) -> None:
        super().__init__(auto_prefix=False)
        self.backbone = backbone

    def construct(self, input_ids, position_ids, bias):
        hidden = self.backbone(input_ids, position_ids, bias)
        return self.backbone.logits(hidden)


class PrefillGraph(GraphCell):
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


class ReusedLayer(nn.Cell):
    """`Block.step` of one block as a cell that the compiler parses once and reuses for every block of the same
    structure (MindSpore's `lazy_inline`, inlined at the front end): GPT-2 small's cache graphs compile in about
    half the time, and run the same kernels. Not part of the model's cell tree (no renamed parameters)."""

    @lazy_inline(policy="front")
    def __init__(self, block) -> None:
        super().__init__(auto_prefix=False)
        self.block = block

    def construct(self, x, bias, where, k_cache, v_cache):
        return self.block.step(x, bias, where, k_cache, v_cache)


class ReusedLayerBeside(nn.Cell):
    """`ReusedLayer` for new positions that attend beside an unchanged cache (`Attention.step` with no slots)."""

    @lazy_inline(policy="front")
    def __init__(self, block) -> None:
        super().__init__(auto_prefix=False)
        self.block = block

    def construct(self, x, bias, k_cache, v_cache):
        return self.block.step(x, bias, None, k_cache, v_cache)


def _scatters(backbone) -> bool:
    """Whether the backbone writes its cache by a scatter index (ours on one device): a parallel plan's
    arithmetic write takes the slot mask instead, and other backbones keep their own `step`."""
    return hasattr(backbone, "cache_index") and not backbone.sharded_cache_write


def _reused_layers(backbone, beside: bool = False):
    layer = ReusedLayerBeside if beside else ReusedLayer
    return nn.CellList([layer(block) for block in backbone.blocks], auto_prefix=False)


class ExtendGraph(GraphCell):
    """A chunk of new positions against the cache: (input_ids, position_ids [B, S], bias [B, 1, S, T + S] (the
    cached slots each position may see, then the chunk's positions), last_index [B], k_0..k_{L-1},
    v_0..v_{L-1} [B, n, T, d]) -> (hidden state at last_index [B, h], the chunk's k_0.., v_0.. [B, n, S, d]).

    The cache is only read: the chunk attends over it and over itself, and only its own keys and values leave
    the graph, for the caller to write into its cache, which stays in place. (Writing into a graph input copies
    it, and a graph keeps the memory of its last inputs and outputs, so one that returned whole caches would hold
    two more of them.) A prompt runs a chunk at a time, and the head once after the last chunk."""

    def __init__(self, backbone) -> None:
        super().__init__(auto_prefix=False)
        self.backbone = backbone
        self.num_layers = backbone.num_layers
        self.layers = _reused_layers(backbone, beside=True)

    def construct(self, input_ids, position_ids, bias, last_index, *cache):
        batch = input_ids.shape[0]
        hidden, keys, values = self.backbone.step(input_ids, position_ids, bias, None, cache[:self.num_layers],
                                                  cache[self.num_layers:], self.layers)
        last = ops.gather_nd(hidden, ops.stack((ops.arange(0, batch, dtype=ms.int32), last_index), axis=1))
        return (last,) + keys + values


class StepGraph(GraphCell):
    """One token per row against the cache, kept in place as in `ExtendGraph`: (input_ids, position_ids [B], bias
    [B, 1, 1, T + 1] (the visible cached slots, then the token itself), k_0.., v_0.. [B, n, T, d]) -> (logits
    [B, V], the token's k_0.., v_0.. [B, n, 1, d])."""

    head = True

    def __init__(self, backbone) -> None:
        super().__init__(auto_prefix=False)
        self.backbone = backbone
        self.num_layers = backbone.num_layers
        self.layers = _reused_layers(backbone, beside=True)

    def construct(self, input_ids, position_ids, bias, *cache):
        batch = input_ids.shape[0]
        hidden, keys, values = self.backbone.step(input_ids.reshape(batch, 1), position_ids.reshape(batch, 1), bias,
                                                  None, cache[:self.num_layers], cache[self.num_layers:], self.layers)
        out = self.backbone.logits(hidden) if self.head else hidden
        return (out.reshape(batch, -1),) + keys + values


class StepHiddenGraph(StepGraph):
    """`StepGraph` returning the final hidden state [B, h] instead of the logits, for a head that runs on the host
    (`CausalLM.head_on_host`)."""

    head = False


class HeadGraph(GraphCell):
    """hidden [B, h] -> logits [B, V] (the tied head), where `CausalLM.head_logits` does not run it in NumPy."""

    def __init__(self, backbone) -> None:
        super().__init__(auto_prefix=False)
        self.backbone = backbone

    def construct(self, hidden):
        return self.backbone.logits(hidden)


class DecodeGraph(GraphCell):
    """(input_ids, position_ids [B], bias [B, 1, 1, T], slot [B, 1, T, 1] bool, k_0.., v_0.. [B, n, T, d]) ->
    (logits [B, V], updated k_0.., v_0..)."""

    def __init__(self, backbone) -> None:
        super().__init__(auto_prefix=False)
        self.backbone = backbone
        self.num_layers = backbone.num_layers
        self.scatter = _scatters(backbone)
        self.layers = _reused_layers(backbone) if self.scatter else None
        self.slot_of = ops.Argmax(axis=-1, output_type=ms.int32)

    def construct(self, input_ids, position_ids, bias, slot, *cache):
        keys = cache[:self.num_layers]
        values = cache[self.num_layers:]
        batch = input_ids.shape[0]
        ids, positions = input_ids.reshape(batch, 1), position_ids.reshape(batch, 1)
        if self.scatter:  # the one true slot of each row, as a scatter index
            where = self.backbone.cache_index(self.slot_of(ops.cast(slot.reshape(batch, -1), ms.float32)).reshape(
                batch, 1))
            hidden, keys, values = self.backbone.step(ids, positions, bias, where, keys, values, self.layers)
        else:
            hidden, keys, values = self.backbone.step(ids, positions, bias, slot, keys, values)
        logits = self.backbone.logits(hidden)
        return (logits.reshape(batch, -1),) + keys + values


GRAPHS = {"forward": ForwardGraph, "prefill": PrefillGraph, "extend": ExtendGraph, "head": HeadGraph,
          "step": StepGraph, "step_hidden": StepHiddenGraph, "decode": DecodeGraph}
