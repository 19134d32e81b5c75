"""Files of packed SFT rows: the demo's three Megatron datasets, a MindRecord file and a metadata JSON.

For `--output_prefix out/c3` the files are (base name `c3_packed`, as the demo adds "_packed" to the prefix):

    out/c3_packed_input_ids_document.bin/.idx       Megatron MMIDIDX, int32 (dtype code 4), one item and one
    out/c3_packed_attention_mask_document.bin/.idx  document per row (formats.md §3.1-3.3, §6.4)
    out/c3_packed_labels_document.bin/.idx
    out/c3_packed.mindrecord (+ .db)                 columns input_ids, attention_mask, labels: int32 [seq_length]
    out/c3_packed.json                               metadata (tokenizer, pad/eod ids, seq_length, markers) + summary
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pangu_zoo.data.megatron import MegatronDataset, MegatronWriter
from pangu_zoo.data.sft.packing import PackedRow
from pangu_zoo.errors import DataError

COLUMNS = ("input_ids", "attention_mask", "labels")
OUTPUT_FORMATS = ("megatron", "mindrecord")
METADATA_KIND = "sft_packed"
WRITE_BATCH = 1024  # rows per MindRecord write_raw_data call
# MindRecord pads a file to its header size (16 MiB by default) plus whole pages (32 MiB by default); a 1 MiB
# header still indexes thousands of 4 MiB pages
PAGE_SIZE = 1 << 22
HEADER_SIZE = 1 << 20


def base_name(output_prefix: str | Path) -> str:
    """`c3_packed` for the output prefix `out/c3`."""
    return f"{Path(output_prefix).name}_packed"


def megatron_name(base: str, column: str) -> str:
    return f"{base}_{column}_document"


def mindrecord_name(base: str) -> str:
    return f"{base}.mindrecord"


def metadata_name(base: str) -> str:
    return f"{base}.json"


class PackedWriter:
    """Write rows to the chosen formats under `directory` (a staging directory: files keep their final names)."""

    def __init__(self, directory: Path, base: str, seq_length: int, formats: tuple[str, ...]):
        self.seq_length, self.rows = seq_length, 0
        self._megatron = {column: MegatronWriter(directory / megatron_name(base, column), np.dtype(np.int32))
                          for column in COLUMNS} if "megatron" in formats else {}
        self._mindrecord = None
        if "mindrecord" in formats:
            from mindspore.mindrecord import FileWriter

            self._mindrecord = FileWriter(str(directory / mindrecord_name(base)), shard_num=1, overwrite=True)
            self._mindrecord.set_header_size(HEADER_SIZE)
            self._mindrecord.set_page_size(PAGE_SIZE)
            self._mindrecord.add_schema({column: {"type": "int32", "shape": [seq_length]} for column in COLUMNS},
                                        "packed sft rows")
        self._buffer: list[dict] = []

    def write(self, row: PackedRow) -> None:
        arrays = {column: np.asarray(getattr(row, column), dtype=np.int32) for column in COLUMNS}
        for column, array in arrays.items():
            if array.shape != (self.seq_length,):
                raise DataError(f"a packed row's {column} has shape {array.shape}, expected ({self.seq_length},)")
            if column in self._megatron:
                self._megatron[column].add_document(array)
        if self._mindrecord is not None:
            self._buffer.append(arrays)
            if len(self._buffer) >= WRITE_BATCH:
                self._flush()
        self.rows += 1

    def _flush(self) -> None:
        if self._buffer:
            self._mindrecord.write_raw_data(self._buffer)
            self._buffer = []

    def finish(self) -> None:
        for writer in self._megatron.values():
            writer.finish()
        if self._mindrecord is not None:
            self._flush()
            self._mindrecord.commit()

    def close(self) -> None:
        """Release open files after a failure (the staging directory is discarded)."""
        for writer in self._megatron.values():
            writer.close()


def write_metadata(path: Path, metadata: dict) -> None:
    path.write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@dataclass
class PackedData:
    """A packed SFT data set on disk: its metadata and where its files are."""

    directory: Path
    base: str
    metadata: dict

    @property
    def seq_length(self) -> int:
        return int(self.metadata["seq_length"])

    @property
    def formats(self) -> list[str]:
        return list(self.metadata.get("formats", []))

    def megatron_prefix(self, column: str) -> Path:
        return self.directory / megatron_name(self.base, column)

    @property
    def mindrecord_path(self) -> Path:
        return self.directory / mindrecord_name(self.base)

    def megatron_columns(self) -> dict[str, MegatronDataset]:
        """The three Megatron datasets, checked to hold the same number of rows of `seq_length`."""
        columns = {column: MegatronDataset(self.megatron_prefix(column)) for column in COLUMNS}
        for column, data in columns.items():
            if data.dtype != np.int32:
                raise DataError(f"{self.megatron_prefix(column)} holds {data.dtype}, packed SFT rows are int32")
            if len(data) != len(columns["input_ids"]) or (len(data) and set(data.sizes.tolist()) != {self.seq_length}):
                raise DataError(f"{self.megatron_prefix(column)} does not hold {len(columns['input_ids'])} rows of "
                                f"{self.seq_length} ids like {self.megatron_prefix('input_ids')}")
        return columns

    def rows(self) -> Iterator[PackedRow]:
        """Every row in stored order (from the Megatron files when written, else the MindRecord file)."""
        if "megatron" in self.formats:
            columns = self.megatron_columns()
            for index in range(len(columns["input_ids"])):
                yield PackedRow(*(np.asarray(columns[column][index], dtype=np.int32) for column in COLUMNS))
            return
        import mindspore.dataset as ds

        try:
            dataset = ds.MindDataset(str(self.mindrecord_path), columns_list=list(COLUMNS), shuffle=False)
            for values in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
                yield PackedRow(*(np.asarray(value, dtype=np.int32) for value in values))
        except RuntimeError as error:
            lines = str(error).strip().splitlines()
            raise DataError(f"cannot read {self.mindrecord_path}: {lines[-1] if lines else error}") from error


def _load(metadata_file: Path) -> PackedData:
    try:
        metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read the packed SFT metadata {metadata_file}: {error}") from error
    if not isinstance(metadata, dict) or metadata.get("kind") != METADATA_KIND:
        raise DataError(f"{metadata_file} is not the metadata of packed SFT data (written by `pangu sft-preprocess`)")
    return PackedData(metadata_file.parent, metadata_file.name.removesuffix(".json"), metadata)


def find_packed_data(path: str | Path) -> PackedData:
    """Packed SFT data named by its output prefix (`out/c3`), its base (`out/c3_packed`), its metadata file, or a
    directory holding exactly one such data set."""
    path = Path(path)
    if path.suffix == ".json" and path.is_file():
        return _load(path)
    for candidate in (Path(f"{path}_packed.json"), Path(f"{path}.json")):
        if candidate.is_file():
            return _load(candidate)
    if path.is_dir():
        found = [file for file in sorted(path.glob("*_packed.json")) if _is_packed_metadata(file)]
        if len(found) == 1:
            return _load(found[0])
        if found:
            raise DataError(f"{path} holds {len(found)} packed SFT data sets ({', '.join(f.name for f in found)}); "
                            f"pass one output prefix")
    raise DataError(f"no packed SFT data at {path}: pass the --output_prefix of `pangu sft-preprocess` "
                    f"(or its _packed.json, or the directory holding it)")


def _is_packed_metadata(file: Path) -> bool:
    try:
        return json.loads(file.read_text(encoding="utf-8")).get("kind") == METADATA_KIND
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
