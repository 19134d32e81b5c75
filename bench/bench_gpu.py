"""GPU benchmarks: greedy decode, forward and training of GPT-2 small and the 1.3B- and 2.6B-shaped PanGu-alpha,
this project on MindSpore's GPU backend vs transformers + PyTorch on the same card. Each (side, model, measure)
runs in its own process, one after the other, so neither side's memory pool disturbs the other.

transformers has no PanGu-alpha, so the peer's side of a PanGu row is a GPT-2 of the same shape (hidden size,
layers, heads, vocabulary 40000): the same matrix products per token; PanGu-alpha's last layer attends with a
learned query instead of the hidden state, at the same cost. Random weights on both sides (nothing is downloaded).

- decode: ms per new token of greedy decoding, prompt 32, batch 1 and 8:
  (median time of a generate of n + 1 tokens - median time of a generate of 1) / n, after a warm-up
- forward: ms of one forward pass returning the logits, batch 8 x 256
- train: tokens/s of AdamW steps with global-norm clipping, batch 8 x 512 (PanGu shapes 4 x 512), fp16 mixed
  precision with dynamic loss scaling on both sides; MFU = (6 N + 12 L h S) * tokens/s / the card's dense fp16
  matrix rate measured in the same run (8192^3 products in PyTorch)

The card, driver and CUDA runtime are recorded. MindSpore 2.10's GPU plugin is built against CUDA 11.1/11.6
(libcudart.so.11.0, libcublas.so.11, libcudnn.so.8, ...); the libraries it needs are probed on the machine, and
when the MindSpore side cannot run its rows say why instead of a number.

    python bench/bench_gpu.py [--models gpt2 pangu_alpha_1.3b pangu_alpha_2.6b] [--sides ours transformers]
                              [--device gpu|cpu] [--json out.json]

`--device cpu` with `--models gpt2-tiny pangu_alpha_tiny` runs the same code on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
from common import child_error, decode_ms_per_token, median_time, ours_train_step, torch_train_step, write_json

# hidden size, layers, heads, vocabulary: the presets of this project's config.py (checked on the MindSpore side)
SHAPES = {
    "gpt2": (768, 12, 12, 50257),
    "gpt2-tiny": (64, 2, 4, 50257),
    "pangu_alpha_1.3b": (1024, 16, 32, 40000),
    "pangu_alpha_2.6b": (2560, 32, 32, 40000),
    "pangu_alpha_tiny": (64, 3, 4, 40000),
}
SIDES = ("ours", "transformers")
MEASURES = ("decode", "forward", "train")
# the sonames MindSpore 2.10's libmindspore_gpu.so.11.6 lists as NEEDED (readelf -d)
MINDSPORE_GPU_NEEDS = ("libcudart.so.11.0", "libcublas.so.11", "libcudnn.so.8", "libcurand.so.10",
                       "libcusolver.so.11", "libcufft.so.10", "libcusparse.so.11", "libnvrtc.so.11.2", "libcuda.so.1")


def train_flops_per_token(model: str, seq: int) -> float:
    """(6 N + 12 L h S): N counts the blocks, the tied embedding and 1024 positions (as trainer.flops_per_token)."""
    h, layers, _, vocab = SHAPES[model]
    per_layer = 12 * h * h + 13 * h
    return 6.0 * (layers * per_layer + (vocab + 1024) * h + 2 * h) + 12.0 * layers * h * seq


def probe_machine() -> dict:
    """The card, the CUDA runtime PyTorch uses and which of MindSpore's GPU libraries can be loaded here."""
    import ctypes

    info = {}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except ImportError:
        info["torch"] = None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["driver"] = smi.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["driver"] = None
    loadable = {}
    for soname in MINDSPORE_GPU_NEEDS:
        try:
            ctypes.CDLL(soname)
            loadable[soname] = True
        except OSError:
            loadable[soname] = False
    info["mindspore_gpu_libraries_loadable"] = loadable
    try:
        import mindspore

        info["mindspore"] = mindspore.__version__
    except ImportError:
        info["mindspore"] = None
    return info


def peak_fp16_tflops(device: str) -> float:
    """Dense fp16 matrix-product rate of the card (8192^3, median of 5 after a warm-up), TFLOP/s."""
    import torch

    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=torch.float16 if device == "cuda" else torch.float32)
    torch.mm(a, a)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def product():
        torch.mm(a, a)
        sync()

    return 2.0 * n ** 3 / median_time(product, 5) / 1e12


def transformers_child(model: str, measure: str, dtype: str, batch: int, seq: int, args) -> dict:
    import torch
    import transformers

    device = "cuda" if args.device == "gpu" else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    h, layers, heads, vocab = SHAPES[model]
    config = transformers.GPT2Config(n_embd=h, n_layer=layers, n_head=heads, vocab_size=vocab, n_positions=1024,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    with torch.device(device):
        net = transformers.GPT2LMHeadModel(config)
    ids = np.random.default_rng(batch).integers(0, vocab, size=(batch, seq + (measure == "train")))
    if measure == "train":
        step = torch_train_step(net, ids, amp_dtype=getattr(torch, dtype))
        step()
        seconds = median_time(step, args.repeats)
        return {"tokens_per_s": batch * seq / seconds, "peak_tflops": peak_fp16_tflops(device),
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}
    net = net.to(getattr(torch, dtype)).eval()
    tensor = torch.as_tensor(ids, device=device)
    if measure == "forward":
        def forward():
            with torch.no_grad():
                net(tensor).logits.float()
            sync()

        forward()
        return {"ms": 1000 * median_time(forward, args.repeats)}

    def generate(n):
        with torch.no_grad():
            return net.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, pad_token_id=0).tolist()

    return decode_ms_per_token(generate, args.new_tokens, args.repeats, batch, sync)


