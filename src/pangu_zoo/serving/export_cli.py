"""`python export.py` / `pangu export` (and `predict.py --export 1`): the reference's export, with predict.py's
arguments, into `serving_increment/pangu_standalone/pangu/1/` (see `pangu_zoo.serving.export`).

Any model the project loads can be exported: model directories, Hugging Face GPT-2 folders, released PanGu-alpha
slices (+ strategy) and mindformers-named `.ckpt` files. `--eval_task c3` adds the full-sequence graph that C3
scoring needs (the reference's `_eval` export). With `--distribute true` each rank exports its own slice of the
graphs into `serving_increment/pangu_distributed/models/device_<rank>/` (GPU or Ascend; refused on CPU).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pangu_zoo.inference.predict import add_arguments as add_predict_arguments

    add_predict_arguments(parser)
    out = parser.add_argument_group("export")
    out.add_argument("--output_dir", default=".", help="where serving_increment/ is written (default: .)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing export")
    out.add_argument("--no_tokenizer", action="store_true",
                     help="do not copy the tokenizer into the export (the server then needs --tokenizer_path)")


def run(args: argparse.Namespace) -> int:
    from pangu_zoo.checkpoint.loader import checkpoint_path, load_model
    from pangu_zoo.errors import ConfigError
    from pangu_zoo.inference.predict import load_overrides, start_devices
    from pangu_zoo.serving.export import export_model
    from pangu_zoo.tokenizers import load_tokenizer, tokenizer_kind_for
    from pangu_zoo.tokenizers.special import default_end_tokens

    rank, device_num = start_devices(args)
    model = load_model(checkpoint_path(args.load_ckpt_path, args.load_ckpt_name), args.mode,
                       args.strategy_load_ckpt_path or None, **load_overrides(args))
    out_root = Path(args.output_dir)
    if args.distribute:
        from pangu_zoo.parallel.inference import distribute_for_inference

        distribute_for_inference(model, device_num, rank)
        out_root = out_root / "serving_increment" / "pangu_distributed" / "models" / f"device_{rank}"
    kind = args.tokenizer or tokenizer_kind_for(model.config)
    tokenizer_path = None if args.no_tokenizer else Path(args.tokenizer_path)
    end_ids: tuple[int, ...] = ()
    if tokenizer_path is not None:
        if not tokenizer_path.exists():
            raise ConfigError(f"--tokenizer_path {tokenizer_path} does not exist (or pass --no_tokenizer)")
        tokenizer = load_tokenizer(kind, tokenizer_path)
        end_ids = default_end_tokens(tokenizer) if args.end_token is None else (args.end_token,)
    folder = export_model(model, out_root, tokenizer_path, kind, eval_graph=args.eval_task == "c3",
                          end_ids=end_ids, overwrite=args.overwrite)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"exported {model.config.family} ({model.config.num_layers} layers, hidden {model.config.hidden_size}) "
          f"to {folder}: {size / 2**20:.1f} MB")
    print("Export finished and now exit.")
    return 0


def main(argv: list[str] | None = None) -> int:
    from pangu_zoo.cli import run_command

    return run_command(__name__, "export.py", argv,
                       "Export a model's prefill and decode graphs as MindIR for serving.")
