"""The language-model cell shared by both families, with the user-facing helpers.

`CausalLM.construct(input_ids, position_ids, attention_bias)` is the graph used for training and
export. The Python methods (`forward_logits`, `generate`, `save_pretrained`, ...) take NumPy arrays or
lists, check them, and run compiled graphs.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import mindspore as ms
import numpy as np
from mindspore import nn
from mindspore.nn.utils import no_init_parameters

from pangu_zoo import __version__
from pangu_zoo.attention_masks import causal_padding_mask, mask_to_bias
from pangu_zoo.checkpoint import pretrained
from pangu_zoo.compile_cache import CachedGraph, cache_root
from pangu_zoo.config import ModelConfig
from pangu_zoo.errors import CheckpointError, InputError
from pangu_zoo.inference import generation
from pangu_zoo.models.graphs import GRAPHS
from pangu_zoo.models.layers import Backbone
from pangu_zoo.models.moe import STATS_NAME
from pangu_zoo.runtime import use_graph_mode


class CausalLM(nn.Cell):
    """Embeddings, transformer stack and tied head. Subclasses fix the family."""

    family = ""
    families: ClassVar[dict[str, type[CausalLM]]] = {}  # family name -> subclass, filled as each is defined
    backbone_class: ClassVar[type[nn.Cell]] = Backbone  # a family with other cells names its own

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.family:
            CausalLM.families[cls.family] = cls

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if self.family and config.family != self.family:
            raise InputError(f"{type(self).__name__} needs a {self.family} config, got family {config.family!r}")
        self.config = config
        self.backbone = self.backbone_class(config)
        self._graphs: dict[str, nn.Cell] = {}
        self._graph_wrapper = None
        self.prefilled_shapes: set[tuple[int, int, int]] = set()  # (rows, padded prompt, cache) seen by decoders

    def construct(self, input_ids, position_ids, attention_bias):
        """input_ids, position_ids [B, S] int32; attention_bias [B, 1, S, S] fp32 -> logits [B, S, V] fp32."""
        hidden = self.backbone(input_ids, position_ids, attention_bias)
        return self.backbone.logits(hidden)

    # ---- host-side helpers -------------------------------------------------------------------------

    def graph(self, name: str) -> nn.Cell:
        """A compiled wrapper around the backbone (created once, shared parameters). With PANGU_COMPILE_CACHE set
        (and one device), its compiled forms are kept on disk for later processes (`pangu_zoo.compile_cache`)."""
        if name not in self._graphs:
            use_graph_mode()
            cell = GRAPHS[name](self.backbone)
            if self._graph_wrapper:
                cell = self._graph_wrapper(name, cell)
            elif cache_root() is not None:
                cell = CachedGraph(cell, self._graph_cache_key(), name, cache_root())
            self._graphs[name] = cell
        return self._graphs[name]

    def _graph_cache_key(self) -> str:
        """What the compiled graphs depend on besides their inputs and the source code: the config, the parameters
        (LoRA adds some), the mode (dropout when training) and the cache write."""
        params = [(n, tuple(p.shape), str(p.dtype)) for n, p in self.parameters_and_names()]
        return repr((sorted(self.config.to_dict().items()), params, self.backbone.training,
                     getattr(self.backbone, "sharded_cache_write", None), __version__))

    @property
    def prefills_in_chunks(self) -> bool:
        """Whether prompts can go through the "extend" graph chunk by chunk and decoding can keep the cache in place
        ("step"; see `pangu_zoo.models.graphs`): on one device (no arithmetic cache write placed by a parallel plan),
        with this project's `Backbone`, whose `step` can attend beside an unchanged cache, and a cache NumPy can hold
        (not bf16)."""
        return self._graph_wrapper is None and hasattr(self.backbone, "cache_index") and \
            not self.backbone.sharded_cache_write and self.config.compute_dtype != "bfloat16"

    def head_on_host(self, rows: int) -> bool:
        """Whether `head_logits` runs the tied head in NumPy for `rows` hidden states: for a single row in fp32,
        where NumPy's BLAS reads the [V, h] table in under half the time of MindSpore's CPU MatMul (2.6-3.0
        against 8.0 ms for GPT-2 small, measured side by side); from two rows on the two are level."""
        return rows == 1 and self.config.compute_dtype == "float32" and \
            self.backbone.word_embedding.embedding_table.dtype == ms.float32

    def head_logits(self, hidden: np.ndarray) -> np.ndarray:
        """The tied head on final hidden states [B, h] -> logits [B, V] fp32, after the cache graphs that stop
        before it: NumPy on the table's own memory where `head_on_host`, else the compiled "head" graph."""
        if self.head_on_host(len(hidden)):
            return np.asarray(hidden, np.float32) @ self.backbone.word_embedding.embedding_table.asnumpy().T
        return self.graph("head")(ms.Tensor(hidden)).asnumpy()

    def set_graph_wrapper(self, wrapper) -> None:
        """Route every graph through `wrapper(name, cell) -> callable` (sharded inference uses this to declare
        input layouts); graphs built before are dropped."""
        self._graph_wrapper = wrapper
        self._graphs.clear()

    def check_input_ids(self, input_ids: np.ndarray) -> None:
        """Raise `InputError` when ids are outside the vocabulary or longer than the position table."""
        if input_ids.size == 0:
            raise InputError("input_ids is empty")
        if not np.issubdtype(input_ids.dtype, np.integer):
            raise InputError(f"input_ids must be integers, got dtype {input_ids.dtype}")
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise InputError(f"token id {bad} is outside the vocabulary (0..{self.config.vocab_size - 1})")
        if input_ids.shape[-1] > self.config.max_position_embeddings:
            raise InputError(
                f"sequence length {input_ids.shape[-1]} exceeds the position table "
                f"({self.config.max_position_embeddings} positions)"
            )

    def forward_logits(self, input_ids, attention_mask=None, position_ids=None) -> np.ndarray:
        """Full-sequence logits [B, S, V] (fp32 NumPy).

        attention_mask: None (causal), [B, S] padding mask (1 = token), or [B, S, S] full mask.
        position_ids: None means 0..S-1 for every row.
        """
        ids = np.atleast_2d(np.asarray(input_ids))
        self.check_input_ids(ids)
        batch, seq = ids.shape
        if attention_mask is None:
            attention_mask = np.ones((batch, seq), dtype=np.int32)
        attention_mask = np.asarray(attention_mask)
        if attention_mask.ndim == 2:
            attention_mask = causal_padding_mask(attention_mask)
        if attention_mask.shape != (batch, seq, seq):
            raise InputError(f"attention_mask has shape {attention_mask.shape}, expected {(batch, seq)} "
                             f"or {(batch, seq, seq)}")
        if position_ids is None:
            position_ids = np.broadcast_to(np.arange(seq), (batch, seq))
        position_ids = np.asarray(position_ids)
        if position_ids.min() < 0 or position_ids.max() >= self.config.max_position_embeddings:
            raise InputError("position_ids are outside the position table")
        logits = self.graph("forward")(
            ms.Tensor(ids.astype(np.int32)),
            ms.Tensor(position_ids.astype(np.int32)),
            ms.Tensor(mask_to_bias(attention_mask)),
        )
        return logits.asnumpy()

    def generate(self, input_ids, max_new_tokens: int = 20, **kwargs: Any) -> list[list[int]]:
        """Continue each prompt with the KV cache; see `pangu_zoo.inference.generation.generate`."""
        return generation.generate(self, input_ids, max_new_tokens=max_new_tokens, **kwargs)

    def named_weights(self) -> list[tuple[str, ms.Parameter]]:
        """(name, parameter) of the weights a checkpoint holds: runtime state such as the MoE routing statistics
        is left out."""
        return [(name, param) for name, param in self.parameters_and_names() if not name.endswith(STATS_NAME)]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters as `{released name: fp32/fp16 NumPy array}` (bf16 is widened to fp32)."""
        out = {}
        for name, param in self.named_weights():
            # NumPy has no bf16 (and CPU has no bf16 Identity kernel): cast straight from the parameter
            value = ms.ops.cast(param, ms.float32) if param.dtype == ms.bfloat16 else param.value()
            out[name] = value.asnumpy()
        return out

    def load_state_dict(self, weights: dict[str, np.ndarray], strict: bool = True, share: bool = False) -> None:
        """Copy `weights` into the parameters, checking names and shapes first (nothing changes on error).
        `share=True` hands the arrays over instead: a parameter of the array's dtype keeps the array's memory (no
        copy), and each array leaves `weights` (a dict; a lazy mapping reads each one once) when it is placed, so a
        load holds the model once."""
        params = dict(self.named_weights())
        missing = sorted(set(params) - set(weights))
        unexpected = sorted(set(weights) - set(params))
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} parameter(s), e.g. {missing[:3]}")
            if unexpected:
                parts.append(f"unexpected {len(unexpected)} parameter(s), e.g. {unexpected[:3]}")
            raise CheckpointError("checkpoint does not match the model: " + "; ".join(parts))
        for name, param in params.items():
            if name in weights and tuple(weights[name].shape) != tuple(param.shape):
                raise CheckpointError(
                    f"shape mismatch for {name}: checkpoint has {tuple(weights[name].shape)}, "
                    f"model expects {tuple(param.shape)}"
                )
        for name, param in params.items():
            if name not in weights:
                continue
            if not share:
                param.set_data(ms.Tensor(np.asarray(weights[name])).astype(param.dtype))
                continue
            value = np.ascontiguousarray(weights.pop(name) if isinstance(weights, dict) else weights[name])
            tensor = ms.Tensor.from_numpy(value) if value.flags.writeable else ms.Tensor(value)
            param.set_data(tensor if tensor.dtype == param.dtype else tensor.astype(param.dtype))

    def save_pretrained(self, directory: str | os.PathLike, weights_format: str = "safetensors") -> None:
        """Write `config.json` and the weights into `directory` (see `pangu_zoo.checkpoint.pretrained`)."""
        pretrained.save_pretrained(self, directory, weights_format)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> CausalLM:
        """The model a saved (or Hugging Face GPT-2) directory holds; a family class refuses the other family."""
        config, weights = pretrained.read_pretrained(path, **overrides)
        if cls.family and config.family != cls.family:
            raise CheckpointError(f"{path} holds a {config.family} model, not {cls.family}")
        with no_init_parameters():  # every weight is loaded next: skip the random draw (5 s for GPT-2 small)
            model = CausalLM.families[config.family](config)
        model.load_state_dict(weights, share=True)
        model.init_parameters_data()  # what the file does not hold (runtime state such as MoE statistics)
        return model
