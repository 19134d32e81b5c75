"""Megatron formats (megatron-gpt2, megatron-pangu): bit-exact round trips, tensor-parallel split and merge, the
mapping checked against an independent PyTorch model of the Megatron layout, the other layouts read, bad files."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from megatron_reference import load_ranks, megatron_logits  # noqa: E402

from pangu_zoo.checkpoint import megatron_gpt2, megatron_pangu  # noqa: E402
from pangu_zoo.checkpoint.convert import convert  # noqa: E402
from pangu_zoo.checkpoint.megatron_config import Shapes, config_from_checkpoint  # noqa: E402
from pangu_zoo.checkpoint.tensor_parallel import merge_states, padded_vocab_size, partition_dim, split_state  # noqa: E402
from pangu_zoo.errors import CheckpointError, ConfigError  # noqa: E402
from pangu_zoo.models import from_pretrained  # noqa: E402

FORMATS = {"gpt2": megatron_gpt2, "pangu_alpha": megatron_pangu}
FIXTURES = {"gpt2": "tiny_gpt2", "pangu_alpha": "tiny_pangu"}
FAMILIES = list(FORMATS)


def _random_weights(model, seed: int) -> dict[str, np.ndarray]:
    """Every parameter random (LayerNorm gains near 1, biases non-zero), so that no mapping error hides."""
    rng = np.random.default_rng(seed)
    return {name: ((1.0 if name.endswith(".gamma") else 0.0) + 0.2 * rng.standard_normal(value.shape))
            .astype(value.dtype) for name, value in model.state_dict().items()}


def _load(file: Path) -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(file, weights_only=True)


def _save(obj, file: Path) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, file)


def _shard_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("release/mp_rank_*/model_optim_rng.pt"))


def _assert_same(weights: dict, expected: dict) -> None:
    assert set(weights) == set(expected)
    for name, value in expected.items():
        assert weights[name].dtype == value.dtype, name
        assert np.array_equal(weights[name], value), name


@pytest.fixture(params=FAMILIES)
def family_model(request):
    return request.param, request.getfixturevalue(FIXTURES[request.param])


# ---- round trips --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tp", [1, 2, 4])
def test_round_trip_is_bit_exact(family_model, tmp_path, tp):
    family, model = family_model
    fmt, weights = FORMATS[family], _random_weights(model, 0)
    fmt.write(model.config, weights, tmp_path / "megatron", tp=tp)
    assert len(_shard_files(tmp_path / "megatron")) == tp
    assert (tmp_path / "megatron" / "latest_checkpointed_iteration.txt").read_text() == "release"
    config, back = fmt.read(tmp_path / "megatron", config_hint=None)
    _assert_same(back, weights)
    assert config == model.config  # shape from the saved args; ids, dropout and dtypes as the fixtures have them


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_round_trip_keeps_half_precision(family_model, tmp_path, dtype):
    family, model = family_model
    fmt = FORMATS[family]
    weights = _random_weights(model, 1)
    if dtype == "float16":
        weights = {name: value.astype(np.float16) for name, value in weights.items()}
    else:  # this project holds bf16 values in fp32 arrays
        weights = {name: torch.from_numpy(value).bfloat16().float().numpy() for name, value in weights.items()}
    config = model.config.replace(param_dtype=dtype)
    fmt.write(config, weights, tmp_path / "megatron", tp=2)
    saved = _load(_shard_files(tmp_path / "megatron")[0])["model"]["language_model"]
    assert saved["embedding"]["word_embeddings"]["weight"].dtype == getattr(torch, dtype)
    read_config, back = fmt.read(tmp_path / "megatron", config_hint=None)
    _assert_same(back, weights)
    assert read_config.param_dtype == dtype


def test_split_then_merge_is_identical(family_model, tmp_path):
    family, model = family_model
    fmt, config, weights = FORMATS[family], model.config, _random_weights(model, 2)
    state = fmt.to_megatron(config, weights, padded_vocab_size(config.vocab_size, 128, 4))
    for tp in (2, 4):
        shards = split_state(state, tp)
        for name, value in state.items():
            dim = partition_dim(name)
            expected = list(value.shape)
            if dim is not None:
                expected[dim] //= tp
            assert all(list(shard[name].shape) == expected for shard in shards), name
        merged = merge_states(shards)
        assert all(np.array_equal(merged[name], value) for name, value in state.items())
    # through files: TP 1 -> TP 2 -> TP 4 -> TP 1 gives back the same TP-1 file contents
    fmt.write(config, weights, tmp_path / "tp1", tp=1)
    source = tmp_path / "tp1"
    for tp, out in ((2, "tp2"), (4, "tp4"), (1, "again")):
        read_config, read_weights = fmt.read(source, config_hint=None)
        fmt.write(read_config, read_weights, tmp_path / out, tp=tp)
        source = tmp_path / out
    first, again = (_load(_shard_files(tmp_path / d)[0]) for d in ("tp1", "again"))
    flat_first, flat_again = (_flatten(saved["model"]) for saved in (first, again))
    assert set(flat_first) == set(flat_again)
    assert all(torch.equal(flat_first[name], flat_again[name]) for name in flat_first)
    assert vars(first["args"]) == vars(again["args"])


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


# ---- the mapping, against an independent PyTorch model --------------------------------------------------------------

@pytest.mark.parametrize("layout", ["tp1", "tp2 merged to tp1", "tp2 shards"])
def test_logits_match_an_independent_megatron_model(family_model, tmp_path, layout):
    family, model = family_model
    fmt, config = FORMATS[family], model.config
    weights = _random_weights(model, 3)
    model.load_state_dict(weights)
    ids = np.random.default_rng(4).integers(0, config.vocab_size, size=(2, 16))
    ours = model.forward_logits(ids)
    directory = tmp_path / "megatron"
    fmt.write(config, weights, directory, tp=1 if layout == "tp1" else 2)
    if layout == "tp2 merged to tp1":
        merged_config, merged = fmt.read(directory, config_hint=None)
        fmt.write(merged_config, merged, tmp_path / "merged", tp=1)
        directory = tmp_path / "merged"
    ranks = load_ranks(directory)
    assert len(ranks) == (2 if layout == "tp2 shards" else 1)
    theirs = megatron_logits(ranks, ids, config.num_heads, pangu=family == "pangu_alpha").numpy()
    padded = padded_vocab_size(config.vocab_size, 128 if family == "gpt2" else 1, len(ranks))
    assert theirs.shape == (2, 16, padded)
    assert np.abs(theirs[..., :config.vocab_size] - ours).max() <= 1e-4
    # padding rows repeat the last row, as Megatron's own saver pads
    assert np.allclose(theirs[..., config.vocab_size:], theirs[..., config.vocab_size - 1:config.vocab_size], atol=1e-6)


def test_the_reference_notices_a_wrong_qkv_order(tiny_gpt2, tmp_path):
    """The check above has teeth: Q, K and V stored all-Q-then-all-K (the version-0 order) change the logits."""
    config, weights = tiny_gpt2.config, _random_weights(tiny_gpt2, 5)
    tiny_gpt2.load_state_dict(weights)
    ids = np.arange(12).reshape(1, 12)
    megatron_gpt2.write(config, weights, tmp_path / "megatron")
    ranks = load_ranks(tmp_path / "megatron")
    heads, h = config.num_heads, config.hidden_size
    for name, value in ranks[0]["encoder"].items():
        if "query_key_value" in name:
            per_head = value.reshape(heads, 3, h // heads, *value.shape[1:])
            ranks[0]["encoder"][name] = per_head.transpose(0, 1).reshape(value.shape)
    wrong = megatron_logits(ranks, ids, heads, pangu=False).numpy()[..., :config.vocab_size]
    assert np.abs(wrong - tiny_gpt2.forward_logits(ids)).max() > 1e-2


def test_gpu_port_workflow_through_convert(tiny_pangu, tmp_path):
    """zoo -> megatron-pangu TP 2 -> (Megatron would train here) -> merged back to zoo: the same model."""
    weights = _random_weights(tiny_pangu, 9)
    tiny_pangu.load_state_dict(weights)
    tiny_pangu.save_pretrained(tmp_path / "zoo")
    convert("zoo", "megatron-pangu", tmp_path / "zoo", tmp_path / "tp2", tp=2, progress=False)
    assert len(_shard_files(tmp_path / "tp2")) == 2
    convert("megatron-pangu", "megatron-pangu", tmp_path / "tp2", tmp_path / "tp1", tp=1, progress=False)
    convert("megatron-pangu", "zoo", tmp_path / "tp1", tmp_path / "back", progress=False)
    back = from_pretrained(tmp_path / "back")
    assert back.config == tiny_pangu.config
    _assert_same(back.state_dict(), weights)
    ids = np.arange(10).reshape(1, 10)
    assert np.array_equal(back.forward_logits(ids), tiny_pangu.forward_logits(ids))


# ---- other layouts read ---------------------------------------------------------------------------------------------

def test_reads_the_ports_iteration_layout_without_args(tiny_pangu, tmp_path):
    """As the port's converter and split tool save: iter_0007800/mp_rank_XX, 'model' and 'iteration' only."""
    config, weights = tiny_pangu.config, _random_weights(tiny_pangu, 6)
    megatron_pangu.write(config, weights, tmp_path / "release_layout", tp=2)
    port = tmp_path / "port"
    for rank, file in enumerate(_shard_files(tmp_path / "release_layout")):
        saved = _load(file)
        _save({"model": saved["model"], "iteration": 7800}, port / "iter_0007800" / f"mp_rank_{rank:02d}" /
              "model_optim_rng.pt")
    (port / "latest_checkpointed_iteration.txt").write_text("0007800")
    with pytest.raises(ConfigError, match="--mode PRESET or --config FILE"):
        megatron_pangu.read(port, config_hint=None)
    for path in (port, port / "iter_0007800", port / "iter_0007800" / "mp_rank_01",
                 port / "iter_0007800" / "mp_rank_00" / "model_optim_rng.pt"):
        read_config, back = megatron_pangu.read(path, config_hint=config)
        assert read_config == config
        _assert_same(back, weights)


