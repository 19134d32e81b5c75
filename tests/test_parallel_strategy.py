"""The parallel plan as data: reference checks, shard strategies and pipeline stages."""

from __future__ import annotations

import itertools
import math

import pytest

from pangu_zoo.config import ParallelConfig, get_preset
from pangu_zoo.errors import ConfigError
from pangu_zoo.parallel.strategy import (
    check_plan,
    layer_stages,
    op_input_shapes,
    optimizer_shardable,
    strategy_table,
)


def test_hand_written_strategies_for_dp2_mp4():
    table = strategy_table(ParallelConfig(data_parallel=2, model_parallel=4))
    assert table["attention.dense.matmul"] == ((2, 1), (4, 1))  # Q/K/V column-parallel by heads
    assert table["attention.dense.bias_add"] == ((2, 4), (4,))
    assert table["attention.projection.matmul"] == ((2, 4), (4, 1))  # row-parallel
    assert table["ffn.mapping.matmul"] == ((2, 1), (1, 4))
    assert table["ffn.projection.matmul"] == ((2, 4), (4, 1))
    assert table["attention.softmax"] == ((2, 4, 1, 1),)
    assert table["word_embedding.gather"] == ((1, 1), (2, 1))  # vocab_emb_dp: table replicated
    assert table["head.matmul"] == ((2, 1), (1, 1))


def test_word_table_split_without_vocab_dp_or_with_pipeline():
    no_vocab_dp = strategy_table(ParallelConfig(data_parallel=1, model_parallel=8, vocab_emb_dp=False))
    assert no_vocab_dp["word_embedding.gather"] == ((8, 1), (1, 1))
    assert no_vocab_dp["head.matmul"] == ((1, 1), (8, 1))
    piped = strategy_table(ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2))
    assert piped["head.matmul"] == ((2, 1), (2, 1))  # forced vocab-parallel head


PLANS = [(dp, mp, pp) for dp, mp, pp in itertools.product([1, 2, 4, 8], [1, 2, 4, 8], [1, 2, 4])
         if dp * mp * pp in (8, 16)]


@pytest.mark.parametrize("preset", ["2.6B", "13B", "gpt2"])
@pytest.mark.parametrize("dp,mp,pp", PLANS)
def test_every_strategy_divides_its_shapes(preset, dp, mp, pp):
    model = get_preset(preset)
    parallel = ParallelConfig(data_parallel=dp, model_parallel=mp, pipeline_stage=pp, micro_batch_num=pp)
    if model.num_heads % mp or (pp > 1 and model.vocab_size % mp):
        with pytest.raises(ConfigError):
            check_plan(model, parallel, dp * mp * pp)
        return
    check_plan(model, parallel, dp * mp * pp)
    shapes = op_input_shapes(model, batch=dp * 2, seq=model.max_position_embeddings, groups=dp)
    table = strategy_table(parallel)
    assert table.keys() == shapes.keys()
    for op, strategy in table.items():
        assert len(strategy) == len(shapes[op]), op
        for cuts, shape in zip(strategy, shapes[op], strict=True):
            assert len(cuts) == len(shape), op
            assert all(size % cut == 0 for size, cut in zip(shape, cuts, strict=True)), (op, cuts, shape)
            assert math.prod(cuts) <= dp * mp


@pytest.mark.parametrize("changes,devices,message", [
    (dict(data_parallel=2, model_parallel=2), 8, r"= 4, but device_num is 8"),
    (dict(data_parallel=1, model_parallel=8), 8, None),
    (dict(data_parallel=3, model_parallel=2), 6, "power of 2"),
    (dict(data_parallel=1, model_parallel=1, pipeline_stage=64), 64, "more than the model's layers"),
])
def test_plan_checks(changes, devices, message):
    model = get_preset("2.6B")  # 32 heads: mp 8 is fine
    parallel = ParallelConfig(**changes)
    if message is None:
        assert check_plan(model, parallel, devices) == []
    else:
        with pytest.raises(ConfigError, match=message):
            check_plan(model, parallel, devices)


def test_heads_not_divisible_by_mp():
    with pytest.raises(ConfigError, match=r"num_heads \(12\) must be a multiple of model_parallel \(8\)"):
        check_plan(get_preset("gpt2"), ParallelConfig(model_parallel=8), 8)


def test_few_micro_batches_warn():
    warnings = check_plan(get_preset("2.6B"), ParallelConfig(model_parallel=2, pipeline_stage=4,
                                                             micro_batch_num=2), 8)
    assert warnings and "bubble" in warnings[0]
    with pytest.raises(ConfigError, match="micro_batch_num"):
        check_plan(get_preset("2.6B"), ParallelConfig(model_parallel=2, pipeline_stage=4, micro_batch_num=1), 8)


