"""`pangu sft-preprocess` (also `pangu preprocess --handler pangu_instruction`): instruction data -> packed rows.

    pangu sft-preprocess --input 'sft/*.jsonl' --tokenizer_path tokenizer/pangu --seq_length 1024 \\
        --output_prefix data/sft --output_format both --num_workers 4
    pangu sft-preprocess --merge data/sft_a data/sft_b --output_prefix data/sft_all

Bad input stops with one line and exit status 2, and leaves no output files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pangu_zoo.data.sft.conversations import INPUT_FORMATS
from pangu_zoo.errors import ConfigError
from pangu_zoo.tokenizers import KIND_ALIASES


def add_instruction_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of instruction data that `pangu preprocess` does not have itself."""
    group = parser.add_argument_group("instruction (SFT) data")
    group.add_argument("--input", nargs="+", default=None, help="JSON-lines files or globs (quoted)")
    group.add_argument("--input_format", choices=INPUT_FORMATS, default="auto",
                       help="pangu: the openPangu demo's meta_prompt/data; alpaca; sharegpt; auto: by each "
                            "line's keys (default: %(default)s)")
    group.add_argument("--tokenizer_path", default=None, help="tokenizer folder or vocabulary file")
    group.add_argument("--output_prefix", default=None,
                       help="writes <prefix>_packed_{input_ids,attention_mask,labels}_document.bin/.idx, "
                            "<prefix>_packed.mindrecord and <prefix>_packed.json")
    group.add_argument("--output_format", choices=["megatron", "mindrecord", "both"], default="both")
    group.add_argument("--append_eod", action="store_true",
                       help="append the end-of-document id to every sample (label -100)")
    group.add_argument("--turn_start", default=None,
                       help="text opening a turn (default: [unused9] when the vocabulary has it, else <sep> for "
                            "PanGu-alpha and a newline for GPT-2)")
    group.add_argument("--turn_end", default=None,
                       help="vocabulary piece closing a turn, where generation stops (default: [unused10] when "
                            "the vocabulary has it, else <eot> for PanGu-alpha and <|endoftext|> for GPT-2)")
    group.add_argument("--merge", nargs="+", default=None, metavar="PREFIX",
                       help="merge these packed outputs (their output prefixes) into --output_prefix instead")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_instruction_arguments(parser)
    parser.add_argument("--tokenizer", choices=sorted(KIND_ALIASES), default=None,
                        help="tokenizer kind (default: from the files at --tokenizer_path)")
    parser.add_argument("--seq_length", type=int, default=1024,
                        help="tokens per packed row = the model's --seq_length (default: %(default)s)")
    parser.add_argument("--num_workers", type=int, default=1, help="tokenizer worker processes")
    parser.add_argument("--no_progress", action="store_true", help="do not show the progress bar")


def _tokenizer_path(args: argparse.Namespace) -> str:
    path = args.tokenizer_path or getattr(args, "model_file", None) or getattr(args, "vocab_dir", None)
    if path is None:
        raise ConfigError("give --tokenizer_path (the tokenizer folder or vocabulary file)")
    return path


def _tokenizer_kind(args: argparse.Namespace, path: str) -> str:
    if args.tokenizer:
        return args.tokenizer
    location = Path(path)
    folder = location if location.is_dir() else location.parent
    if (folder / "tokenizer_config.json").is_file():  # a Hugging Face model folder (openPangu)
        return "openpangu"
    if location.suffix == ".model" or (folder / "vocab.model").is_file():
        return "pangu-alpha"
    return "gpt2"


def run(args: argparse.Namespace) -> int:
    from pangu_zoo.data.sft.markers import markers_for
    from pangu_zoo.data.sft.pipeline import merge_packed, parse_output_format, preprocess_sft
    from pangu_zoo.tokenizers import load_tokenizer

    if not args.output_prefix:
        raise ConfigError("give --output_prefix (where the packed rows go)")
    formats = parse_output_format(args.output_format)
    if args.merge:
        summary = merge_packed(args.merge, args.output_prefix, formats)
    else:
        inputs = args.input or ([args.input_glob] if getattr(args, "input_glob", None) else None)
        if not inputs:
            raise ConfigError("give --input (JSON-lines files or globs) or --merge")
        if args.num_workers < 1:
            raise ConfigError(f"--num_workers ({args.num_workers}) must be at least 1")
        path = _tokenizer_path(args)
        tokenizer = load_tokenizer(_tokenizer_kind(args, path), path)
        markers = markers_for(tokenizer, args.turn_start, args.turn_end)
        summary = preprocess_sft(inputs, tokenizer, args.seq_length, args.output_prefix, formats,
                                 args.input_format, markers, args.append_eod, args.num_workers,
                                 progress=not args.no_progress)
    print(f"sft-preprocess: {summary.line()}")
    print("wrote " + ", ".join(summary.outputs))
    return 0