def ours_child(model: str, measure: str, dtype: str, batch: int, seq: int, args) -> dict:
    import mindspore as ms

    ms.set_device("GPU" if args.device == "gpu" else "CPU")
    from pangu_zoo.config import get_preset
    from pangu_zoo.models import build_model

    h, layers, heads, vocab = SHAPES[model]
    config = get_preset(model, dropout_rate=0.0, param_dtype="float32" if measure == "train" else dtype,
                        compute_dtype=dtype)
    if (config.hidden_size, config.num_layers, config.num_heads, config.vocab_size) != (h, layers, heads, vocab):
        raise SystemExit(f"{model}: the preset's shape differs from the one this benchmark gives the peer")
    ids = np.random.default_rng(batch).integers(0, vocab, size=(batch, seq + (measure == "train")))
    if measure == "train":
        step, compile_s = ours_train_step(config, ids)
        return {"tokens_per_s": batch * seq / median_time(step, args.repeats), "compile_s": compile_s}
    net = build_model(config)
    if measure == "forward":
        net.forward_logits(ids)
        return {"ms": 1000 * median_time(lambda: net.forward_logits(ids), args.repeats)}
    return decode_ms_per_token(lambda n: net.generate(ids, max_new_tokens=n), args.new_tokens, args.repeats, batch)


def cases(models, dtypes):
    """(model, measure, dtype, batch, seq) of every row."""
    for model in models:
        big = model.startswith("pangu_alpha_") and not model.endswith("tiny")
        for dtype in (["float16"] if big else dtypes):
            for batch in (1, 8):
                yield model, "decode", dtype, batch, 32
            yield model, "forward", dtype, 8, 256
        yield model, "train", "float16", 4 if big else 8, 512


def run_child(side: str, case, args) -> dict:
    model, measure, dtype, batch, seq = case
    command = [sys.executable, __file__, "--child", side, "--case", model, measure, dtype, str(batch), str(seq),
               "--device", args.device, "--repeats", str(args.repeats), "--new_tokens", str(args.new_tokens)]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {args.timeout} s"}
    if result.returncode != 0:
        return child_error(result)
    row = json.loads(result.stdout.strip().splitlines()[-1])
    row["process_s"] = time.perf_counter() - started
    return row


def add_mfu(row: dict) -> None:
    """MFU of each side's training speed against the card's fp16 rate that the peer's process measured."""
    peak = row.get("transformers", {}).get("peak_tflops")
    for side in SIDES:
        if peak and "tokens_per_s" in row.get(side, {}):
            row[side]["mfu"] = train_flops_per_token(row["model"], row["seq"]) * row[side]["tokens_per_s"] / peak / 1e12


def describe(measure, entry) -> str:
    if "error" in entry:
        return "fails"
    if measure == "decode":
        return f"{entry['ms_per_token']:.2f} ms/tok"
    if measure == "forward":
        return f"{entry['ms']:.1f} ms"
    return f"{entry['tokens_per_s']:.0f} tok/s" + (f" (MFU {100 * entry['mfu']:.0f}%)" if "mfu" in entry else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(SHAPES), default=["gpt2", "pangu_alpha_1.3b",
                                                                                 "pangu_alpha_2.6b"])
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--timeout", type=int, default=300, help="seconds one case may take")
    parser.add_argument("--json")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--case", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        model, measure, dtype, batch, seq = args.case
        run = transformers_child if args.child == "transformers" else ours_child
        row = run(model, measure, dtype, int(batch), int(seq), args)
        row.pop("tokens", None)
        print(json.dumps(row))
        return 0

    results = {"machine": probe_machine(), "device": args.device, "rows": []}
    machine = results["machine"]
    print(f"card: {machine.get('gpu', 'none')}, driver {machine.get('driver')}, PyTorch {machine.get('torch')} "
          f"(CUDA {machine.get('torch_cuda')}), MindSpore {machine.get('mindspore')}")
    missing = [name for name, ok in machine["mindspore_gpu_libraries_loadable"].items() if not ok]
    print(f"MindSpore GPU plugin's libraries not loadable here: {', '.join(missing) or 'none'}", flush=True)
    for case in cases(args.models, args.dtypes):
        row = dict(zip(("model", "measure", "dtype", "batch", "seq"), case, strict=True))
        for side in args.sides:
            row[side] = run_child(side, case, args)
        if case[1] == "train":
            add_mfu(row)
        results["rows"].append(row)
        print(f"{case[0]:<18}{case[1]:<8}{case[2]:<8}{case[3]:>3} x {case[4]:<4}"
              + "".join(f"{side}: {describe(case[1], row[side]):<28}" for side in args.sides)
              + "".join(f" [{side}: {row[side]['error']}]" for side in args.sides if "error" in row[side]),
              flush=True)
    write_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