def test_reference_pipeline_example():
    # reference §7.3: L=32, P=2 -> blocks 0-15 on stage 0, blocks 16-30 + query layer on stage 1
    stages = layer_stages(get_preset("2.6B"), ParallelConfig(pipeline_stage=2))
    assert [stages[f"blocks.{i}"] for i in range(31)] == [0] * 16 + [1] * 15
    assert stages["embedding"] == 0 and stages["top_query_layer"] == stages["head"] == stages["layernorm"] == 1
    many = layer_stages(get_preset("200B"), ParallelConfig(pipeline_stage=16))
    assert [many[f"blocks.{i}"] for i in range(63)] == [i // 4 for i in range(63)]


def test_optimizer_sharding_skips_layernorm_biases_embeddings():
    assert optimizer_shardable("backbone.blocks.0.attention.dense1.weight")
    assert optimizer_shardable("backbone.blocks.3.output.mapping.weight")
    for name in ("backbone.blocks.0.layernorm1.gamma", "backbone.blocks.0.attention.projection.bias",
                 "backbone.word_embedding.embedding_table", "backbone.top_query_embedding.embedding_table"):
        assert not optimizer_shardable(name)


@pytest.mark.parametrize("preset, experts", [("pangu_alpha_tiny", 1), ("gpt2-tiny", 1), ("pangu_alpha_tiny", 4),
                                             ("gpt2-tiny", 2)])
def test_every_primitive_of_the_cells_is_placed(preset, experts):
    """A primitive added to the cells without a strategy would run unsharded (replicated) without a word."""
    from pangu_zoo.config import MoEConfig
    from pangu_zoo.models import build_model
    from pangu_zoo.models.loss import LanguageModelWithLoss
    from pangu_zoo.parallel.placement import network_placement_map

    special = {"eod_token_id": 7, "pad_token_id": 7, "eos_token_id": 7}
    network = LanguageModelWithLoss(build_model(preset, vocab_size=128, num_layers=3, max_position_embeddings=16,
                                                moe=MoEConfig(expert_num=experts, num_experts_chosen=min(2, experts)),
                                                **special))
    primitives = {f"{name}.{attr}" if name else attr
                  for name, cell in network.cells_and_names()
                  for attr, primitive in getattr(cell, "_primitives", {}).items() if primitive is not None}
    placed = network_placement_map(network)
    assert primitives - set(placed) == set(), "primitives without a strategy table entry"
    assert set(placed) - primitives == set(), "placement names primitives the cells do not have"
    table = strategy_table(ParallelConfig(data_parallel=2, model_parallel=2))
    assert set(placed.values()) <= set(table)


@pytest.mark.parametrize("dp,mp,ep,experts,k", [(8, 2, 8, 8, 1), (8, 2, 4, 8, 2), (4, 2, 2, 4, 1), (2, 4, 1, 4, 2)])
def test_moe_strategies_divide_their_shapes(dp, mp, ep, experts, k):
    from pangu_zoo.config import MoEConfig

    model = get_preset("2.6B", moe=MoEConfig(expert_num=experts, num_experts_chosen=k))
    parallel = ParallelConfig(data_parallel=dp, model_parallel=mp, expert_parallel=ep)
    check_plan(model, parallel, dp * mp)
    shapes = op_input_shapes(model, batch=dp, seq=model.max_position_embeddings, groups=dp, expert_parallel=ep)
    table = strategy_table(parallel)
    for op in (op for op in table if op.startswith("moe.")):
        for cuts, shape in zip(table[op], shapes[op], strict=True):
            assert len(cuts) == len(shape), op
            assert all(size % cut == 0 for size, cut in zip(shape, cuts, strict=True)), (op, cuts, shape)
            assert math.prod(cuts) <= dp * mp, op
    # the experts' weights are split over ep (experts) and mp (inside each expert)
    assert table["moe.mapping.batch_matmul"][1] == (ep, 1, mp)


def test_expert_parallel_must_divide_experts_and_dp():
    from pangu_zoo.config import MoEConfig

    model = get_preset("2.6B", moe=MoEConfig(expert_num=4))
    with pytest.raises(ConfigError, match="multiples of expert_parallel"):
        check_plan(model, ParallelConfig(data_parallel=8, model_parallel=1, expert_parallel=3), 8)
    with pytest.raises(ConfigError, match="multiples of expert_parallel"):
        check_plan(model, ParallelConfig(data_parallel=4, model_parallel=2, expert_parallel=8), 8)
