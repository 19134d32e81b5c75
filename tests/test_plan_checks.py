"""Plans MindSpore would reject are refused by the project's own checks, with one readable line, before anything is
compiled; and the counting rule of the global gradient norm, re-derived with NumPy on a toy plan."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pangu_zoo.cli import main
from pangu_zoo.config import ParallelConfig, get_preset
from pangu_zoo.parallel.grad_norm import gradient_copies, model_parallel_axis, norm_weights

TINY = dict(num_heads=8, num_layers=5, vocab_size=1024, hidden_size=64, ffn_hidden_size=256, dropout_rate=0.0)


@pytest.fixture
def config_file(tmp_path):
    def write(**overrides):
        path = tmp_path / f"config_{len(list(tmp_path.glob('config_*')))}.json"
        path.write_text(json.dumps(get_preset("pangu_alpha_tiny", **{**TINY, **overrides}).to_dict()))
        return str(path)
    return write


@pytest.fixture
def no_compile(monkeypatch):
    """Reaching MindSpore (the simulation environment or a compile) fails the test."""
    import pangu_zoo.parallel.dryrun as dryrun
    import pangu_zoo.parallel.simenv as simenv

    def reached(*_args, **_kwargs):
        raise AssertionError("an invalid plan reached MindSpore's compiler")
    monkeypatch.setattr(simenv, "ensure_simulation_env", reached)
    monkeypatch.setattr(dryrun, "compile_ranks", reached)


# (dry-run arguments after --config, config overrides, the project's message)
INVALID_PLANS = [
    (["--device_num", "16", "--op_level_model_parallel_num", "16"], {}, "num_heads (8) must be a multiple"),
    (["--device_num", "8", "--op_level_model_parallel_num", "3"], {}, "not a multiple of op_level_model_parallel_num"),
    (["--device_num", "12", "--op_level_model_parallel_num", "2", "--stage_num", "2", "--micro_size", "2"], {},
     "power of 2"),
    (["--device_num", "8", "--stage_num", "8", "--micro_size", "8"], {}, "more than the model's layers"),
    (["--device_num", "8", "--stage_num", "2"], {}, "micro_batch_num (--micro_size) of at least 2"),
    (["--device_num", "8", "--op_level_model_parallel_num", "2", "--per_batch_size", "0"], {},
     "--per_batch_size (0) must be a positive integer"),
    (["--device_num", "8", "--op_level_model_parallel_num", "2", "--word_emb_dp", "0", "--vocab_size", "1001"], {},
     "vocab_size (1001) must be a multiple of model_parallel (2)"),
    (["--device_num", "8", "--op_level_model_parallel_num", "2", "--stage_num", "2", "--micro_size", "2",
      "--vocab_size", "1001"], {}, "vocab_size (1001) must be a multiple"),  # pipelines split the word table
    (["--device_num", "8", "--op_level_model_parallel_num", "8"], {"ffn_hidden_size": 260},
     "ffn_hidden_size (260) must be a multiple of model_parallel (8)"),
    (["--device_num", "8", "--stage_num", "0"], {}, "must be at least 1"),
    (["--device_num", "16", "--op_level_model_parallel_num", "4"], {"num_heads": 2, "hidden_size": 64},
     "num_heads (2) must be a multiple of model_parallel (4)"),
    (["--device_num", "1"], {}, "--device_num must be at least 2"),
    (["--device_num", "8", "--micro_size", "0"], {}, "micro_batch_num (0) must be a positive integer"),
    (["--device_num", "8", "--op_level_model_parallel_num", "0"], {}, "must be at least 1"),
    (["--device_num", "8", "--op_level_model_parallel_num", "2", "--rank", "8"], {}, "ranks must lie in 0..7"),
    (["--device_num", "8", "--op_level_model_parallel_num", "2", "--seq_length", "1"], {}, "seq_length"),
    # MoE: ep 3 cannot split 4 experts (MindSpore's BatchMatMul would reject the strategy), nor dp 4
    (["--device_num", "8", "--op_level_model_parallel_num", "2", "--use_moe", "1", "--expert_num", "4",
      "--expert_parallel_num", "3"], {},
     "expert_num (4) and data_parallel (4) must be multiples of expert_parallel (3)"),
    (["--device_num", "8", "--op_level_model_parallel_num", "2", "--use_moe", "1", "--expert_num", "4",
      "--expert_parallel_num", "8"], {}, "must be multiples of expert_parallel (8)"),
    (["--device_num", "8", "--stage_num", "2", "--micro_size", "2", "--use_moe", "1", "--expert_num", "4"], {},
     "mixture-of-experts plans with pipeline stages are not supported"),
]


@pytest.mark.parametrize("arguments,overrides,message", INVALID_PLANS)
def test_invalid_plan_is_refused_by_the_project(arguments, overrides, message, config_file, no_compile, capsys):
    argv = ["dryrun", "--config", config_file(**overrides), "--seq_length", "32", "--per_batch_size", "2",
            *arguments]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_two_hundred_billion_reference_launch_is_accepted(no_compile, monkeypatch, capsys):
    """The reference's 200B launch (2048 devices, 16 stages, 16 micro-batches, per_batch_size 1, mp 8 -> dp 16)
    passes the checks with the reference's global batch of 1 x 16 x 16 = 256 rows."""
    import pangu_zoo.parallel.dryrun as dryrun

    seen = {}

    def record(_args, spec, ranks, _root, _describe):
        seen.update(spec=spec, ranks=ranks)
        return 0
    monkeypatch.setattr(dryrun, "compile_ranks", record)
    import pangu_zoo.parallel.simenv as simenv
    monkeypatch.setattr(simenv, "ensure_simulation_env", lambda *_: "unused")
    assert main(["dryrun", "--mode", "200B", "--device_num", "2048", "--op_level_model_parallel_num", "8",
                 "--stage_num", "16", "--micro_size", "16", "--per_batch_size", "1", "--rank", "0"]) == 0
    assert seen["spec"]["global_batch"] == 256 and seen["spec"]["parallel"]["data_parallel"] == 16
    assert "global batch 256 = 1 per replica x 16 data-parallel x 16 micro-batches" in capsys.readouterr().out


