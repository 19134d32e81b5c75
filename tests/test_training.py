"""Training: schedule and optimizer groups against the reference rules, falling loss, exact resume."""

from __future__ import annotations

import json
import math

import mindspore as ms
import numpy as np
import pytest
from data_fixtures import preprocess_cmrc

from pangu_zoo.errors import CheckpointError, ConfigError
from pangu_zoo.models import build_model
from pangu_zoo.training.checkpoint import checkpoint_files
from pangu_zoo.training.optimizer import parameter_groups
from pangu_zoo.training.schedule import WarmupCosineLR, learning_rate_at
from pangu_zoo.training.trainer import TrainSettings, train


def test_schedule_matches_reference_formula_and_graph():
    start, end, warmup, decay = 1e-4, 1e-6, 10, 100
    cell = WarmupCosineLR(start, end, warmup, decay)
    for step in [0, 1, 5, 9, 10, 11, 50, 99, 100, 150]:
        if step < warmup:
            expected = start * step / warmup
        else:
            expected = end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(step, decay) / decay))
        assert learning_rate_at(step, start, end, warmup, decay) == pytest.approx(expected, rel=1e-12)
        assert float(cell(ms.Tensor(step, ms.int32)).asnumpy()) == pytest.approx(expected, rel=1e-5)


def test_weight_decay_skips_layernorm_and_biases(tiny_pangu):
    decay, no_decay, order = parameter_groups(tiny_pangu.trainable_params())
    decayed = {p.name for p in decay["params"]}
    assert "backbone.word_embedding.embedding_table" in decayed
    assert "backbone.blocks.0.attention.dense1.weight" in decayed
    assert not any("layernorm" in n or n.endswith("bias") for n in decayed)
    assert {p.name for p in no_decay["params"]} == {p.name for p in tiny_pangu.trainable_params()} - decayed
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The CMRC paragraphs preprocessed into 65-token samples."""
    return preprocess_cmrc(tmp_path_factory.mktemp("data"), 65)


def _model():
    ms.set_seed(0)
    return build_model("pangu_alpha_tiny", dropout_rate=0.0, max_position_embeddings=64)


def _settings(corpus, save_dir, max_steps, **changes):
    values = dict(data_path=str(corpus), per_batch_size=4, max_steps=max_steps, warmup_steps=4, start_lr=2e-3,
                  end_lr=1e-4, decay_steps=200, save_dir=str(save_dir), save_steps=3, keep_checkpoints=2)
    return TrainSettings(**{**values, **changes})


def test_resume_repeats_the_uninterrupted_run(corpus, tmp_path):
    straight = _model()
    full = train(straight, _settings(corpus, tmp_path / "a", 8))
    half = train(_model(), _settings(corpus, tmp_path / "b", 4))
    resumed_model = build_model("pangu_alpha_tiny", dropout_rate=0.0, max_position_embeddings=64)  # other init
    rest = train(resumed_model, _settings(corpus, tmp_path / "b", 8, resume=True))
    losses = [r["loss"] for r in half + rest]
    assert np.allclose(losses, [r["loss"] for r in full], atol=1e-6, rtol=0)
    a, b = straight.state_dict(), resumed_model.state_dict()
    assert all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
    # keep the newest 2; the log has one JSON line per step
    assert [p.name for p in checkpoint_files(tmp_path / "b", "pangu")] == ["pangu-00000006.ckpt",
                                                                           "pangu-00000008.ckpt"]
    lines = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 9))
    assert {"loss", "lr", "loss_scale", "overflow", "tokens_per_s", "mfu"} <= set(json.loads(lines[0]))


def test_loss_falls_on_real_text(corpus, tmp_path):
    records = train(_model(), _settings(corpus, tmp_path, 40, save_steps=0))
    first, last = np.mean([r["loss"] for r in records[:5]]), np.mean([r["loss"] for r in records[-5:]])
    assert last < first - 1.0, (first, last)


def test_existing_checkpoints_are_not_overwritten(corpus, tmp_path):
    train(_model(), _settings(corpus, tmp_path, 3))
    before = (tmp_path / "pangu-00000003.ckpt").read_bytes()
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(_model(), _settings(corpus, tmp_path, 3))
    assert (tmp_path / "pangu-00000003.ckpt").read_bytes() == before


def test_corrupt_or_mismatched_checkpoint_on_resume(corpus, tmp_path):
    train(_model(), _settings(corpus, tmp_path, 3))
    other = build_model("pangu_alpha_tiny", dropout_rate=0.0, max_position_embeddings=64, hidden_size=32)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        train(other, _settings(corpus, tmp_path, 6, resume=True))
    (tmp_path / "pangu-00000003.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read training checkpoint"):
        train(_model(), _settings(corpus, tmp_path, 6, resume=True))
