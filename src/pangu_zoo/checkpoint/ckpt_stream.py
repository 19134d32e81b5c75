"""MindSpore `.ckpt` files read and written one tensor at a time, without MindSpore (whose loader parses the whole
protobuf and whose saver serialises each tensor's copy).

A `.ckpt` is a protobuf `Checkpoint { repeated Value value = 1; }`, `Value { string tag = 1; TensorProto tensor
= 2; MapTensorProto maptensor = 3; }`, `TensorProto { repeated int64 dims = 1; string tensor_type = 2; bytes
tensor_content = 3; }` (reference formats.md §7.1). A large tensor is split over consecutive Values of the same
tag whose contents join up; `crc_check=True` saves append `crc_num` and a 10-byte CRC32, checked here.
Encrypted files are not protobuf and are refused. bf16 tensors come back as fp32 and are written from fp32.
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pangu_zoo.checkpoint.bfloat16 import from_bf16_bits, to_bf16_bits
from pangu_zoo.checkpoint.lazy import BFLOAT16, LazyWeights, TensorSpec
from pangu_zoo.errors import CheckpointError

_TYPES = {"Float64": "float64", "Float32": "float32", "Float16": "float16", "BFloat16": BFLOAT16,
          "Int64": "int64", "Int32": "int32", "Int16": "int16", "Int8": "int8", "UInt8": "uint8",
          "UInt16": "uint16", "UInt32": "uint32", "UInt64": "uint64", "Bool": "bool",
          # MindSpore 1.x spellings
          "Uint8": "uint8", "Uint16": "uint16", "Uint32": "uint32", "Uint64": "uint64"}
_TYPE_NAMES = {"float64": "Float64", "float32": "Float32", "float16": "Float16", BFLOAT16: "BFloat16",
               "int64": "Int64", "int32": "Int32", "int16": "Int16", "int8": "Int8", "uint8": "UInt8",
               "uint16": "UInt16", "uint32": "UInt32", "uint64": "UInt64", "bool": "Bool"}
_CRC_MARK = b"crc_num"
_CRC_TRAILER = len(_CRC_MARK) + 10
CHUNK_BYTES = 512 * 1024 * 1024  # MindSpore's SLICE_SIZE: one protobuf bytes field stays far below 2 GiB
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class _Corrupt(Exception):
    pass


@dataclass
class _Entry:
    dims: tuple[int, ...]
    stored: str
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (file offset, byte count)


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Corrupt(f"a number runs past its field at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(buf, pos: int, end: int):
    """(field number, wire type, value or (start, stop) of a length-delimited field) of a message's fields."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == _LENGTH:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Corrupt(f"field {number} at byte {pos} claims {length} bytes, past the end at byte {end}")
            value, pos = (pos, pos + length), pos + length
        elif wire in (_FIXED64, _FIXED32):
            value, pos = None, pos + (8 if wire == _FIXED64 else 4)
        else:
            raise _Corrupt(f"unknown wire type {wire} at byte {pos}")
        if pos > end:
            raise _Corrupt(f"field {number} runs past byte {end}")
        yield number, wire, value


