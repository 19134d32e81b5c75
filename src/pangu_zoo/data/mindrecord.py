"""Writing packed samples to MindRecord files: schema {column: int32 [-1]}, one or more partitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WRITE_BATCH = 1024  # samples per write_raw_data call, as in the reference
# MindRecord pads every file to whole pages (32 MiB by default); 4 MiB keeps small outputs small.
PAGE_SIZE = 1 << 22


def partition_names(output_file: Path, partitions: int) -> list[str]:
    """File names of the partitions: `output_file` itself for one, else `output_file` + zero-padded index."""
    if partitions == 1:
        return [output_file.name]
    width = len(str(partitions - 1))
    return [f"{output_file.name}{index:0{width}d}" for index in range(partitions)]


class MindRecordPartitions:
    """Deal samples round-robin over `len(paths)` MindRecord files, so each holds a distinct share.

    Sample k goes to partition k % partitions; reading the partitions in order therefore does not give the
    original order back, which does not matter for shuffled training.
    """

    def __init__(self, paths: list[Path], column: str, description: str):
        from mindspore.mindrecord import FileWriter

        self.column = column
        self._writers = []
        for path in paths:
            writer = FileWriter(str(path), shard_num=1, overwrite=True)
            writer.set_page_size(PAGE_SIZE)
            writer.add_schema({column: {"type": "int32", "shape": [-1]}}, description)
            self._writers.append(writer)
        self._buffers: list[list[dict]] = [[] for _ in paths]
        self.counts = [0] * len(paths)
        self._next = 0

    def write(self, sample: np.ndarray) -> None:
        index = self._next
        self._buffers[index].append({self.column: np.asarray(sample, dtype=np.int32)})
        self.counts[index] += 1
        if len(self._buffers[index]) >= WRITE_BATCH:
            self._flush(index)
        self._next = (index + 1) % len(self._writers)

    def _flush(self, index: int) -> None:
        if self._buffers[index]:
            self._writers[index].write_raw_data(self._buffers[index])
            self._buffers[index] = []

    def commit(self) -> None:
        for index, writer in enumerate(self._writers):
            self._flush(index)
            writer.commit()
