"""predict.py: reference sampling (penalties, top-k / top-p), seeds, and the script end to end."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, shared_data

from pangu_zoo.inference.predict import main, predict_ids, reference_sampling
from pangu_zoo.inference.sampling import apply_penalties, choose_next, filter_top_k_top_p

PROMPT = [11, 25, 301, 7, 99]


def test_fixed_seed_repeats_and_differs_across_seeds(tiny_pangu):
    sampling = reference_sampling(top_k_num=50, frequency_penalty=0.0, presence_penalty=0.0)
    first = predict_ids(tiny_pangu, PROMPT, sampling, 12, end_token=None, seed=7)
    assert first == predict_ids(tiny_pangu, PROMPT, sampling, 12, end_token=None, seed=7)
    others = [predict_ids(tiny_pangu, PROMPT, sampling, 12, end_token=None, seed=s) for s in (8, 9)]
    assert any(o != first for o in others) and len(first) == 12


@pytest.mark.parametrize("use_past", [True, False])
def test_top_k_one_is_greedy_with_the_same_penalties(tiny_pangu, use_past):
    sampling = reference_sampling(top_k_num=1, frequency_penalty=1.5, presence_penalty=0.3)
    sampled = predict_ids(tiny_pangu, PROMPT, sampling, 10, end_token=None, seed=3, use_past=use_past)
    greedy = tiny_pangu.generate([PROMPT], max_new_tokens=10, do_sample=False, frequency_penalty=1.5,
                                 presence_penalty=0.3)[0][len(PROMPT):]
    assert sampled == greedy


def test_end_token_stops_and_is_dropped(tiny_pangu):
    sampling = reference_sampling(top_k_num=1, frequency_penalty=0.0, presence_penalty=0.0)
    greedy = predict_ids(tiny_pangu, PROMPT, sampling, 6, end_token=None)
    stop = greedy[2]
    first_stop = greedy.index(stop)
    assert predict_ids(tiny_pangu, PROMPT, sampling, 6, end_token=stop) == greedy[:first_stop]


def test_penalties_follow_the_reference_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 10))
    counts = np.zeros((2, 10))
    counts[0, 3], counts[0, 5], counts[1, 0] = 2, 1, 4
    out = apply_penalties(logits, counts, 1.5, 0.3)
    expected = logits.copy()
    expected[0, 3] -= 2 * 1.5 + 0.3
    expected[0, 5] -= 1 * 1.5 + 0.3
    expected[1, 0] -= 4 * 1.5 + 0.3
    np.testing.assert_allclose(out, expected)
    # the reference penalises log-probabilities; on logits the sampling distribution is the same
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    p_ref = np.exp(log_probs - counts * 1.5 - (counts > 0) * 0.3)
    p_ref /= p_ref.sum(-1, keepdims=True)
    p_ours = np.exp(out) / np.exp(out).sum(-1, keepdims=True)
    np.testing.assert_allclose(p_ours, p_ref, rtol=1e-12)


def test_top_k_and_top_p_as_the_reference():
    sampling = reference_sampling(top_k_num=3)
    assert (sampling.top_k, sampling.top_p, sampling.do_sample) == (3, 1.0, True)
    assert (sampling.frequency_penalty, sampling.presence_penalty) == (1.5, 0.3)
    nucleus = reference_sampling(top_k_num=3, top_p=0.9)
    assert nucleus.top_k == 5000  # top-p replaces top-k, over the 5000 most likely tokens
    probs = np.array([[0.5, 0.25, 0.15, 0.06, 0.04]])
    kept = np.isfinite(filter_top_k_top_p(np.log(probs), 5000, 0.8))
    # reference: n = count(cumsum < top_p) + 1 = count([0.5, 0.75]) + 1 = 3
    assert kept.tolist() == [[True, True, True, False, False]]
    kept = np.isfinite(filter_top_k_top_p(np.log(probs), 3, 1.0))
    assert kept.sum() == 3
    draws = {int(choose_next(np.log(probs), sampling, np.random.default_rng(s))[0]) for s in range(60)}
    assert draws == {0, 1, 2}


@pytest.fixture(scope="module")
def pangu_dir(tmp_path_factory):
    import mindspore as ms

    from pangu_zoo.models import build_model

    ms.set_seed(5)
    directory = tmp_path_factory.mktemp("predict_model")
    build_model("pangu_alpha_tiny", vocab_size=40000, num_layers=2, dropout_rate=0.0,
                max_position_embeddings=64).save_pretrained(directory)
    return directory


def test_predict_script_end_to_end(pangu_dir, capsys):
    tokenizer = shared_data("pangu_tokenizer")
    argv = ["--load_ckpt_path", str(pangu_dir), "--tokenizer_path", str(tokenizer), "--prompt", "中国的首都是",
            "--max_generate_length", "8", "--seed", "1"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("中国的首都是") and first.count("\n") == 1
    assert main(argv + ["--use_past", "false"]) == 0
    assert capsys.readouterr().out == first  # the cache does not change the draws


def test_predict_script_errors_are_one_line(pangu_dir, capsys):
    assert main(["--load_ckpt_path", str(pangu_dir), "--distribute", "true"]) == 2
    err = capsys.readouterr().err
    assert "cannot execute on CPU" in err and "dryrun --run_type predict" in err and err.count("\n") == 1
    assert main(["--load_ckpt_path", "/nonexistent/model"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_predict_py_help():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "predict.py"), "--help"], capture_output=True,
                            text=True, env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and "--top_k_num" in result.stdout and "--frequency_penalty" in result.stdout


def test_standalone_predict_launcher(pangu_dir, tmp_path):
    """Reference positional args: STRATEGY TOKENIZER_DIR CKPT_PATH CKPT_NAME MODE DEVICE_TARGET."""
    script = REPO_ROOT / "scripts" / "run_standalone_predict.sh"
    env = {"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(script), "", str(shared_data("pangu_tokenizer")), str(pangu_dir.parent),
                             pangu_dir.name, "2.6B", "CPU", "--prompt", "你好", "--max_generate_length", "3"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "你好" in (tmp_path / "device0" / "log0.log").read_text(encoding="utf-8")


def test_standalone_eval_launcher_usage(tmp_path):
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "run_standalone_eval.sh"), "a", "b"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1 and "TASK_NAME EVAL_DATA_URL" in result.stderr


def test_several_end_tokens_stop_at_the_first_drawn(tiny_pangu):
    sampling = reference_sampling(top_k_num=1, frequency_penalty=0.0, presence_penalty=0.0)
    greedy = predict_ids(tiny_pangu, PROMPT, sampling, 6, end_token=None)
    unused = next(t for t in range(tiny_pangu.config.vocab_size) if t not in greedy)
    stop = greedy[3]
    assert predict_ids(tiny_pangu, PROMPT, sampling, 6, end_token=(unused, stop)) == greedy[:greedy.index(stop)]


def test_special_pieces_are_left_out_of_the_text():
    from pangu_zoo.tokenizers import load_tokenizer
    from pangu_zoo.tokenizers.special import default_end_tokens, output_text

    tokenizer = load_tokenizer("pangu-alpha", shared_data("pangu_tokenizer"))
    ids = tokenizer.encode("你好") + [tokenizer.pad_id] + tokenizer.encode("世界") + [tokenizer.eot_id]
    assert "<pad>" in tokenizer.decode(ids)
    assert output_text(tokenizer, ids) == "你好世界"
    assert default_end_tokens(tokenizer) == (9, 6)  # <eot>, then the document separator <pad>


@pytest.fixture(scope="module")
def separator_model_dir(tmp_path_factory):
    """A PanGu-alpha whose greedy next token is always the document separator 6 (`<pad>`), as the demo model
    often draws it: the top layer's FFN bias points the last hidden state along word-table row 6."""
    import mindspore as ms

    from pangu_zoo.models import build_model

    ms.set_seed(6)
    model = build_model("pangu_alpha_tiny", vocab_size=40000, num_layers=2, dropout_rate=0.0,
                        max_position_embeddings=64)
    weights = model.state_dict()
    row = weights["backbone.word_embedding.embedding_table"][6]
    weights["backbone.top_query_layer.output.projection.bias"] = (1000.0 * row / np.linalg.norm(row)).astype(np.float32)
    model.load_state_dict(weights)
    directory = tmp_path_factory.mktemp("separator_model")
    model.save_pretrained(directory)
    return directory


