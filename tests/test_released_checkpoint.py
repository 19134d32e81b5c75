"""The released PanGu-alpha layout, in miniature: per-rank slices + a protobuf strategy file + three .npy tables.

The miniature is built here the way the 512-rank release is laid out (pangu_alpha.md §3.2, shard strategies
§7.2): a tiny PanGu-alpha's weights are sliced over a dp=2 x mp=2 device matrix (Q/K/V and FFN-down weights
row-split, FFN-up column-split, attention/FFN output projections split along their input dim, the rest
replicated), written per rank with mindspore.save_checkpoint as `filerted_{r}.ckpt` together with optimizer state,
and the strategy is a MindSpore `ParallelStrategyMap` protobuf like the one `strategy_ckpt_save_file` writes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore.train import node_strategy_pb2

from pangu_zoo.checkpoint import mindformers
from pangu_zoo.checkpoint.loader import load_released_checkpoint
from pangu_zoo.checkpoint.released import is_released_layout
from pangu_zoo.errors import CheckpointError
from pangu_zoo.models import build_model, from_pretrained

DP, MP = 2, 2
DEV_MATRIX = [DP, MP]  # rank = dp_index * MP + mp_index; tensor_map 0 = the MP axis (counted from the right)
PRESET = dict(vocab_size=120, dropout_rate=0.0, max_position_embeddings=32)
EMBEDDINGS = {
    "word_embedding.npy": "backbone.word_embedding.embedding_table",
    "position_embedding.npy": "backbone.position_embedding.embedding_table",
    "top_query_embedding.npy": "backbone.top_query_embedding.embedding_table",
}


def tensor_map(name: str, ndim: int) -> list[int]:
    """PanGu-alpha's model-parallel split (MSM shard strategies): which tensor dim the MP axis cuts."""
    if any(f"attention.{d}." in name for d in ("dense1", "dense2", "dense3")):
        return [0] + [-1] * (ndim - 1)  # [out, in] weight and its bias: column-parallel over heads
    if name.endswith(("attention.projection.weight", "output.projection.weight")):
        return [0, -1]  # [in, out], row-parallel
    if "output.mapping." in name:
        return [-1, 0] if ndim == 2 else [0]  # [h, 4h] column-parallel and its bias
    return [-1] * ndim


