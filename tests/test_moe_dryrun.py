"""`pangu dryrun` of mixture-of-experts plans: the experts are split over the expert-parallel ways, tokens move
with exactly one AlltoAll each way per MoE layer (two forward, two backward), and the offloaded optimizer
compiles sharded with its updates pinned to the host."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pangu_zoo.config import MoEConfig, get_preset

SEQ = 32


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("moe_dryrun") / "tiny.json"
    special = {"eod_token_id": 7, "pad_token_id": 7, "eos_token_id": 7}
    config = get_preset("pangu_alpha_tiny", num_heads=8, num_layers=3, vocab_size=1024, hidden_size=64,
                        ffn_hidden_size=256, dropout_rate=0.0, **special)
    path.write_text(json.dumps(config.to_dict()))
    return path


def moe_dryrun(config_path, tmp_path, devices, mp, ep, experts, k=1, extra=()):
    report = tmp_path / f"moe_{devices}_{mp}_{ep}_{experts}_{k}.json"
    command = [sys.executable, "-m", "pangu_zoo.cli", "dryrun", "--config", str(config_path), "--seq_length",
               str(SEQ), "--device_num", str(devices), "--op_level_model_parallel_num", str(mp), "--per_batch_size",
               "2", "--use_moe", "1", "--expert_num", str(experts), "--per_token_num_experts_chosen", str(k),
               "--expert_parallel_num", str(ep), "--dropout_rate", "0", "--json", str(report), *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout, json.loads(report.read_text())["ranks"]


def expert_params(rank):
    return {p["name"].split("output.")[-1]: p for p in rank["parameters"] if "blocks.0.output." in p["name"]}


def test_one_alltoall_each_way_per_moe_layer(config_path, tmp_path):
    """8 devices, dp 4 x mp 2, 4 experts over ep 2: two MoE blocks (the top-query layer stays dense)."""
    out, ranks = moe_dryrun(config_path, tmp_path, 8, mp=2, ep=2, experts=4, extra=("--rank", "0,7"))
    for rank in ranks:
        assert rank["moe_layers"] == 2
        assert rank["collectives"]["AlltoAll"] == 4 * 2  # per layer: dispatch and combine, forward and backward
        params = expert_params(rank)
        assert params["mapping.weight"]["full_shape"] == [4, 64, 256]
        assert params["mapping.weight"]["slice_shape"] == [2, 64, 128]  # E / ep, h, 4h / mp
        assert params["projection.weight"]["slice_shape"] == [2, 128, 64]
        assert params["projection.bias"]["slice_shape"] == [2, 1, 64]
        assert params["router.weight"]["slice_shape"] == [64, 4]  # the router is whole on every rank
        dense = [p for p in rank["parameters"] if "top_query_layer.output.mapping.weight" in p["name"]]
        assert dense[0]["slice_shape"] == [64, 128]
    assert "4 AlltoAll per layer" not in out and "(4 per layer" in out


@pytest.mark.parametrize("ep, k, experts", [(8, 1, 8), (4, 2, 8)])
def test_sixteen_devices_dp8_mp2(config_path, tmp_path, ep, k, experts):
    _, ranks = moe_dryrun(config_path, tmp_path, 16, mp=2, ep=ep, experts=experts, k=k, extra=("--rank", "0"))
    rank = ranks[0]
    assert rank["collectives"]["AlltoAll"] == 4 * rank["moe_layers"]
    assert expert_params(rank)["mapping.weight"]["slice_shape"] == [experts // ep, 64, 128]


def test_offloaded_optimizer_compiles_sharded(config_path, tmp_path):
    out, ranks = moe_dryrun(config_path, tmp_path, 16, mp=2, ep=4, experts=8, k=2,
                            extra=("--rank", "0", "--opt_offload", "1", "--optimizer_shard", "1",
                                   "--optimizer_shard_threshold", "0", "--param_init_type", "fp16"))
    rank = ranks[0]
    trainable = len(rank["parameters"])
    assert rank["collectives"]["host_optimizer_updates"] == trainable  # every update pinned to the CPU
    # the expert weights' fp32 state is also split over the dp / ep = 2 replicas of each expert slice
    mapping = expert_params(rank)["mapping.weight"]
    assert mapping["slice_shape"] == [2, 64, 128] and mapping["optimizer_shape"] == [1, 64, 128]
    assert "optimizer offloaded" in out


@pytest.mark.slow
def test_two_point_six_b_with_eight_experts_on_sixteen_devices(tmp_path):
    """The 2.6B shape with 8 experts in every ordinary block (about 13.6B parameters): dp 8 x mp 2, ep 8."""
    config = get_preset("2.6B", moe=MoEConfig(expert_num=8), param_dtype="float16", compute_dtype="float16")
    path = tmp_path / "moe_2.6b.json"
    path.write_text(json.dumps(config.to_dict()))
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pangu_zoo.cli", "dryrun", "--config", str(path), "--seq_length", "1024",
               "--device_num", "16", "--op_level_model_parallel_num", "2", "--per_batch_size", "1",
               "--expert_parallel_num", "8", "--json", str(report), "--brief", "--rank", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:]
    rank = json.loads(report.read_text())["ranks"][0]
    assert rank["moe_layers"] == 31 and rank["collectives"]["AlltoAll"] == 31 * 4
