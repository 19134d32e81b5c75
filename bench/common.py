"""Helpers shared by the benchmarks (run them as `python bench/<name>.py`, which puts this folder on the path)."""

from __future__ import annotations

import tempfile


def gpt2_small_pair():
    """(transformers GPT2LMHeadModel in eval mode, this project's model with the same random weights)."""
    import torch
    import transformers

    from pangu_zoo.models import from_pretrained

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = from_pretrained(tmp)
    return hf, ours


def elapsed(fn) -> float:
    """Seconds one call of `fn` takes."""
    import time

    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls of `fn`."""
    import statistics

    return statistics.median(elapsed(fn) for _ in range(repeats))


def write_json(results: dict, path: str | None) -> None:
    """Write the results as JSON when a path was given."""
    if path:
        import json

        with open(path, "w") as f:
            json.dump(results, f, indent=2)
