"""The figure of docs/benchmarks.md's inference section: decode ms/token and cold-start peak memory, this project
before and after the work on them, and transformers measured in the same run.

    python bench/plot_perf.py --decode_after decode_after.json --decode_before decode_before.json \\
        --cold_after cold_after.json --cold_before cold_before.json --out docs/img/inference_perf.png

Each JSON is what `bench/bench_decode.py` or `bench/bench_cold_start.py` wrote; `--cold_before_extra
PROMPT:BATCH:WALL:GB` adds a before figure not measured in the run (e.g. one that needs more memory than the machine
can spare next to other work).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _decode(path: str | None, side: str) -> dict[int, float]:
    if not path:
        return {}
    rows = json.loads(Path(path).read_text())["rows"]
    return {row["batch"]: row[side]["ms_per_token"] for row in rows
            if row["dtype"] == "float32" and "ms_per_token" in row.get(side, {})}


def _cold(path: str | None, side: str) -> dict[tuple[int, int], float]:
    if not path:
        return {}
    return {(case["prompt"], case["batch"]): case[side]["peak_rss_gb"]
            for case in json.loads(Path(path).read_text())["cases"] if side in case}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decode_after", required=True)
    parser.add_argument("--decode_before")
    parser.add_argument("--cold_after", required=True)
    parser.add_argument("--cold_before")
    parser.add_argument("--cold_before_extra", nargs="*", default=[])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decode = {"this project, before": _decode(args.decode_before, "ours"),
              "this project, after": _decode(args.decode_after, "ours"),
              "transformers": _decode(args.decode_after, "transformers")}
    cold = {"this project, before": _cold(args.cold_before, "ours"),
            "this project, after": _cold(args.cold_after, "ours"),
            "transformers": _cold(args.cold_after, "transformers")}
    for extra in args.cold_before_extra:
        prompt, batch, _, gigabytes = extra.split(":")
        cold["this project, before"][(int(prompt), int(batch))] = float(gigabytes)
    colors = {"this project, before": "#bbbbbb", "this project, after": "#1f77b4", "transformers": "#ff7f0e"}

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    batches = sorted({b for values in decode.values() for b in values})
    cases = sorted({c for values in cold.values() for c in values}, key=lambda c: (c[1], c[0]))
    for axis, groups, labels, series, unit, scale in (
            (left, batches, [f"batch {b}" for b in batches], decode, "ms per new token (lower is better)", "linear"),
            (right, cases, [f"prompt {p}, batch {b}" for p, b in cases], cold, "peak RSS, GB (lower is better)",
             "log")):
        width = 0.8 / len(series)
        for i, (name, values) in enumerate(series.items()):
            xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
            heights = [values.get(group, 0.0) for group in groups]
            bars = axis.bar(xs, heights, width, label=name, color=colors[name])
            for bar, height in zip(bars, heights, strict=True):
                if height:
                    axis.annotate(f"{height:.1f}" if height < 100 else f"{height:.0f}",
                                  (bar.get_x() + bar.get_width() / 2, height), ha="center", va="bottom", fontsize=7)
        axis.set_xticks(range(len(groups)), labels)
        axis.set_ylabel(unit)
        axis.set_yscale(scale)
    left.set_title("GPT-2 small greedy decode, fp32, prompt 32")
    right.set_title("cold generate of 16 tokens, fp32")
    left.legend(fontsize=8)
    figure.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
