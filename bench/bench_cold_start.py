"""Cold start: a fresh process's whole greedy `generate`, this project vs transformers, wall time and peak memory.

GPT-2 small with random weights (made by transformers once and saved to a folder both sides load), fp32, 16 new
tokens, three cases: prompt 32 at batch 1, prompt 512 at batch 1, prompt 512 at batch 8. Every run is a new
Python process that imports its library, loads the folder (`from_pretrained`) and generates once; its wall time
is measured from the parent (interpreter start to exit) and its peak RSS comes from `wait4`, as `/usr/bin/time`
reports them. The process prints its own split (import, load, generate) and its tokens, which must equal the
other side's. Sides:

* `ours`: this project, nothing cached;
* `ours_cached`: this project with PANGU_COMPILE_CACHE pointing at a folder one unmeasured run of the case filled
  (a second run: MindSpore loads the compiled graphs instead of compiling them);
* `transformers`: transformers + PyTorch (2 threads).

Sides alternate within each repeat; medians over the repeats are reported with the load average around them.

    python bench/bench_cold_start.py [--repeats 3] [--sides ours ours_cached transformers] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_json

CASES = ((32, 1), (512, 1), (512, 8))  # (prompt, batch)
SIDES = ("ours", "ours_cached", "transformers")
NEW_TOKENS = 16
CACHE_VARIABLE = "PANGU_COMPILE_CACHE"


def child(side: str, model_dir: str, prompt: int, batch: int) -> None:
    """The measured process: import, load, one generate; prints its split and tokens as JSON."""
    started = time.perf_counter()
    import numpy as np

    ids = np.random.default_rng(batch * 1000 + prompt).integers(0, 50257, size=(batch, prompt))
    if side == "transformers":
        import torch
        import transformers

        imported = time.perf_counter()
        model = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
        loaded = time.perf_counter()
        with torch.no_grad():
            tensor = torch.from_numpy(ids)
            out = model.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=50256).tolist()
    else:
        from pangu_zoo.models import from_pretrained

        imported = time.perf_counter()
        model = from_pretrained(model_dir)
        loaded = time.perf_counter()
        out = model.generate(ids, max_new_tokens=NEW_TOKENS)
    done = time.perf_counter()
    print(json.dumps({"import_s": imported - started, "load_s": loaded - imported, "generate_s": done - loaded,
                      "tokens": out}))


def run_child(side: str, model_dir: Path, prompt: int, batch: int, cache_dir: Path) -> dict:
    """One fresh process: wall time from the parent, peak RSS from wait4, and the child's own report."""
    env = {key: value for key, value in os.environ.items() if key != CACHE_VARIABLE}
    if side == "ours_cached":
        env[CACHE_VARIABLE] = str(cache_dir)
    command = [sys.executable, __file__, "--child", side, "--model_dir", str(model_dir), "--prompt", str(prompt),
               "--batch", str(batch)]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{side} prompt {prompt} batch {batch}: the process exited with {process.returncode}")
    report = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "peak_rss_gb": usage.ru_maxrss / 1e6, **report}


def make_model(directory: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval().save_pretrained(directory)


def summary(runs: list[dict]) -> dict:
    keys = ("wall_s", "peak_rss_gb", "import_s", "load_s", "generate_s")
    return {key: statistics.median(run[key] for run in runs) for key in keys}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--cases", nargs="+", help="PROMPT:BATCH pairs (default: 32:1 512:1 512:8)")
    parser.add_argument("--model_dir", help="a GPT-2 small folder (default: made with random weights)")
    parser.add_argument("--json")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--prompt", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.model_dir, args.prompt, args.batch)
        return 0

    cases = [tuple(map(int, c.split(":"))) for c in args.cases] if args.cases else list(CASES)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(args.model_dir) if args.model_dir else Path(scratch) / "gpt2"
        if not args.model_dir:
            make_model(model_dir)
        results = {"load_average_before": os.getloadavg(), "repeats": args.repeats, "new_tokens": NEW_TOKENS,
                   "cases": []}
        for prompt, batch in cases:
            cache_dir = Path(scratch) / f"compile_cache_{prompt}_{batch}"
            if "ours_cached" in args.sides:
                run_child("ours_cached", model_dir, prompt, batch, cache_dir)  # fills the cache, unmeasured
            runs = {side: [] for side in args.sides}
            for _ in range(args.repeats):
                for side in args.sides:
                    runs[side].append(run_child(side, model_dir, prompt, batch, cache_dir))
            tokens = {side: runs[side][0]["tokens"] for side in args.sides}
            case = {"prompt": prompt, "batch": batch, "same_tokens": len({json.dumps(t) for t in tokens.values()})
                    == 1, **{side: summary(runs[side]) for side in args.sides},
                    "runs": {side: [{k: v for k, v in run.items() if k != "tokens"} for run in runs[side]]
                             for side in args.sides}}
            results["cases"].append(case)
            print(f"prompt {prompt} batch {batch}: " + "; ".join(
                f"{side} {case[side]['wall_s']:.1f} s / {case[side]['peak_rss_gb']:.2f} GB" for side in args.sides)
                + f"; same tokens: {case['same_tokens']}", flush=True)
        results["load_average_after"] = os.getloadavg()

    print(f"\nGPT-2 small, fp32, {NEW_TOKENS} new tokens, fresh process per run (median of {args.repeats}); "
          f"load average {results['load_average_before'][0]:.1f} before, {results['load_average_after'][0]:.1f} "
          "after")
    header = f"{'case':<18}" + "".join(f"{side + ' wall / RSS':>28}" for side in args.sides)
    print(header)
    for case in results["cases"]:
        print(f"{'p' + str(case['prompt']) + ' b' + str(case['batch']):<18}" + "".join(
            f"{case[side]['wall_s']:>17.1f} s / {case[side]['peak_rss_gb']:.2f} GB" for side in args.sides))
    if "ours" in args.sides and "transformers" in args.sides:
        for case in results["cases"]:
            ratio = case["ours"]["wall_s"] / case["transformers"]["wall_s"]
            memory = case["ours"]["peak_rss_gb"] / case["transformers"]["peak_rss_gb"]
            print(f"p{case['prompt']} b{case['batch']}: wall {ratio:.2f}x transformers, peak RSS {memory:.2f}x")
    write_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
