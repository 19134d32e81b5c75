"""Checking training data against the model before anything is compiled.

A sample of the wrong length or a token id outside the vocabulary otherwise surfaces as a shape or
index error from inside the compiled graph. The checks use what `pangu preprocess` recorded (sample
length, tokenizer vocabulary size) and read the data itself only where nothing was recorded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pangu_zoo.data.dataset import DataFiles, resolve_data_files
from pangu_zoo.data.megatron import MegatronDataset
from pangu_zoo.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def check_data_fits_model(data_path: str | Path | list, seq_length: int, vocab_size: int,
                          eod_id: int | None = None) -> None:
    """Raise `ConfigError`/`DataError` unless the samples are `seq_length + 1` ids, all below `vocab_size`."""
    files = resolve_data_files(data_path)
    column = files.metadata.get("column", "input_ids")
    if files.format == "mindrecord":  # Megatron tokens are cut into samples of the model's length
        _check_sample_length(data_path, _first_mindrecord_row(files, column).size, seq_length)
    _check_vocabulary(data_path, files, column, vocab_size)
    eod_id = files.metadata.get("eod_id") if eod_id is None else eod_id
    if eod_id is not None and not 0 <= eod_id < vocab_size:
        raise ConfigError(f"the end-of-document id {eod_id} is outside the model's vocabulary [0, {vocab_size})")


def _check_sample_length(data_path, sample_ids: int, seq_length: int) -> None:
    if sample_ids != seq_length + 1:
        raise ConfigError(f"the samples in {data_path} are {sample_ids} ids (sequence length {sample_ids - 1}), "
                          f"but the model's --seq_length is {seq_length}, which needs {seq_length + 1}: train with "
                          f"--seq_length {sample_ids - 1} or preprocess again with --seq_length {seq_length + 1}")


def _check_vocabulary(data_path, files: DataFiles, column: str, vocab_size: int) -> None:
    recorded = files.metadata.get("vocab_size")
    if recorded is not None:  # the tokenizer may give any id below its size
        if recorded > vocab_size:
            tokenizer = files.metadata.get("tokenizer") or "its"
            raise ConfigError(f"{data_path} was tokenized with the {tokenizer} tokenizer of {recorded} ids, more "
                              f"than the model's vocabulary of {vocab_size}: train with --vocab_size {recorded} "
                              f"(or a model of that vocabulary) or preprocess with the model's tokenizer")
        return
    low, high = _token_range(files, column)
    if low < 0 or high >= vocab_size:
        raise DataError(f"{data_path} holds token ids from {low} to {high}, outside the model's vocabulary "
                        f"[0, {vocab_size}); preprocess it with the model's tokenizer or train with "
                        f"--vocab_size {high + 1}")


def _token_range(files: DataFiles, column: str) -> tuple[int, int]:
    """Smallest and largest token id of the whole data set (read when no tokenizer size was recorded)."""
    if files.format == "megatron":
        data = MegatronDataset(files.paths[0])
        tokens = data.tokens[:data.num_tokens]
        return (int(tokens.min()), int(tokens.max())) if tokens.size else (0, 0)
    logger.info("no tokenizer recorded next to the data: reading every sample to check the token ids")
    ranges = [(int(row.min()), int(row.max())) for row in _mindrecord_rows(files, column) if row.size]
    return (min(low for low, _ in ranges), max(high for _, high in ranges)) if ranges else (0, 0)


def _mindrecord_rows(files: DataFiles, column: str, num_samples: int | None = None):
    """The samples of MindRecord files in stored order; unreadable files become a `DataError`."""
    import mindspore.dataset as ds

    paths = [str(p) for p in files.paths]
    try:
        dataset = ds.MindDataset(paths, columns_list=[column], shuffle=False, num_samples=num_samples)
        for (row,) in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
            yield np.asarray(row).reshape(-1)
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        raise DataError(f"cannot read MindRecord files {paths} with column {column!r}: "
                        f"{lines[-1] if lines else error}") from error


def _first_mindrecord_row(files: DataFiles, column: str) -> np.ndarray:
    for row in _mindrecord_rows(files, column, num_samples=1):
        return row
    raise DataError(f"the MindRecord files {[str(p) for p in files.paths]} hold no samples")
