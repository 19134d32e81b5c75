"""A whole SFT preprocessing run (JSON lines -> packed rows on disk) and the merge of several such outputs.

Outputs are staged in a hidden directory next to them and appear only when the run succeeded, so a failed run
leaves nothing behind. The summary (samples read, kept, dropped as over-long, rows, packing efficiency =
real tokens / (rows x seq_length), tokens trained) is returned and stored in the metadata JSON.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from pangu_zoo.data.sft.conversations import find_inputs, read_conversations
from pangu_zoo.data.sft.labels import IGNORE_INDEX, SampleEncoder
from pangu_zoo.data.sft.markers import ChatMarkers, markers_for
from pangu_zoo.data.sft.outputs import (
    METADATA_KIND,
    OUTPUT_FORMATS,
    PackedData,
    PackedWriter,
    base_name,
    find_packed_data,
    metadata_name,
    write_metadata,
)
from pangu_zoo.data.sft.packing import PackedRow, packed_rows, plan_packing
from pangu_zoo.data.staging import StagingDir
from pangu_zoo.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# what must agree between caches that are merged
MERGE_KEYS = ("seq_length", "tokenizer", "vocab_size", "pad_id", "eod_id", "append_eod", "bos_id", "turn_start",
              "turn_end", "turn_end_id")


@dataclass
class SftSummary:
    """What an SFT preprocessing (or merge) run read and wrote."""

    files: int = 0
    text_bytes: int = 0
    samples_read: int = 0
    samples_kept: int = 0
    dropped_too_long: int = 0
    rows: int = 0
    seq_length: int = 0
    real_tokens: int = 0
    tokens_trained: int = 0
    packing_efficiency: float = 0.0
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)

    def count(self, row: PackedRow) -> None:
        self.rows += 1
        self.real_tokens += int(np.count_nonzero(row.attention_mask))
        self.tokens_trained += int(np.count_nonzero(row.labels != IGNORE_INDEX))

    def finish(self, seconds: float) -> None:
        self.packing_efficiency = self.real_tokens / (self.rows * self.seq_length) if self.rows else 0.0
        self.seconds = seconds

    def line(self) -> str:
        rate = self.samples_read / self.seconds if self.seconds else 0.0
        return (f"{self.samples_read} samples read, {self.samples_kept} kept, {self.dropped_too_long} dropped as "
                f"longer than {self.seq_length}; {self.rows} rows, packing efficiency "
                f"{100 * self.packing_efficiency:.1f}%, {self.tokens_trained} tokens trained of "
                f"{self.real_tokens}; {self.seconds:.1f} s ({rate:.0f} samples/s)")

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "outputs"}


def parse_output_format(value: str) -> tuple[str, ...]:
    """'megatron', 'mindrecord' or 'both' -> the formats to write."""
    if value == "both":
        return OUTPUT_FORMATS
    if value not in OUTPUT_FORMATS:
        raise ConfigError(f"--output_format {value!r}: choose megatron, mindrecord or both")
    return (value,)


def _publish(staging: StagingDir, writer: PackedWriter, base: str, metadata: dict, summary: SftSummary,
             started: float) -> SftSummary:
    writer.finish()
    summary.finish(time.perf_counter() - started)
    write_metadata(staging.file(metadata_name(base)), {**metadata, "summary": summary.as_dict()})
    summary.outputs = [str(path) for path in staging.publish()]
    return summary


def preprocess_sft(inputs: Sequence[str], tokenizer, seq_length: int, output_prefix: str | Path,
                   output_formats: Sequence[str] = OUTPUT_FORMATS, input_format: str = "auto",
                   markers: ChatMarkers | None = None, append_eod: bool = False, num_workers: int = 1,
                   progress: bool = False) -> SftSummary:
    """Read the conversations of `inputs` (paths or globs), encode them with the chat template and its labels,
    pack them into rows of `seq_length` and write `output_formats` under `output_prefix`."""
    from tqdm import tqdm

    from pangu_zoo.tokenizers.pool import EncodePool

    if seq_length < 2:
        raise ConfigError(f"--seq_length ({seq_length}) must be at least 2")
    started = time.perf_counter()
    files = find_inputs(inputs)
    markers = markers or markers_for(tokenizer)
    encoder = SampleEncoder(tokenizer, markers, append_eod)
    summary = SftSummary(files=len(files), text_bytes=sum(f.stat().st_size for f in files), seq_length=seq_length)
    conversations = chain.from_iterable(read_conversations(file, input_format) for file in files)
    with EncodePool(tokenizer, num_workers) as pool:
        samples = list(tqdm(encoder.encode_all(conversations, pool), unit=" samples", desc="sft-preprocess",
                            disable=not progress, file=sys.stderr))
    summary.samples_read = len(samples)
    if not samples:
        raise DataError(f"no conversations in {', '.join(map(str, files))} (empty files?)")
    plan = plan_packing([len(ids) for ids, _ in samples], seq_length)
    summary.dropped_too_long = len(plan.dropped)
    summary.samples_kept = summary.samples_read - summary.dropped_too_long
    if not plan.rows:
        longest = max(len(ids) for ids, _ in samples)
        raise DataError(f"all {len(samples)} samples are longer than --seq_length {seq_length} (shortest "
                        f"{min(len(ids) for ids, _ in samples)}, longest {longest} tokens); raise --seq_length")
    base = base_name(output_prefix)
    staging = StagingDir(Path(output_prefix).parent)
    writer = None
    try:
        writer = PackedWriter(staging.path, base, seq_length, tuple(output_formats))
        for row in packed_rows(samples, plan, seq_length, tokenizer.pad_id):
            writer.write(row)
            summary.count(row)
        metadata = {
            "kind": METADATA_KIND, "formats": list(output_formats), "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id,
            "eod_id": tokenizer.document_separator_id, "append_eod": append_eod,
            "bos_id": encoder.bos_id, "seq_length": seq_length, "turn_start": markers.turn_start,
            "turn_end": markers.turn_end, "turn_end_id": encoder.marker_encoder.turn_end_id,
            "inputs": [str(file) for file in files],
        }
        return _publish(staging, writer, base, metadata, summary, started)
    except BaseException:
        if writer is not None:
            writer.close()
        staging.discard()
        raise


def _check_compatible(caches: list[PackedData]) -> None:
    first = caches[0]
    for cache in caches[1:]:
        for key in MERGE_KEYS:
            if cache.metadata.get(key) != first.metadata.get(key):
                raise DataError(f"cannot merge {cache.directory / cache.base} into {first.directory / first.base}: "
                                f"their {key} differs ({cache.metadata.get(key)!r} vs {first.metadata.get(key)!r}); "
                                f"preprocess them with the same tokenizer, markers and --seq_length")


def merge_packed(sources: Sequence[str | Path], output_prefix: str | Path,
                 output_formats: Sequence[str] = OUTPUT_FORMATS) -> SftSummary:
    """Concatenate the rows of several packed outputs (in the given order) into one, as Megatron's
    `--merge-group-keys` does for the demo's caches."""
    started = time.perf_counter()
    caches = [find_packed_data(source) for source in sources]
    if not caches:
        raise ConfigError("--merge needs at least one packed output prefix")
    _check_compatible(caches)
    seq_length = caches[0].seq_length
    summary = SftSummary(seq_length=seq_length)
    for cache in caches:
        recorded = cache.metadata.get("summary", {})
        for key in ("files", "text_bytes", "samples_read", "samples_kept", "dropped_too_long"):
            setattr(summary, key, getattr(summary, key) + int(recorded.get(key, 0)))
    base = base_name(output_prefix)
    staging = StagingDir(Path(output_prefix).parent)
    writer = None
    try:
        writer = PackedWriter(staging.path, base, seq_length, tuple(output_formats))
        for cache in caches:
            for row in cache.rows():
                writer.write(row)
                summary.count(row)
        metadata = {**{key: value for key, value in caches[0].metadata.items() if key not in ("summary", "inputs")},
                    "formats": list(output_formats),
                    "inputs": [input_file for cache in caches for input_file in cache.metadata.get("inputs", [])],
                    "merged_from": [str(cache.directory / cache.base) for cache in caches]}
        return _publish(staging, writer, base, metadata, summary, started)
    except BaseException:
        if writer is not None:
            writer.close()
        staging.discard()
        raise
