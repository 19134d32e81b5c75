"""Packed SFT rows -> the four columns the training network takes (the same as pretraining's).

A row of S packed tokens (input_ids, attention_mask = sample number per token with 0 for padding, labels)
becomes:

* input_ids [S+1]: the row and one pad column (the network predicts input_ids[1:] from input_ids[:-1]);
* position_ids [S]: restarting at 0 at the first token of each sample (0 on padding);
* attention_mask [S, S]: causal within each sample, nothing across samples; a padding query attends only to
  itself, so its softmax stays finite;
* loss_mask [S]: 1 at t where labels[t+1] is trained (!= -100) and token t+1 belongs to the same sample as t.

So a packed row trains exactly as its samples would one by one. Trained labels must equal their ids (the
network's labels are the ids); a row where one does not is refused with `DataError`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pangu_zoo.data.dataset import OUTPUT_COLUMNS, sample_order
from pangu_zoo.data.sft.labels import IGNORE_INDEX
from pangu_zoo.data.sft.outputs import COLUMNS, PackedData, find_packed_data
from pangu_zoo.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def sample_positions_and_mask(sample_numbers: np.ndarray,
                              mask_dtype: np.dtype = np.int8) -> tuple[np.ndarray, np.ndarray]:
    """position_ids [b, s] int32 and attention_mask [b, s, s] (1 = query may attend to key) of packed rows
    whose tokens carry their sample number (0 = padding)."""
    samples = np.asarray(sample_numbers)
    _, seq = samples.shape
    steps = np.arange(seq)
    starts_sample = np.ones_like(samples, dtype=bool)
    starts_sample[:, 1:] = samples[:, 1:] != samples[:, :-1]
    sample_start = np.maximum.accumulate(np.where(starts_sample, steps, 0), axis=1)
    position_ids = np.where(samples > 0, steps - sample_start, 0).astype(np.int32)
    causal = np.tril(np.ones((seq, seq), dtype=bool))
    same_sample = (samples[:, :, None] == samples[:, None, :]) & (samples[:, :, None] > 0)
    attention_mask = (same_sample & causal) | np.eye(seq, dtype=bool)
    return position_ids, attention_mask.astype(mask_dtype)


def shifted_loss_mask(labels: np.ndarray, sample_numbers: np.ndarray) -> np.ndarray:
    """[b, s] float32: 1 where the prediction made at t (of token t+1) is trained."""
    labels, samples = np.asarray(labels), np.asarray(sample_numbers)
    mask = np.zeros(labels.shape, dtype=np.float32)
    mask[:, :-1] = ((labels[:, 1:] != IGNORE_INDEX) & (samples[:, 1:] == samples[:, :-1])
                    & (samples[:, :-1] > 0))
    return mask


class SftBatchTransform:
    """Batch of rows (input_ids, attention_mask, labels: [b, s] each) -> (input_ids [b, s+1] int32, position_ids
    [b, s] int32, attention_mask [b, s, s] int8, loss_mask [b, s] float32)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, input_ids, sample_numbers, labels):
        input_ids = np.asarray(input_ids, dtype=np.int32)
        labels = np.asarray(labels, dtype=np.int32)
        trained = labels != IGNORE_INDEX
        if not np.array_equal(labels[trained], input_ids[trained]):
            rows, columns = np.nonzero(trained & (labels != input_ids))
            raise DataError(f"a packed row has label {labels[rows[0], columns[0]]} at position {columns[0]} where "
                            f"its token is {input_ids[rows[0], columns[0]]}: trained labels must equal their ids")
        position_ids, attention_mask = sample_positions_and_mask(sample_numbers)
        pad_column = np.full((input_ids.shape[0], 1), self.pad_id, dtype=np.int32)
        return (np.concatenate([input_ids, pad_column], axis=1), position_ids, attention_mask,
                shifted_loss_mask(labels, sample_numbers))


class _MegatronRows:
    """Random-access source for GeneratorDataset: the rows of the three Megatron datasets in `order`."""

    def __init__(self, data: PackedData, order: np.ndarray):
        self.columns = data.megatron_columns()
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> tuple[np.ndarray, ...]:
        index = int(self.order[position])
        return tuple(np.asarray(self.columns[column][index], dtype=np.int32) for column in COLUMNS)


