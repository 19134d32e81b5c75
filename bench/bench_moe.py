"""Training speed and peak memory of a small MoE PanGu-alpha (4 experts, top-1 and top-2) against the dense model
of the same active size (FFN width k x 4h: the FFN FLOPs a token meets), each case in a fresh process.

The MoE model has E x the FFN weights of its dense twin but routes each token to k experts, so its tokens/s
should stay near the dense one's while its parameters and Adam state grow. Random token ids, dropout off,
AdamWeightDecay with global-norm clipping (the training step `train.py` runs).

    python bench/bench_moe.py [--steps 10] [--batch 8] [--seq 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CASES = {  # name -> (experts, k); dense twins have ffn = k x 4h
    "dense (ffn 4h)": (1, 1),
    "MoE E4 top-1": (4, 1),
    "dense (ffn 8h)": (1, 2),
    "MoE E4 top-2": (4, 2),
}
SHAPE = dict(hidden_size=256, num_heads=8, num_layers=5, vocab_size=40000)


def run_case(experts: int, k: int, steps: int, batch: int, seq: int) -> dict:
    import resource

    import mindspore as ms
    import numpy as np

    from pangu_zoo.config import MoEConfig, ParallelConfig, count_parameters, get_preset
    from pangu_zoo.models import build_model
    from pangu_zoo.runtime import use_graph_mode
    from pangu_zoo.training.build import build_train_step

    use_graph_mode()
    ms.set_seed(0)
    if experts > 1:
        config = get_preset("pangu_alpha_tiny", **SHAPE, max_position_embeddings=seq, dropout_rate=0.0,
                            moe=MoEConfig(expert_num=experts, num_experts_chosen=k))
    else:
        config = get_preset("pangu_alpha_tiny", **SHAPE, max_position_embeddings=seq, dropout_rate=0.0,
                            ffn_hidden_size=4 * k * SHAPE["hidden_size"])
    model = build_model(config)
    step = build_train_step(model, ParallelConfig(), "adam", 1e-4)
    step.set_train(True)
    rng = np.random.default_rng(0)
    inputs = (ms.Tensor(rng.integers(0, 40000, (batch, seq + 1)).astype(np.int32)),
              ms.Tensor(np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()),
              ms.Tensor(np.broadcast_to(np.tril(np.ones((seq, seq), np.int32)), (batch, seq, seq)).copy()),
              ms.Tensor(np.ones((batch, seq), np.float32)))
    start = time.perf_counter()
    step(*inputs)[0].asnumpy()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(*inputs)[0].asnumpy()
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    weights = sum(p.size for p in model.trainable_params())
    return {"experts": experts, "k": k, "parameters": int(weights), "dense_formula_parameters": count_parameters(config)
            if experts == 1 else None, "first_step_s": round(first, 2), "step_s": round(median, 4),
            "tokens_per_s": round(batch * seq / median, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--json")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args(argv)
    if args.case:
        experts, k = CASES[args.case]
        print(json.dumps(run_case(experts, k, args.steps, args.batch, args.seq)))
        return 0
    results = {"batch": args.batch, "seq": args.seq, "shape": SHAPE, "cases": {}}
    for name in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", name, "--steps", str(args.steps), "--batch",
                              str(args.batch), "--seq", str(args.seq)], capture_output=True, text=True, check=True)
        results["cases"][name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"training step, batch {args.batch} x {args.seq}, h {SHAPE['hidden_size']}, {SHAPE['num_layers']} layers")
    print(f"{'case':18s} {'params':>11s} {'tokens/s':>9s} {'peak RSS':>9s}  vs dense twin")
    cases = results["cases"]
    for name, case in cases.items():
        twin = cases["dense (ffn 4h)" if case["k"] == 1 else "dense (ffn 8h)"]
        ratio = f"{case['tokens_per_s'] / twin['tokens_per_s']:.2f}x speed, " \
                f"{case['peak_rss_mb'] / twin['peak_rss_mb']:.2f}x memory" if case["experts"] > 1 else ""
        print(f"{name:18s} {case['parameters']:11,d} {case['tokens_per_s']:9.0f} {case['peak_rss_mb']:7.0f}MB  {ratio}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
