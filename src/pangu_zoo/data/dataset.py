"""The training dataset: packed samples -> batches of input_ids, position_ids, attention_mask, loss_mask.

Samples come from MindRecord files written by `pangu preprocess` (each row one int32 [seq_length + 1]
sample) or from a Megatron `.bin/.idx` pair (all tokens, cut into consecutive seq_length + 1 samples).
The sample order is computed here in NumPy, so it is the same on every machine: a seeded permutation,
then `data_start_index` samples skipped (to resume), then dealt round-robin over the data-parallel ranks.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pangu_zoo.data.masks import eod_reset_positions_and_mask, loss_mask
from pangu_zoo.data.megatron import MegatronDataset
from pangu_zoo.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

OUTPUT_COLUMNS = ["input_ids", "position_ids", "attention_mask", "loss_mask"]


def sample_order(num_samples: int, rank: int = 0, rank_size: int = 1, shuffle: bool = True, seed: int = 1,
                 start: int = 0) -> np.ndarray:
    """Indices of the samples rank `rank` reads, in order (int64).

    The global order (a permutation seeded by `seed`, or 0..n-1) drops its first `start` entries; the rest is
    dealt round-robin over `rank_size` ranks and cut so that every rank gets the same count.
    """
    if not 0 <= rank < rank_size:
        raise ConfigError(f"rank ({rank}) must be in [0, rank_size) with rank_size {rank_size}")
    if not 0 <= start <= num_samples:
        raise ConfigError(f"data_start_index ({start}) must be in [0, {num_samples}] (the sample count)")
    order = np.random.RandomState(seed).permutation(num_samples) if shuffle else np.arange(num_samples)
    remaining = order[start:]
    per_rank = len(remaining) // rank_size
    return remaining[rank::rank_size][:per_rank].astype(np.int64)


@dataclass
class DataFiles:
    """Resolved training data: format, the data files (MindRecord) or prefix (Megatron), and metadata."""

    format: str
    paths: list[Path]
    metadata: dict


def _read_metadata(directory: Path) -> dict:
    found = []
    for candidate in sorted(directory.glob("*.json")):
        try:
            content = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(content, dict) and "eod_id" in content:
            found.append(content)
    return found[0] if len(found) == 1 else {}


def resolve_data_files(data_path: str | Path | list) -> DataFiles:
    """MindRecord files (every file but *.db / *.json in a directory, sorted) or a Megatron prefix."""
    if isinstance(data_path, list | tuple):
        paths = sorted(Path(p) for p in data_path)
    else:
        path = Path(data_path)
        if Path(f"{path}.idx").is_file() or path.suffix in (".idx", ".bin"):
            prefix = path.with_suffix("") if path.suffix in (".idx", ".bin") else path
            return DataFiles("megatron", [prefix], _read_metadata(prefix.parent))
        if path.is_dir():
            paths = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix not in (".db", ".json") and not p.name.startswith("."))
        else:
            paths = [path]
    idx_files = [p for p in paths if p.suffix == ".idx"]
    if idx_files:
        if len(idx_files) != 1:
            raise DataError(f"{data_path} holds {len(idx_files)} Megatron datasets; pass one prefix")
        return DataFiles("megatron", [idx_files[0].with_suffix("")], _read_metadata(idx_files[0].parent))
    missing = [p for p in paths if not p.is_file()]
    if not paths or missing:
        raise DataError(f"no training data at {data_path} ({'missing: ' + str(missing[0]) if missing else 'empty'}); "
                        f"pass the output of `pangu preprocess` (a directory, MindRecord files or a Megatron prefix)")
    return DataFiles("mindrecord", paths, _read_metadata(paths[0].parent))


class MegatronSamples:
    """Consecutive `sample_length` windows over all tokens of a Megatron dataset (int32 rows)."""

    def __init__(self, prefix: Path, sample_length: int):
        self.data = MegatronDataset(prefix)
        self.sample_length = sample_length
        self._tokens = self.data.tokens[:self.data.num_tokens]

    def __len__(self) -> int:
        return len(self._tokens) // self.sample_length

    def __getitem__(self, index: int) -> np.ndarray:
        start = int(index) * self.sample_length
        return np.asarray(self._tokens[start:start + self.sample_length], dtype=np.int32)


class _OrderedSource:
    """Random-access source for GeneratorDataset that yields samples in a given index order."""

    def __init__(self, samples: MegatronSamples, order: np.ndarray):
        self.samples, self.order = samples, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> tuple[np.ndarray]:
        return (self.samples[self.order[position]],)


class BatchTransform:
    """Batch of samples [b, s + 1] -> (input_ids [b, s+1] int32, position_ids [b, s] int32,
    attention_mask [b, s, s] int8, loss_mask [b, s] float32)."""

    def __init__(self, eod_id: int, pad_id: int, eod_reset: bool = True):
        self.eod_id, self.pad_id, self.eod_reset = eod_id, pad_id, eod_reset

    def __call__(self, input_ids: np.ndarray):
        input_ids = np.asarray(input_ids, dtype=np.int32)
        inputs = input_ids[:, :-1]
        if self.eod_reset:
            position_ids, attention_mask = eod_reset_positions_and_mask(inputs, self.eod_id)
        else:  # no document boundaries: plain causal attention over the whole sample
            position_ids, attention_mask = eod_reset_positions_and_mask(inputs, eod_id=-1)
        return input_ids, position_ids, attention_mask, loss_mask(inputs, self.pad_id)


def create_dataset(batch_size: int, data_path: str | Path | list, device_num: int = 1, rank: int = 0,
                   drop: bool = True, data_start_index: int = 0, eod_reset: bool = True,
                   eod_id: int | None = None, pad_id: int | None = None, column_name: str | None = None,
                   num_samples: int | None = None, shuffle: bool = True, seed: int = 1,
                   seq_length: int | None = None, num_parallel_workers: int = 1):
    """MindSpore dataset of training batches for data-parallel rank `rank` of `device_num`.

    Args:
        batch_size: samples per batch on this rank.
        data_path: `pangu preprocess` output: a directory, MindRecord file(s), or a Megatron prefix.
        data_start_index: global samples already consumed (skipped, for resuming).
        eod_id, pad_id: default to the values recorded by `pangu preprocess` (`<output>.json`).
        column_name: MindRecord column (default: recorded, else "input_ids").
        num_samples: at most this many samples on this rank.
        seq_length: model sequence length; Megatron samples are seq_length + 1 ids (default: recorded - 1).

    Returns:
        `mindspore.dataset.Dataset` with columns input_ids [b, s+1] int32, position_ids [b, s] int32,
        attention_mask [b, s, s] int8 and loss_mask [b, s] float32 (0 where the input token is pad_id).
    """
    import mindspore.dataset as ds

    if batch_size < 1:
        raise ConfigError(f"batch_size ({batch_size}) must be at least 1")
    files = resolve_data_files(data_path)
    metadata = files.metadata
    eod_id = metadata.get("eod_id") if eod_id is None else eod_id
    if eod_id is None:
        raise ConfigError(f"no eod_id given and no `pangu preprocess` metadata (.json) next to {data_path}; "
                          f"pass eod_id (and pad_id) explicitly")
    pad_id = metadata.get("pad_id", eod_id) if pad_id is None else pad_id
    column_name = column_name or metadata.get("column", "input_ids")

    if files.format == "megatron":
        sample_length = seq_length + 1 if seq_length else metadata.get("seq_length", 1025)
        samples = MegatronSamples(files.paths[0], sample_length)
        order = sample_order(len(samples), rank, device_num, shuffle, seed, data_start_index)[:num_samples]
        dataset = ds.GeneratorDataset(_OrderedSource(samples, order), column_names=[column_name], shuffle=False)
    else:
        paths = [str(p) for p in files.paths]
        try:
            total = ds.MindDataset(paths, columns_list=[column_name], shuffle=False).get_dataset_size()
        except RuntimeError as error:
            raise DataError(f"cannot read MindRecord files {paths} with column {column_name!r}: "
                            f"{str(error).strip().splitlines()[-1] if str(error).strip() else error}") from error
        order = sample_order(total, rank, device_num, shuffle, seed, data_start_index)[:num_samples]
        if len(order) == 0:
            raise DataError(f"rank {rank} of {device_num} gets no samples from {total} "
                            f"(data_start_index {data_start_index})")
        sampler = ds.SubsetSampler(order.tolist())
        dataset = ds.MindDataset(paths, columns_list=[column_name], sampler=sampler)
    logger.debug("dataset: %d samples for rank %d/%d from %s", len(order), rank, device_num, data_path)
    dataset = dataset.batch(batch_size, drop_remainder=drop)
    return dataset.map(operations=BatchTransform(eod_id, pad_id, eod_reset), input_columns=[column_name],
                       output_columns=OUTPUT_COLUMNS, num_parallel_workers=num_parallel_workers)
