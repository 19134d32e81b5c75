"""msrun, 2 CPU workers, DATA_PARALLEL: both ranks end with the weights of one process on the whole batch."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from conftest import REPO_ROOT, shared_data

from pangu_zoo.cli import main

MSRUN = Path(sys.executable).parent / "msrun"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train_args(data, out, batch):
    return ["--mode", "pangu_alpha_tiny", "--data_url", str(data), "--per_batch_size", str(batch),
            "--seq_length", "32", "--max_steps", "3", "--dropout_rate", "0", "--warmup_step", "1",
            "--start_lr", "1e-3", "--save_checkpoint_path", str(out), "--save_checkpoint_steps", "3"]


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items() if k.startswith("backbone.")}


@pytest.mark.skipif(not MSRUN.exists() and shutil.which("msrun") is None, reason="msrun is not installed")
def test_two_workers_match_one_process_on_the_concatenated_batch(tmp_path):
    data = tmp_path / "data"
    # --eot 9 (<eot>) leaves no <pad> input, so every rank's loss mask is full and the mean of the
    # two ranks' mean losses equals the mean over the concatenated batch
    assert main(["preprocess", "--input_glob", str(shared_data("zh_corpus/cmrc2018_contexts_zh.txt")),
                 "--tokenizer", "jieba", "--model_file", str(shared_data("pangu_tokenizer/vocab.model")),
                 "--output_file", str(data / "cmrc"), "--seq_length", "33", "--eot", "9", "--no_progress"]) == 0
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO_ROOT / "src")}
    command = [str(MSRUN) if MSRUN.exists() else "msrun", "--worker_num", "2", "--local_worker_num", "2",
               "--master_port", str(_free_port()), "--join", "True", "--log_dir", str(tmp_path / "logs"),
               str(REPO_ROOT / "train.py"), *_train_args(data, tmp_path / "dp", 2), "--distribute", "true"]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    logs = "".join(p.read_text(errors="replace")[-2000:] for p in (tmp_path / "logs").glob("worker_*.log"))
    assert result.returncode == 0, logs
    single = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *_train_args(data, tmp_path / "one", 4)],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]

    reference = _weights(tmp_path / "one" / "pangu-00000003.ckpt")
    initial = None
    for rank in (0, 1):
        got = _weights(tmp_path / "dp" / f"rank_{rank}" / "pangu-00000003.ckpt")
        assert got.keys() == reference.keys()
        for name, value in reference.items():
            assert np.abs(got[name] - value).max() <= 1e-5, (rank, name)
        initial = got if initial is None else initial
    # training moved the weights (the comparison is not between two untouched initialisations)
    ms.set_seed(1)
    from pangu_zoo.models import build_model

    fresh = build_model("pangu_alpha_tiny", max_position_embeddings=32).state_dict()
    assert np.abs(fresh["backbone.blocks.0.attention.dense1.weight"]
                  - reference["backbone.blocks.0.attention.dense1.weight"]).max() > 1e-4
