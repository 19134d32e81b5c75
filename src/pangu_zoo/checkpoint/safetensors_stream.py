"""safetensors files read and written one tensor at a time (the `safetensors` package needs every tensor in
memory at once to write, and maps the whole file to read).

The layout: an 8-byte little-endian header length, a JSON header `{name: {dtype, shape, data_offsets}}` (plus
optional string `__metadata__`), then the tensors' bytes back to back. bf16 tensors come back as fp32 and are
written from fp32 (`pangu_zoo.checkpoint.bfloat16`).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pangu_zoo.checkpoint.bfloat16 import from_bf16_bits, to_bf16_bits
from pangu_zoo.checkpoint.lazy import BFLOAT16, LazyWeights, TensorSpec
from pangu_zoo.errors import CheckpointError

_CODES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": BFLOAT16, "I64": "int64", "I32": "int32",
          "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64",
          "BOOL": "bool"}
_NAMES = {name: code for code, name in _CODES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


def _itemsize(stored: str) -> int:
    return 2 if stored == BFLOAT16 else np.dtype(stored).itemsize


def _memory_dtype(stored: str) -> np.dtype:
    return np.dtype(np.float32) if stored == BFLOAT16 else np.dtype(stored)


class SafetensorsFile:
    """The header of one safetensors file, checked against the file's size; `read(name)` loads one tensor."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.specs: dict[str, TensorSpec] = {}
        self._offsets: dict[str, int] = {}
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                prefix = f.read(8)
                if len(prefix) < 8:
                    raise self._corrupt("it is shorter than the 8-byte header length")
                (header_len,) = struct.unpack("<Q", prefix)
                if header_len > min(_MAX_HEADER, size - 8):
                    raise self._corrupt(f"its header length {header_len} does not fit in the file ({size} bytes)")
                raw = f.read(header_len)
        except OSError as error:
            raise CheckpointError(f"cannot read {self.path}: {error}") from error
        try:
            header = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise self._corrupt(f"its header is not JSON ({error})") from error
        if not isinstance(header, dict):
            raise self._corrupt("its header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        self.metadata: dict[str, str] = meta if isinstance(meta, dict) else {}
        data_start, data_end = 8 + header_len, 8
        for name, entry in header.items():
            try:
                stored = _CODES[entry["dtype"]]
                shape = tuple(int(d) for d in entry["shape"])
                begin, end = (int(x) for x in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as error:
                raise self._corrupt(f"its header entry for {name!r} is malformed or of an unsupported dtype "
                                    f"({entry!r:.100})") from error
            spec = TensorSpec(shape, _memory_dtype(stored), stored)
            if end - begin != spec.size * _itemsize(stored) or begin < 0:
                raise self._corrupt(f"{name!r} has {end - begin} bytes for shape {shape} of {stored}")
            self.specs[name] = spec
            self._offsets[name] = data_start + begin
            data_end = max(data_end, data_start + end)
        if data_end > size:
            raise CheckpointError(f"{self.path} is truncated: its header describes {data_end} bytes, the file "
                                  f"has {size}")

    def _corrupt(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.path} is not a valid safetensors file: {why}")

    def read(self, name: str) -> np.ndarray:
        spec = self.specs[name]
        buffer = np.empty(spec.shape, np.uint16 if spec.stored == BFLOAT16 else spec.dtype)
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offsets[name])
                got = f.readinto(memoryview(buffer.reshape(-1)).cast("B"))
        except OSError as error:
            raise CheckpointError(f"cannot read {name!r} from {self.path}: {error}") from error
        if got != buffer.nbytes:
            raise CheckpointError(f"{self.path} is truncated: {name!r} ends past the end of the file")
        return from_bf16_bits(buffer) if spec.stored == BFLOAT16 else buffer

    def lazy(self) -> LazyWeights:
        return LazyWeights(self.specs, self.read)


def write_safetensors(path: str | os.PathLike, specs: Sequence[tuple[str, TensorSpec]],
                      load: Callable[[str], np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write the tensors `specs` lists (name, shape and the dtype to store), calling `load(name)` for each in
    turn; a float tensor whose stored dtype is bfloat16 is rounded from fp32."""
    header: dict[str, object] = {}
    offset = 0
    for name, spec in specs:
        if spec.stored not in _NAMES:
            raise CheckpointError(f"cannot store {name!r} as {spec.stored} in safetensors")
        nbytes = spec.size * _itemsize(spec.stored)
        header[name] = {"dtype": _NAMES[spec.stored], "shape": list(spec.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the library writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, spec in specs:
            value = load(name)
            if tuple(value.shape) != spec.shape:
                raise CheckpointError(f"{name}: got shape {tuple(value.shape)}, expected {spec.shape}")
            stored = to_bf16_bits(value) if spec.stored == BFLOAT16 else np.ascontiguousarray(value, spec.stored)
            f.write(memoryview(stored.reshape(-1)).cast("B"))
