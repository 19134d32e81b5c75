"""A tiny MoE PanGu-alpha trains on CPU: the loss falls, every expert gets tokens, the load-balance loss is part of
the reported loss, resuming repeats the run, MoE models save and load; the offloaded optimizer equals AdamW."""

from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest
from conftest import randomize_weights, shared_data
from data_fixtures import preprocess_cmrc

from pangu_zoo.cli import main
from pangu_zoo.config import MoEConfig
from pangu_zoo.models import build_model, from_pretrained
from pangu_zoo.training.trainer import TrainSettings, train

MOE = MoEConfig(expert_num=4, num_experts_chosen=2, capacity_factor=1.1, aux_loss_factor=0.05)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return preprocess_cmrc(tmp_path_factory.mktemp("data"), 33)


def _model(moe=MOE):
    ms.set_seed(0)
    return build_model("pangu_alpha_tiny", dropout_rate=0.0, max_position_embeddings=32, moe=moe)


def _settings(corpus, save_dir, max_steps, **changes):
    values = dict(data_path=str(corpus), per_batch_size=4, max_steps=max_steps, warmup_steps=4, start_lr=3e-3,
                  end_lr=1e-4, decay_steps=200, save_dir=str(save_dir), save_steps=4, keep_checkpoints=2)
    return TrainSettings(**{**values, **changes})


def test_moe_trains_every_expert_and_the_aux_loss_is_in_the_loss(corpus, tmp_path):
    records = train(_model(), _settings(corpus, tmp_path / "a", 30, save_steps=0))
    first, last = np.mean([r["loss"] for r in records[:5]]), np.mean([r["loss"] for r in records[-5:]])
    assert last < first - 1.0, (first, last)
    for record in records:
        assert len(record["expert_load"]) == 4 and min(record["expert_load"]) > 0, record["expert_load"]
        assert 0.0 <= record["dropped_share"] < 0.5
    # 2 MoE layers x 2 rounds x 0.05 x E^2 mean(density * proxy), which is 1 for a balanced router
    assert all(0.1 < record["aux_loss"] < 0.4 for record in records)
    # the same first step without the load-balance weight: the losses differ by exactly the recorded aux loss
    plain = train(_model(MoEConfig(expert_num=4, num_experts_chosen=2, aux_loss_factor=0.0)),
                  _settings(corpus, tmp_path / "b", 1, save_steps=0))
    assert records[0]["loss"] - plain[0]["loss"] == pytest.approx(records[0]["aux_loss"], abs=2e-6)
    assert plain[0]["aux_loss"] == 0.0


def test_moe_resume_repeats_the_uninterrupted_run(corpus, tmp_path):
    straight = _model()
    full = train(straight, _settings(corpus, tmp_path / "a", 8))
    train(_model(), _settings(corpus, tmp_path / "b", 4))
    resumed = build_model("pangu_alpha_tiny", dropout_rate=0.0, max_position_embeddings=32, moe=MOE)
    rest = train(resumed, _settings(corpus, tmp_path / "b", 8, resume=True))
    np.testing.assert_allclose([r["loss"] for r in rest], [r["loss"] for r in full[4:]], atol=1e-6, rtol=0)
    assert [r["expert_load"] for r in rest] == [r["expert_load"] for r in full[4:]]
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_moe_model_saves_and_loads(tmp_path):
    model = randomize_weights(_model(), seed=3, scale=0.3)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["moe"]["expert_num"] == 4 and config["moe"]["num_experts_chosen"] == 2
    loaded = from_pretrained(tmp_path)
    state = model.state_dict()
    assert state["backbone.blocks.0.output.mapping.weight"].shape == (4, 64, 256)
    assert not any(name.endswith("routing_stats") for name in state)  # runtime statistics are not weights
    ids = np.array([[5, 17, 300, 42, 8, 99]])
    np.testing.assert_allclose(loaded.forward_logits(ids), model.forward_logits(ids), atol=1e-6)
    # KV-cache decoding equals recomputation: inference never drops a token
    generated = model.generate(ids.tolist(), max_new_tokens=6)[0]
    recomputed = ids[0].tolist()
    for _ in range(6):
        recomputed.append(int(model.forward_logits(np.array([recomputed]))[0, -1].argmax()))
    assert generated == recomputed


def test_train_command_with_moe_and_offloaded_optimizer(corpus, tmp_path):
    log = tmp_path / "log.jsonl"
    code = main(["train", "--mode", "pangu_alpha_tiny", "--seq_length", "32", "--data_url", str(corpus / "cmrc"),
                 "--per_batch_size", "4", "--max_steps", "3", "--save_checkpoint_path", str(tmp_path / "ck"),
                 "--log_file", str(log), "--use_moe", "1", "--expert_num", "4", "--per_token_num_experts_chosen", "1",
                 "--opt_offload", "1", "--param_init_type", "fp16", "--dropout_rate", "0"])
    assert code == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 3 and all(len(r["expert_load"]) == 4 for r in records)
    assert sum(records[0]["expert_load"]) <= 4 * 32 * 2  # k = 1: at most one kept pick per token and layer


