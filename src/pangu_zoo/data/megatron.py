"""Megatron-LM indexed datasets ("MMIDIDX" `.idx` + `.bin`): writer and memory-mapped reader.

`.idx` layout, little-endian: magic b"MMIDIDX\\x00\\x00", uint64 version 1, uint8 dtype code, uint64 sequence
count N, uint64 document count D (= documents + 1), int32 sizes[N], int64 byte pointers[N], int64 doc_idx[D].
`.bin` is the raw concatenation of all sequences in that dtype.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from pangu_zoo.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_BY_CODE: dict[int, type[np.generic]] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
CODE_BY_DTYPE = {np.dtype(dtype): code for code, dtype in DTYPE_BY_CODE.items()}
_HEADER = struct.Struct("<9sQBQQ")


def token_dtype(vocab_size: int) -> np.dtype:
    """Megatron's "best fitting" token dtype: uint16 when vocab_size < 65500, else int32."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


def index_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.idx")


def data_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.bin")


class MegatronWriter:
    """Write one sequence per document (the Megatron GPT convention, doc_idx = 0..N) to `prefix`.bin/.idx.

    Args:
        prefix: output path without extension.
        dtype: token dtype; use `token_dtype(vocab_size)`.
    """

    def __init__(self, prefix: str | Path, dtype: np.dtype):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_BY_DTYPE:
            raise DataError(f"dtype {self.dtype} has no Megatron dtype code; use uint16 or int32")
        self._bin = open(data_path(self.prefix), "wb")  # noqa: SIM115  closed in finish()
        self._sizes: list[int] = []

    def add_document(self, ids: np.ndarray | list[int]) -> None:
        tokens = np.asarray(ids)
        info = np.iinfo(self.dtype)
        if tokens.size and (tokens.min() < info.min or tokens.max() > info.max):
            raise DataError(f"token ids up to {tokens.max()} do not fit the Megatron dtype {self.dtype}")
        self._bin.write(tokens.astype(self.dtype).tobytes(order="C"))
        self._sizes.append(int(tokens.size))

    def finish(self) -> None:
        """Close the `.bin` and write the `.idx`."""
        self._bin.close()
        sizes = np.asarray(self._sizes, dtype=np.int32)
        pointers = np.zeros(len(sizes), dtype=np.int64)
        np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.arange(len(sizes) + 1, dtype=np.int64)
        with open(index_path(self.prefix), "wb") as index:
            index.write(_HEADER.pack(MAGIC, VERSION, CODE_BY_DTYPE[self.dtype], len(sizes), len(doc_idx)))
            for array in (sizes, pointers, doc_idx):
                index.write(array.astype(array.dtype.newbyteorder("<")).tobytes(order="C"))

    def close(self) -> None:
        if not self._bin.closed:
            self._bin.close()


class MegatronDataset:
    """Memory-mapped reader of `prefix`.bin/.idx; `dataset[i]` is sequence i (1-D array of the stored dtype)."""

    def __init__(self, prefix: str | Path):
        self.prefix = Path(str(prefix).removesuffix(".idx").removesuffix(".bin"))
        idx_file, bin_file = index_path(self.prefix), data_path(self.prefix)
        for file in (idx_file, bin_file):
            if not file.is_file():
                raise DataError(f"Megatron dataset file {file} not found; pass the prefix without .bin/.idx")
        raw = np.memmap(idx_file, dtype=np.uint8, mode="r")
        if raw.size < _HEADER.size:
            raise DataError(f"{idx_file} is too short ({raw.size} bytes) to be a Megatron index")
        magic, version, code, count, doc_count = _HEADER.unpack(raw[:_HEADER.size].tobytes())
        if magic != MAGIC or version != VERSION:
            raise DataError(f"{idx_file} is not a Megatron MMIDIDX version 1 index (magic {magic!r}, "
                            f"version {version})")
        if code not in DTYPE_BY_CODE:
            raise DataError(f"{idx_file} has unknown dtype code {code}")
        expected = _HEADER.size + 12 * count + 8 * doc_count
        if raw.size < expected:
            raise DataError(f"{idx_file} is truncated: {raw.size} bytes, the header promises {expected}")
        self.dtype = np.dtype(DTYPE_BY_CODE[code])
        offset = _HEADER.size
        self.sizes = np.frombuffer(raw, dtype="<i4", count=count, offset=offset)
        self.pointers = np.frombuffer(raw, dtype="<i8", count=count, offset=offset + 4 * count)
        self.doc_idx = np.frombuffer(raw, dtype="<i8", count=doc_count, offset=offset + 12 * count)
        self.tokens = np.memmap(bin_file, dtype=self.dtype, mode="r")
        total = int(self.sizes.sum(dtype=np.int64))
        if self.tokens.size < total:
            raise DataError(f"{bin_file} holds {self.tokens.size} tokens, the index lists {total}")

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int) -> np.ndarray:
        start = int(self.pointers[index]) // self.dtype.itemsize
        return self.tokens[start:start + int(self.sizes[index])]

    @property
    def num_documents(self) -> int:
        return len(self.doc_idx) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))
