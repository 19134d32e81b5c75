"""`pangu convert` between zoo, hf-gpt2, mindformers and released, on tiny random models.

Round trips must give every tensor back bit for bit; the Hugging Face folder must load in transformers and give
the logits of the model it came from; misfits, truncated or corrupt files and pickles that would run code must
fail with one clear error and leave nothing behind.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from data_fixtures import files_in, shared_file

from pangu_zoo.checkpoint import ckpt_stream, mindformers_format, zoo_format
from pangu_zoo.checkpoint.bfloat16 import round_to_bf16
from pangu_zoo.checkpoint.ckpt_stream import CkptFile
from pangu_zoo.checkpoint.convert import convert
from pangu_zoo.checkpoint.parameter_shapes import parameter_shapes
from pangu_zoo.checkpoint.safetensors_stream import SafetensorsFile
from pangu_zoo.cli import main
from pangu_zoo.config import ModelConfig, count_parameters
from pangu_zoo.errors import CheckpointError, ConfigError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

GPT2 = ModelConfig(family="gpt2", vocab_size=96, hidden_size=32, num_layers=2, num_heads=4,
                   max_position_embeddings=16, dropout_rate=0.0, eod_token_id=95, pad_token_id=95, eos_token_id=95)
PANGU = ModelConfig(family="pangu_alpha", vocab_size=80, hidden_size=32, num_layers=3, num_heads=4,
                    max_position_embeddings=16, dropout_rate=0.0, eod_token_id=6, pad_token_id=6, eos_token_id=9)


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in parameter_shapes(config).items()}


def zoo_dir(root: Path, config: ModelConfig, seed: int = 0) -> Path:
    zoo_format.write(config, random_weights(config, seed), root)
    return root


def read_all(fmt: str, path: Path, config: ModelConfig | None = None) -> dict[str, np.ndarray]:
    from pangu_zoo.checkpoint.formats import FORMATS

    _, weights = FORMATS[fmt].read(path, config_hint=config)
    return {name: weights[name] for name in weights}


def assert_bit_exact(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name]), name


def nothing_left(dst: Path) -> None:
    assert not dst.exists()
    assert not [name for name in files_in(dst.parent) if name.startswith(dst.name)]


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=96, n_positions=16,
                                     bos_token_id=95, eos_token_id=95)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "gpt2"
    hf_model.save_pretrained(path)
    return path


def hf_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    return {name.removeprefix("transformer."): value.float().numpy() if value.dtype == torch.bfloat16
            else value.numpy() for name, value in load_file(folder / "model.safetensors").items()}


# hf-gpt2

def test_hf_zoo_hf_is_bit_exact_and_loads_in_transformers_with_the_same_logits(hf_model, hf_dir, tmp_path):
    convert("hf-gpt2", "zoo", hf_dir, tmp_path / "zoo", progress=False)
    convert("zoo", "hf-gpt2", tmp_path / "zoo", tmp_path / "hf", progress=False)
    original, back = hf_tensors(hf_dir), hf_tensors(tmp_path / "hf")
    original.pop("lm_head.weight", None)
    assert_bit_exact(original, back)

    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, hf_model(ids).logits)


def test_hf_folder_written_from_our_model_gives_our_logits(tmp_path):
    from pangu_zoo.models import from_pretrained

    zoo = zoo_dir(tmp_path / "zoo", GPT2)
    convert("zoo", "hf-gpt2", zoo, tmp_path / "hf", progress=False)
    ids = np.random.default_rng(2).integers(0, 96, (2, 12))
    ours = from_pretrained(zoo).forward_logits(ids)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=2e-4)


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", "bfloat16"), ("fp16", "float16")])
def test_hf_in_half_precision_round_trips_and_loads(hf_dir, tmp_path, dtype, torch_dtype):
    convert("hf-gpt2", "hf-gpt2", hf_dir, tmp_path / "half", dtype=dtype, progress=False)
    convert("hf-gpt2", "zoo", tmp_path / "half", tmp_path / "zoo", progress=False)
    convert("zoo", "hf-gpt2", tmp_path / "zoo", tmp_path / "back", progress=False)
    written = [(tmp_path / folder / "model.safetensors").read_bytes() for folder in ("half", "back")]
    assert written[0] == written[1]  # the same file, byte for byte
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back")
    assert model.transformer.wte.weight.dtype == getattr(torch, torch_dtype)


def test_tokenizer_files_come_along_under_the_names_transformers_reads(tmp_path):
    from pangu_zoo.tokenizers.gpt2_tokenizer import GPT2Tokenizer

    bpe = shared_file("gpt2_bpe")
    convert("zoo", "hf-gpt2", zoo_dir(tmp_path / "zoo", GPT2), tmp_path / "hf", tokenizer_path=bpe, progress=False)
    assert {"vocab.json", "merges.txt", "config.json", "model.safetensors"} <= set(files_in(tmp_path / "hf"))
    text = "Converting checkpoints, tensor by tensor."
    hf_tokenizer = transformers.GPT2TokenizerFast.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer(text)["input_ids"] == GPT2Tokenizer.from_path(bpe).encode(text)


def test_pytorch_bin_is_read_with_weights_only(hf_model, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(hf_model.config.to_json_string())
    torch.save(hf_model.state_dict(), folder / "pytorch_model.bin")  # tied lm_head.weight included
    convert("hf-gpt2", "zoo", folder, tmp_path / "zoo", progress=False)
    expected = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    _, weights = zoo_format.read(tmp_path / "zoo")
    assert np.array_equal(weights["backbone.blocks.1.attention.dense2.weight"],
                          expected["transformer.h.1.attn.c_attn.weight"][:, 32:64].T)


def test_without_torch_a_bin_asks_for_the_extra_and_safetensors_still_convert(hf_model, hf_dir, tmp_path,
                                                                             monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    convert("hf-gpt2", "zoo", hf_dir, tmp_path / "zoo", progress=False)
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(hf_model.config.to_json_string())
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match=r"needs torch \(pip install 'pangu-zoo\[torch\]'\)"):
        convert("hf-gpt2", "zoo", folder, tmp_path / "zoo2", progress=False)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused(hf_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text(hf_model.config.to_json_string())
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"wte.weight": _RunsCode()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refusing to read .*could run code"):
        convert("hf-gpt2", "zoo", folder, tmp_path / "zoo", progress=False)
    assert not (tmp_path / "pwned").exists()
    nothing_left(tmp_path / "zoo")


def test_an_untied_head_is_refused(hf_model, tmp_path):
    folder = tmp_path / "untied"
    folder.mkdir()
    (folder / "config.json").write_text(hf_model.config.to_json_string())
    state = {k: v.clone() for k, v in hf_model.state_dict().items()}
    state["lm_head.weight"] += 1
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="untied head"):
        convert("hf-gpt2", "zoo", folder, tmp_path / "zoo", progress=False)


def test_pangu_has_no_hf_gpt2_form(tmp_path):
    with pytest.raises(ConfigError, match="hf-gpt2 holds GPT-2 models"):
        convert("zoo", "hf-gpt2", zoo_dir(tmp_path / "zoo", PANGU), tmp_path / "hf", progress=False)
    nothing_left(tmp_path / "hf")


# mindformers

@pytest.mark.parametrize("config", [GPT2, PANGU], ids=["gpt2", "pangu"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_zoo_mindformers_zoo_is_bit_exact(config, dtype, tmp_path):
    zoo = zoo_dir(tmp_path / "zoo", config)
    convert("zoo", "zoo", zoo, tmp_path / "cast", dtype=dtype, progress=False)
    convert("zoo", "mindformers", tmp_path / "cast", tmp_path / "mf.ckpt", progress=False)
    summary = convert("mindformers", "zoo", tmp_path / "mf.ckpt", tmp_path / "back", config_hint=config,
                      progress=False)
    assert summary.parameters == sum(int(np.prod(s)) for s in parameter_shapes(config).values())
    assert_bit_exact(read_all("zoo", tmp_path / "cast"), read_all("zoo", tmp_path / "back"))
    assert zoo_format.read(tmp_path / "back")[0].param_dtype == {"fp32": "float32", "fp16": "float16",
                                                                 "bf16": "bfloat16"}[dtype]


def test_mindformers_file_has_mindformers_names_and_loads_in_mindspore(tmp_path):
    weights = random_weights(PANGU)
    weights = {name: round_to_bf16(value) for name, value in weights.items()}
    mindformers_format.write(PANGU.replace(param_dtype="bfloat16"), weights, tmp_path / "mf.ckpt")
    loaded = ms.load_checkpoint(str(tmp_path / "mf.ckpt"))
    assert "backbone.embedding.word_embedding.embedding_table" in loaded
    assert "backbone.embedding.position_embedding.embedding_table" in loaded
    assert "backbone.top_query_embedding.embedding_table" in loaded
    table = loaded["backbone.embedding.word_embedding.embedding_table"]
    assert table.dtype == ms.bfloat16
    assert np.array_equal(table.astype(ms.float32).asnumpy(), weights["backbone.word_embedding.embedding_table"])


def test_mindspore_saved_training_checkpoint_converts(tmp_path):
    weights = random_weights(GPT2)
    saved = [{"name": mindformers_format.mindformers_name(n), "data": ms.Tensor(v)} for n, v in weights.items()]
    saved += [{"name": "adam_m." + n, "data": ms.Tensor(np.zeros_like(v))} for n, v in list(weights.items())[:3]]
    saved += [{"name": "global_step", "data": ms.Tensor(np.array([7], np.int32))}]
    ms.save_checkpoint(saved, str(tmp_path / "train.ckpt"), append_dict={"epoch_num": 2})
    convert("mindformers", "zoo", tmp_path / "train.ckpt", tmp_path / "zoo", config_hint=GPT2, progress=False)
    assert_bit_exact(weights, read_all("zoo", tmp_path / "zoo"))


def test_large_tensors_split_over_entries_join_up(tmp_path, monkeypatch):
    from mindspore.train import serialization

    value = np.random.default_rng(3).standard_normal((40, 33)).astype(np.float32)
    monkeypatch.setattr(serialization, "SLICE_SIZE", 1)  # KB: MindSpore writes 1 KB pieces
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(value)}], str(tmp_path / "ms.ckpt"))
    assert np.array_equal(CkptFile(tmp_path / "ms.ckpt").read("w"), value)
    monkeypatch.setattr(ckpt_stream, "CHUNK_BYTES", 1000)
    ckpt_stream.write_ckpt(tmp_path / "ours.ckpt", [("w", CkptFile(tmp_path / "ms.ckpt").specs["w"])], {"w": value}.get)
    assert np.array_equal(ms.load_checkpoint(str(tmp_path / "ours.ckpt"))["w"].asnumpy(), value)


def test_mindformers_needs_a_config(tmp_path):
    mindformers_format.write(GPT2, random_weights(GPT2), tmp_path / "mf.ckpt")
    with pytest.raises(ConfigError, match="--mode PRESET or --config FILE"):
        convert("mindformers", "zoo", tmp_path / "mf.ckpt", tmp_path / "zoo", progress=False)


# released

def test_released_layout_converts_to_the_weights_the_loader_merges(tmp_path):
    from test_released_checkpoint import write_released

    from pangu_zoo.checkpoint.released import read_released_weights

    config = PANGU.replace(vocab_size=120, max_position_embeddings=32)
    weights = random_weights(config)
    write_released(tmp_path / "released", weights)
    convert("released", "zoo", tmp_path / "released", tmp_path / "zoo", config_hint=config, progress=False)
    merged = read_released_weights(tmp_path / "released", parameter_shapes(config))
    assert_bit_exact(merged, read_all("zoo", tmp_path / "zoo"))
    assert_bit_exact(weights, merged)


def test_released_is_read_only(tmp_path):
    with pytest.raises(ConfigError, match="released can only be read"):
        convert("zoo", "released", zoo_dir(tmp_path / "zoo", PANGU), tmp_path / "out", progress=False)


# misfits

@pytest.mark.parametrize("change, message", [
    (dict(hidden_size=64), r"shape mismatch for backbone.word_embedding.embedding_table: the mindformers checkpoint "
                           r"has \(96, 32\), the config expects \(96, 64\)"),
    (dict(vocab_size=100), r"backbone.word_embedding.embedding_table: .* has \(96, 32\), .* expects \(100, 32\)"),
    (dict(num_layers=3), r"lacks 16 parameter\(s\) the config has, e.g. backbone.blocks.2.layernorm1.gamma \(32,\)"),
    (dict(num_layers=1), r"holds 16 parameter\(s\) the config has not, e.g. backbone.blocks.1.layernorm1.gamma"),
])
def test_a_config_of_another_size_names_the_parameter_and_both_shapes(tmp_path, change, message):
    mindformers_format.write(GPT2, random_weights(GPT2), tmp_path / "mf.ckpt")
    with pytest.raises(CheckpointError, match=message):
        convert("mindformers", "zoo", tmp_path / "mf.ckpt", tmp_path / "zoo", config_hint=GPT2.replace(**change),
                progress=False)
    nothing_left(tmp_path / "zoo")


def test_heads_that_differ_from_the_sources_config_are_named(tmp_path):
    with pytest.raises(ConfigError, match="num_heads: the zoo checkpoint's config says 4, --mode/--config says 8"):
        convert("zoo", "mindformers", zoo_dir(tmp_path / "zoo", GPT2), tmp_path / "mf.ckpt",
                config_hint=GPT2.replace(num_heads=8), progress=False)


def test_hf_config_with_more_layers_than_weights(hf_dir, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(hf_dir / "model.safetensors")
    values = json.loads((hf_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**values, "n_layer": 3}))
    with pytest.raises(CheckpointError, match=r"lacks 16 parameter\(s\) .* backbone.blocks.2.layernorm1.gamma"):
        convert("hf-gpt2", "zoo", folder, tmp_path / "zoo", progress=False)


# broken files: one clear error, nothing left behind

def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.parametrize("damage, message", [
    (lambda p: _truncate(p, 0.6), "is truncated: its header describes"),
    (lambda p: _truncate(p, 0.0), "shorter than the 8-byte header"),
    (lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(64)),
     "not a valid safetensors file: its header is not JSON"),
    (lambda p: p.write_bytes(bytes(range(256)) * 8), "not a valid safetensors file"),
])
def test_broken_safetensors(tmp_path, damage, message):
    zoo = zoo_dir(tmp_path / "zoo", GPT2)
    damage(zoo / "model.safetensors")
    with pytest.raises(CheckpointError, match=message):
        convert("zoo", "hf-gpt2", zoo, tmp_path / "hf", progress=False)
    nothing_left(tmp_path / "hf")


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0001])
def test_truncated_ckpt(tmp_path, keep):
    mindformers_format.write(GPT2, random_weights(GPT2), tmp_path / "mf.ckpt")
    _truncate(tmp_path / "mf.ckpt", keep)
    with pytest.raises(CheckpointError, match="not a readable MindSpore checkpoint|is empty"):
        convert("mindformers", "zoo", tmp_path / "mf.ckpt", tmp_path / "zoo", config_hint=GPT2, progress=False)
    nothing_left(tmp_path / "zoo")


def test_ckpt_with_a_wrong_crc_is_refused(tmp_path):
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(np.ones((4, 4), np.float32))}], str(tmp_path / "c.ckpt"),
                       crc_check=True)
    data = bytearray((tmp_path / "c.ckpt").read_bytes())
    data[-20] ^= 0xFF  # a byte of the tensor
    (tmp_path / "c.ckpt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC32 does not match"):
        CkptFile(tmp_path / "c.ckpt")


def test_an_error_while_writing_leaves_nothing(tmp_path, monkeypatch):
    zoo = zoo_dir(tmp_path / "zoo", GPT2)
    calls = []
    real = SafetensorsFile.read

    def failing(self, name):
        calls.append(name)
        if len(calls) == 5:
            raise CheckpointError("disk gone")
        return real(self, name)

    monkeypatch.setattr(SafetensorsFile, "read", failing)
    with pytest.raises(CheckpointError, match="disk gone"):
        convert("zoo", "mindformers", zoo, tmp_path / "mf.ckpt", progress=False)
    nothing_left(tmp_path / "mf.ckpt")


def test_existing_destination_and_unknown_formats(tmp_path):
    zoo = zoo_dir(tmp_path / "zoo", GPT2)
    with pytest.raises(CheckpointError, match="already exists"):
        convert("zoo", "zoo", zoo, zoo, progress=False)
    with pytest.raises(ConfigError, match="unknown source format 'onnx'; use one of .*hf-gpt2"):
        convert("onnx", "zoo", zoo, tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="--tp 2"):
        convert("zoo", "hf-gpt2", zoo, tmp_path / "x", tp=2, progress=False)
    nothing_left(tmp_path / "x")


# the command

def test_cli_converts_and_prints_the_summary(hf_dir, tmp_path, capsys):
    assert main(["convert", "hf-gpt2", "mindformers", "--src", str(hf_dir), "--dst", str(tmp_path / "mf.ckpt"),
                 "--dtype", "fp16", "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert f"converted hf-gpt2 -> mindformers: {count_parameters(GPT2):,} parameters" in out and " bytes, " in out
    config = tmp_path / "config.json"
    config.write_text(GPT2.to_json())
    assert main(["convert", "mindformers", "zoo", "--src", str(tmp_path / "mf.ckpt"), "--dst",
                 str(tmp_path / "zoo"), "--config", str(config), "--no_progress"]) == 0
    assert zoo_format.read(tmp_path / "zoo")[0].param_dtype == "float16"


def test_cli_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["convert", "mindformers", "zoo", "--src", str(tmp_path / "none.ckpt"), "--dst",
                 str(tmp_path / "zoo"), "--mode", "gpt2-tiny", "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err


def test_parameter_shapes_are_the_models():
    from pangu_zoo.models import build_model

    for config in (GPT2, PANGU.replace(ffn_hidden_size=48)):
        model = build_model(config)
        assert {n: tuple(p.shape) for n, p in model.parameters_and_names()} == parameter_shapes(config)