def slice_for(value: np.ndarray, tmap: list[int], rank: int) -> np.ndarray:
    coords = {1: rank // MP, 0: rank % MP}  # keyed by tensor_map value
    sizes = {1: DP, 0: MP}
    index = []
    for dim, t in enumerate(tmap):
        if t < 0:
            index.append(slice(None))
        else:
            step = value.shape[dim] // sizes[t]
            index.append(slice(coords[t] * step, (coords[t] + 1) * step))
    return np.ascontiguousarray(value[tuple(index)])


def write_strategy(path: Path, shapes: dict[str, tuple[int, ...]], dev_matrix: list[int] = DEV_MATRIX) -> None:
    smap = node_strategy_pb2.ParallelStrategyMap()
    smap.current_stage = 0
    for name, shape in shapes.items():
        item = smap.parallel_layout_item.add()
        item.param_name = name
        layout = item.parallel_layouts
        layout.dev_matrix.add().dim.extend(dev_matrix)
        layout.tensor_map.add().dim.extend(tensor_map(name, len(shape)))
        layout.param_split_shape.add()
        layout.indices_offset.add()
        layout.field = 0
        layout.opt_weight_shard_step = 0
        layout.opt_weight_shard_size = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(smap.SerializeToString())


def write_released(root: Path, weights: dict[str, np.ndarray]) -> None:
    """checkpoint_file/filerted_{r}.ckpt + the .npy tables, strategy_load_ckpt/strategy.ckpt."""
    slices_dir = root / "checkpoint_file"
    slices_dir.mkdir(parents=True)
    sliced = {k: v for k, v in weights.items() if k not in EMBEDDINGS.values()}  # "filtered": no tables
    for rank in range(DP * MP):
        entries = []
        for name, value in sliced.items():
            part = slice_for(value, tensor_map(name, value.ndim), rank)
            entries.append({"name": name, "data": ms.Tensor(part)})
            if name.endswith("dense1.weight"):  # training state the loader must drop
                entries.append({"name": "adam_m." + name, "data": ms.Tensor(np.zeros_like(part))})
                entries.append({"name": "adam_v." + name, "data": ms.Tensor(np.ones_like(part))})
        entries.append({"name": "global_step", "data": ms.Tensor(np.array([7], np.int32))})
        entries.append({"name": "scale_sense", "data": ms.Tensor(np.array(1024.0, np.float32))})
        ms.save_checkpoint(entries, str(slices_dir / f"filerted_{rank}.ckpt"))
    for file_name, name in EMBEDDINGS.items():
        np.save(slices_dir / file_name, weights[name])
    write_strategy(root / "strategy_load_ckpt" / "strategy.ckpt", {k: v.shape for k, v in sliced.items()})


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    ms.set_seed(3)
    model = build_model("pangu_alpha_tiny", **PRESET)
    weights = model.state_dict()
    root = tmp_path_factory.mktemp("released")
    write_released(root, weights)
    return model, weights, root


@pytest.fixture
def copy(released, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(released[2], root)
    return root


def test_slices_really_are_slices(released):
    _, weights, root = released
    part = ms.load_checkpoint(str(root / "checkpoint_file" / "filerted_3.ckpt"))
    name = "backbone.blocks.0.output.mapping.weight"
    assert tuple(part[name].shape) == (64, 128)
    assert np.array_equal(part[name].asnumpy(), weights[name][:, 128:])
    assert "backbone.word_embedding.embedding_table" not in part
    assert set(ms.build_searched_strategy(str(root / "strategy_load_ckpt" / "strategy.ckpt"))) == {
        k for k in weights if k not in EMBEDDINGS.values()}


def test_released_miniature_gives_same_logits(released):
    model, weights, root = released
    loaded = load_released_checkpoint(root, "pangu_alpha_tiny", **PRESET)
    state = loaded.state_dict()
    assert sorted(state) == sorted(weights)
    for name, value in weights.items():
        assert np.array_equal(state[name], value), name
    ids = np.array([[5, 17, 3, 99, 42, 8, 0, 61]])
    assert np.abs(loaded.forward_logits(ids) - model.forward_logits(ids)).max() <= 1e-6


def test_slices_in_the_directory_itself_and_explicit_strategy(released, copy):
    _, weights, _ = released
    strategy = copy / "pangu_alpha_tiny_cktp_strategy.ckpt"
    shutil.move(copy / "strategy_load_ckpt" / "strategy.ckpt", strategy)
    loaded = load_released_checkpoint(copy / "checkpoint_file", "pangu_alpha_tiny", strategy_file=strategy,
                                      **PRESET)
    name = "backbone.top_query_layer.attention.dense2.weight"
    assert np.array_equal(loaded.state_dict()[name], weights[name])
    assert is_released_layout(copy) and is_released_layout(copy / "checkpoint_file")


def test_missing_slices_name_the_ranks(copy):
    (copy / "checkpoint_file" / "filerted_1.ckpt").unlink()
    (copy / "checkpoint_file" / "filerted_2.ckpt").unlink()
    with pytest.raises(CheckpointError, match=r"rank\(s\) 1-2 of 4"):
        load_released_checkpoint(copy, "pangu_alpha_tiny", **PRESET)


def test_missing_embedding_names_the_file(copy):
    (copy / "checkpoint_file" / "top_query_embedding.npy").unlink()
    with pytest.raises(CheckpointError, match="lacks top_query_embedding.npy"):
        load_released_checkpoint(copy, "pangu_alpha_tiny", **PRESET)


def test_missing_strategy(copy):
    shutil.rmtree(copy / "strategy_load_ckpt")
    with pytest.raises(CheckpointError, match="no strategy file"):
        load_released_checkpoint(copy, "pangu_alpha_tiny", **PRESET)


def test_checkpoint_of_another_size_names_parameter_and_shapes(released, copy):
    with pytest.raises(CheckpointError, match=r"shape mismatch for backbone\.blocks\.0\.layernorm1\.gamma: .* has "
                                              r"\(64,\), the model config expects \(32,\).*another model size"):
        load_released_checkpoint(copy, "pangu_alpha_tiny", hidden_size=32, **PRESET)


def test_strategy_of_another_model_is_reported(released, copy):
    _, weights, _ = released
    # a strategy written for a wider model (mp=4): its ranks do not match the slices on disk
    write_strategy(copy / "strategy_load_ckpt" / "strategy.ckpt",
                   {k: v.shape for k, v in weights.items() if k not in EMBEDDINGS.values()}, [DP, 2 * MP])
    with pytest.raises(CheckpointError, match=r"lacks slice files for rank\(s\) 4-7 of 8"):
        load_released_checkpoint(copy, "pangu_alpha_tiny", **PRESET)


def test_from_pretrained_points_to_the_released_loader(copy):
    with pytest.raises(CheckpointError, match="load_released_checkpoint"):
        from_pretrained(copy)


def test_mindformers_names():
    x = np.zeros(2)
    state = {
        "backbone.embedding.word_embedding.embedding_table": x,
        "backbone.embedding.position_embedding.embedding_table": x,
        "query_embedding_table": x,
        "backbone.blocks.0.attention.dense1.weight": x,
        "backbone.blocks.0.attention.key_past": x,
        "backbone.top_query_layer.attention.value_past": x,
        "adam_m.backbone.layernorm.gamma": x, "adam_v.backbone.layernorm.gamma": x,
        "accu_grads.backbone.layernorm.gamma": x,
        "global_step": x, "loss_scale": x, "scale_sense": x,
    }
    assert sorted(mindformers.state_from_mindformers(state)) == [
        "backbone.blocks.0.attention.dense1.weight",
        "backbone.position_embedding.embedding_table",
        "backbone.top_query_embedding.embedding_table",
        "backbone.word_embedding.embedding_table",
    ]
    assert mindformers.map_name("word_embedding_table") == "backbone.word_embedding.embedding_table"
    assert mindformers.map_name("position_embedding_table") == "backbone.position_embedding.embedding_table"
    with pytest.raises(CheckpointError, match="same parameter"):
        mindformers.state_from_mindformers({"word_embedding_table": x,
                                            "backbone.embedding.word_embedding.embedding_table": x})


def test_strategy_with_other_split_gives_shape_mismatch(released, copy):
    _, weights, _ = released
    smap = node_strategy_pb2.ParallelStrategyMap()
    path = copy / "strategy_load_ckpt" / "strategy.ckpt"
    smap.ParseFromString(path.read_bytes())
    for item in smap.parallel_layout_item:
        if item.param_name == "backbone.blocks.1.output.mapping.weight":  # says rows, the slices hold columns
            del item.parallel_layouts.tensor_map[0].dim[:]
            item.parallel_layouts.tensor_map[0].dim.extend([0, -1])
    path.write_bytes(smap.SerializeToString())
    with pytest.raises(CheckpointError, match=r"shape mismatch for backbone\.blocks\.1\.output\.mapping\.weight: "
                                              r".* has \(128, 128\), the model config expects \(64, 256\)"):
        load_released_checkpoint(copy, "pangu_alpha_tiny", **PRESET)


def test_predict_loader_takes_the_released_layout(released):
    from pangu_zoo.checkpoint.loader import load_model

    model, _, root = released
    loaded = load_model(root, "pangu_alpha_tiny", None, **PRESET)
    ids = np.arange(1, 17)[None, :]
    assert np.abs(loaded.forward_logits(ids) - model.forward_logits(ids)).max() <= 1e-6


def test_predict_loader_takes_a_mindformers_named_file(released, tmp_path):
    from pangu_zoo.checkpoint.io import save_weights
    from pangu_zoo.checkpoint.loader import load_model

    model, weights, _ = released
    renamed = {name.replace("backbone.word_embedding", "backbone.embedding.word_embedding")
               .replace("backbone.position_embedding", "backbone.embedding.position_embedding"): value
               for name, value in weights.items()}
    renamed["adam_m.backbone.layernorm.gamma"] = weights["backbone.layernorm.gamma"]
    save_weights(renamed, tmp_path / "pangu.ckpt")
    loaded = load_model(tmp_path / "pangu.ckpt", "pangu_alpha_tiny", None, **PRESET)
    ids = np.arange(1, 17)[None, :]
    assert np.abs(loaded.forward_logits(ids) - model.forward_logits(ids)).max() <= 1e-6


def _train_args(*argv: str):
    import argparse

    from pangu_zoo.training.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--data_url", "unused", "--per_batch_size", "1", "--mode", "pangu_alpha_tiny",
                              "--vocab_size", "120", "--seq_length", "32", "--dropout_rate", "0", *argv])


