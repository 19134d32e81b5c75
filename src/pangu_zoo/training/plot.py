"""`pangu plot-log`: the loss curve of a JSON-lines training log, drawn to PNG with matplotlib."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log_file", help="train_log.jsonl written by training")
    parser.add_argument("--out", default="loss.png")
    parser.add_argument("--title", default="training loss")


def read_log(path: Path) -> list[dict]:
    from pangu_zoo.errors import DataError

    if not path.is_file():
        raise DataError(f"training log {path} does not exist")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number} is not a JSON line: {error}") from error
    if not records:
        raise DataError(f"training log {path} is empty")
    return records


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(Path(args.log_file))
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, [r["loss"] for r in records], linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out} ({len(records)} steps, loss {records[0]['loss']:.3f} -> {records[-1]['loss']:.3f})")
    return 0