def test_moe_arguments_are_checked(tmp_path, capsys):
    base = ["train", "--mode", "pangu_alpha_tiny", "--data_url", str(tmp_path), "--per_batch_size", "1"]
    assert main([*base, "--expert_num", "4"]) == 2
    assert "--use_moe 1" in capsys.readouterr().err
    assert main([*base, "--use_moe", "1", "--expert_num", "4", "--per_token_num_experts_chosen", "5"]) == 2
    assert "num_experts_chosen (5)" in capsys.readouterr().err
    assert main([*base, "--opt_offload", "1", "--optimizer", "lamb"]) == 2
    assert "offloads AdamWeightDecay" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [ms.float32, ms.float16])
def test_offloaded_adamw_step_equals_numpy(dtype):
    from mindspore import Parameter, Tensor, nn

    from pangu_zoo.runtime import use_graph_mode
    from pangu_zoo.training.offload import HostAdamWeightDecay
    from pangu_zoo.training.optimizer import parameter_groups

    use_graph_mode()

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.weight = Parameter(Tensor(np.linspace(-1, 1, 12).reshape(3, 4), dtype), name="weight")
            self.bias = Parameter(Tensor(np.ones(4), dtype), name="bias")

    net = Net()
    opt = HostAdamWeightDecay(parameter_groups(net.trainable_params(), 0.1), 0.01, beta1=0.9, beta2=0.95)
    assert all(m.dtype == ms.float32 for m in (*opt.moments1, *opt.moments2))  # fp32 state for fp16 weights
    w, b = np.linspace(-1, 1, 12).reshape(3, 4), np.ones(4)
    gw, gb = np.full((3, 4), 0.5), np.full(4, -0.25)
    for _ in range(2):
        opt((Tensor(gw, dtype), Tensor(gb, dtype)))
    # NumPy AdamW without bias correction, two steps; decay on the weight only (not the bias)
    m_w, v_w, m_b, v_b = 0 * w, 0 * w, 0 * b, 0 * b
    for _ in range(2):
        m_w, v_w = 0.9 * m_w + 0.1 * gw, 0.95 * v_w + 0.05 * gw ** 2
        m_b, v_b = 0.9 * m_b + 0.1 * gb, 0.95 * v_b + 0.05 * gb ** 2
        w = w - 0.01 * (m_w / (np.sqrt(v_w) + 1e-8) + 0.1 * w)
        b = b - 0.01 * (m_b / (np.sqrt(v_b) + 1e-8))
    tolerance = 1e-6 if dtype == ms.float32 else 2e-3
    np.testing.assert_allclose(net.weight.asnumpy().astype(np.float64), w, atol=tolerance)
    np.testing.assert_allclose(net.bias.asnumpy().astype(np.float64), b, atol=tolerance)
    np.testing.assert_allclose(opt.moments2[0].asnumpy(), v_w, rtol=1e-6)


def test_demo_with_moe(tmp_path, capsys):
    code = main(["demo", "--use_moe", "--tokenizer_dir", str(shared_data("pangu_tokenizer")), "--output_dir",
                 str(tmp_path), "--steps", "20", "--max_new_tokens", "8"])
    out = capsys.readouterr().out
    assert code == 0, out
    records = [json.loads(line) for line in (tmp_path / "checkpoints" / "train_log.jsonl").open()]
    assert len(records) == 20 and records[-1]["loss"] < records[0]["loss"] - 2.0
    assert all(len(r["expert_load"]) == 4 for r in records)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["moe"]["expert_num"] == 4
    assert "output: 春天来了，" in out


def test_exported_moe_model_generates_as_the_model(tmp_path):
    """The MindIR prefill/decode graphs (dynamic shapes) route like the model: no token is dropped at inference."""
    from pangu_zoo.serving.export import export_model
    from pangu_zoo.serving.exported import ExportedModel

    model = randomize_weights(_model(), seed=4, scale=0.3)
    export_model(model, tmp_path)
    prompts = [[5, 17, 300, 42, 8, 99, 7, 120], [11, 12]]
    expected = model.generate(prompts, max_new_tokens=8)
    assert len({tuple(row[-8:]) for row in expected}) > 1 or len(set(expected[0][-8:])) > 1
    assert ExportedModel(tmp_path).generate(prompts, max_new_tokens=8) == expected