class CkptFile:
    """The index of one `.ckpt` file (names, shapes, where each tensor's bytes are); `read(name)` loads one."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.skipped: list[str] = []  # string values and map tensors: not weights
        self._entries: dict[str, _Entry] = {}
        try:
            size = self.path.stat().st_size
            if size == 0:
                raise CheckpointError(f"{self.path} is empty")
            with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                end = self._check_crc(f, buf, size)
                self._index(buf, end)
        except _Corrupt as error:
            raise CheckpointError(f"{self.path} is not a readable MindSpore checkpoint (truncated, corrupt or "
                                  f"encrypted): {error}") from error
        except OSError as error:
            raise CheckpointError(f"cannot read {self.path}: {error}") from error
        self.specs = {name: TensorSpec(e.dims, np.float32 if e.stored == BFLOAT16 else e.stored, e.stored)
                      for name, e in self._entries.items()}

    def _check_crc(self, f, buf, size: int) -> int:
        """Where the protobuf ends: before a CRC trailer, which must match."""
        if size < _CRC_TRAILER or buf[size - _CRC_TRAILER:size - 10] != _CRC_MARK:
            return size
        end = size - _CRC_TRAILER
        expected = int.from_bytes(buf[end + len(_CRC_MARK):size], "big")
        crc, f_pos = 0, 0
        f.seek(0)
        while f_pos < end:  # read in chunks rather than through the map, so the pages are not kept
            chunk = f.read(min(16 << 20, end - f_pos))
            crc = zlib.crc32(chunk, crc)
            f_pos += len(chunk)
        if crc != expected:
            raise _Corrupt("its CRC32 does not match the one saved with it")
        return end

    def _index(self, buf, end: int) -> None:
        previous = None
        for number, wire, span in _fields(buf, 0, end):
            if number != 1 or wire != _LENGTH:
                raise _Corrupt(f"unexpected top-level field {number}")
            name, entry = self._value(buf, *span)
            if entry is None:
                self.skipped.append(name)
                previous = None
                continue
            known = self._entries.get(name)
            if known is None:
                self._entries[name] = entry
            elif previous == name and (known.dims, known.stored) == (entry.dims, entry.stored):
                known.chunks.extend(entry.chunks)  # the next piece of a large tensor
            else:
                raise _Corrupt(f"{name!r} appears twice")
            previous = name
        for name, entry in self._entries.items():
            expected = int(np.prod(entry.dims, dtype=np.int64)) * (2 if entry.stored == BFLOAT16
                                                                   else np.dtype(entry.stored).itemsize)
            got = sum(n for _, n in entry.chunks)
            if expected == 0 and got and entry.dims == (0,):  # MindSpore writes a scalar's shape as [0]
                entry.dims = ()
                expected = got
            if got != expected:
                raise _Corrupt(f"{name!r} holds {got} bytes, its shape {entry.dims} of {entry.stored} needs "
                               f"{expected}")

    @staticmethod
    def _value(buf, start: int, stop: int) -> tuple[str, _Entry | None]:
        name, tensor = None, None
        for number, wire, span in _fields(buf, start, stop):
            if number == 1 and wire == _LENGTH:
                try:
                    name = bytes(buf[span[0]:span[1]]).decode()
                except UnicodeDecodeError as error:
                    raise _Corrupt(f"a parameter name at byte {span[0]} is not text") from error
            elif number == 2 and wire == _LENGTH:
                tensor = span
        if name is None:
            raise _Corrupt(f"the entry at byte {start} has no name")
        if tensor is None:
            return name, None
        dims, type_name, content = [], None, None
        for number, wire, value in _fields(buf, *tensor):
            if number == 1 and wire == _VARINT:
                dims.append(value)
            elif number == 1 and wire == _LENGTH:  # packed dims
                pos, stop_dims = value
                while pos < stop_dims:
                    dim, pos = _varint(buf, pos, stop_dims)
                    dims.append(dim)
            elif number == 2 and wire == _LENGTH:
                type_name = bytes(buf[value[0]:value[1]]).decode(errors="replace")
            elif number == 3 and wire == _LENGTH:
                content = value
        if type_name == "str":
            return name, None
        if type_name not in _TYPES or content is None:
            raise _Corrupt(f"{name!r} has tensor type {type_name!r} or no content")
        return name, _Entry(tuple(dims), _TYPES[type_name], [(content[0], content[1] - content[0])])

    def read(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        buffer = np.empty(entry.dims, np.uint16 if entry.stored == BFLOAT16 else entry.stored)
        view, done = memoryview(buffer.reshape(-1)).cast("B"), 0
        try:
            with open(self.path, "rb") as f:
                for offset, count in entry.chunks:
                    f.seek(offset)
                    if f.readinto(view[done:done + count]) != count:
                        raise CheckpointError(f"{self.path} is truncated: {name!r} ends past the end of the file")
                    done += count
        except OSError as error:
            raise CheckpointError(f"cannot read {name!r} from {self.path}: {error}") from error
        return from_bf16_bits(buffer) if entry.stored == BFLOAT16 else buffer

    def lazy(self) -> LazyWeights:
        return LazyWeights(self.specs, self.read)


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_field(number: int, payload: bytes) -> bytes:
    return _key(number, _LENGTH) + _encode_varint(len(payload)) + payload


def write_ckpt(path: str | os.PathLike, specs: Sequence[tuple[str, TensorSpec]],
               load: Callable[[str], np.ndarray]) -> None:
    """Write the tensors `specs` lists (name, shape and the dtype to store) as MindSpore does, calling
    `load(name)` for each in turn; a float tensor whose stored dtype is bfloat16 is rounded from fp32."""
    with open(path, "wb") as f:
        for name, spec in specs:
            if spec.stored not in _TYPE_NAMES:
                raise CheckpointError(f"cannot store {name!r} as {spec.stored} in a .ckpt")
            value = load(name)
            if tuple(value.shape) != spec.shape:
                raise CheckpointError(f"{name}: got shape {tuple(value.shape)}, expected {spec.shape}")
            stored = to_bf16_bits(value) if spec.stored == BFLOAT16 else np.ascontiguousarray(value, spec.stored)
            data = memoryview(stored.reshape(-1)).cast("B")
            dims = b"".join(_key(1, _VARINT) + _encode_varint(d) for d in spec.shape)
            tensor_head = dims + _length_field(2, _TYPE_NAMES[spec.stored].encode())
            for start in range(0, max(len(data), 1), CHUNK_BYTES):
                chunk = data[start:start + CHUNK_BYTES]
                tensor = tensor_head + _key(3, _LENGTH) + _encode_varint(len(chunk))
                tensor_len = len(tensor) + len(chunk)
                value_head = _length_field(1, name.encode()) + _key(2, _LENGTH) + _encode_varint(tensor_len)
                f.write(_key(1, _LENGTH) + _encode_varint(len(value_head) + tensor_len))
                f.write(value_head)
                f.write(tensor)
                f.write(chunk)