def test_train_starts_from_the_released_layout_with_the_reference_arguments(released):
    from pangu_zoo.checkpoint.loader import load_model
    from pangu_zoo.training.cli import model_config, starting_model

    _, weights, root = released
    # run_distribute_incremental_train.sh: STRATEGY_CKPT CKPT_PATH CKPT_NAME (a slice prefix, not a folder)
    args = _train_args("--incremental_training", "1", "--load_ckpt_path", str(root / "checkpoint_file"),
                       "--load_ckpt_name", "filitered",
                       "--strategy_load_ckpt_path", str(root / "strategy_load_ckpt" / "strategy.ckpt"))
    trained_from = starting_model(args, model_config(args)).state_dict()
    predicted_with = load_model(root, "pangu_alpha_tiny", None, **PRESET).state_dict()
    assert sorted(trained_from) == sorted(predicted_with) == sorted(weights)
    for name, value in weights.items():
        assert np.array_equal(trained_from[name], value) and np.array_equal(predicted_with[name], value), name


def test_train_takes_a_load_ckpt_name_folder_and_a_mindformers_file(released, tmp_path):
    from pangu_zoo.checkpoint.io import save_weights
    from pangu_zoo.training.cli import model_config, starting_model

    model, weights, root = released
    args = _train_args("--load_ckpt_path", str(root.parent), "--load_ckpt_name", root.name)
    assert np.array_equal(starting_model(args, model_config(args)).state_dict()["backbone.layernorm.gamma"],
                          weights["backbone.layernorm.gamma"])
    save_weights({"word_embedding_table" if k == mindformers.WORD else k: v for k, v in weights.items()},
                 tmp_path / "pangu.ckpt")
    args = _train_args("--load_ckpt_path", str(tmp_path / "pangu.ckpt"))
    loaded = starting_model(args, model_config(args)).state_dict()
    assert np.array_equal(loaded[mindformers.WORD], weights[mindformers.WORD])


