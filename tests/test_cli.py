"""The `pangu` command and the top-level scripts: the demo runs, bad input gives one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import shared_data

from pangu_zoo.cli import main


def test_presets_lists_counts(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "gpt2" in out and "124,439,808" in out and "pangu_alpha_2.6b" in out


def test_demo_preprocesses_trains_and_generates(tmp_path, capsys):
    tokenizer_dir = shared_data("pangu_tokenizer")
    own_file = tmp_path / "data" / "notes.txt"  # the user's file in the demo's data folder
    own_file.parent.mkdir()
    own_file.write_text("mine")
    code = main(["demo", "--tokenizer_dir", str(tokenizer_dir), "--output_dir", str(tmp_path), "--steps", "40",
                 "--max_new_tokens", "12"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert (tmp_path / "model" / "config.json").is_file() and (tmp_path / "loss.png").stat().st_size > 1000
    losses = [json.loads(line)["loss"] for line in (tmp_path / "checkpoints" / "train_log.jsonl").open()]
    assert len(losses) == 40 and losses[-1] < losses[0] - 3.0
    assert "output: 春天来了，" in out
    assert own_file.read_text() == "mine"


def test_demo_without_tokenizer_says_how_to_fetch(tmp_path, capsys):
    assert main(["demo", "--tokenizer_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pangu fetch-tokenizer pangu-alpha" in err


def test_generate_from_saved_model(tiny_gpt2, tmp_path, capsys):
    tokenizer = shared_data("gpt2_bpe")
    model_dir = tmp_path / "gpt2"
    from pangu_zoo.models import build_model

    build_model("gpt2-tiny", dropout_rate=0.0).save_pretrained(model_dir)
    assert main(["generate", "--model_dir", str(model_dir), "--tokenizer_path", str(tokenizer),
                 "--prompt", "Hello world", "--max_new_tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("Hello world")


@pytest.mark.parametrize("argv,message", [
    (["generate", "--model_dir", "/nonexistent", "--tokenizer_path", "x", "--prompt", "a"], "does not exist"),
    (["generate", "--model_dir", "/tmp", "--tokenizer_path", "x"], "at least one --prompt"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "pangu_zoo.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "preprocess" in result.stdout


def test_building_the_command_parser_does_not_load_mindspore():
    # `pangu --help` and argument errors stay fast: MindSpore loads only when a command runs
    code = "import sys; from pangu_zoo.cli import build_parser; build_parser(); print('mindspore' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr[-2000:]
