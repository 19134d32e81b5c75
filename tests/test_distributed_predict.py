"""Sharded inference (`predict.py --distribute true`): the predict plan compiled for simulated devices, the KV
cache layout it keeps, the weight slices each rank holds, and the launchers. Expected slices are written out
by hand from reference §7.2 (Q/K/V and the FFN mapping split by output, projections by input, biases after a
row-parallel projection whole, embeddings and LayerNorm whole)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO_ROOT

from pangu_zoo.config import get_preset
from pangu_zoo.errors import ConfigError
from pangu_zoo.parallel.inference import inference_plan, local_part

SEQ = 64


def predict_dryrun(tmp_path, devices, *extra, mode="pangu_alpha_tiny"):
    report = tmp_path / f"predict_{mode}_{devices}.json"
    command = [sys.executable, "-m", "pangu_zoo.cli", "dryrun", "--run_type", "predict", "--mode", mode,
               "--seq_length", str(SEQ), "--device_num", str(devices), "--per_batch_size", "1", "--json",
               str(report), *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    return result, json.loads(report.read_text()) if report.exists() else None


# parameter (inside a block) -> (axis split over the devices, or None when every rank holds it whole)
BLOCK_SLICES = {
    "attention.dense1.weight": 0, "attention.dense2.weight": 0, "attention.dense3.weight": 0,
    "attention.dense1.bias": 0, "attention.dense2.bias": 0, "attention.dense3.bias": 0,
    "attention.projection.weight": 0, "attention.projection.bias": None,
    "output.mapping.weight": 1, "output.mapping.bias": 0,
    "output.projection.weight": 0, "output.projection.bias": None,
    "layernorm1.gamma": None, "layernorm1.beta": None, "layernorm2.gamma": None, "layernorm2.beta": None,
}


def test_every_rank_holds_its_slice_and_keeps_its_heads_of_the_cache(tmp_path):
    devices = 4
    result, report = predict_dryrun(tmp_path, devices, "--rank", "all")
    assert result.returncode == 0, result.stdout + result.stderr
    config = get_preset("pangu_alpha_tiny", max_position_embeddings=SEQ)
    n, d, layers = config.num_heads, config.head_dim, config.num_layers
    assert [r["rank"] for r in report["ranks"]] == list(range(devices))
    for rank_report in report["ranks"]:
        rank = rank_report["rank"]
        graphs = rank_report["graphs"]
        local_cache = [1, n // devices, SEQ, d]
        assert graphs["prefill"]["outputs"][0] == [1, config.vocab_size]  # whole logits on every rank
        assert graphs["prefill"]["outputs"][1:] == [local_cache] * (2 * layers)
        assert graphs["decode"]["inputs"][4:] == [local_cache] * (2 * layers)
        assert graphs["decode"]["outputs"] == [[1, config.vocab_size]] + [local_cache] * (2 * layers)
        assert graphs["decode"]["inputs"][2:4] == [[1, 1, 1, SEQ // devices], [1, 1, SEQ // devices, 1]]
        assert graphs["forward"]["outputs"] == [[1, SEQ, config.vocab_size]]
        params = {p["name"].removeprefix("backbone."): p for p in rank_report["parameters"]}
        assert len(params) == len(BLOCK_SLICES) * layers + 5  # + word, position, top-query tables, final LN
        for name, p in params.items():
            key = name.split(".", 2)[-1] if name.startswith("blocks.") else name.split(".", 1)[-1]
            axis = BLOCK_SLICES.get(key) if ("blocks." in name or "top_query_layer." in name) else None
            if axis is None:
                assert p["holds"] == {} and p["slice_shape"] == p["full_shape"], name
            else:
                assert p["holds"] == {"axis": axis, "part": rank}, name
                expected = list(p["full_shape"])
                expected[axis] //= devices
                assert p["slice_shape"] == expected, name
    assert "KV cache per layer on this rank: prefill returns [1, 1, 64, 16]" in result.stdout


def test_gpt2_compiles_on_two_devices(tmp_path):
    result, report = predict_dryrun(tmp_path, 2, "--rank", "1", "--brief", mode="gpt2-tiny")
    assert result.returncode == 0, result.stdout + result.stderr
    (rank_report,) = report["ranks"]
    params = {p["name"].removeprefix("backbone."): p for p in rank_report["parameters"]}
    assert params["blocks.1.attention.dense3.weight"]["holds"] == {"axis": 0, "part": 1}
    assert rank_report["graphs"]["decode"]["outputs"][1] == [1, 2, SEQ, 16]


@pytest.mark.parametrize("devices,message", [(8, "num_heads (4) must be a multiple of model_parallel (8)"),
                                             (6, "power of 2"), (1, "at least 2 devices")])
def test_plans_the_model_cannot_take_are_refused(devices, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        inference_plan(get_preset("pangu_alpha_tiny"), devices)


def test_dryrun_refuses_before_compiling(tmp_path):
    result, report = predict_dryrun(tmp_path, 8)
    assert result.returncode == 2 and report is None
    assert "splits the model over all 8 devices" in result.stderr and "Traceback" not in result.stderr


def test_local_part_cuts_rank_slices():
    array = np.arange(2 * 8).reshape(2, 1, 8, 1)
    assert local_part(array, 2, 3, 4).ravel().tolist() == [6, 7, 14, 15]
    with pytest.raises(ConfigError, match="not divisible by 3"):
        local_part(array, 2, 0, 3)


RECORDER = """#!/usr/bin/env python3
import json, os, sys
with open("call.json", "w") as f:
    json.dump({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in
               ("RANK_ID", "DEVICE_ID", "RANK_SIZE", "RANK_TABLE_FILE")}}, f)