def test_reads_megatron_deepspeed_files(tiny_gpt2, tmp_path):
    """global_stepN/mp_rank_XX_model_states.pt with the weights under 'module' (flat names), `latest` naming it."""
    config, weights = tiny_gpt2.config, _random_weights(tiny_gpt2, 7)
    megatron_gpt2.write(config, weights, tmp_path / "megatron", tp=2)
    deepspeed = tmp_path / "deepspeed"
    for rank, file in enumerate(_shard_files(tmp_path / "megatron")):
        saved = _load(file)
        module = {"language_model." + name: value for name, value in _flatten(saved["model"]["language_model"]).items()}
        _save({"module": module, "args": saved["args"], "checkpoint_version": 3.0, "iteration": 5},
              deepspeed / "global_step5" / f"mp_rank_{rank:02d}_model_states.pt")
    (deepspeed / "latest").write_text("global_step5")
    for path in (deepspeed, deepspeed / "global_step5" / "mp_rank_00_model_states.pt"):
        read_config, back = megatron_gpt2.read(path, config_hint=None)
        assert read_config == config
        _assert_same(back, weights)


@pytest.mark.parametrize("version", [None, 0, 1.0])
def test_reads_older_megatron_names_and_qkv_orders(tiny_gpt2, tmp_path, version):
    """Megatron before 2.6 (`transformer`, `.attention.`), QKV per rank as [3, heads, hn] (version 0, also when
    the version is missing) or [heads, hn, 3] (1.0)."""
    config, weights = tiny_gpt2.config, _random_weights(tiny_gpt2, 8)
    megatron_gpt2.write(config, weights, tmp_path / "megatron", tp=2)
    old = tmp_path / "old"
    local, hn = config.num_heads // 2, config.head_dim
    for rank, file in enumerate(_shard_files(tmp_path / "megatron")):
        saved = _load(file)
        layers = {}
        for name, value in saved["model"]["language_model"]["encoder"].items():
            if "query_key_value" in name:
                grouped = value.reshape(local, 3, hn, *value.shape[1:])  # today's order on this rank
                grouped = grouped.permute(1, 0, 2, *range(3, value.ndim + 2)) if version in (None, 0) else \
                    grouped.permute(0, 2, 1, *range(3, value.ndim + 2))
                value = grouped.reshape(value.shape)
            layers[name.replace(".self_attention.", ".attention.")] = value
        model = {"language_model": {"embedding": saved["model"]["language_model"]["embedding"], "transformer": layers}}
        extra = {} if version is None else {"checkpoint_version": version}
        _save({"model": model, "args": saved["args"], "iteration": 100, **extra},
              old / "iter_0000100" / f"mp_rank_{rank:02d}" / "model_optim_rng.pt")
    (old / "latest_checkpointed_iteration.txt").write_text("100")
    _, back = megatron_gpt2.read(old, config_hint=None)
    _assert_same(back, weights)


