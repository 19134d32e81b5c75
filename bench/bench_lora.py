"""LoRA vs full fine-tuning of GPT-2 small (random weights): step time, peak memory, trainable parameters.

Each variant runs in a fresh process (so peak RSS is its own, from `resource.getrusage`): build GPT-2 small
(124M parameters, fp32, dropout off), add adapters for the LoRA variants (`pangu train --lora_rank` does the same),
build the training step `pangu train` uses (AdamWeightDecay, loss scale, clipping), run one step (compile) and
time `--steps` more on one random batch. "loss forward only" runs the loss network without a training step: the
memory any training step starts from.

    python bench/bench_lora.py [--steps 5] [--batch 2] [--seq 256] [--variants full,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import elapsed, write_json

FORWARD_ONLY = "loss forward only"
# variant -> LoRA targets (None: full fine-tuning)
VARIANTS = {
    FORWARD_ONLY: None,
    "full": None,
    "lora r8 attention": ("query", "key", "value", "attention_output"),
    "lora r8 all": ("query", "key", "value", "attention_output", "ffn_mapping", "ffn_projection"),
}
RANK, ALPHA = 8, 16.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _rss_mb() -> float:
    """Resident memory now (the peak also holds the compiler's transient memory)."""
    import os

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(variant: str, steps: int, batch: int, seq: int) -> dict:
    """One variant in this process (the worker side)."""
    import mindspore as ms

    from pangu_zoo.config import ParallelConfig, get_preset
    from pangu_zoo.models import build_model
    from pangu_zoo.models.lora import apply_lora
    from pangu_zoo.models.loss import LanguageModelWithLoss
    from pangu_zoo.runtime import use_graph_mode
    from pangu_zoo.training.build import build_train_step

    use_graph_mode()
    ms.set_seed(0)
    config = get_preset("gpt2", dropout_rate=0.0)
    model = build_model(config)
    if VARIANTS[variant] is not None:
        apply_lora(model, RANK, ALPHA, 0.0, VARIANTS[variant])
    model_rss = _peak_rss_mb()
    if variant == FORWARD_ONLY:
        step = LanguageModelWithLoss(model)
    else:
        step = build_train_step(model, ParallelConfig(), "adam", 1e-4)
        step.set_train(True)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, size=(batch, seq + 1)).astype(np.int32)
    inputs = (ms.Tensor(ids), ms.Tensor(np.tile(np.arange(seq, dtype=np.int32), (batch, 1))),
              ms.Tensor(np.tile(np.tril(np.ones((seq, seq), np.int8)), (batch, 1, 1))),
              ms.Tensor(np.ones((batch, seq), np.float32)))
    def run_step():
        out = step(*inputs)
        (out if variant == FORWARD_ONLY else out[0]).asnumpy()

    start = time.perf_counter()
    run_step()
    first = time.perf_counter() - start
    times = [elapsed(run_step) for _ in range(steps)]
    step_s = float(np.median(times))
    optimizer = getattr(step, "optimizer", None)
    moments = list(optimizer.moments1) + list(optimizer.moments2) if optimizer else []
    return {
        "trainable_params": sum(int(np.prod(p.shape)) for p in model.trainable_params()),
        "all_params": sum(int(np.prod(p.shape)) for p in model.get_parameters()),
        "adam_state_params": sum(int(np.prod(m.shape)) for m in moments),
        "compile_and_first_step_s": first, "step_s": step_s, "step_min_s": min(times),
        "tokens_per_s": batch * seq / step_s,
        "model_rss_mb": model_rss, "rss_after_steps_mb": _rss_mb(), "peak_rss_mb": _peak_rss_mb(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma list, run in this order (default: all)")
    parser.add_argument("--json")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--worker_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(measure(args.worker, args.steps, args.batch, args.seq)))
        return 0

    results = {"batch": args.batch, "seq": args.seq, "rank": RANK, "variants": {}}
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            subprocess.run([sys.executable, __file__, "--worker", variant, "--worker_out", str(out),
                            "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq)],
                           check=True)
            results["variants"][variant] = json.loads(out.read_text())
    print(f"GPT-2 small, fp32, batch {args.batch} x {args.seq}, AdamWeightDecay; LoRA rank {RANK}")
    print(f"{'variant':<20}{'trainable':>13}{'Adam state':>13}{'step s':>9}{'min s':>8}{'tokens/s':>10}"
          f"{'model MB':>10}{'after MB':>10}{'peak MB':>9}")
    for variant, r in results["variants"].items():
        trainable = r["trainable_params"] if variant != FORWARD_ONLY else 0
        print(f"{variant:<20}{trainable:>13,}{r['adam_state_params']:>13,}{r['step_s']:>9.2f}"
              f"{r['step_min_s']:>8.2f}{r['tokens_per_s']:>10.0f}{r['model_rss_mb']:>10.0f}"
              f"{r['rss_after_steps_mb']:>10.0f}{r['peak_rss_mb']:>9.0f}")
    write_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
