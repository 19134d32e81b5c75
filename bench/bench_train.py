"""GPT-2 small training-step speed and MFU: this project vs transformers + PyTorch eager, same batch.

Batch 8 x 128 tokens, fp32, AdamW-style optimizer with global-norm clipping on both sides, dropout off
on both sides. Also measures the machine's fp32 GEMM peak (2048^3 MatMul) in MindSpore and PyTorch;
MFU = (6 N + 12 L h S) * tokens/s / peak, with the higher measured peak.

    python bench/bench_train.py [--steps 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from common import elapsed, median_time, ours_train_step, torch_train_step, write_json


def gemm_peak_gflops(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    import mindspore as ms
    import torch
    from mindspore import nn, ops

    from pangu_zoo.runtime import use_graph_mode

    use_graph_mode()

    class Gemm(nn.Cell):
        def construct(self, a, b):
            return ops.matmul(a, b)

    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    gemm, ta, tb = Gemm(), ms.Tensor(a), ms.Tensor(a)
    gemm(ta, tb).asnumpy()
    ms_time = min(elapsed(lambda: gemm(ta, tb).asnumpy()) for _ in range(repeats))
    pa = torch.from_numpy(a)
    torch.mm(pa, pa)
    torch_time = min(elapsed(lambda: torch.mm(pa, pa)) for _ in range(repeats))
    flops = 2.0 * size ** 3
    return {"mindspore_gflops": flops / ms_time / 1e9, "torch_gflops": flops / torch_time / 1e9}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import torch
    import transformers

    from pangu_zoo.config import get_preset
    from pangu_zoo.training.trainer import flops_per_token

    results = gemm_peak_gflops()
    b, s = args.batch, args.seq
    ids = np.random.default_rng(0).integers(0, 50257, size=(b, s + 1)).astype(np.int32)
    tokens = b * s

    config = get_preset("gpt2", dropout_rate=0.0, max_position_embeddings=1024)
    ours_step, results["ours_compile_s"] = ours_train_step(config, ids)
    ours = median_time(ours_step, args.steps)

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    torch_step = torch_train_step(hf, ids)
    torch_step()
    theirs = median_time(torch_step, args.steps)

    peak = max(results["mindspore_gflops"], results["torch_gflops"]) * 1e9
    per_token = flops_per_token(config, s)
    results.update(ours_tok_s=tokens / ours, torch_tok_s=tokens / theirs, ratio=theirs / ours,
                   ours_mfu=per_token * tokens / ours / peak, torch_mfu=per_token * tokens / theirs / peak)
    print(f"fp32 GEMM 2048^3: MindSpore {results['mindspore_gflops']:.0f} GFLOP/s, "
          f"PyTorch {results['torch_gflops']:.0f} GFLOP/s")
    print(f"GPT-2 small train step, batch {b} x {s}, fp32 (compile {results['ours_compile_s']:.1f} s)")
    print(f"{'':<16}{'tokens/s':>10}{'MFU':>8}")
    print(f"{'this project':<16}{results['ours_tok_s']:>10.1f}{100 * results['ours_mfu']:>7.1f}%")
    print(f"{'PyTorch eager':<16}{results['torch_tok_s']:>10.1f}{100 * results['torch_mfu']:>7.1f}%")
    print(f"ratio (this project / PyTorch): {results['ratio']:.2f}")
    write_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
