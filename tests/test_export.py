"""MindIR export: the reference layout and manifest, and a fresh process that has only the exported folder
generates the same greedy tokens (and full logits) as the model in the framework, for GPT-2 and PanGu-alpha."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import REPO_ROOT, randomize_weights

from pangu_zoo.cli import main
from pangu_zoo.serving.export import SERVING_LAYOUT, export_model

PROMPTS = [[11, 12, 13], [21, 22, 23, 24, 25, 6, 26, 27], [31]]  # 6: PanGu-alpha's pad/eod id, hidden in prompts

FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    from pangu_zoo.serving.exported import ExportedModel

    model = ExportedModel(sys.argv[1])
    prompts = json.loads(sys.argv[2])
    out = {"greedy": model.generate(prompts, max_new_tokens=12),
           "logits": model.forward_logits([prompts[1]])[0].tolist()}
    print(json.dumps(out))
""")


def random_model(preset: str, seed: int):
    import mindspore as ms

    from pangu_zoo.models import build_model

    ms.set_seed(seed)
    model = build_model(preset, vocab_size=300, dropout_rate=0.0, max_position_embeddings=64,
                        eod_token_id=6, pad_token_id=6, eos_token_id=9)
    return randomize_weights(model, seed, 0.15)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "pangu_alpha_tiny"])
def test_fresh_process_with_only_the_export_matches_the_model(preset, tmp_path):
    model = random_model(preset, seed=3)
    folder = export_model(model, tmp_path / "out", eval_graph=True, end_ids=(9,))
    assert folder == tmp_path / "out" / SERVING_LAYOUT
    expected = model.generate(PROMPTS, max_new_tokens=12)
    expected_logits = model.forward_logits([PROMPTS[1]])[0]
    moved = tmp_path / "elsewhere"
    folder.rename(moved)  # nothing refers back to the model or the export location
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(moved), json.dumps(PROMPTS)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["greedy"] == expected
    np.testing.assert_allclose(np.array(got["logits"]), expected_logits, rtol=0, atol=1e-5)


def test_layout_manifest_and_modes(tmp_path):
    model = random_model("gpt2-tiny", seed=1)
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "vocab.model").write_bytes(b"not really a vocabulary")
    folder = export_model(model, tmp_path, tokenizer_path=tokenizer, tokenizer_kind="gpt2", end_ids=(9, 6))
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["manifest.json", "pangu_alpha_1_graph.mindir", "pangu_alpha_64_graph.mindir", "tokenizer"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["end_ids"] == [9, 6] and manifest["tokenizer"] == {"kind": "gpt2", "files": ["vocab.model"]}
    assert manifest["model"]["family"] == "gpt2" and set(manifest["graphs"]) == {"prefill", "decode"}
    decode_inputs = manifest["graphs"]["decode"]["inputs"]
    assert len(decode_inputs) == 4 + 2 * model.config.num_layers
    assert decode_inputs[4] == ["key_0", "float32", [None, 4, None, 16]]
    import hashlib

    for name, digest in manifest["files"].items():
        path = folder / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # MindSpore writes 0400: opened to the serving user


def test_a_damaged_export_is_refused(tmp_path):
    from pangu_zoo.errors import CheckpointError
    from pangu_zoo.serving.exported import ExportedModel

    folder = export_model(random_model("gpt2-tiny", seed=2), tmp_path)
    graph = folder / "pangu_alpha_1_graph.mindir"
    graph.write_bytes(graph.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="sha256"):
        ExportedModel(tmp_path)


def test_export_script_with_reference_arguments(tmp_path, capsys):
    model = random_model("gpt2-tiny", seed=4)
    model.save_pretrained(tmp_path / "model")
    tokenizer = REPO_ROOT.parent / "shared" / "data" / "gpt2_bpe"
    if not tokenizer.exists():
        pytest.skip(f"real data not available: {tokenizer} is missing")
    argv = ["export", "--load_ckpt_path", str(tmp_path / "model"), "--tokenizer_path", str(tokenizer),
            "--output_dir", str(tmp_path / "out"), "--eval_task", "c3"]
    assert main(argv) == 0
    assert "Export finished and now exit." in capsys.readouterr().out
    folder = tmp_path / "out" / SERVING_LAYOUT
    assert (folder / "pangu_alpha_64_eval_graph.mindir").is_file() and (folder / "tokenizer" / "vocab.bpe").is_file()
    # again without --overwrite: one line, exit 2, the export left as it was
    before = sorted(p.name for p in folder.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1
    assert sorted(p.name for p in folder.rglob("*")) == before
    assert not list((tmp_path / "out" / SERVING_LAYOUT.parent).glob(".export-*"))


def test_sharded_export_is_refused_on_cpu(tmp_path, capsys):
    model = random_model("gpt2-tiny", seed=5)
    model.save_pretrained(tmp_path / "model")
    assert main(["export", "--load_ckpt_path", str(tmp_path / "model"), "--distribute", "true", "--device_target",
                 "CPU", "--no_tokenizer", "--output_dir", str(tmp_path / "out")]) == 2
    assert "cannot execute on CPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
