"""GPT-2 small forward and greedy-decode speed: this project vs transformers (PyTorch), side by side.

Both models hold the same random weights (no download): transformers builds GPT-2 small, saves it, and
this project loads that directory. Decode: batch 1, 32-token prompt, 64 new tokens, KV cache on both
sides; compile/warm-up runs are excluded and reported separately.

    python bench/bench_model.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--forward_batch", type=int, default=8)
    parser.add_argument("--forward_seq", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import torch
    from common import gpt2_small_pair, median_time, write_json

    hf, ours = gpt2_small_pair()

    rng = np.random.default_rng(0)
    fwd_ids = rng.integers(0, 50257, size=(args.forward_batch, args.forward_seq))
    prompt = rng.integers(0, 50257, size=(1, args.prompt))
    results = {"torch_threads": torch.get_num_threads()}

    # forward
    t0 = time.perf_counter()
    ours.forward_logits(fwd_ids)
    results["ours_forward_compile_s"] = time.perf_counter() - t0
    fwd_tokens = fwd_ids.size
    ours_fwd = median_time(lambda: ours.forward_logits(fwd_ids), args.repeats)
    with torch.no_grad():
        hf(torch.tensor(fwd_ids))
        hf_fwd = median_time(lambda: hf(torch.tensor(fwd_ids)), args.repeats)
    results.update(ours_forward_tok_s=fwd_tokens / ours_fwd, hf_forward_tok_s=fwd_tokens / hf_fwd)

    # greedy decode with KV cache
    n = args.new_tokens
    t0 = time.perf_counter()
    ours_out = ours.generate(prompt, max_new_tokens=n)
    results["ours_decode_compile_s"] = time.perf_counter() - t0
    ours_dec = median_time(lambda: ours.generate(prompt, max_new_tokens=n), args.repeats)

    def hf_generate():
        with torch.no_grad():
            return hf.generate(torch.tensor(prompt), attention_mask=torch.ones_like(torch.tensor(prompt)),
                               max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                               pad_token_id=50256)

    hf_out = hf_generate()
    hf_dec = median_time(hf_generate, args.repeats)
    results.update(ours_decode_tok_s=n / ours_dec, hf_decode_tok_s=n / hf_dec,
                   ours_ms_per_token=1000 * ours_dec / n, hf_ms_per_token=1000 * hf_dec / n,
                   same_tokens=ours_out[0] == hf_out[0].tolist())
    results["forward_ratio"] = results["ours_forward_tok_s"] / results["hf_forward_tok_s"]
    results["decode_ratio"] = results["ours_decode_tok_s"] / results["hf_decode_tok_s"]

    print(f"GPT-2 small, fp32 CPU, torch threads {results['torch_threads']}")
    print(f"{'measure':<42}{'this project':>14}{'transformers':>14}{'ratio':>8}")
    forward_label = f"forward tok/s (b={args.forward_batch}, s={args.forward_seq})"
    decode_label = f"greedy decode tok/s (b=1, p={args.prompt}, new={n})"
    print(f"{forward_label:<42}"
          f"{results['ours_forward_tok_s']:>14.1f}{results['hf_forward_tok_s']:>14.1f}{results['forward_ratio']:>8.2f}")
    print(f"{decode_label:<42}"
          f"{results['ours_decode_tok_s']:>14.1f}{results['hf_decode_tok_s']:>14.1f}{results['decode_ratio']:>8.2f}")
    print(f"{'decode ms/token':<42}{results['ours_ms_per_token']:>14.1f}{results['hf_ms_per_token']:>14.1f}")
    print(f"compile: forward {results['ours_forward_compile_s']:.1f} s, "
          f"decode {results['ours_decode_compile_s']:.1f} s; identical greedy tokens: {results['same_tokens']}")
    write_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
