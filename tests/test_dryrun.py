"""`pangu dryrun` end to end: sharded training steps of tiny PanGu-alpha and GPT-2 models compiled for 8 and 16
simulated devices. Expectations for slice shapes are written out by hand from reference §7.2 (not taken from
the project's own strategy table); stage contents follow §7.3."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from pangu_zoo.config import ParallelConfig, get_preset
from pangu_zoo.parallel.strategy import layer_stages, optimizer_shardable

H, FFN, VOCAB, SEQ = 64, 256, 1024, 32


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dryrun_configs")
    paths = {}
    for family, preset in (("pangu_alpha", "pangu_alpha_tiny"), ("gpt2", "gpt2-tiny")):
        # 5 layers (PanGu-alpha: 4 blocks + the top-query layer), 8 heads so that mp up to 8 divides them
        special = {"eod_token_id": 7, "pad_token_id": 7, "eos_token_id": 7}
        config = get_preset(preset, num_heads=8, num_layers=5, vocab_size=VOCAB, hidden_size=H, ffn_hidden_size=FFN,
                            dropout_rate=0.0, **special)
        paths[family] = folder / f"{family}.json"
        paths[family].write_text(json.dumps(config.to_dict()))
    return paths


def dryrun(config_path, tmp_path, devices, dp, mp, stages=1, micro=1, opt_shard=0, word_emb_dp=1, per_batch=2,
           extra=()):
    assert dp * mp * stages == devices
    report = tmp_path / f"dryrun_{devices}_{dp}_{mp}_{stages}_{opt_shard}_{word_emb_dp}.json"
    command = [sys.executable, "-m", "pangu_zoo.cli", "dryrun", "--config", str(config_path), "--seq_length", str(SEQ),
               "--device_num", str(devices), "--op_level_model_parallel_num", str(mp), "--stage_num", str(stages),
               "--micro_size", str(micro), "--optimizer_shard", str(opt_shard), "--word_emb_dp", str(word_emb_dp),
               "--optimizer_shard_threshold", "0", "--per_batch_size", str(per_batch),
               "--dropout_rate", "0", "--json", str(report), "--brief", *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    data = json.loads(report.read_text()) if report.exists() else None
    return result, data


def params_of(rank_report):
    return {p["name"].removeprefix("backbone."): p for p in rank_report["parameters"]}


def check_holdings(rank_report, family, parallel):
    """The rank holds exactly the parts §7.3 puts on its stage (plus the shared word table on the last stage)."""
    config = get_preset("pangu_alpha_tiny" if family == "pangu_alpha" else "gpt2-tiny", num_layers=5)
    stages = layer_stages(config, parallel)
    stage = rank_report["stage"]
    blocks = {f"blocks.{i}" for i in range(config.num_blocks) if stages[f"blocks.{i}"] == stage}
    held_blocks = {part for part in rank_report["holds"] if part.startswith("blocks.")}
    assert held_blocks == blocks
    last = parallel.pipeline_stage - 1
    assert ("head" in rank_report["holds"]) == (stage == last)
    assert ("layernorm" in rank_report["holds"]) == (stage == last)
    assert ("position_embedding" in rank_report["holds"]) == (stage == 0)
    if family == "pangu_alpha":
        assert ("top_query_layer" in rank_report["holds"]) == (stage == last)


def check_optimizer_sharding(rank_report, enabled):
    for name, p in params_of(rank_report).items():
        if enabled and optimizer_shardable(name):
            assert p["optimizer_sharded"], name
        else:
            assert not p["optimizer_sharded"], name


def test_dp2_mp4_hand_written_slices(configs, tmp_path):
    result, data = dryrun(configs["pangu_alpha"], tmp_path, 8, dp=2, mp=4, opt_shard=1)
    assert result.returncode == 0, result.stdout + result.stderr
    (rank,) = data["ranks"]
    p = params_of(rank)
    # Q/K/V weights [out, in] split by heads over mp = 4; their biases too
    assert p["blocks.0.attention.dense1.weight"]["slice_shape"] == [16, 64]
    assert p["blocks.0.attention.dense3.bias"]["slice_shape"] == [16]
    # attention output projection [in, out]: row-parallel; its bias is whole
    assert p["blocks.0.attention.projection.weight"]["slice_shape"] == [16, 64]
    assert p["blocks.0.attention.projection.bias"]["slice_shape"] == [64]
    # FFN mapping [h, 4h] column-split, projection [4h, h] row-split
    assert p["blocks.0.output.mapping.weight"]["slice_shape"] == [64, 64]
    assert p["blocks.0.output.mapping.bias"]["slice_shape"] == [64]
    assert p["blocks.0.output.projection.weight"]["slice_shape"] == [64, 64]
    # word_emb_dp=1: the word table is replicated
    assert p["word_embedding.embedding_table"]["slice_shape"] == [VOCAB, H]
    # optimizer shard over dp = 2 halves the first axis of the Adam moments of sharded weights
    assert p["blocks.0.attention.dense1.weight"]["optimizer_shape"] == [8, 64]
    assert p["blocks.0.output.mapping.weight"]["optimizer_shape"] == [32, 64]
    check_optimizer_sharding(rank, enabled=True)
    # 4 blocks + top-query layer on one stage, everything held
    check_holdings(rank, "pangu_alpha", ParallelConfig(data_parallel=2, model_parallel=4))
    assert rank["parameter_bytes"] == 4 * sum(math.prod(x["slice_shape"]) for x in rank["parameters"])


def test_mp8_split_word_table_without_optimizer_shard(configs, tmp_path):
    result, data = dryrun(configs["pangu_alpha"], tmp_path, 8, dp=1, mp=8, word_emb_dp=0)
    assert result.returncode == 0, result.stdout + result.stderr
    p = params_of(data["ranks"][0])
    assert p["word_embedding.embedding_table"]["slice_shape"] == [VOCAB // 8, H]  # rows split over mp
    assert p["position_embedding.embedding_table"]["slice_shape"] == [SEQ, H]
    assert p["blocks.3.attention.dense2.weight"]["slice_shape"] == [8, 64]
    check_optimizer_sharding(data["ranks"][0], enabled=False)


@pytest.mark.parametrize("family", ["pangu_alpha", "gpt2"])
def test_pipeline_two_stages(configs, tmp_path, family):
    parallel = ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=2,
                              optimizer_shard=True)
    result, data = dryrun(configs[family], tmp_path, 8, dp=2, mp=2, stages=2, micro=2, opt_shard=1,
                          extra=["--jobs", "2"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert [r["rank"] for r in data["ranks"]] == [0, 4]  # the first rank of each stage
    # reference batch semantics: each micro-batch has per_batch_size x dp rows
    assert "global batch 8 = 2 per replica x 2 data-parallel x 2 micro-batches" in result.stdout
    # the gradient norm is summed over every rank by an all-reduce in each rank's compiled graph
    assert all(rank["global_norm_allreduce"] for rank in data["ranks"])
    for rank in data["ranks"]:
        check_holdings(rank, family, parallel)
        check_optimizer_sharding(rank, enabled=True)
        # pipelining forces the vocabulary-parallel head, so the tied table is split over mp on both stages
        assert params_of(rank)["word_embedding.embedding_table"]["slice_shape"] == [VOCAB // 2, H]


def test_sft_plan_compiles_pipelined(configs, tmp_path):
    """--stage sft: the step compiles with packed instruction batches (int8 block-diagonal masks, restarted
    positions, loss mask from labels) built by the transform train.py --stage sft uses."""
    result, data = dryrun(configs["pangu_alpha"], tmp_path, 8, dp=2, mp=2, stages=2, micro=2, opt_shard=1,
                          extra=["--stage", "sft", "--jobs", "2"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert [r["rank"] for r in data["ranks"]] == [0, 4] and data["plan"]["stage"] == "sft"
    assert all(rank["global_norm_allreduce"] for rank in data["ranks"])


def test_sixteen_devices_four_stages(configs, tmp_path):
    parallel = ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=4, micro_batch_num=4,
                              optimizer_shard=True)
    result, data = dryrun(configs["pangu_alpha"], tmp_path, 16, dp=2, mp=2, stages=4, micro=4, opt_shard=1,
                          extra=["--jobs", "2"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert [r["stage"] for r in data["ranks"]] == [0, 1, 2, 3]
    for rank in data["ranks"]:
        check_holdings(rank, "pangu_alpha", parallel)
    assert "compiled in" in result.stdout and "4 of 4 rank(s) compiled" in result.stdout


def test_gpt2_sixteen_devices_dp4_mp4(configs, tmp_path):
    result, data = dryrun(configs["gpt2"], tmp_path, 16, dp=4, mp=4, opt_shard=1, word_emb_dp=0)
    assert result.returncode == 0, result.stdout + result.stderr
    p = params_of(data["ranks"][0])
    assert p["word_embedding.embedding_table"]["slice_shape"] == [VOCAB // 4, H]
    assert p["blocks.4.output.projection.weight"]["slice_shape"] == [FFN // 4, H]
    assert p["blocks.4.output.projection.weight"]["optimizer_shape"] == [FFN // 16, H]  # then over dp = 4
    check_optimizer_sharding(data["ranks"][0], enabled=True)


def test_launcher_refuses_a_bad_plan(tmp_path):
    from conftest import REPO_ROOT

    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "run_dryrun.sh"), "pangu_alpha_tiny", "8", "3", "1",
                             "1", "1"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 2
    assert "not a multiple of op_level_model_parallel_num (3)" in result.stdout


def test_compiler_rejection_is_one_readable_line():
    # the plan checks refuse every plan known to fail; should the compiler still refuse one, its own line is shown
    from pangu_zoo.parallel.dryrun_worker import readable_error

    message = ("Traceback (most recent call last):\n  File x\nRuntimeError: For 'BatchMatMul': BatchMatMulInfo44: "
               "Input index 0, the strategy is ((2, 3, 1, 1), (2, 3, 1, 1)), shape is [16, 8, 16, 8], shape value 8 "
               "at dim index 1 cannot be divisible by strategy value 3\n\n- C++ Call Stack:\n  frame 1")
    line = readable_error(RuntimeError(message))
    assert "cannot be divisible by strategy value 3" in line and "\n" not in line and "C++" not in line


def test_few_micro_batches_warn(configs, tmp_path):
    result, _ = dryrun(configs["gpt2"], tmp_path, 8, dp=1, mp=2, stages=4, micro=2, extra=["--rank", "6"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pipeline bubble" in result.stderr


# every (dp, mp, stages) of 8 devices with the word table split and not, and a spread of 16-device plans
GRID = [(8, dp, mp, stages, 1, wedp) for dp in (1, 2, 4, 8) for mp in (1, 2, 4, 8) for stages in (1, 2, 4)
        for wedp in (0, 1) if dp * mp * stages == 8]
GRID += [(16, 2, 8, 1, 1, 0), (16, 4, 2, 2, 1, 1), (16, 1, 4, 4, 0, 1), (16, 8, 1, 2, 1, 0)]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["pangu_alpha", "gpt2"])
@pytest.mark.parametrize("devices,dp,mp,stages,opt,wedp", GRID)
def test_grid_compiles_with_reference_layouts(configs, tmp_path, family, devices, dp, mp, stages, opt, wedp):
    parallel = ParallelConfig(data_parallel=dp, model_parallel=mp, pipeline_stage=stages, micro_batch_num=stages,
                              optimizer_shard=bool(opt), vocab_emb_dp=bool(wedp))
    result, data = dryrun(configs[family], tmp_path, devices, dp, mp, stages, micro=stages, opt_shard=opt,
                          word_emb_dp=wedp)
    assert result.returncode == 0, result.stdout + result.stderr
    vocab_split = not wedp or stages > 1
    for rank in data["ranks"]:
        check_holdings(rank, family, parallel)
        check_optimizer_sharding(rank, enabled=bool(opt) and dp > 1)
        p = params_of(rank)
        table = p["word_embedding.embedding_table"]["slice_shape"]
        assert table == [VOCAB // mp if vocab_split else VOCAB, H]
        for name, param in p.items():
            if name.endswith("dense1.weight"):
                assert param["slice_shape"] == [H // mp, H]
            if name.endswith("mapping.weight"):
                assert param["slice_shape"] == [H, FFN // mp]
