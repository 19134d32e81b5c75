"""Inference speed: decode with and without the KV cache at a 512-token context (batch 1 and 8), side by side
with transformers' cached decoding, and C3 scoring throughput.

GPT-2 small with random weights (made by transformers, loaded through `from_pretrained`), fp32, greedy.
C3: a tiny PanGu-alpha (random weights, 1024-token rows as the reference scores them) on the first
questions of c3-d-dev with the released tokenizer (needs ../shared/data).

    python bench/bench_inference.py [--new_tokens 16] [--c3_questions 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from common import elapsed, write_json

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _timed(fn) -> float:
    fn()  # warm-up: compiles the graphs of this shape
    return elapsed(fn)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--new_tokens", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--c3_questions", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import torch
    from common import gpt2_small_pair

    hf, ours = gpt2_small_pair()
    n, rows = args.new_tokens, []
    for batch in args.batches:
        prompt = np.random.default_rng(batch).integers(0, 50257, size=(batch, args.context))
        cached = _timed(lambda p=prompt: ours.generate(p, max_new_tokens=n))
        uncached = _timed(lambda p=prompt: ours.generate(p, max_new_tokens=n, use_cache=False))

        def hf_generate(p=prompt):
            with torch.no_grad():
                t = torch.from_numpy(p)
                hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=n, min_new_tokens=n,
                            do_sample=False, pad_token_id=50256)

        peer = _timed(hf_generate)
        rows.append({"batch": batch, "cached_tok_s": batch * n / cached, "uncached_tok_s": batch * n / uncached,
                     "hf_cached_tok_s": batch * n / peer})

    result = {"context": args.context, "new_tokens": n, "decode": rows}
    print(f"GPT-2 small, {args.context}-token context, {n} new tokens, fp32 CPU (tokens/s, all rows of the batch)")
    print(f"{'batch':>6}{'KV cache':>11}{'no cache':>11}{'speed-up':>10}{'transformers':>14}{'ratio':>8}")
    for r in rows:
        print(f"{r['batch']:>6}{r['cached_tok_s']:>11.1f}{r['uncached_tok_s']:>11.1f}"
              f"{r['cached_tok_s'] / r['uncached_tok_s']:>9.1f}x{r['hf_cached_tok_s']:>14.1f}"
              f"{r['cached_tok_s'] / r['hf_cached_tok_s']:>8.2f}")

    if (DATA / "c3" / "c3-d-dev.json").is_file():
        import mindspore as ms

        from pangu.evaluation.c3 import evaluate_c3
        from pangu.models import build_model
        from pangu.tokenizers import load_tokenizer

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