"""


def run_launcher(tmp_path, script, *args, ranks):
    """Run a launcher with PYTHON set to a recorder; return each rank's recorded call."""
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    env = dict(os.environ, PYTHON=str(recorder))
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / script), *map(str, args)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    calls = [tmp_path / f"device_{i}" / "call.json" for i in range(ranks)]
    deadline = time.time() + 30
    while not all(c.exists() and c.stat().st_size for c in calls) and time.time() < deadline:
        time.sleep(0.1)
    return [json.loads(c.read_text()) for c in calls]


def test_distribute_predict_launcher_starts_one_process_per_rank(tmp_path):
    table = tmp_path / "hccl_2p.json"
    table.write_text("{}")
    calls = run_launcher(tmp_path, "run_distribute_predict.sh", 2, "hccl_2p.json", "strategy.ckpt", "tok", "/ckpt",
                         "part", "13B", "fp16", "--prompt", "你好", ranks=2)
    for rank, call in enumerate(calls):
        assert call["env"] == {"RANK_ID": str(rank), "DEVICE_ID": str(rank), "RANK_SIZE": "2",
                               "RANK_TABLE_FILE": str(table)}
        argv = call["argv"]
        assert argv[0] == str(REPO_ROOT / "predict.py")
        for flag in ("--distribute=true", "--device_target=Ascend", f"--device_id={rank}",
                     "--strategy_load_ckpt_path=strategy.ckpt", "--tokenizer_path=tok", "--load_ckpt_path=/ckpt",
                     "--load_ckpt_name=part", "--mode=13B", "--param_init_type=fp16", "--prompt"):
            assert flag in argv, flag
        assert argv[-1] == "你好"


def test_distribute_eval_launcher_keeps_the_reference_order(tmp_path):
    (tmp_path / "table.json").write_text("{}")
    calls = run_launcher(tmp_path, "run_distribute_eval.sh", 2, "table.json", "", "tok", "/ckpt", "2.6B", "fp32",
                         "c3", "/data/c3", ranks=2)
    argv = calls[1]["argv"]
    for flag in ("--load_ckpt_path=/ckpt", "--load_ckpt_name=", "--mode=2.6B", "--param_init_type=fp32",
                 "--eval_task=c3", "--eval_data_url=/data/c3", "--distribute=true"):
        assert flag in argv, flag


def test_distribute_launcher_needs_the_rank_table(tmp_path):
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "run_distribute_predict.sh"), "2", "missing.json",
                             "", "tok", "/ckpt", "x", "13B", "fp16"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1 and "rank table missing.json does not exist" in result.stderr
    assert not list(tmp_path.glob("device_*"))
