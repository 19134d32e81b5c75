"""Decode speed: milliseconds per new token of greedy GPT-2 small decoding, this project vs transformers, at batch 1
and 8, in fp32 and, where the CPU kernels allow, fp16 and bf16; and the prefill (a generate of one token).

GPT-2 small with random weights (made by transformers, saved to a folder both sides load), a 32-token prompt
(`--prompt`). ms/token = (time of a generate of n + 1 new tokens - time of a generate of 1 new token) / n, after a
warm-up of both: the prefill and the first token cancel out, what is left is the KV-cache decode step with its
sampling. The two generates alternate `--repeats` times; medians. Every (side, dtype, batch) runs in its own
process, one after the other, so neither side's threads or memory disturb the other. The greedy tokens of the
two sides are compared.

    python bench/bench_decode.py [--new_tokens 32] [--repeats 3] [--dtypes float32 float16 bfloat16] [--json out]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import child_error, decode_ms_per_token, write_json

SIDES = ("ours", "transformers")


def child(side: str, model_dir: str, dtype: str, batch: int, prompt: int, new_tokens: int, repeats: int) -> dict:
    import numpy as np

    ids = np.random.default_rng(batch).integers(0, 50257, size=(batch, prompt))
    if side == "transformers":
        import torch
        import transformers

        model = transformers.GPT2LMHeadModel.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        tensor = torch.from_numpy(ids)

        def generate(n):
            with torch.no_grad():
                return model.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=n,
                                      min_new_tokens=n, do_sample=False, pad_token_id=50256).tolist()
    else:
        from pangu_zoo.models import from_pretrained

        model = from_pretrained(model_dir, param_dtype=dtype, compute_dtype=dtype)

        def generate(n):
            return model.generate(ids, max_new_tokens=n)

    return decode_ms_per_token(generate, new_tokens, repeats, batch)


def run_child(side, model_dir, dtype, batch, args) -> dict:
    command = [sys.executable, __file__, "--child", side, "--model_dir", str(model_dir), "--dtype", dtype,
               "--batch", str(batch), "--prompt", str(args.prompt), "--new_tokens", str(args.new_tokens),
               "--repeats", str(args.repeats)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return child_error(result)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--model_dir")
    parser.add_argument("--json")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.model_dir, args.dtype, args.batch, args.prompt, args.new_tokens,
                               args.repeats)))
        return 0

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(args.model_dir or Path(scratch) / "gpt2")
        if not args.model_dir:
            import torch
            import transformers

            torch.manual_seed(0)
            transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval().save_pretrained(model_dir)
        results = {"prompt": args.prompt, "new_tokens": args.new_tokens, "load_average_before": os.getloadavg(),
                   "rows": []}
        for dtype in args.dtypes:
            for batch in args.batches:
                row = {"dtype": dtype, "batch": batch}
                for side in args.sides:
                    row[side] = run_child(side, model_dir, dtype, batch, args)
                    print(dtype, batch, side, {k: v for k, v in row[side].items() if k != "tokens"}, flush=True)
                tokens = [row[side].get("tokens") for side in args.sides]
                row["same_tokens"] = None if None in tokens else all(t == tokens[0] for t in tokens)
                for side in args.sides:
                    row[side].pop("tokens", None)
                results["rows"].append(row)
        results["load_average_after"] = os.getloadavg()

    print(f"\nGPT-2 small greedy decode, prompt {args.prompt}, ms per new token (median of {args.repeats}); load "
          f"average {results['load_average_before'][0]:.1f} before, {results['load_average_after'][0]:.1f} after")
    print(f"{'dtype':<10}{'batch':>6}" + "".join(f"{side:>16}" for side in args.sides) + f"{'ratio':>8}{'same':>6}"
          + "".join(f"{side + ' prefill s':>24}" for side in args.sides))

    def show(entry):
        return f"{entry['ms_per_token']:.1f}" if "ms_per_token" in entry else "fails"

    for row in results["rows"]:
        ratio = ""
        if all("ms_per_token" in row.get(side, {}) for side in SIDES):
            ratio = f"{row['transformers']['ms_per_token'] / row['ours']['ms_per_token']:.2f}"
        print(f"{row['dtype']:<10}{row['batch']:>6}" + "".join(f"{show(row[side]):>16}" for side in args.sides)
              + f"{ratio:>8}{str(row['same_tokens']):>6}"
              + "".join(f"{row[side]['prefill_s'] if 'prefill_s' in row[side] else float('nan'):>24.2f}"
                        for side in args.sides))
    for row in results["rows"]:
        for side in args.sides:
            if "error" in row[side]:
                print(f"{side} {row['dtype']} batch {row['batch']}: {row[side]['error']}")
    write_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