def _row_count(data: PackedData, data_format: str) -> int:
    if data_format == "megatron":
        return len(data.megatron_columns()["input_ids"])
    import mindspore.dataset as ds

    try:
        return ds.MindDataset(str(data.mindrecord_path), columns_list=list(COLUMNS), shuffle=False).get_dataset_size()
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        raise DataError(f"cannot read {data.mindrecord_path}: {lines[-1] if lines else error}") from error


def _choose_format(data: PackedData, data_format: str) -> str:
    if data_format == "auto":
        return "mindrecord" if "mindrecord" in data.formats else "megatron"
    if data_format not in data.formats:
        raise ConfigError(f"{data.directory / data.base} holds {', '.join(data.formats)} rows, not {data_format}")
    return data_format


def check_sft_data_fits_model(data_path: str | Path, seq_length: int, vocab_size: int) -> None:
    """`ConfigError` unless the packed rows are `seq_length` tokens of a tokenizer that fits `vocab_size`."""
    data = find_packed_data(data_path)
    if data.seq_length != seq_length:
        raise ConfigError(f"the packed SFT rows in {data.directory / data.base} are {data.seq_length} tokens, but the "
                          f"model's --seq_length is {seq_length}: train with --seq_length {data.seq_length} or "
                          f"preprocess again with --seq_length {seq_length}")
    recorded = int(data.metadata.get("vocab_size", 0))
    if recorded > vocab_size:
        raise ConfigError(f"{data.directory / data.base} was tokenized with the {data.metadata.get('tokenizer')} "
                          f"tokenizer of {recorded} ids, more than the model's vocabulary of {vocab_size}: train with "
                          f"--vocab_size {recorded} or preprocess with the model's tokenizer")


def create_sft_dataset(batch_size: int, data_path: str | Path, device_num: int = 1, rank: int = 0,
                       drop: bool = True, data_start_index: int = 0, num_samples: int | None = None,
                       shuffle: bool = True, seed: int = 1, seq_length: int | None = None,
                       data_format: str = "auto", num_parallel_workers: int = 1):
    """MindSpore dataset of SFT training batches for data-parallel rank `rank` of `device_num`.

    Args mirror `pangu_zoo.data.dataset.create_dataset`: a sample is one packed row; the row order is the same
    seeded permutation, minus `data_start_index` rows (to resume), dealt round-robin over the ranks.
        data_path: the `--output_prefix` of `pangu sft-preprocess`, its `_packed.json`, or their directory.
        seq_length: the model's sequence length, which must equal the packed row length (`ConfigError`).
        data_format: "mindrecord", "megatron" or "auto" (MindRecord when it was written).

    Returns:
        `mindspore.dataset.Dataset` with columns input_ids [b, s+1] int32, position_ids [b, s] int32,
        attention_mask [b, s, s] int8 and loss_mask [b, s] float32.
    """
    import mindspore.dataset as ds

    if batch_size < 1:
        raise ConfigError(f"batch_size ({batch_size}) must be at least 1")
    data = find_packed_data(data_path)
    if seq_length is not None and seq_length != data.seq_length:
        raise ConfigError(f"the packed SFT rows in {data.directory / data.base} are {data.seq_length} tokens; the "
                          f"model's seq_length {seq_length} must equal it (preprocess with --seq_length {seq_length})")
    data_format = _choose_format(data, data_format)
    order = sample_order(_row_count(data, data_format), rank, device_num, shuffle, seed, data_start_index)
    order = order[:num_samples]
    if len(order) == 0:
        raise DataError(f"rank {rank} of {device_num} gets no packed rows from {data.directory / data.base} "
                        f"(data_start_index {data_start_index})")
    if data_format == "megatron":
        dataset = ds.GeneratorDataset(_MegatronRows(data, order), column_names=list(COLUMNS), shuffle=False)
    else:
        dataset = ds.MindDataset(str(data.mindrecord_path), columns_list=list(COLUMNS),
                                 sampler=ds.SubsetSampler(order.tolist()))
    logger.debug("sft dataset: %d rows for rank %d/%d from %s", len(order), rank, device_num, data_path)
    dataset = dataset.batch(batch_size, drop_remainder=drop)
    return dataset.map(operations=SftBatchTransform(int(data.metadata["pad_id"])), input_columns=list(COLUMNS),
                       output_columns=OUTPUT_COLUMNS, num_parallel_workers=num_parallel_workers)
