"""Zoo names <-> Megatron names for what the GPT-2 layout and the PanGu-alpha GPU port share (formats.md §4.2, §5.3).

Within one transformer layer the LayerNorms map by name, and the three weights this project stores [in, out]
(attention `projection`, FFN `mapping` and FFN `projection`) are transposed into torch's [out, in] (attention
`dense`, `mlp.dense_h_to_4h`, `mlp.dense_4h_to_h`); biases map unchanged. Query/key/value differ between the
families (fused and interleaved per head in GPT-2, separate in the port), so each family maps those itself.
Megatron names here are flattened below `language_model.` (see `megatron_files`).

Memory: writing, each tensor is made final (contiguous, bf16 as its uint16 bits) as it is taken from the source,
so the source's copy can go; reading, merged, transposed and cut-out tensors are made only when a writer asks
for them (`deferred.Deferred`, `lazy_weights`), one at a time. bf16 travels as uint16 bit patterns, since NumPy
has no bf16.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pangu_zoo.checkpoint.bfloat16 import from_bf16_bits, to_bf16_bits
from pangu_zoo.checkpoint.deferred import Tensor, load, then
from pangu_zoo.checkpoint.lazy import BFLOAT16, LazyWeights, TensorSpec
from pangu_zoo.errors import CheckpointError

BF16_BITS = np.dtype(np.uint16)
WORD = "backbone.word_embedding.embedding_table"
POSITION = "backbone.position_embedding.embedding_table"
MEGATRON_WORD = "embedding.word_embeddings.weight"
MEGATRON_POSITION = "embedding.position_embeddings.weight"

# zoo name within a block -> (Megatron name within a layer, {attention} the attention module's name; transposed?)
_LAYER = {
    "layernorm1.gamma": ("input_layernorm.weight", False),
    "layernorm1.beta": ("input_layernorm.bias", False),
    "layernorm2.gamma": ("post_attention_layernorm.weight", False),
    "layernorm2.beta": ("post_attention_layernorm.bias", False),
    "attention.projection.weight": ("{attention}.dense.weight", True),
    "attention.projection.bias": ("{attention}.dense.bias", False),
    "output.mapping.weight": ("mlp.dense_h_to_4h.weight", True),
    "output.mapping.bias": ("mlp.dense_h_to_4h.bias", False),
    "output.projection.weight": ("mlp.dense_4h_to_h.weight", True),
    "output.projection.bias": ("mlp.dense_4h_to_h.bias", False),
}
FINAL_LAYERNORM = {"backbone.layernorm.gamma": "final_layernorm.weight",
                   "backbone.layernorm.beta": "final_layernorm.bias"}


def stored(value: np.ndarray, bfloat16: bool) -> np.ndarray:
    """`value` as it goes into a Megatron file: contiguous, and as bf16 bits when the model is bf16 (this project
    holds bf16 values in fp32 arrays)."""
    value = np.ascontiguousarray(value)
    return to_bf16_bits(value) if bfloat16 and value.dtype == np.float32 else value


def layer_to_megatron(weights: Mapping[str, np.ndarray], ours: str, theirs: str, attention: str,
                      bfloat16: bool) -> dict[str, np.ndarray]:
    """One block's shared parameters: `ours` is the zoo prefix (`backbone.blocks.0.`), `theirs` Megatron's."""
    out = {}
    for name, (megatron, flip) in _LAYER.items():
        value = weights[ours + name]
        out[theirs + megatron.format(attention=attention)] = stored(value.T if flip else value, bfloat16)
    return out


def transpose(value: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(value.T)


def lazy_weights(tensors: Mapping[str, Tensor], order: list[str]) -> LazyWeights:
    """The read weights in `order`, each made when asked for; bf16 bits are handed out as fp32 values."""
    def get(name: str) -> np.ndarray:
        value = load(tensors[name])
        return from_bf16_bits(value) if value.dtype == BF16_BITS else value

    specs = {}
    for name in order:
        item = tensors[name]
        bits = item.dtype == BF16_BITS
        specs[name] = TensorSpec(item.shape, np.float32 if bits else item.dtype, BFLOAT16 if bits else "")
    return LazyWeights(specs, get)


class MegatronState:
    """A merged Megatron state read name by name; what nobody asked for is reported as unexpected."""

    def __init__(self, state: Mapping[str, Tensor], fmt: str) -> None:
        self.state = state
        self.fmt = fmt
        self.used: set[str] = set()

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> Tensor:
        if name not in self.state:
            raise CheckpointError(f"the {self.fmt} checkpoint lacks {name!r} (is it this family and size?)")
        value = self.state[name]
        if shape is not None and tuple(value.shape) != shape:
            raise CheckpointError(f"{name} has shape {tuple(value.shape)} in the {self.fmt} checkpoint, "
                                  f"expected {shape}")
        self.used.add(name)
        return value

    def layer(self, theirs: str, ours: str, attention: str, hidden: int,
              ffn: int) -> dict[str, Tensor]:
        """The zoo parameters of one block's shared part, shapes checked against the config."""
        shapes = {"layernorm": (hidden,), "attention.projection.weight": (hidden, hidden),
                  "attention.projection.bias": (hidden,), "output.mapping.weight": (hidden, ffn),
                  "output.mapping.bias": (ffn,), "output.projection.weight": (ffn, hidden),
                  "output.projection.bias": (hidden,)}
        out = {}
        for name, (megatron, flip) in _LAYER.items():
            shape = shapes.get(name, shapes["layernorm"])
            expected = shape[::-1] if flip else shape
            value = self.take(theirs + megatron.format(attention=attention), expected)
            out[ours + name] = then(value, transpose, shape) if flip else value
        return out

    def check_all_used(self) -> None:
        extra = sorted(set(self.state) - self.used)
        if extra:
            raise CheckpointError(f"unexpected weights in the {self.fmt} checkpoint (more layers than its config "
                                  f"says, or another model): {extra[:5]}")


def respell(shard: Mapping[str, np.ndarray], stack: tuple[str, str], attention: tuple[str, str]) -> dict:
    """Names of one Megatron generation spelled as another's: the stack prefix (`transformer.` / `encoder.`) and
    the attention module (`.attention.` / `.self_attention.`), each given as (from, to)."""
    out = {}
    for name, value in shard.items():
        if name.startswith(stack[0]):
            name = stack[1] + name.removeprefix(stack[0])
        out[name.replace(f".{attention[0]}.", f".{attention[1]}.")] = value
    return out


def layer_indices(names, pattern) -> int:
    """How many `layers.{i}.` the names hold (`pattern` captures i)."""
    return max((int(m.group(1)) for name in names if (m := pattern.match(name))), default=-1) + 1