def test_released_layout_is_tanh_gelu_unless_overridden(released):
    from pangu_zoo.config import get_preset
    from pangu_zoo.training.cli import model_config, starting_model

    _, _, root = released
    fast_config = get_preset("pangu_alpha_tiny", hidden_act="fast_gelu", **PRESET)
    assert load_released_checkpoint(root, fast_config).config.hidden_act == "gelu"  # explicit, not the config's
    assert load_released_checkpoint(root, "pangu_alpha_tiny", hidden_act="fast_gelu",
                                    **PRESET).config.hidden_act == "fast_gelu"
    args = _train_args("--load_ckpt_path", str(root), "--hidden_act", "fast_gelu")
    assert starting_model(args, model_config(args)).config.hidden_act == "fast_gelu"


def test_predict_hidden_act_flag_overrides_the_activation():
    import argparse

    from pangu_zoo.inference.predict import add_arguments, load_overrides

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert "hidden_act" not in load_overrides(parser.parse_args(["--load_ckpt_path", "m"]))
    args = parser.parse_args(["--load_ckpt_path", "m", "--hidden_act", "fast_gelu"])
    assert load_overrides(args)["hidden_act"] == "fast_gelu"


def np_tanh_gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def np_fast_gelu(x):
    """MindSpore ops.FastGeLU: x / (1 + exp(-1.702|x|)) * exp(0.851 (x - |x|))."""
    return x / (1.0 + np.exp(-1.702 * np.abs(x))) * np.exp(0.851 * (x - np.abs(x)))


@pytest.mark.parametrize("act,formula", [("gelu", np_tanh_gelu), ("fast_gelu", np_fast_gelu)])
def test_feed_forward_activation_matches_its_formula(act, formula):
    from pangu_zoo.config import get_preset
    from pangu_zoo.models.layers import FeedForward
    from pangu_zoo.runtime import use_graph_mode

    use_graph_mode()
    ffn = FeedForward(get_preset("pangu_alpha_tiny", hidden_act=act, hidden_size=8, num_heads=2,
                                 ffn_hidden_size=32, dropout_rate=0.0), out_std=0.5)
    w = {name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1]: p.asnumpy() for name, p in
         ffn.parameters_and_names()}
    x = np.random.default_rng(0).normal(scale=3.0, size=(2, 5, 8)).astype(np.float32)
    expected = formula(x @ w["mapping.weight"] + w["mapping.bias"]) @ w["projection.weight"] + w["projection.bias"]
    assert np.abs(ffn(ms.Tensor(x)).asnumpy() - expected).max() < 1e-4
    assert abs(np_tanh_gelu(1.0) - 0.841192) < 1e-6  # MindSpore's documented gelu(1) for nn.GELU
