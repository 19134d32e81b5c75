"""`pangu eval c3|ppl`: C3 zero-shot accuracy and WikiText-2 perplexity of a saved model directory."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    c3 = tasks.add_parser("c3", help="C3 zero-shot accuracy (reference scoring)")
    _common(c3)
    c3.add_argument("--data_dir", required=True, help="folder with c3-d-dev.json (or the json file itself)")
    c3.add_argument("--split", default="c3-d-dev", help="file name without .json (default c3-d-dev)")
    c3.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    c3.add_argument("--batch_size", type=int, default=4)
    c3.add_argument("--output", default=None, help="write the result and per-question scores to this JSON file")
    ppl = tasks.add_parser("ppl", help="WikiText perplexity (mindformers method and token-weighted)")
    _common(ppl)
    ppl.add_argument("--data_file", required=True, help="wiki.valid.tokens (WikiText-2 v1, tokenized)")
    ppl.add_argument("--block_size", type=int, default=1024)
    ppl.add_argument("--limit_blocks", type=int, default=None, help="evaluate only the first N blocks")
    ppl.add_argument("--batch_size", type=int, default=1)
    ppl.add_argument("--keep_last_passage", action="store_true",
                     help="keep the file's last passage (the reference drops it)")
    ppl.add_argument("--output", default=None, help="write the result to this JSON file")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_dir", required=True, help="directory with config.json and weights")
    parser.add_argument("--tokenizer", choices=["pangu-alpha", "gpt2"], help="default: from the model family")
    parser.add_argument("--tokenizer_path", required=True, help="tokenizer folder or vocabulary file")


def load_model_and_tokenizer(model_dir: str, tokenizer_path: str, kind: str | None = None):
    """A saved model (dropout off) and the tokenizer of its family (or of `kind`)."""
    from pangu_zoo.models import from_pretrained
    from pangu_zoo.tokenizers import load_tokenizer, tokenizer_kind_for

    model = from_pretrained(model_dir, dropout_rate=0.0)
    return model, load_tokenizer(kind or tokenizer_kind_for(model.config), tokenizer_path)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    model, tokenizer = load_model_and_tokenizer(args.model_dir, args.tokenizer_path, args.tokenizer)
    if args.task == "c3":
        from pangu_zoo.evaluation.c3 import evaluate_c3

        result = evaluate_c3(model, tokenizer, args.data_dir, args.split, args.limit, args.batch_size, args.output)
        print({"top1_acc": round(result["top1_acc"], 4)})
    else:
        from pangu_zoo.evaluation.perplexity import evaluate_wikitext

        result = evaluate_wikitext(model, tokenizer, args.data_file, args.block_size, args.limit_blocks,
                                   args.batch_size, args.keep_last_passage)
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=1), encoding="utf-8")
        sys.stdout.write(f"mindformers (mean of per-batch losses): loss {result['mindformers']['loss']:.4f} "
                         f"PPL {result['mindformers']['PPL']:.4f}\n"
                         f"token-weighted: loss {result['token_weighted']['loss']:.4f} "
                         f"PPL {result['token_weighted']['PPL']:.4f}\n")
    return 0
