"""`pangu convert SRC_FORMAT DST_FORMAT --src PATH --dst PATH`: a checkpoint from one format to another
(docs/convert.md; the formats are those `pangu_zoo.checkpoint.formats` registers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src_format", metavar="SRC_FORMAT",
                        help="zoo, hf-gpt2, mindformers, released (read only), megatron-gpt2, megatron-pangu")
    parser.add_argument("dst_format", metavar="DST_FORMAT", help="any of the source formats but released")
    parser.add_argument("--src", required=True, help="the checkpoint to read (a folder, or a .ckpt file)")
    parser.add_argument("--dst", required=True, help="where to write it; must not exist yet")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None,
                        help="cast the floating-point weights (default: keep the source's)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks to split into (Megatron formats)")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--mode", default=None,
                       help="model preset (e.g. 2.6B, 350M, gpt2) giving the shape of a source without a config")
    shape.add_argument("--config", default=None,
                       help="model config JSON (a zoo config.json, or the folder holding it), instead of --mode")
    parser.add_argument("--tokenizer_path", default=None,
                        help="tokenizer folder or file to copy into a folder destination (zoo, hf-gpt2)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def config_hint(mode: str | None, config: str | None):
    """The ModelConfig --mode or --config gives, or None."""
    from pangu_zoo.config import ModelConfig, get_preset
    from pangu_zoo.errors import ConfigError

    if mode is not None:
        return get_preset(mode)
    if config is None:
        return None
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read the model config {path}: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    return ModelConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    from pangu_zoo.checkpoint.convert import convert

    convert(args.src_format, args.dst_format, args.src, args.dst, dtype=args.dtype, tp=args.tp,
            config_hint=config_hint(args.mode, args.config), tokenizer_path=args.tokenizer_path,
            progress=not args.no_progress)
    return 0


if __name__ == "__main__":  # `python -m pangu_zoo.convert_cli`: the command without the other subcommands' imports
    import sys

    from pangu_zoo.cli import run_command

    sys.exit(run_command("pangu_zoo.convert_cli", "pangu convert"))
