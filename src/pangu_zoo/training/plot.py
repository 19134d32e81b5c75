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
    """The step records of a training log: lines that are not JSON objects with a numeric step and loss are
    skipped (a log may hold other records, or a line cut short by an interrupted run)."""
    from pangu_zoo.errors import DataError

    if not path.is_file():
        raise DataError(f"training log {path} does not exist")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [record for record in map(_parse, lines) if _is_step_record(record)]
    if not records:
        raise DataError(f"training log {path} has no step with a loss ({len(lines)} lines); "
                        f"pass the train_log.jsonl written by training")
    return records


def _parse(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _is_step_record(record) -> bool:
    return isinstance(record, dict) and all(
        isinstance(record.get(key), int | float) and not isinstance(record.get(key), bool) for key in ("step", "loss"))


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
