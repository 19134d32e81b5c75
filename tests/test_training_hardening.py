"""Training refuses bad input with one clear line, uses the dataset's loss mask, logs the optimizer's
learning rate, and the demo and plot-log commands leave the user's files and odd log lines alone."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from conftest import REPO_ROOT

from pangu_zoo.cli import main
from pangu_zoo.data.megatron import MegatronWriter
from pangu_zoo.data.mindrecord import MindRecordPartitions
from pangu_zoo.data.model_fit import check_data_fits_model
from pangu_zoo.errors import ConfigError, DataError
from pangu_zoo.models import build_model
from pangu_zoo.models.loss import LanguageModelWithLoss
from pangu_zoo.training.schedule import WarmupCosineLR, check_schedule, learning_rate_at
from pangu_zoo.training.trainer import TrainSettings, train

VOCAB, SEQ = 1000, 16


def tiny_model():
    ms.set_seed(0)
    return build_model("pangu_alpha_tiny", vocab_size=VOCAB, num_layers=2, dropout_rate=0.0,
                       max_position_embeddings=SEQ)


def write_mindrecord(folder, rows, **metadata):
    """MindRecord samples as `pangu preprocess` writes them, with its metadata (overridable, None drops)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = MindRecordPartitions([folder / "data"], "input_ids", "test")
    for row in rows:
        writer.write(np.asarray(row, np.int32))
    writer.commit()
    recorded = {"format": "mindrecord", "tokenizer": "pangu-alpha", "vocab_size": VOCAB, "eod_id": 6, "pad_id": 6,
                "seq_length": len(rows[0]), "column": "input_ids", **metadata}
    (folder / "data.json").write_text(json.dumps({k: v for k, v in recorded.items() if v is not None}))
    return folder


def random_rows(count, length, high=VOCAB, seed=0):
    return np.random.default_rng(seed).integers(10, high, size=(count, length))


def settings(data, save_dir, **changes):
    values = dict(data_path=str(data), per_batch_size=2, max_steps=2, warmup_steps=4, start_lr=2e-3, end_lr=1e-4,
                  decay_steps=20, save_dir=str(save_dir), save_steps=0)
    return TrainSettings(**{**values, **changes})


# 1. data against the model, before compiling


def test_sample_length_must_match_seq_length(tmp_path):
    data = write_mindrecord(tmp_path / "data", random_rows(8, 33))
    with pytest.raises(ConfigError, match=r"33 ids .* --seq_length is 16, which needs 17"):
        train(tiny_model(), settings(data, tmp_path / "ck"))
    assert not (tmp_path / "ck").exists()  # refused before anything was built or written


def test_recorded_tokenizer_larger_than_model_vocabulary(tmp_path):
    data = write_mindrecord(tmp_path / "data", random_rows(8, SEQ + 1), vocab_size=50257, tokenizer="gpt2")
    with pytest.raises(ConfigError, match=r"gpt2 tokenizer of 50257 ids, more than the model's vocabulary of 1000"):
        check_data_fits_model(data, SEQ, VOCAB)


def test_token_ids_beyond_vocabulary_without_recorded_tokenizer(tmp_path):
    rows = random_rows(8, SEQ + 1)
    rows[5, 3], rows[2, 0] = VOCAB + 7, 3
    data = write_mindrecord(tmp_path / "data", rows, vocab_size=None, tokenizer=None)
    with pytest.raises(DataError, match=rf"token ids from 3 to {VOCAB + 7}, outside .* \[0, {VOCAB}\)"):
        check_data_fits_model(data, SEQ, VOCAB)
    check_data_fits_model(data, SEQ, VOCAB + 8)


def test_megatron_data_is_checked_too(tmp_path):
    writer = MegatronWriter(tmp_path / "corpus", np.uint16)
    writer.add_document([10, 11, VOCAB + 3, 12] * 10)
    writer.finish()
    with pytest.raises(DataError, match=f"to {VOCAB + 3}, outside"):
        check_data_fits_model(tmp_path / "corpus", SEQ, VOCAB)
    (tmp_path / "corpus.json").write_text(json.dumps({"eod_id": 6, "vocab_size": 40000, "tokenizer": "pangu-alpha"}))
    with pytest.raises(ConfigError, match="of 40000 ids"):
        check_data_fits_model(tmp_path / "corpus", SEQ, VOCAB)


