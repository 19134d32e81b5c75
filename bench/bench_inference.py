"""Inference speed: decode with and without the KV cache at a 512-token context (batch 1 and 8), side by side
with transformers' cached decoding, and C3 scoring throughput.

GPT-2 small with random weights (made by transformers, loaded through `from_pretrained`), fp32, greedy.
C3: a tiny PanGu-alpha (random weights, 1024-token rows as the reference scores them) on the first
questions of c3-d-dev with the released tokenizer (needs ../shared/data).

Each decode measurement runs in its own process, so that compiled graphs of one do not hold memory in the next.

    python bench/bench_inference.py [--new_tokens 16] [--c3_questions 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from common import elapsed, write_json

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


METHODS = ("cached", "uncached", "hf_cached")


def _timed(fn) -> float:
    fn()  # warm-up: compiles the graphs of this shape
    return elapsed(fn)


def measure(batch: int, method: str, context: int, n: int) -> float:
    """Seconds of one greedy `generate` of `n` new tokens after a `context`-token prompt (after a warm-up)."""
    import torch
    from common import gpt2_small_pair

    hf, ours = gpt2_small_pair()
    prompt = np.random.default_rng(batch).integers(0, 50257, size=(batch, context))
    if method == "hf_cached":
        def run():
            with torch.no_grad():
                t = torch.from_numpy(prompt)
                hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=n, min_new_tokens=n,
                            do_sample=False, pad_token_id=50256)
        return _timed(run)
    return _timed(lambda: ours.generate(prompt, max_new_tokens=n, use_cache=method == "cached"))


def measure_in_subprocess(batch: int, method: str, context: int, n: int) -> float | None:
    """`measure` in a fresh process: MindSpore keeps the memory of every compiled shape until exit, so one
    process measuring everything would hold all of them at once. None (and a note) when the process dies,
    e.g. killed for memory."""
    command = [sys.executable, __file__, "--only", f"{batch}:{method}", "--context", str(context),
               "--new_tokens", str(n)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"batch {batch} {method}: the measuring process exited with status {result.returncode}"
              + (" (killed: out of memory?)" if result.returncode == -9 else ""), file=sys.stderr)
        return None
    return float(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--new_tokens", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--c3_questions", type=int, default=50)
    parser.add_argument("--only", help=argparse.SUPPRESS)  # BATCH:METHOD, one measurement (the subprocesses)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    n, rows = args.new_tokens, []
    if args.only:
        batch, method = args.only.split(":")
        print(measure(int(batch), method, args.context, n))
        return 0
    for batch in args.batches:
        seconds = {method: measure_in_subprocess(batch, method, args.context, n) for method in METHODS}
        rows.append({"batch": batch, **{f"{method}_tok_s": batch * n / seconds[method] if seconds[method] else None
                                        for method in METHODS}})

    result = {"context": args.context, "new_tokens": n, "decode": rows}
    print(f"GPT-2 small, {args.context}-token context, {n} new tokens, fp32 CPU (tokens/s, all rows of the batch)")
    print(f"{'batch':>6}{'KV cache':>11}{'no cache':>11}{'speed-up':>10}{'transformers':>14}{'ratio':>8}")
    def show(value, spec, suffix=""):  # a failed measurement (None) shows as "-"
        return format(value, spec) + suffix if value else "-"

    for r in rows:
        cached, uncached, peer = r["cached_tok_s"], r["uncached_tok_s"], r["hf_cached_tok_s"]
        speed_up = show(cached and uncached and cached / uncached, ".1f", "x")
        print(f"{r['batch']:>6}{show(cached, '.1f'):>11}{show(uncached, '.1f'):>11}{speed_up:>10}"
              f"{show(peer, '.1f'):>14}{show(cached and peer and cached / peer, '.2f'):>8}")

    if (DATA / "c3" / "c3-d-dev.json").is_file():
        import mindspore as ms

        from pangu_zoo.evaluation.c3 import evaluate_c3
        from pangu_zoo.models import build_model
        from pangu_zoo.tokenizers import load_tokenizer

        ms.set_seed(0)
        model = build_model("pangu_alpha_tiny", dropout_rate=0.0)
        tokenizer = load_tokenizer("pangu-alpha", DATA / "pangu_tokenizer")
        evaluate_c3(model, tokenizer, DATA / "c3", limit=2, progress=False)  # compile
        c3 = evaluate_c3(model, tokenizer, DATA / "c3", limit=args.c3_questions, progress=False)
        result["c3"] = {**c3, "examples_per_s": c3["examples"] / c3["seconds"]}
        print(f"C3 (pangu_alpha_tiny, 1024-token rows): {c3['examples']} examples of {c3['questions']} questions "
              f"in {c3['seconds']:.1f} s = {result['c3']['examples_per_s']:.1f} examples/s")
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
