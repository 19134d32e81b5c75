"""Converting a checkpoint from one format to another (`pangu convert`), tensor by tensor.

The source format's reader gives a config and lazy weights under our names; they are cast to the asked dtype,
checked against the config (every parameter present, of the config's shape), and handed to the destination
format's writer, which pulls them one at a time. The writer writes to a temporary name beside the destination,
renamed to it only when everything is written; on any error the temporary is removed and nothing is left.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# every format module registers its formats when imported
from pangu_zoo.checkpoint import (  # noqa: F401
    hf_gpt2_format,
    megatron_gpt2,
    megatron_pangu,
    mindformers_format,
    released_format,
    zoo_format,
)
from pangu_zoo.checkpoint.bfloat16 import round_to_bf16
from pangu_zoo.checkpoint.formats import get_format
from pangu_zoo.checkpoint.lazy import BFLOAT16, LazyWeights, TensorSpec, spec_of
from pangu_zoo.checkpoint.parameter_shapes import parameter_shapes
from pangu_zoo.checkpoint.tokenizer_files import tokenizer_sources
from pangu_zoo.config import ModelConfig, normalize_dtype
from pangu_zoo.errors import CheckpointError, ConfigError

# the config fields that decide the parameters' shapes (and, for heads, how they are read)
SHAPE_FIELDS = ("family", "vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_hidden_size",
                "max_position_embeddings")


@dataclass(frozen=True)
class ConversionSummary:
    src_format: str
    dst_format: str
    dst: Path
    parameters: int
    bytes: int
    seconds: float

    def line(self) -> str:
        return (f"converted {self.src_format} -> {self.dst_format}: {self.parameters:,} parameters, "
                f"{self.bytes:,} bytes, {self.seconds:.2f} s -> {self.dst}")


def check_against_hint(config: ModelConfig, hint: ModelConfig | None, src_format: str) -> None:
    """A `--mode`/`--config` given with a source that has a config of its own must describe the same shape."""
    if hint is None:
        return
    for name in SHAPE_FIELDS:
        ours, given = getattr(config, name), getattr(hint, name)
        if ours != given:
            raise ConfigError(f"{name}: the {src_format} checkpoint's config says {ours}, --mode/--config says "
                              f"{given}")


def check_shapes(config: ModelConfig, weights: Mapping[str, np.ndarray], src_format: str) -> None:
    """Every parameter `config` describes, of its shape, and no other: else one error naming the first misfit."""
    expected = parameter_shapes(config)
    for name, shape in expected.items():
        if name in weights and (got := spec_of(weights, name).shape) != shape:
            raise CheckpointError(f"shape mismatch for {name}: the {src_format} checkpoint has {got}, the config "
                                  f"expects {shape} (another model size? check --mode/--config)")
    missing = [name for name in expected if name not in weights]
    extra = [name for name in weights if name not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} parameter(s) the config has, e.g. {missing[0]} {expected[missing[0]]}")
        if extra:
            shape = spec_of(weights, extra[0]).shape
            parts.append(f"holds {len(extra)} parameter(s) the config has not, e.g. {extra[0]} {shape}")
        raise CheckpointError(f"the {src_format} checkpoint " + " and ".join(parts) + f" (the config has "
                              f"{config.num_layers} layers; another model size? check --mode/--config)")


def _cast(value: np.ndarray, dtype: str) -> np.ndarray:
    if value.dtype.kind != "f":
        return value
    return round_to_bf16(value) if dtype == BFLOAT16 else value.astype(dtype, copy=False)


def cast_weights(config: ModelConfig, weights: Mapping[str, np.ndarray],
                 dtype: str) -> tuple[ModelConfig, LazyWeights]:
    """Floating-point weights cast to `dtype` (bf16 as fp32 rounded to bf16), lazily; the config says so."""
    dtype = normalize_dtype(dtype)
    memory = np.dtype(np.float32 if dtype == BFLOAT16 else dtype)
    specs = {}
    for name in weights:
        spec = spec_of(weights, name)
        specs[name] = TensorSpec(spec.shape, memory, dtype) if spec.dtype.kind == "f" else spec
    return config.replace(param_dtype=dtype), LazyWeights(specs, lambda name: _cast(weights[name], dtype))


def _with_progress(weights: Mapping[str, np.ndarray], bar) -> LazyWeights:
    def load(name: str) -> np.ndarray:
        value = weights[name]
        bar.update(value.nbytes)
        return value

    return LazyWeights({name: spec_of(weights, name) for name in weights}, load)


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def convert(src_format: str, dst_format: str, src: str | os.PathLike, dst: str | os.PathLike, *,
            dtype: str | None = None, tp: int = 1, config_hint: ModelConfig | None = None,
            tokenizer_path: str | os.PathLike | None = None, progress: bool = True) -> ConversionSummary:
    """Convert `src` (in `src_format`) to `dst` (in `dst_format`), print the summary line and return it."""
    from tqdm import tqdm

    start = time.perf_counter()
    reader, writer = get_format(src_format, reading=True), get_format(dst_format, reading=False)
    dst = Path(dst)
    if dst.exists() or dst.is_symlink():
        raise CheckpointError(f"{dst} already exists; remove it or choose another destination")
    if not dst.parent.is_dir():
        raise CheckpointError(f"the folder {dst.parent} of the destination does not exist")
    if tokenizer_path is not None:
        tokenizer_sources(tokenizer_path)  # a bad path fails before any work
    config, weights = reader.read(src, config_hint=config_hint)
    check_against_hint(config, config_hint, src_format)
    if dtype is not None:
        config, weights = cast_weights(config, weights, dtype)
    check_shapes(config, weights, src_format)

    total = sum(spec_of(weights, name).nbytes for name in weights)
    tmp = dst.with_name(f"{dst.name}.tmp-{secrets.token_hex(4)}")
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"{src_format} -> {dst_format}",
              disable=None if progress else True, file=sys.stderr) as bar:
        try:
            writer.write(config, _with_progress(weights, bar), tmp, tp=tp, tokenizer_path=tokenizer_path)
            if dst.exists():
                raise CheckpointError(f"{dst} appeared while converting; the result is not moved over it")
            os.rename(tmp, dst)
        except BaseException as error:
            _remove(tmp)
            if isinstance(error, OSError):
                raise CheckpointError(f"cannot write {dst}: {error}") from error
            raise
    summary = ConversionSummary(src_format, dst_format, dst, sum(spec_of(weights, n).size for n in weights),
                                _size_on_disk(dst), time.perf_counter() - start)
    print(summary.line())
    return summary