def test_end_of_document_id_outside_vocabulary(tmp_path):
    data = write_mindrecord(tmp_path / "data", random_rows(8, SEQ + 1))
    with pytest.raises(ConfigError, match="end-of-document id 5000"):
        check_data_fits_model(data, SEQ, VOCAB, eod_id=5000)


def test_mismatch_is_one_line_from_the_command(tmp_path, capsys):
    data = write_mindrecord(tmp_path / "data", random_rows(8, 33))
    code = main(["train", "--mode", "pangu_alpha_tiny", "--vocab_size", str(VOCAB), "--seq_length", str(SEQ),
                 "--data_url", str(data), "--per_batch_size", "2", "--save_checkpoint_path", str(tmp_path / "ck")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--seq_length 32" in err, err


# 2. the loss mask comes from the data only


def test_loss_network_uses_the_given_mask():
    network = LanguageModelWithLoss(tiny_model())
    rng = np.random.default_rng(1)
    ids = rng.integers(10, VOCAB, size=(1, SEQ + 1)).astype(np.int32)  # no pad id: a pad-derived mask is all ones
    positions = np.arange(SEQ, dtype=np.int32)[None]
    attention = np.tril(np.ones((SEQ, SEQ), np.int8))[None]

    def loss(mask):
        return float(network(ms.Tensor(ids), ms.Tensor(positions), ms.Tensor(attention),
                             ms.Tensor(np.asarray(mask, np.float32)[None])).asnumpy())

    per_token = [loss(np.eye(SEQ)[i]) for i in range(SEQ)]
    assert loss(np.ones(SEQ)) == pytest.approx(np.mean(per_token), rel=1e-4)
    half = np.arange(SEQ) % 2
    assert loss(half) == pytest.approx(np.mean(per_token[1::2]), rel=1e-4)
    assert abs(loss(half) - loss(np.ones(SEQ))) > 1e-4


def test_trainer_feeds_the_dataset_loss_mask(tmp_path):
    from pangu_zoo.data.dataset import create_dataset

    rows = random_rows(8, SEQ + 1, high=40)
    rows[:, ::3] = 5  # the data's pad id: a third of the inputs are masked out by the dataset
    data = write_mindrecord(tmp_path / "data", rows, pad_id=5)
    model = tiny_model()  # its own pad_token_id is 6, which the data does not hold
    batch = next(create_dataset(2, data, seed=1, seq_length=SEQ).create_dict_iterator(num_epochs=1, output_numpy=True))
    assert 0 < batch["loss_mask"].mean() < 1
    expected = float(LanguageModelWithLoss(model)(*(ms.Tensor(batch[k]) for k in (
        "input_ids", "position_ids", "attention_mask", "loss_mask"))).asnumpy())
    records = train(model, settings(data, tmp_path / "ck", max_steps=1))
    assert records[0]["loss"] == pytest.approx(expected, rel=1e-5)


# 3. --distribute without a launcher


def test_distribute_without_launcher_is_one_line(tmp_path):
    command = [sys.executable, "-m", "pangu_zoo.cli", "train", "--mode", "pangu_alpha_tiny", "--data_url",
               str(tmp_path), "--per_batch_size", "1", "--distribute", "true"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT / "src"), "HOME": str(tmp_path)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("pangu train: error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(error_lines) == 1 and "msrun or mpirun" in error_lines[0]
    assert "Traceback" not in result.stderr


# 4. learning-rate schedule arguments


@pytest.mark.parametrize("changes,message", [
    (dict(decay_steps=0), r"--decay_steps \(0\) must be at least 1"),
    (dict(decay_steps=-5), r"--decay_steps \(-5\)"),
    (dict(warmup_steps=-1), r"--warmup_step \(-1\)"),
    (dict(start_lr=-1e-4), r"--start_lr \(-0.0001\)"),
    (dict(end_lr=math.nan), r"--end_lr \(nan\)"),
])
def test_bad_schedule_is_refused(changes, message):
    values = {"start_lr": 1e-4, "end_lr": 1e-6, "warmup_steps": 10, "decay_steps": 100, **changes}
    with pytest.raises(ConfigError, match=message):
        check_schedule(**values)
    with pytest.raises(ConfigError, match=message):
        WarmupCosineLR(**values)


def test_decay_steps_zero_from_the_command(tmp_path, capsys):
    code = main(["train", "--mode", "pangu_alpha_tiny", "--data_url", str(tmp_path), "--per_batch_size", "1",
                 "--decay_steps", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--decay_steps (0)" in err, err


def test_zero_max_steps_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"--max_steps \(0\)"):
        train(tiny_model(), settings(tmp_path, tmp_path / "ck", max_steps=0))


# 5. the demo removes only its own files


def test_demo_cleanup_keeps_the_users_files(tmp_path):
    from pangu_zoo.demo import remove_previous_outputs

    data, checkpoints = tmp_path / "data", tmp_path / "checkpoints"
    data.mkdir()
    checkpoints.mkdir()
    mine = [data / "notes.txt", data / "my_corpus.mindrecord", data / "my_corpus.json", checkpoints / "keep.ckpt",
            checkpoints / "pangu-00000010.ckpt"]
    demos = [data / "demo", data / "demo.db", data / "demo.json", checkpoints / "demo-00000150.ckpt",
             checkpoints / "train_log.jsonl"]
    for path in mine + demos:
        path.write_text("x")
    remove_previous_outputs(tmp_path)
    assert all(path.exists() for path in mine)
    assert not any(path.exists() for path in demos)
    remove_previous_outputs(tmp_path / "never_run")  # nothing to remove is fine


# 6. plot-log skips lines without a loss


def test_plot_log_skips_lines_without_loss(tmp_path, capsys):
    log = tmp_path / "train_log.jsonl"
    log.write_text("\n".join([json.dumps({"step": 1, "loss": 3.0}), '{"step": 2, "loss": 2.5', "[1, 2]",
                              json.dumps({"event": "resumed", "step": 2}), json.dumps({"step": 3, "loss": 2.0}),
                              ""]))
    assert main(["plot-log", str(log), "--out", str(tmp_path / "loss.png")]) == 0
    assert "2 steps, loss 3.000 -> 2.000" in capsys.readouterr().out
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_plot_log_without_any_loss(tmp_path, capsys):
    log = tmp_path / "train_log.jsonl"
    log.write_text(json.dumps({"event": "started"}) + "\nnot json\n")
    assert main(["plot-log", str(log), "--out", str(tmp_path / "loss.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no step with a loss (2 lines)" in err


# 7. the logged learning rate is the optimizer's


class OverflowOnce:
    """A train step whose first call overflows (infinite loss scale), as a real fp16 overflow would."""

    def __init__(self, cell):
        self.cell, self.calls = cell, 0

    def __getattr__(self, name):
        return getattr(self.cell, name)

    def __call__(self, *inputs):
        self.calls += 1
        if self.calls == 1:
            self.cell.scale_sense.set_data(ms.Tensor(np.inf, ms.float32))
        result = self.cell(*inputs)
        if self.calls == 1:
            self.cell.scale_sense.set_data(ms.Tensor(2.0 ** 16, ms.float32))
        return result


def test_logged_lr_follows_the_optimizer_after_a_skipped_step(tmp_path, monkeypatch):
    from pangu_zoo.training import trainer

    cells = []

    def build_overflowing_once(*args, **kwargs):
        cells.append(OverflowOnce(trainer_build(*args, **kwargs)))
        return cells[-1]

    trainer_build = trainer.build_train_step
    monkeypatch.setattr(trainer, "build_train_step", build_overflowing_once)
    data = write_mindrecord(tmp_path / "data", random_rows(8, SEQ + 1))
    run = settings(data, tmp_path / "ck", max_steps=3)
    records = train(tiny_model(), run)
    assert [r["overflow"] for r in records] == [True, False, False]
    counter = int(cells[0].optimizer.global_step.asnumpy().reshape(-1)[0])
    assert counter == 2  # the skipped step did not advance the optimizer
    schedule = [learning_rate_at(step, run.start_lr, run.end_lr, run.warmup_steps, run.decay_steps)
                for step in range(3)]
    assert [r["lr"] for r in records] == pytest.approx([schedule[0], schedule[0], schedule[1]])
