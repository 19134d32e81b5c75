"""MindSpore's compile cache, made safe to share between processes (opt in with PANGU_COMPILE_CACHE=<folder>).

MindSpore can keep compiled graphs on disk (`enable_compile_cache`), so that a fresh process loads them instead of
compiling again: GPT-2 small's first `generate` in a new process drops from 3.4 to 1.0 s. But on 2.10 the cache
files a graph only under its position among the cache-enabled compiles of its process (`compile_cache_<i>.mindir`),
in the one folder the process named first, and checks only that the source files are unchanged: a graph compiled
for inputs of 2 values, asked for in a later process for 3 values, came back from the cache and returned 2 values,
and a cell built with another constant returned the old constant's results.

So the cache is used only where position i is known to hold the same graph. A process's folder is named by its
first cached graph: the model (config, parameters, mode, versions), the graph and its input signature; the folder
keeps a journal of the graph at each position. A compile whose position's journal entry differs runs without the
cache (and takes no position); one past the end of the journal is added to it. A process caches the graphs of the
model it started with (MindSpore keeps the folder it was given first); the journal is locked while a graph
compiles, so processes sharing a folder wait.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

import mindspore as ms

ENVIRONMENT_VARIABLE = "PANGU_COMPILE_CACHE"
JOURNAL = "graphs.journal"


def cache_root() -> Path | None:
    """The folder PANGU_COMPILE_CACHE names, or None (no cache) when it is unset or empty."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "")
    return Path(value).expanduser() if value else None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class _Process:
    """What this process has done with the cache: the folder MindSpore holds, and positions used."""

    folder: Path | None = None
    used = 0


@contextmanager
def _locked(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / (JOURNAL + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class CachedGraph:
    """A graph cell compiled through the cache: `model_key` names the model (it must change whenever the model's
    graphs would, the source code aside), `graph_key` the graph; each input signature is one journal entry."""

    def __init__(self, cell, model_key: str, graph_key: str, root: Path) -> None:
        self.cell = cell
        self.models = root / _digest(f"{model_key}|{ms.__version__}")
        self.graph_key = graph_key
        self._compiled: set[tuple] = set()

    def __call__(self, *args):
        signature = tuple((tuple(arg.shape), str(arg.dtype)) for arg in args)
        if signature in self._compiled or (_Process.folder is not None and _Process.folder.parent != self.models):
            return self.cell(*args)
        entry = _digest(f"{self.graph_key}|{signature}")
        folder = _Process.folder or self.models / entry
        with _locked(folder):
            journal_file = folder / JOURNAL
            journal = journal_file.read_text().split() if journal_file.exists() else []
            position = _Process.used
            if position < len(journal) and journal[position] != entry:
                outputs = self.cell(*args)  # this position holds another graph: compile without the cache
            else:
                if position == len(journal):
                    journal_file.write_text("".join(line + "\n" for line in [*journal, entry]))
                _Process.folder, _Process.used = folder, position + 1
                ms.set_context(enable_compile_cache=True, compile_cache_path=str(folder))
                try:
                    outputs = self.cell(*args)
                finally:
                    ms.set_context(enable_compile_cache=False)
        self._compiled.add(signature)
        return outputs
