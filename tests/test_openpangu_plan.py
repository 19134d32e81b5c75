"""openPangu-Embedded's parallel plan: strategies for its cells, the grouped-query check, and `pangu dryrun` of
tiny, 1B and 7B shapes. Expected slice shapes are written out by hand from the plan (q/k/v and gate/up
column-parallel over mp, o/down row-parallel; weights [out, in]), not read from the strategy table."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from pangu_zoo.config import ParallelConfig, get_preset
from pangu_zoo.errors import ConfigError
from pangu_zoo.parallel.grad_norm import model_parallel_axis
from pangu_zoo.parallel.strategy import check_plan, op_input_shapes, optimizer_shardable, strategy_table


def run_dryrun(tmp_path, *args: str, timeout: int = 1200):
    report = tmp_path / "dryrun.json"
    command = [sys.executable, "-m", "pangu_zoo.cli", "dryrun", "--model", "openpangu", "--dropout_rate", "0",
               "--json", str(report), "--brief", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads(report.read_text())


def slices(rank_report) -> dict[str, list[int]]:
    return {p["name"].removeprefix("backbone."): p["slice_shape"] for p in rank_report["parameters"]}


@pytest.mark.parametrize("preset,dp,mp,stages", [("openpangu_embedded_1b", 4, 2, 1), ("openpangu_embedded_7b", 1, 8, 4),
                                                 ("openpangu_embedded_7b", 2, 4, 2)])
def test_every_strategy_divides_its_shapes(preset, dp, mp, stages):
    model = get_preset(preset, max_position_embeddings=2048)
    parallel = ParallelConfig(data_parallel=dp, model_parallel=mp, pipeline_stage=stages, micro_batch_num=stages)
    check_plan(model, parallel, dp * mp * stages)
    table, shapes = strategy_table(parallel), op_input_shapes(model, batch=dp * 2, seq=2048, groups=dp)
    assert table.keys() == shapes.keys()
    for op, strategy in table.items():
        for cuts, shape in zip(strategy, shapes[op], strict=True):
            assert len(cuts) == len(shape) and all(size % cut == 0 for size, cut in zip(shape, cuts, strict=True)), op


def test_row_and_column_parallel_weights_of_the_table():
    table = strategy_table(ParallelConfig(data_parallel=2, model_parallel=4))
    assert table["attention.o_proj.matmul"] == ((2, 4), (1, 4))  # o_proj [h, n*d]: its input axis split
    assert table["ffn.gate.matmul"] == ((2, 1), (4, 1))  # gate/up [f, h]: output rows split
    assert table["ffn.down.matmul"] == ((2, 4), (1, 4))  # down [h, f]: input axis split
    assert table["rotary.cos_mul"] == ((2, 4, 1, 1), (2, 1, 1, 1))  # heads split, the angles shared


@pytest.mark.parametrize("preset,mp,message", [
    ("openpangu_embedded_1b", 4, r"num_key_value_heads \(6\) must be a multiple of model_parallel \(4\)"),
    ("openpangu_embedded_7b", 16, r"num_key_value_heads \(8\) must be a multiple of model_parallel \(16\)"),
    ("openpangu_embedded_1b", 8, r"num_heads \(12\) must be a multiple of model_parallel \(8\)"),
])
def test_grouped_query_splits_are_refused(preset, mp, message):
    with pytest.raises(ConfigError, match=message):
        check_plan(get_preset(preset), ParallelConfig(model_parallel=mp), mp)


def test_dryrun_refuses_a_bad_split_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pangu_zoo.cli", "dryrun", "--model", "openpangu", "--mode",
                             "openpangu_embedded_1b", "--device_num", "8", "--op_level_model_parallel_num", "4",
                             "--per_batch_size", "1"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pangu dryrun: error: num_key_value_heads (6) must be a multiple of model_parallel (4): each device holds "
        "whole key/value heads with the query heads that share them (grouped-query attention)."]


def test_a_tied_head_is_not_pipelined():
    with pytest.raises(ConfigError, match="tie_word_embeddings cannot be pipelined"):
        check_plan(get_preset("openpangu_embedded_tiny", tie_word_embeddings=True),
                   ParallelConfig(pipeline_stage=2, micro_batch_num=2), 2)


def test_norm_and_optimizer_rules_know_the_names():
    parallel = ParallelConfig(data_parallel=1, model_parallel=2, vocab_emb_dp=False)
    layer = "backbone.model.layers.3."
    expected = {"self_attn.q_proj.weight": 0, "self_attn.k_proj.bias": 0, "self_attn.o_proj.weight": 1,
                "self_attn.o_proj.bias": None, "mlp.up_proj.weight": 0, "mlp.down_proj.weight": 1,
                "input_layernorm.weight": None}
    for suffix, axis in expected.items():
        assert model_parallel_axis(layer + suffix, parallel) == axis, suffix
    assert model_parallel_axis("backbone.lm_head.weight", parallel) == 0
    assert model_parallel_axis("backbone.model.embed_tokens.weight", parallel) == 0
    assert model_parallel_axis("backbone.lm_head.weight", ParallelConfig(model_parallel=2)) is None
    assert optimizer_shardable(layer + "mlp.gate_proj.weight") and optimizer_shardable("backbone.lm_head.weight")
    for name in ("backbone.model.norm.weight", layer + "post_attention_layernorm.weight",
                 "backbone.model.embed_tokens.weight", layer + "self_attn.v_proj.bias"):
        assert not optimizer_shardable(name), name


@pytest.mark.parametrize("tie,bias", [(False, True), (True, False)])
def test_every_primitive_of_the_cells_is_placed(tie, bias):
    from pangu_zoo.models import build_model
    from pangu_zoo.models.loss import LanguageModelWithLoss
    from pangu_zoo.parallel.placement import network_placement_map

    network = LanguageModelWithLoss(build_model("openpangu_embedded_tiny", tie_word_embeddings=tie, bias=bias))
    primitives = {f"{name}.{attr}" if name else attr for name, cell in network.cells_and_names()
                  for attr, primitive in getattr(cell, "_primitives", {}).items() if primitive is not None}
    placed = network_placement_map(network)
    assert primitives == set(placed)
    assert set(placed.values()) <= set(strategy_table(ParallelConfig(data_parallel=2, model_parallel=2)))


def test_tiny_dp2_mp2_split_vocabulary(tmp_path):
    """dp 2 x mp 2, word table split, optimizer sharded over dp: h 64, ffn 160, 4 heads and 2 kv heads of 16."""
    result, data = run_dryrun(tmp_path, "--mode", "openpangu_embedded_tiny", "--seq_length", "32", "--device_num",
                              "4", "--op_level_model_parallel_num", "2", "--per_batch_size", "2", "--word_emb_dp",
                              "0", "--optimizer_shard", "1", "--optimizer_shard_threshold", "0")
    (rank,) = data["ranks"]
    p = slices(rank)
    assert p["model.layers.0.self_attn.q_proj.weight"] == [32, 64]  # 2 of the 4 query heads
    assert p["model.layers.0.self_attn.k_proj.weight"] == [16, 64]  # 1 of the 2 key/value heads
    assert p["model.layers.1.self_attn.v_proj.bias"] == [16]
    assert p["model.layers.0.self_attn.o_proj.weight"] == [64, 32]  # row-parallel: input half
    assert p["model.layers.0.self_attn.o_proj.bias"] == [64]
    assert p["model.layers.0.mlp.gate_proj.weight"] == p["model.layers.0.mlp.up_proj.weight"] == [80, 64]
    assert p["model.layers.0.mlp.down_proj.weight"] == [64, 80]
    assert p["model.embed_tokens.weight"] == p["lm_head.weight"] == [512, 64]  # vocabulary rows over mp
    assert p["model.norm.weight"] == [64]
    moments = {x["name"].removeprefix("backbone."): x["optimizer_shape"] for x in rank["parameters"]}
    assert moments["model.layers.0.mlp.down_proj.weight"] == [32, 80]  # then halved over dp
    assert moments["model.norm.weight"] == [64]
    assert rank["holds"] == ["embed_tokens", "blocks.0", "blocks.1", "norm", "lm_head", "head"]
    assert rank["global_norm_allreduce"]


def test_tiny_sharded_inference_keeps_key_value_heads_per_rank(tmp_path):
    result, data = run_dryrun(tmp_path, "--mode", "openpangu_embedded_tiny", "--seq_length", "32", "--device_num",
                              "2", "--run_type", "predict", "--per_batch_size", "2")
    for rank in data["ranks"]:
        graphs = rank["graphs"]
        assert graphs["prefill"]["outputs"][1] == [2, 1, 32, 16]  # [B, kv / mp, T, d]
        assert graphs["decode"]["inputs"][4] == graphs["decode"]["outputs"][1] == [2, 1, 32, 16]
        assert graphs["decode"]["outputs"][0] == [2, 1024]


@pytest.mark.slow
def test_tiny_pipeline_two_stages(tmp_path):
    result, data = run_dryrun(tmp_path, "--mode", "openpangu_embedded_tiny", "--seq_length", "32", "--device_num",
                              "8", "--op_level_model_parallel_num", "2", "--stage_num", "2", "--micro_size", "2",
                              "--per_batch_size", "2", "--optimizer_shard", "1", "--jobs", "2")
    first, last = data["ranks"]
    assert first["holds"] == ["embed_tokens", "blocks.0"]
    assert last["holds"] == ["blocks.1", "norm", "lm_head", "head"]
    assert slices(first)["model.embed_tokens.weight"] == slices(last)["lm_head.weight"] == [512, 64]


@pytest.mark.slow
def test_1b_on_8_devices_mp2(tmp_path):
    """The 1B (26 layers, h 1536, 12 heads / 6 kv heads of 128, ffn 6144) on dp 4 x mp 2 at 4096 tokens."""
    result, data = run_dryrun(tmp_path, "--mode", "openpangu_embedded_1b", "--seq_length", "4096", "--device_num",
                              "8", "--op_level_model_parallel_num", "2", "--per_batch_size", "1", "--optimizer_shard",
                              "1", "--param_init_type", "bf16", timeout=1800)
    (rank,) = data["ranks"]
    p = slices(rank)
    assert p["model.layers.25.self_attn.q_proj.weight"] == [768, 1536]
    assert p["model.layers.25.self_attn.k_proj.weight"] == [384, 1536]  # 3 of the 6 kv heads
    assert p["model.layers.0.self_attn.o_proj.weight"] == [1536, 768]
    assert p["model.layers.0.mlp.down_proj.weight"] == [1536, 3072]
    assert p["model.embed_tokens.weight"] == p["lm_head.weight"] == [153376, 1536]  # word_emb_dp: whole
    assert len([x for x in rank["parameters"] if ".layers." in x["name"]]) == 26 * 13  # 2 norms, q/k/v/o+bias, 3 MLP
    assert rank["global_norm_allreduce"]


@pytest.mark.slow
def test_7b_on_32_devices_mp8_four_stages(tmp_path):
    """The 7B (34 layers, h 4096, 32 heads / 8 kv heads, ffn 12800) on mp 8 x 4 stages: 8-8-8-10 layers."""
    result, data = run_dryrun(tmp_path, "--mode", "openpangu_embedded_7b", "--seq_length", "4096", "--device_num",
                              "32", "--op_level_model_parallel_num", "8", "--stage_num", "4", "--micro_size", "4",
                              "--per_batch_size", "1", "--jobs", "2", timeout=3000)
    assert [r["rank"] for r in data["ranks"]] == [0, 8, 16, 24]
    layers = [sorted(int(h.split(".")[1]) for h in r["holds"] if h.startswith("blocks.")) for r in data["ranks"]]
    assert layers == [list(range(0, 8)), list(range(8, 16)), list(range(16, 24)), list(range(24, 34))]
    assert "embed_tokens" in data["ranks"][0]["holds"] and "lm_head" in data["ranks"][3]["holds"]
    p = slices(data["ranks"][3])
    assert p["model.layers.30.self_attn.k_proj.weight"] == [128, 4096]  # one kv head of 128 per device
    assert p["model.layers.30.mlp.gate_proj.weight"] == [1600, 4096]
    assert p["lm_head.weight"] == [153376 // 8, 4096]  # pipelining splits the head's vocabulary
    total = sum(math.prod(x["full_shape"]) for r in data["ranks"] for x in r["parameters"])
    assert total == 8_030_887_936  # every parameter of the 7B held by exactly one stage


def test_preset_counts_match_the_released_shapes(capsys):
    from pangu_zoo.cli import main
    from pangu_zoo.config import count_parameters
    from pangu_zoo.models import build_model

    # the released 7B index: 16,061,784,576 bytes = bf16 parameters + 34 fp32 rotary buffers of 64 frequencies
    assert 2 * count_parameters(get_preset("openpangu_embedded_7b")) + 34 * 64 * 4 == 16_061_784_576
    # the 1B by hand: per layer q/o 1536², k/v 768x1536 with their biases, 3 x 1536 x 6144, two norms
    layer = 2 * (1536 * 1536 + 1536) + 2 * (768 * 1536 + 768) + 3 * 1536 * 6144 + 2 * 1536
    assert count_parameters(get_preset("openpangu_embedded_1b")) == 26 * layer + 2 * 153376 * 1536 + 1536
    tied = build_model("openpangu_embedded_tiny", tie_word_embeddings=True, bias=False)
    assert count_parameters(tied.config) == sum(v.size for v in tied.state_dict().values())
    assert main(["presets"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("openpangu_embedded_7b "))
    assert line.split()[1:] == ["34", "4096", "32", "153376", "8,030,887,936"]
