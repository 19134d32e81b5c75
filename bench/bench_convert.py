"""`pangu convert` on full-size random checkpoints: seconds and peak memory of each conversion, next to
transformers' own `from_pretrained` / `save_pretrained` of the same GPT-2.

Each conversion runs in a process of its own (`python -m pangu_zoo.convert_cli ... --mode PRESET`, the `pangu
convert` command without the parser of every other subcommand), and its peak resident memory is that child's
`ru_maxrss` (from `os.wait4`), so one row's memory never includes another's. Linux carries a parent's peak RSS
into the children it starts (the high-water mark survives `exec`), so the random source checkpoints are made in
child processes too and this process stays small. Rows are table-driven:
`PAIRS` lists, per model preset, the (source format, destination format) conversions to time, in order; a pair's
source is the random zoo checkpoint or the output of an earlier pair that wrote that format.

    python bench/bench_convert.py [--models gpt2,pangu_alpha_350m] [--workdir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_json

PAIRS: dict[str, list[tuple[str, str]]] = {
    "gpt2": [("zoo", "hf-gpt2"), ("hf-gpt2", "zoo"), ("zoo", "mindformers"), ("mindformers", "zoo"),
             ("zoo", "megatron-gpt2"), ("megatron-gpt2", "zoo")],
    "pangu_alpha_350m": [("zoo", "mindformers"), ("mindformers", "zoo"), ("released", "zoo"),
                         ("zoo", "megatron-pangu"), ("megatron-pangu", "zoo")],
}
# formats written as one file; the others are folders
FILE_SUFFIX = {"mindformers": ".ckpt"}
MEMORY_BOUND = 2.5  # peak RSS / checkpoint size the conversions must stay under

TRANSFORMERS_LOAD = """
import sys, time, transformers
start = time.perf_counter()
model = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1])
if len(sys.argv) > 2:
    model.save_pretrained(sys.argv[2])
print(f"seconds {time.perf_counter() - start:.3f}")
"""
IMPORTS_ONLY = {
    "python + pangu_zoo.checkpoint.convert imports": "import pangu_zoo.checkpoint.convert",
    "python + the parser of every `pangu` subcommand": "from pangu_zoo.cli import build_parser; build_parser()",
    "python + torch + transformers imports": "import torch, transformers",
}


def run_child(command: list[str], log: Path) -> dict:
    """Run `command`; its wall seconds, peak RSS (MiB) and the seconds it printed itself."""
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{text}")
    seconds = re.search(r"bytes, ([\d.]+) s ->|^seconds ([\d.]+)", text, re.MULTILINE)
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "own_s": float(seconds.group(1) or seconds.group(2)) if seconds else None}


def size_on_disk(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_random_zoo(preset: str, directory: Path) -> None:
    """A zoo directory of `preset`'s shape holding random fp32 weights, made one tensor at a time."""
    import numpy as np

    from pangu_zoo.checkpoint import zoo_format
    from pangu_zoo.checkpoint.lazy import LazyWeights, TensorSpec
    from pangu_zoo.checkpoint.parameter_shapes import parameter_shapes
    from pangu_zoo.config import get_preset

    config = get_preset(preset, dropout_rate=0.0)
    shapes = parameter_shapes(config)
    rng = np.random.default_rng(0)
    weights = LazyWeights({name: TensorSpec(shape, np.float32) for name, shape in shapes.items()},
                          lambda name: rng.standard_normal(shapes[name], dtype=np.float32) * 0.02)
    zoo_format.write(config, weights, directory)


def write_random_released(preset: str, directory: Path) -> None:
    """The released layout of `preset`'s shape, random weights, as the released-checkpoint tests build it: four
    ranks (2-way data x 2-way model parallel) of MindSpore slices + strategy file + the three .npy tables."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_released_checkpoint import write_released

    from pangu_zoo.checkpoint.parameter_shapes import parameter_shapes
    from pangu_zoo.config import get_preset

    rng = np.random.default_rng(0)
    shapes = parameter_shapes(get_preset(preset))
    write_released(directory, {name: rng.standard_normal(shape, dtype=np.float32) * 0.02
                               for name, shape in shapes.items()})


# sources that `pangu convert` cannot write: made here
SOURCE_MAKERS = {"zoo": write_random_zoo, "released": write_random_released}


def convert_rows(preset: str, root: Path) -> list[dict]:
    outputs: dict[str, Path] = {}
    rows = []
    for src_format, dst_format in PAIRS[preset]:
        if src_format not in outputs:
            outputs[src_format] = root / src_format
            subprocess.run([sys.executable, __file__, "--make", src_format, preset, str(outputs[src_format])],
                           check=True, stdout=subprocess.DEVNULL)
        src = outputs[src_format]
        dst = root / f"{src_format}-to-{dst_format}{FILE_SUFFIX.get(dst_format, '')}"
        command = [sys.executable, "-m", "pangu_zoo.convert_cli", src_format, dst_format, "--src", str(src),
                   "--dst", str(dst), "--mode", preset, "--no_progress"]
        result = run_child(command, root / f"{dst.name}.log")
        size = size_on_disk(src)
        rows.append({"model": preset, "task": f"pangu convert {src_format} {dst_format}",
                     "checkpoint_mib": round(size / 2**20, 1), **result,
                     "rss_per_checkpoint": round(result["peak_rss_mib"] * 2**20 / size, 2)})
        outputs.setdefault(dst_format, dst)
        print(rows[-1], flush=True)
    if "hf-gpt2" in outputs:
        hf = outputs["hf-gpt2"]
        size = size_on_disk(hf)
        for task, extra in (("transformers from_pretrained", []),
                            ("transformers from_pretrained + save_pretrained", [str(root / "hf-saved")])):
            result = run_child([sys.executable, "-c", TRANSFORMERS_LOAD, str(hf), *extra], root / "transformers.log")
            rows.append({"model": preset, "task": task, "checkpoint_mib": round(size / 2**20, 1), **result,
                         "rss_per_checkpoint": round(result["peak_rss_mib"] * 2**20 / size, 2)})
            print(rows[-1], flush=True)
    return rows


def import_rows(root: Path) -> list[dict]:
    return [{"model": "-", "task": task, **run_child([sys.executable, "-c", code], root / "imports.log")}
            for task, code in IMPORTS_ONLY.items()]


def markdown(rows: list[dict]) -> str:
    lines = ["| model | task | checkpoint MiB | conversion s | process s | peak RSS MiB | RSS / checkpoint |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['task']} | {r.get('checkpoint_mib', '-')} | {r['own_s'] or '-'} | "
                     f"{r['wall_s']} | {r['peak_rss_mib']} | {r.get('rss_per_checkpoint', '-')} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PAIRS), help="comma-separated presets among " + ", ".join(PAIRS))
    parser.add_argument("--workdir", default=None, help="where the checkpoints go (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--make", nargs=3, metavar=("FORMAT", "PRESET", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:  # a source checkpoint, in a process of its own
        fmt, preset, directory = args.make
        SOURCE_MAKERS[fmt](preset, Path(directory))
        return 0

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert."))
    root.mkdir(parents=True, exist_ok=True)
    try:
        rows = import_rows(root)
        for preset in args.models.split(","):
            (root / preset).mkdir()
            rows += convert_rows(preset, root / preset)
            shutil.rmtree(root / preset)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(markdown(rows))
    write_json({"rows": rows}, args.json)
    over = [r for r in rows if r["task"].startswith("pangu convert") and r["rss_per_checkpoint"] >= MEMORY_BOUND]
    if over:
        print(f"over the {MEMORY_BOUND}x memory bound: {[r['task'] for r in over]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
