"""`pangu demo`: the README's main job on an embedded default.

Preprocesses a small corpus (the project's own, or `--corpus_glob`), trains a tiny PanGu-alpha on it
for 150 steps on the CPU (about 20 s on 2 cores), saves it, draws the loss curve, and generates a
continuation of a prompt with the released tokenizer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_TOKENIZER_DIR = Path.home() / ".cache" / "pangu" / "tokenizers" / "pangu-alpha"
DEFAULT_PROMPT = "春天来了，"
DATA_NAME = "demo"  # preprocess writes data/demo, data/demo.db and data/demo.json
CHECKPOINT_PREFIX = "demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer_dir", default=str(DEFAULT_TOKENIZER_DIR),
                        help="folder with vocab.model (get it with: pangu fetch-tokenizer pangu-alpha --out DIR)")
    parser.add_argument("--corpus_glob", help="train on these text files instead of the built-in corpus")
    parser.add_argument("--output_dir", default="output/demo")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seq_length", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--use_moe", action="store_true",
                        help="a mixture-of-experts PanGu-alpha: 4 experts per block, top-2 routing (docs/moe.md)")
    parser.add_argument("--expert_num", type=int, default=4)
    parser.add_argument("--per_token_num_experts_chosen", type=int, default=2)


def previous_outputs(out: Path) -> list[Path]:
    """The files an earlier demo run wrote under `out` that would get in this run's way, named one by one:
    the folders may also hold the user's own files, which are left alone."""
    from pangu_zoo.training.checkpoint import checkpoint_files

    data = [out / "data" / f"{DATA_NAME}{suffix}" for suffix in ("", ".db", ".json")]
    checkpoints = out / "checkpoints"
    saved = checkpoint_files(checkpoints, CHECKPOINT_PREFIX) if checkpoints.is_dir() else []
    return [*data, *saved, checkpoints / "train_log.jsonl"]


def remove_previous_outputs(out: Path) -> None:
    for path in previous_outputs(out):
        path.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    from pangu_zoo.cli import main as pangu
    from pangu_zoo.errors import ConfigError, DataError
    from pangu_zoo.tokenizers import load_tokenizer

    tokenizer_dir = Path(args.tokenizer_dir)
    if not (tokenizer_dir / "vocab.model").is_file():
        raise ConfigError(f"no PanGu-alpha tokenizer in {tokenizer_dir}; run "
                          f"`pangu fetch-tokenizer pangu-alpha --out {tokenizer_dir}` first")
    out = Path(args.output_dir)
    corpus_glob = args.corpus_glob
    if not corpus_glob:
        from pangu_zoo.demo_corpus import write_corpus

        corpus_glob = str(write_corpus(out / "corpus" / "demo_corpus.txt"))
    data_file = out / "data" / DATA_NAME
    remove_previous_outputs(out)  # a rerun replaces the previous run's data, checkpoints and log
    print(f"1/3 preprocess {corpus_glob}")
    if pangu(["preprocess", "--input_glob", corpus_glob, "--tokenizer", "jieba", "--model_file",
              str(tokenizer_dir / "vocab.model"), "--output_file", str(data_file),
              "--seq_length", str(args.seq_length + 1), "--no_progress"]) != 0:
        raise DataError("preprocessing the demo corpus failed (see the message above)")

    moe = (["--use_moe", "1", "--expert_num", str(args.expert_num), "--per_token_num_experts_chosen",
            str(args.per_token_num_experts_chosen)] if args.use_moe else [])
    print(f"2/3 train pangu_alpha_tiny{' MoE' if args.use_moe else ''} for {args.steps} steps")
    checkpoints, model_dir = out / "checkpoints", out / "model"
    # the data file, not its folder: training reads every file of a folder as data
    if pangu(["train", "--mode", "pangu_alpha_tiny", "--data_url", str(data_file), "--per_batch_size",
              str(args.batch_size), "--seq_length", str(args.seq_length), "--max_steps", str(args.steps),
              "--epoch_size", "1000", "--start_lr", "3e-3", "--end_lr", "1e-4", "--warmup_step", "10",
              "--decay_steps", str(args.steps), "--dropout_rate", "0.0", "--save_checkpoint_path",
              str(checkpoints), "--ckpt_name_prefix", CHECKPOINT_PREFIX, "--save_checkpoint_steps", str(args.steps),
              "--seed", str(args.seed), *moe,
              "--save_pretrained", str(model_dir)]) != 0:
        return 2
    pangu(["plot-log", str(checkpoints / "train_log.jsonl"), "--out", str(out / "loss.png"),
           "--title", "tiny PanGu-alpha on the demo corpus"])

    print("3/3 generate")
    from pangu_zoo.models import from_pretrained

    tokenizer = load_tokenizer("pangu-alpha", tokenizer_dir)
    model = from_pretrained(model_dir, dropout_rate=0.0)
    prompt_ids = tokenizer.encode(args.prompt)
    start = time.perf_counter()
    # the training data ends every paragraph with the document separator, so the model stops there
    separator = tokenizer.document_separator_id
    generated = model.generate([prompt_ids], max_new_tokens=args.max_new_tokens,
                               eos_token_id=separator)[0][len(prompt_ids):]
    if generated and generated[-1] == separator:
        generated = generated[:-1]
    elapsed = time.perf_counter() - start
    print(f"prompt: {args.prompt}")
    print(f"output: {args.prompt}{tokenizer.decode(generated)}")
    print(f"({len(generated)} tokens in {elapsed:.2f} s with the KV cache, compilation included)")
    return 0