def test_global_batch_follows_the_reference():
    assert ParallelConfig(data_parallel=4, model_parallel=2).global_batch(3) == 12
    # micro_size without pipeline stages is ignored, as in the reference
    assert ParallelConfig(data_parallel=4, micro_batch_num=4).global_batch(3) == 12
    assert ParallelConfig(data_parallel=4, pipeline_stage=2, micro_batch_num=4).global_batch(3) == 48


# ---- the counting rule of the global norm --------------------------------------------------------------------

def _slices(full: np.ndarray, axis: int | None, parts: int) -> list[np.ndarray]:
    return [full] * parts if axis is None else np.split(full, parts, axis=axis)


def _rank_views(grads: dict, parallel: ParallelConfig, threshold_kb: float) -> list[dict]:
    """What each rank of one stage holds of every gradient: its model-parallel slice, then (optimizer shard) its
    data-parallel piece of axis 0. Rank r = d * mp + m (MindSpore puts the model-parallel ranks together)."""
    dp, mp = parallel.data_parallel, parallel.model_parallel
    views = [{} for _ in range(dp * mp)]
    for name, full in grads.items():
        axis = model_parallel_axis(name, parallel)
        mp_slices = _slices(full, axis, mp)
        copies = gradient_copies(name, full.shape, 4, parallel, threshold_kb)
        for d in range(dp):
            for m in range(mp):
                rank = d * mp + m
                if copies == 1 and (axis is None or dp > 1):
                    # optimizer shard: every rank holding the same slice keeps a distinct part of axis 0
                    holders = dp * mp if axis is None else dp
                    index = rank if axis is None else d
                    views[rank][name] = np.split(mp_slices[m], holders, axis=0)[index]
                else:
                    views[rank][name] = mp_slices[m]
    return views


@pytest.mark.parametrize("optimizer_shard", [False, True])
@pytest.mark.parametrize("vocab_emb_dp", [True, False])
def test_norm_counts_every_slice_once(optimizer_shard, vocab_emb_dp):
    rng = np.random.default_rng(0)
    parallel = ParallelConfig(data_parallel=2, model_parallel=4, optimizer_shard=optimizer_shard,
                              vocab_emb_dp=vocab_emb_dp)
    shapes = {
        "backbone.word_embedding.embedding_table": (64, 16),
        "backbone.position_embedding.embedding_table": (32, 16),
        "backbone.blocks.0.layernorm1.gamma": (16,),
        "backbone.blocks.0.attention.dense1.weight": (16, 16),
        "backbone.blocks.0.attention.dense1.bias": (16,),
        "backbone.blocks.0.attention.projection.weight": (16, 16),
        "backbone.blocks.0.attention.projection.bias": (16,),
        "backbone.blocks.0.output.mapping.weight": (16, 64),
        "backbone.blocks.0.output.mapping.bias": (64,),
        "backbone.blocks.0.output.projection.weight": (64, 16),
    }
    grads = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    described = [(name, shape, 4) for name, shape in shapes.items()]
    weights = dict(zip(shapes, norm_weights(described, parallel, threshold_kb=0), strict=True))
    views = _rank_views(grads, parallel, threshold_kb=0)
    # what every rank computes, then the all-reduce (a sum over ranks)
    total = sum(sum(weights[name] * np.sum(view[name] ** 2) for name in shapes) for view in views)
    expected = sum(np.sum(g ** 2) for g in grads.values())
    np.testing.assert_allclose(total, expected, rtol=1e-12)
    # without the weights, replicated gradients would be counted once per rank that holds them
    unweighted = sum(sum(np.sum(view[name] ** 2) for name in shapes) for view in views)
    assert unweighted > 1.5 * expected


def test_copies_rule_on_a_toy_plan():
    plan = ParallelConfig(data_parallel=2, model_parallel=4)
    assert gradient_copies("b.blocks.0.layernorm1.gamma", (16,), 4, plan) == 8  # whole on every rank of the stage
    assert gradient_copies("b.blocks.0.attention.dense2.weight", (16, 16), 4, plan) == 2  # dp replicas of a slice
    assert gradient_copies("b.blocks.0.attention.projection.bias", (16,), 4, plan) == 8
    sharded = ParallelConfig(data_parallel=2, model_parallel=4, optimizer_shard=True)
    assert gradient_copies("b.blocks.0.output.mapping.weight", (256, 1024), 4, sharded) == 1  # 1 MB: split
    assert gradient_copies("b.blocks.0.output.mapping.weight", (16, 64), 4, sharded) == 2  # under 64 KB: whole
    assert gradient_copies("b.blocks.0.output.mapping.weight", (16, 64), 4, sharded, threshold_kb=0) == 1
    assert gradient_copies("b.blocks.0.layernorm1.gamma", (4096,), 4, sharded, threshold_kb=0) == 8  # opted out