# ---- bad files ------------------------------------------------------------------------------------------------------

@pytest.fixture
def written_gpt2(tiny_gpt2, tmp_path):
    megatron_gpt2.write(tiny_gpt2.config, tiny_gpt2.state_dict(), tmp_path / "megatron", tp=2)
    return tmp_path / "megatron"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_file_is_a_clear_error(written_gpt2, damage):
    file = _shard_files(written_gpt2)[1]
    data = file.read_bytes()
    file.write_bytes({"truncated": data[:len(data) // 2], "garbage": b"\x80\x02not a pickle" * 10,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"mp_rank_01.*truncated or corrupt"):
        megatron_gpt2.read(written_gpt2, config_hint=None)


def test_convert_leaves_nothing_behind_on_errors(written_gpt2, tmp_path, monkeypatch):
    file = _shard_files(written_gpt2)[1]
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        convert("megatron-gpt2", "zoo", written_gpt2, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["megatron"]


def test_a_failed_write_leaves_nothing_behind(tiny_gpt2, tmp_path, monkeypatch):
    tiny_gpt2.save_pretrained(tmp_path / "zoo")
    real_save, calls = torch.save, []

    def failing_save(obj, file):  # the second rank's file fails, e.g. a full disk
        calls.append(file)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_save(obj, file)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointError, match="No space left"):
        convert("zoo", "megatron-gpt2", tmp_path / "zoo", tmp_path / "out", tp=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo"]


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_file_that_would_run_code_is_refused(written_gpt2, tmp_path):
    marker = tmp_path / "code-ran"
    file = _shard_files(written_gpt2)[0]
    saved = _load(file)
    saved["optimizer"] = _RunsCode(marker)
    torch.save(saved, file)
    with pytest.raises(CheckpointError, match=r"\((builtins|io)\.open\).*refused \(PyTorch files are read with"):
        megatron_gpt2.read(written_gpt2, config_hint=None)
    assert not marker.exists()


def test_rng_state_and_optimizer_tensors_are_accepted(written_gpt2, tiny_gpt2):
    """What Megatron saves beside the weights (numpy RNG state, optimizer tensors) is plain data, so it loads."""
    file = _shard_files(written_gpt2)[0]
    saved = _load(file)
    saved["np_rng_state"] = np.random.get_state()
    saved["optimizer"] = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
    torch.save(saved, file)
    _, back = megatron_gpt2.read(written_gpt2, config_hint=None)
    _assert_same(back, tiny_gpt2.state_dict())


def test_missing_rank_pipeline_and_empty_layouts_are_refused(written_gpt2, tmp_path):
    shutil.rmtree(written_gpt2 / "release" / "mp_rank_01")
    with pytest.raises(CheckpointError, match="tensor parallelism 2 but 1 shard"):
        megatron_gpt2.read(written_gpt2, config_hint=None)
    (written_gpt2 / "release" / "mp_rank_00_001").mkdir()
    with pytest.raises(CheckpointError, match="pipeline-parallel"):
        megatron_gpt2.read(written_gpt2, config_hint=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no Megatron checkpoint"):
        megatron_gpt2.read(tmp_path / "empty", config_hint=None)
    with pytest.raises(CheckpointError, match="does not exist"):
        megatron_gpt2.read(tmp_path / "missing", config_hint=None)
    (tmp_path / "empty" / "latest_checkpointed_iteration.txt").write_text("42")
    with pytest.raises(CheckpointError, match="iter_0000042"):
        megatron_gpt2.read(tmp_path / "empty", config_hint=None)


def test_virtual_pipeline_chunks_are_refused(written_gpt2):
    file = _shard_files(written_gpt2)[0]
    saved = _load(file)
    saved["model0"] = saved.pop("model")
    torch.save(saved, file)
    with pytest.raises(CheckpointError, match="virtual-pipeline"):
        megatron_gpt2.read(written_gpt2, config_hint=None)


def test_the_other_familys_checkpoint_is_refused(written_gpt2, tiny_pangu, tmp_path):
    with pytest.raises(CheckpointError, match="no PanGu-alpha embeddings"):
        megatron_pangu.read(written_gpt2, config_hint=None)
    megatron_pangu.write(tiny_pangu.config, tiny_pangu.state_dict(), tmp_path / "pangu")
    with pytest.raises(CheckpointError, match="top-query layer; read it as megatron-pangu"):
        megatron_gpt2.read(tmp_path / "pangu", config_hint=None)


# ---- configs ------------------------------------------------------------------------------------------------------

def test_config_hint_must_agree_with_the_checkpoint(written_gpt2, tiny_gpt2, tiny_pangu):
    with pytest.raises(CheckpointError, match="num_heads 4, but the given config says 8"):
        megatron_gpt2.read(written_gpt2, config_hint=tiny_gpt2.config.replace(num_heads=8))
    with pytest.raises(CheckpointError, match="num_layers 2, but the given config says 3"):
        megatron_gpt2.read(written_gpt2, config_hint=tiny_gpt2.config.replace(num_layers=3))
    with pytest.raises(ConfigError, match="holds a gpt2 model"):
        megatron_gpt2.read(written_gpt2, config_hint=tiny_pangu.config)
    with pytest.raises(CheckpointError, match="fewer than the vocabulary"):
        megatron_gpt2.read(written_gpt2, config_hint=tiny_gpt2.config.replace(vocab_size=1025))
    # a hint sets what Megatron does not store
    config, _ = megatron_gpt2.read(written_gpt2, config_hint=tiny_gpt2.config.replace(eos_token_id=5))
    assert config.eos_token_id == 5


def test_args_that_change_the_math_are_refused(written_gpt2):
    for file in _shard_files(written_gpt2):
        saved = _load(file)
        saved["args"].apply_residual_connection_post_layernorm = True
        torch.save(saved, file)
    with pytest.raises(CheckpointError, match="apply_residual_connection_post_layernorm=True"):
        megatron_gpt2.read(written_gpt2, config_hint=None)


def test_writing_refuses_what_tensor_parallelism_cannot_share(tiny_gpt2, tiny_pangu, tmp_path):
    with pytest.raises(ConfigError, match="--tp 3 does not divide num_heads"):
        megatron_gpt2.write(tiny_gpt2.config, tiny_gpt2.state_dict(), tmp_path / "a", tp=3)
    with pytest.raises(ConfigError, match="use megatron-pangu"):
        megatron_gpt2.write(tiny_pangu.config, tiny_pangu.state_dict(), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_vocab_padding(tiny_pangu, tmp_path):
    assert padded_vocab_size(50257, 128, 1) == 50304  # GPT-2 at TP 1 (formats.md §4.2)
    assert padded_vocab_size(50257, 128, 2) == 50432
    assert padded_vocab_size(40000, 1, 8) == 40000  # the port pads to a multiple of TP only
    # a PanGu-alpha vocabulary that 4 ranks cannot share: padded by repeating the last row, dropped on reading
    weights = tiny_pangu.state_dict()
    table = weights["backbone.word_embedding.embedding_table"]
    weights["backbone.word_embedding.embedding_table"] = np.concatenate([table, table[:1] + 1])
    config = tiny_pangu.config.replace(vocab_size=1001)
    megatron_pangu.write(config, weights, tmp_path / "megatron", tp=4)
    shards = [_load(file) for file in _shard_files(tmp_path / "megatron")]
    assert vars(shards[0]["args"])["padded_vocab_size"] == 1004
    rows = torch.cat([s["model"]["language_model"]["embedding"]["word_embeddings"]["weight"] for s in shards])
    assert rows.shape[0] == 1004 and all(torch.equal(rows[i], rows[1000]) for i in (1001, 1002, 1003))
    _, back = megatron_pangu.read(tmp_path / "megatron", config_hint=None)
    _assert_same(back, weights)


def test_vocab_size_without_args_or_hint():
    shapes = Shapes(hidden_size=64, padded_vocab=50304, max_position_embeddings=128, megatron_layers=2,
                    ffn_hidden_size=256, param_dtype="float16")
    args = {"num_attention_heads": 4}
    config = config_from_checkpoint(megatron_gpt2.FAMILY, None, args, shapes, tp=1)
    assert (config.vocab_size, config.eos_token_id, config.param_dtype) == (50257, 50256, "float16")
    with pytest.raises(ConfigError, match="vocabulary size is not stored"):
        config_from_checkpoint(megatron_gpt2.FAMILY, None, args, shapes, tp=4)


def test_formats_import_without_torch(tmp_path):
    (tmp_path / "mp_rank_00").mkdir()
    (tmp_path / "mp_rank_00" / "model_optim_rng.pt").write_bytes(b"")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from pangu_zoo.checkpoint import megatron_gpt2, megatron_pangu\n"
            "from pangu_zoo.errors import CheckpointError\n"
            f"try:\n    megatron_gpt2.read({str(tmp_path)!r}, config_hint=None)\n"
            "except CheckpointError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "need torch" in result.stdout
