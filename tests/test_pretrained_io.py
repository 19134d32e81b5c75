"""save_pretrained / from_pretrained round trips and the errors people get for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import randomize_weights

from pangu_zoo.errors import CheckpointError, InputError
from pangu_zoo.models import build_model, from_pretrained


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_round_trip_keeps_logits(tiny_pangu, tmp_path, fmt):
    tiny_pangu.save_pretrained(tmp_path, weights_format=fmt)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["config.json", f"model.{fmt}"])
    loaded = from_pretrained(tmp_path)
    ids = np.arange(20)[None, :]
    assert loaded.config == tiny_pangu.config
    assert np.array_equal(loaded.forward_logits(ids), tiny_pangu.forward_logits(ids))


def test_load_into_fp16_parameters(tiny_gpt2, tmp_path):
    tiny_gpt2.save_pretrained(tmp_path)
    half = from_pretrained(tmp_path, param_dtype="float16")
    assert half.state_dict()["backbone.blocks.0.attention.dense1.weight"].dtype == np.float16
    ids = np.arange(16)[None, :]
    assert np.abs(half.forward_logits(ids) - tiny_gpt2.forward_logits(ids)).max() < 1e-2


def test_new_weights_reach_compiled_graphs(tmp_path):
    model = build_model("gpt2-tiny", vocab_size=100, max_position_embeddings=32, dropout_rate=0.0,
                        eod_token_id=0, pad_token_id=0, eos_token_id=0)
    ids = np.arange(8)[None, :]
    before = model.forward_logits(ids)
    weights = model.state_dict()
    weights["backbone.word_embedding.embedding_table"] *= 3.0
    model.load_state_dict(weights)
    assert np.abs(model.forward_logits(ids) - before).max() > 1e-3


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="has no config.json"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(build_model("gpt2-tiny").config.to_dict()))
    with pytest.raises(CheckpointError, match="no weights file"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        from_pretrained(tmp_path)


def test_shape_mismatch_names_parameter_and_both_shapes(tiny_gpt2, tmp_path):
    tiny_gpt2.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["ffn_hidden_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"shape mismatch for backbone\.blocks\.0\.output\.mapping\.weight: "
                                              r"checkpoint has \(64, 256\), model expects \(64, 128\)"):
        from_pretrained(tmp_path)


def test_missing_and_unexpected_parameters(tiny_gpt2):
    weights = tiny_gpt2.state_dict()
    del weights["backbone.layernorm.gamma"]
    weights["backbone.extra"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match="missing 1 parameter.*layernorm.gamma.*unexpected 1.*extra"):
        tiny_gpt2.load_state_dict(weights)


def test_corrupt_weights_file(tiny_gpt2, tmp_path):
    tiny_gpt2.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        from_pretrained(tmp_path)


def test_token_ids_outside_vocabulary(tiny_gpt2):
    with pytest.raises(InputError, match="token id 1000 is outside the vocabulary"):
        tiny_gpt2.forward_logits(np.array([[1, 2, 1000]]))
    with pytest.raises(InputError, match="token id -1"):
        tiny_gpt2.generate([[1, -1]], max_new_tokens=2)


def test_sequence_longer_than_position_table(tiny_gpt2):
    with pytest.raises(InputError, match="exceeds the position table"):
        tiny_gpt2.forward_logits(np.zeros((1, 129), dtype=np.int64))
    with pytest.raises(InputError, match="exceeds the position table"):
        tiny_gpt2.generate([[1] * 100], max_new_tokens=40)


def test_bfloat16_parameters_run_and_round_trip(tiny_gpt2, tmp_path):
    # weights of a trained model's scale, so the logits have a spread to measure the error against
    randomize_weights(tiny_gpt2, 4, 0.1)
    tiny_gpt2.save_pretrained(tmp_path)
    bf16 = from_pretrained(tmp_path, param_dtype="bfloat16")
    params = dict(bf16.parameters_and_names())
    assert str(params["backbone.blocks.0.attention.dense1.weight"].dtype) == "BFloat16"
    assert str(params["backbone.word_embedding.embedding_table"].dtype) == "Float32"  # tables stay fp32
    ids = np.arange(16)[None, :]
    reference = tiny_gpt2.forward_logits(ids)
    error = np.abs(bf16.forward_logits(ids) - reference) / reference.std()
    # bf16 keeps 8 significant bits (0.4% per weight); measured here: mean 0.4%, max 2.8% of the logits' spread
    assert error.mean() < 0.01 and error.max() < 0.06, (error.mean(), error.max())
    bf16.save_pretrained(tmp_path / "again")
    assert from_pretrained(tmp_path / "again").config.param_dtype == "bfloat16"


def test_saving_another_format_removes_the_stale_weights(tmp_path):
    old = build_model("gpt2-tiny", vocab_size=100, max_position_embeddings=32, dropout_rate=0.0,
                      eod_token_id=0, pad_token_id=0, eos_token_id=0)
    new = build_model("gpt2-tiny", vocab_size=100, max_position_embeddings=32, dropout_rate=0.0,
                      eod_token_id=0, pad_token_id=0, eos_token_id=0)
    weights = new.state_dict()
    weights["backbone.layernorm.beta"] += 1.0  # make sure the two models differ
    new.load_state_dict(weights)
    old.save_pretrained(tmp_path, weights_format="safetensors")
    new.save_pretrained(tmp_path, weights_format="ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.ckpt"]
    loaded = from_pretrained(tmp_path)
    assert np.array_equal(loaded.state_dict()["backbone.layernorm.beta"], weights["backbone.layernorm.beta"])


def test_directory_with_both_weights_files_is_refused(tiny_gpt2, tmp_path):
    tiny_gpt2.save_pretrained(tmp_path, weights_format="ckpt")
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.ckpt").read_bytes())
    with pytest.raises(CheckpointError, match=r"more than one weights file \(model\.safetensors, model\.ckpt\)"):
        from_pretrained(tmp_path)


def test_dense_weights_under_a_mixture_of_experts_config_are_refused(tiny_gpt2, tmp_path):
    """A dense checkpoint whose config is edited to say experts builds the MoE model, whose expert weights the file
    lacks: loading names them instead of training a half-initialised model."""
    tiny_gpt2.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["moe"]["expert_num"] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing \d+ parameter\(s\), e.g. \['backbone.blocks.0.output.router"):
        from_pretrained(tmp_path)