def test_predict_stops_at_the_document_separator_and_prints_no_special_pieces(separator_model_dir, capsys):
    argv = ["--load_ckpt_path", str(separator_model_dir), "--tokenizer_path", str(shared_data("pangu_tokenizer")),
            "--prompt", "中国的首都是", "--max_generate_length", "5", "--top_k_num", "1",
            "--frequency_penalty", "0", "--presence_penalty", "0"]
    assert main(argv) == 0
    assert capsys.readouterr().out == "中国的首都是\n"  # stopped at once: the separator is the first draw
    assert main(argv + ["--end_token", "9"]) == 0  # the reference's stop rule: runs on through the separators
    assert capsys.readouterr().out == "中国的首都是\n"  # ... which are not printed
    from pangu_zoo.models import from_pretrained

    sampling = reference_sampling(top_k_num=1, frequency_penalty=0.0, presence_penalty=0.0)
    assert predict_ids(from_pretrained(separator_model_dir), [11, 25], sampling, 5, end_token=9) == [6] * 5


def test_top_k_draw_on_the_kept_tokens_equals_a_pass_over_the_vocabulary():
    from pangu_zoo.inference.sampling import SamplingConfig, draw

    rng = np.random.default_rng(5)
    logits = rng.standard_normal((64, 1000)) * 3
    uniforms = rng.random(64)
    for top_k, top_p in ((3, 1.0), (40, 0.9), (0, 0.7)):
        config = SamplingConfig(do_sample=True, temperature=0.8, top_k=top_k, top_p=top_p)
        # the whole vocabulary in token order, the tokens outside top-k and top-p at probability 0
        filtered = filter_top_k_top_p(logits / 0.8, top_k, top_p)
        probs = np.exp(filtered - filtered.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        expected = np.minimum((np.cumsum(probs, axis=-1) < uniforms[:, None]).sum(axis=-1), 999)
        np.testing.assert_array_equal(draw(logits, config, uniforms), expected)
