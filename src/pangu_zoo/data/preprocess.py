"""Turn raw text into training data: MindRecord samples of `seq_length` ids, or a Megatron indexed dataset.

    python -m pangu_zoo.data.preprocess --input_glob 'corpus/*.txt' --tokenizer jieba --model_file vocab.model \\
        --output_file out/train.mindrecord --file_partition 4 --num_workers 8

Each document (a blank-line paragraph, a WikiText passage or a LAMBADA text) is tokenised and followed by the
`--eot` id. For MindRecord the ids of all files, in sorted path order, form one stream cut into consecutive
`seq_length` samples (packing crosses file boundaries; only the last incomplete sample is dropped) that are
dealt round-robin over the partitions. Megatron output keeps one sequence per document and does no packing.
Outputs are staged under temporary names and appear only when everything succeeded.
`--handler pangu_instruction` preprocesses instruction data for SFT instead (`pangu sft-preprocess`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pangu_zoo.data.corpus import DATASET_TYPES, find_input_files, read_utf8, split_documents
from pangu_zoo.data.packing import SequencePacker
from pangu_zoo.data.sft.cli import add_instruction_arguments
from pangu_zoo.data.sft.cli import run as run_instruction
from pangu_zoo.data.staging import StagingDir
from pangu_zoo.errors import ConfigError, DataError, InputError
from pangu_zoo.tokenizers import canonical_kind, load_tokenizer
from pangu_zoo.tokenizers.base import Tokenizer
from pangu_zoo.tokenizers.pangu_tokenizer import SEGMENTERS, PanguTokenizer

logger = logging.getLogger(__name__)

FORMATS = ("mindrecord", "megatron")
HANDLERS = ("pretrain", "pangu_instruction")


@dataclass
class PreprocessSummary:
    """What a preprocessing run read and wrote."""

    files: int = 0
    text_bytes: int = 0
    documents: int = 0
    tokens: int = 0
    samples: int = 0
    dropped_tokens: int = 0
    seconds: float = 0.0
    eot: int = 0
    outputs: list[str] = field(default_factory=list)

    def line(self) -> str:
        megabytes = self.text_bytes / 1e6
        rate = megabytes / self.seconds if self.seconds else 0.0
        return (f"{self.files} files, {megabytes:.2f} MB of text, {self.documents} documents, {self.tokens} tokens "
                f"(eot {self.eot}), {self.samples} samples, {self.dropped_tokens} tokens dropped, "
                f"{self.seconds:.1f} s ({rate:.2f} MB/s)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--handler", choices=HANDLERS, default="pretrain",
                        help="pretrain: raw text (the options below); pangu_instruction: instruction data packed "
                             "for SFT, as `pangu sft-preprocess` (its options in the last group)")
    parser.add_argument("--input_glob", default=None, help="input text files, e.g. 'data/*.txt' (quoted)")
    parser.add_argument("--dataset_type", choices=DATASET_TYPES, default="openwebtext",
                        help="openwebtext: blank-line paragraphs; wiki: cleaned WikiText passages; "
                             "lambada: jsonl 'text' fields (default: %(default)s)")
    parser.add_argument("--tokenizer", default="gpt", choices=["gpt", "gpt2", "jieba", "pangu-alpha"],
                        help="gpt/gpt2: GPT-2 BPE; jieba/pangu-alpha: PanGu-alpha (default: %(default)s)")
    parser.add_argument("--model_file", default=None, help="PanGu-alpha vocab.model (or its directory)")
    parser.add_argument("--segmenter", choices=SEGMENTERS, default="fast",
                        help="PanGu-alpha word segmentation: fast (jieba's segments through jieba-rs, the same ids) "
                             "or jieba (plain jieba 0.42.1, the reference) (default: %(default)s)")
    parser.add_argument("--vocab_dir", default=None,
                        help="GPT-2 directory with encoder.json+vocab.bpe or vocab.json+merges.txt")
    parser.add_argument("--eot", type=int, default=None,
                        help="id appended after each document (default: 50256 <|endoftext|> for gpt, "
                             "the <pad> id 6 for jieba, as in the reference README)")
    parser.add_argument("--seq_length", type=int, default=1025, help="ids per sample (default: %(default)s)")
    parser.add_argument("--data_column_name", default="input_ids", help="MindRecord column name")
    parser.add_argument("--file_partition", type=int, default=1, help="number of MindRecord files")
    parser.add_argument("--output_file", default="./output/transfered_mindrecord",
                        help="MindRecord file (partitions get a numeric suffix) or Megatron prefix")
    parser.add_argument("--format", choices=FORMATS, default="mindrecord", help="output format")
    parser.add_argument("--num_workers", type=int, default=1, help="tokenizer worker processes")
    parser.add_argument("--errors", choices=["strict", "replace"], default="strict",
                        help="invalid UTF-8: stop with an error (strict) or use U+FFFD (replace)")
    parser.add_argument("--no_progress", action="store_true", help="do not show the progress bar")
    add_instruction_arguments(parser)


def _load_tokenizer(args: argparse.Namespace) -> Tokenizer:
    kind = canonical_kind(args.tokenizer)
    path = args.model_file if kind == "pangu-alpha" else args.vocab_dir
    if path is None:
        option = "--model_file" if kind == "pangu-alpha" else "--vocab_dir"
        raise ConfigError(f"--tokenizer {args.tokenizer} needs {option}")
    if kind == "pangu-alpha":
        return PanguTokenizer(path, segmenter=args.segmenter)
    return load_tokenizer(kind, path)


def _check_arguments(args: argparse.Namespace) -> None:
    if not args.input_glob:
        raise ConfigError("give --input_glob (the input text files)")
    if args.seq_length < 2:
        raise ConfigError(f"--seq_length ({args.seq_length}) must be at least 2")
    if args.file_partition < 1:
        raise ConfigError(f"--file_partition ({args.file_partition}) must be at least 1")
    if args.format == "megatron" and args.file_partition != 1:
        raise ConfigError("--format megatron writes one .bin/.idx pair; leave --file_partition at 1")
    if args.num_workers < 1:
        raise ConfigError(f"--num_workers ({args.num_workers}) must be at least 1")


class _Sink:
    """Where encoded documents go: packed MindRecord partitions or a Megatron writer, in a staging dir."""

    def __init__(self, args: argparse.Namespace, tokenizer: Tokenizer, staging: StagingDir):
        output = Path(args.output_file)
        self.format = args.format
        self.samples = 0
        if self.format == "megatron":
            from pangu_zoo.data.megatron import MegatronWriter, token_dtype

            self.writer = MegatronWriter(staging.file(output.name), token_dtype(tokenizer.vocab_size))
        else:
            from pangu_zoo.data.mindrecord import MindRecordPartitions, partition_names

            paths = [staging.file(name) for name in partition_names(output, args.file_partition)]
            self.writer = MindRecordPartitions(paths, args.data_column_name, args.dataset_type)
            self.packer = SequencePacker(args.seq_length)

    def add(self, ids: list[int]) -> None:
        if self.format == "megatron":
            self.writer.add_document(ids)
            self.samples += 1
            return
        for sample in self.packer.add(ids):
            self.writer.write(sample)
            self.samples += 1

    def finish(self, args: argparse.Namespace, summary: PreprocessSummary) -> None:
        if self.format == "megatron":
            self.writer.finish()
            return
        summary.dropped_tokens = self.packer.finish()
        if self.samples < args.file_partition:
            raise DataError(f"the corpus gives {self.samples} complete samples of {args.seq_length} ids "
                            f"({summary.tokens} tokens), fewer than --file_partition {args.file_partition}; "
                            f"add text, lower --seq_length or use fewer partitions")
        self.writer.commit()


def preprocess(args: argparse.Namespace) -> PreprocessSummary:
    """Run preprocessing as configured by the parsed arguments of `add_arguments`."""
    from tqdm import tqdm

    from pangu_zoo.tokenizers.pool import EncodePool

    _check_arguments(args)
    files = find_input_files(args.input_glob)
    tokenizer = _load_tokenizer(args)
    eot = tokenizer.document_separator_id if args.eot is None else args.eot
    if not 0 <= eot < tokenizer.vocab_size:
        raise InputError(f"--eot {eot} is outside the vocabulary [0, {tokenizer.vocab_size}) of the "
                         f"{tokenizer.kind} tokenizer; the document separator is "
                         f"{tokenizer.document_separator_id}")
    output = Path(args.output_file)
    summary = PreprocessSummary(files=len(files), eot=eot)
    started = time.perf_counter()
    staging = StagingDir(output.parent)
    try:
        sink = _Sink(args, tokenizer, staging)
        total_bytes = sum(file.stat().st_size for file in files)
        with EncodePool(tokenizer, args.num_workers) as pool, \
                tqdm(total=total_bytes, unit="B", unit_scale=True, desc="preprocess",
                     disable=args.no_progress, file=sys.stderr) as progress:
            for file in files:
                documents = split_documents(read_utf8(file, args.errors), args.dataset_type, file)
                for ids in pool.imap(documents):
                    ids.append(eot)
                    sink.add(ids)
                    summary.documents += 1
                    summary.tokens += len(ids)
                summary.text_bytes += file.stat().st_size
                progress.update(file.stat().st_size)
        if summary.documents == 0:
            raise DataError(f"no text found in the {len(files)} files matching {args.input_glob!r} "
                            f"(--dataset_type {args.dataset_type}); are they empty?")
        sink.finish(args, summary)
        summary.samples = sink.samples
        _write_metadata(staging, output, args, tokenizer, eot, summary)
        summary.outputs = [str(path) for path in staging.publish()]
    except BaseException:
        staging.discard()
        raise
    summary.seconds = time.perf_counter() - started
    logger.debug("preprocess: %s", summary.line())  # run() prints it for people
    return summary


def _write_metadata(staging: StagingDir, output: Path, args: argparse.Namespace, tokenizer: Tokenizer,
                    eot: int, summary: PreprocessSummary) -> None:
    """`<output_file>.json`: what the dataset loader needs to know (eod and pad ids, sample length)."""
    metadata = {
        "format": args.format, "tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
        "eod_id": eot, "pad_id": tokenizer.pad_id, "seq_length": args.seq_length,
        "column": args.data_column_name, "dataset_type": args.dataset_type,
        "file_partition": args.file_partition,
        "summary": {key: value for key, value in asdict(summary).items() if key not in ("outputs", "seconds")},
    }
    staging.file(f"{output.name}.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    if args.handler == "pangu_instruction":
        return run_instruction(args)
    summary = preprocess(args)
    print(f"preprocess: {summary.line()}")
    print("wrote " + ", ".join(summary.outputs))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m pangu_zoo.data.preprocess`: same options and exit codes as `pangu preprocess`."""
    from pangu_zoo.cli import run_command

    return run_command(__name__, "python -m pangu_zoo.data.preprocess", argv, __doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(main())
