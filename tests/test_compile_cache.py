"""The opt-in compile cache (PANGU_COMPILE_CACHE) never hands a graph another graph's compiled form: MindSpore files
them by position, so positions are journaled per model and first graph."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pangu_zoo import compile_cache
from pangu_zoo.compile_cache import JOURNAL, CachedGraph


@pytest.fixture
def fresh_process(monkeypatch):
    """Each call starts a new simulated process; returns the list of contexts MindSpore was given."""
    contexts = []
    monkeypatch.setattr(compile_cache.ms, "set_context", lambda **kwargs: contexts.append(kwargs))

    def start():
        monkeypatch.setattr(compile_cache._Process, "folder", None)
        monkeypatch.setattr(compile_cache._Process, "used", 0)
        contexts.clear()
        return contexts
    return start


def _call(graph, *shapes):
    return graph(*[np.zeros(shape, np.float32) for shape in shapes])


def _cached_folders(contexts):
    return [c["compile_cache_path"] for c in contexts if c.get("enable_compile_cache")]


def test_positions_are_journaled_and_a_different_graph_compiles_uncached(fresh_process, tmp_path):
    contexts = fresh_process()
    a, b = (CachedGraph(lambda *args: "ran", "model", name, tmp_path) for name in ("a", "b"))
    assert _call(a, (1, 4)) == "ran" and _call(b, (1, 4)) == "ran" and _call(a, (1, 4)) == "ran"
    first = _cached_folders(contexts)
    assert len(first) == 2 and len(set(first)) == 1  # one folder, two positions; a repeat does not compile
    journal = (tmp_path / first[0] / JOURNAL).read_text().split()
    assert len(journal) == 2

    contexts = fresh_process()  # same first graph: same folder; another graph at position 1 runs without the cache
    a, b, c = (CachedGraph(lambda *args: "ran", "model", name, tmp_path) for name in ("a", "b", "c"))
    _call(a, (1, 4))
    _call(c, (1, 4))
    _call(b, (1, 4))
    assert _cached_folders(contexts) == first  # a at 0, b at 1; c uncached
    assert (tmp_path / first[0] / JOURNAL).read_text().split() == journal

    contexts = fresh_process()  # another input signature first: a folder of its own
    _call(CachedGraph(lambda *args: "ran", "model", "a", tmp_path), (2, 4))
    assert _cached_folders(contexts) != first[:1] and len(_cached_folders(contexts)) == 1

    contexts = fresh_process()  # a second model in one process is not cached (MindSpore keeps the first folder)
    _call(CachedGraph(lambda *args: "ran", "model", "a", tmp_path), (1, 4))
    _call(CachedGraph(lambda *args: "ran", "other model", "a", tmp_path), (1, 4))
    assert len(_cached_folders(contexts)) == 1


SCRIPT = """
import json, sys
from pangu_zoo.models import from_pretrained
model = from_pretrained(sys.argv[1])
print(json.dumps([model.generate([list(range(1, n + 1))], max_new_tokens=6)[0] for n in map(int, sys.argv[2:])]))
"""


def test_processes_sharing_the_cache_generate_what_uncached_ones_do(tiny_gpt2, tmp_path):
    """Real MindSpore: processes that compile different shapes in different orders through one cache folder."""
    randomize = pytest.importorskip("conftest").randomize_weights
    randomize(tiny_gpt2, 4, 0.2, 0.3).save_pretrained(tmp_path / "model")
    script = tmp_path / "generate.py"
    script.write_text(SCRIPT)

    def run(lengths, cache):
        env = {k: v for k, v in os.environ.items() if k != compile_cache.ENVIRONMENT_VARIABLE}
        if cache:
            env[compile_cache.ENVIRONMENT_VARIABLE] = str(tmp_path / "cache")
        result = subprocess.run([sys.executable, str(script), str(tmp_path / "model"), *map(str, lengths)],
                                capture_output=True, text=True, env=env, check=True)
        return json.loads(result.stdout.strip().splitlines()[-1])

    expected = dict(zip([5, 20, 40], run([5, 20, 40], cache=False), strict=True))
    assert run([5, 40], cache=True) == [expected[5], expected[40]]
    assert run([5, 20, 40], cache=True) == [expected[5], expected[20], expected[40]]  # 20 is not at position 3
    assert list((tmp_path / "cache").rglob("*.mindir"))
