"""C3 zero-shot scoring: examples as the reference builds them, scores equal to an independent NumPy formula."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from conftest import shared_data

from pangu_zoo.cli import main
from pangu_zoo.errors import DataError
from pangu_zoo.evaluation.c3 import build_c3_examples, evaluate_c3, load_c3, score_token_pairs, top1_accuracy

PAD = 6


def reference_score(model, tokens: list[int], prompt: list[int], seq_length: int) -> float:
    """The reference's PanGUAlphaLossWithPrompt for one example, written out over the full padded length."""
    tokens = tokens[:seq_length]
    length = len(tokens)
    padded = np.full(seq_length, PAD)
    padded[:length] = tokens
    prompt_padded = np.full(seq_length, PAD)
    prompt_padded[:min(len(prompt), seq_length)] = prompt[:seq_length]
    labels = np.concatenate([padded[1:], [PAD]])
    logits = model.forward_logits(np.array([tokens]))[0].astype(np.float64)  # unpadded run
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    picked = np.zeros(seq_length)
    picked[:length] = log_probs[np.arange(length), labels[:length]]
    mask = (padded != PAD).astype(np.float64) * (prompt_padded == PAD).astype(np.float64)
    return float(np.mean(-picked * mask))  # mean over all seq_length positions


def test_scores_match_reference_formula(tiny_pangu):
    rng = np.random.default_rng(0)
    seq = tiny_pangu.config.max_position_embeddings  # 128
    pairs = []
    for length, prompt_len in [(20, 5), (7, 6), (70, 30), (150, 40), (33, 33), (90, 1)]:
        tokens = rng.integers(10, 1000, size=length).tolist()
        prompt = tokens[:prompt_len - 1] + [int(rng.integers(10, 1000))]  # last prompt token may differ
        pairs.append((tokens, prompt))
    scores = score_token_pairs(tiny_pangu, pairs, PAD, batch_size=4)
    expected = [reference_score(tiny_pangu, t, p, seq) for t, p in pairs]
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)
    # a prompt as long as the text leaves nothing to score (the end prediction sits under the prompt too)
    assert scores[4] == 0 and scores[3] > 0


def test_argmin_and_accuracy():
    examples = build_c3_examples([[["a"], [{"question": "q", "choice": ["x", "y"], "answer": "y"},
                                           {"question": "r", "choice": ["u", "v", "w"], "answer": "u"}], "id"]])
    accuracy, records = top1_accuracy(examples, np.array([2.0, 1.0, 3.0, 0.5, 1.0]))
    assert accuracy == 0.5 and [r["predicted"] for r in records] == [1, 1]


def test_examples_follow_reference_template():
    instances = load_c3(shared_data("c3/c3-d-dev.json"))
    examples = build_c3_examples(instances)
    assert len({e.idx for e in examples}) == 1825
    first = examples[0]
    context = "".join(instances[0][0])
    question = instances[0][1][0]
    assert first.prompt == f"问：{question['question']}\n答：{question['choice'][0]}\n该答案来自对话："
    assert first.input_str == first.prompt + context
    assert sum(e.is_correct for e in examples if e.idx == 0) == 1
    limited = build_c3_examples(instances, limit=5)
    questions = [q for inst in instances for q in inst[1]][:5]
    assert len(limited) == sum(len(q["choice"]) for q in questions) and limited[-1].idx == 4


@pytest.mark.parametrize("content,message", [
    ("[[[\"a\"], [", "is not valid JSON"),
    ("{\"a\": 1}", "non-empty JSON list"),
    ("[[[\"a\"], [{\"question\": \"q\"}], \"1\"]]", "needs the keys question, choice and answer"),
    ("[[\"a\", [], \"1\"]]", "must be a list of strings"),
])
def test_malformed_json_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "c3-d-dev.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        load_c3(path)
    assert str(path) in str(info.value)


def test_cli_reports_bad_data_in_one_line(tmp_path, capsys, tiny_pangu):
    (tmp_path / "c3-d-dev.json").write_text("not json", encoding="utf-8")
    model_dir = tmp_path / "model"
    tiny_pangu.save_pretrained(model_dir)
    tokenizer = shared_data("pangu_tokenizer")
    assert main(["eval", "c3", "--model_dir", str(model_dir), "--tokenizer_path", str(tokenizer),
                 "--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "c3-d-dev.json is not valid JSON" in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def pangu_40k():
    import mindspore as ms

    from pangu_zoo.models import build_model

    ms.set_seed(3)
    return build_model("pangu_alpha_tiny", vocab_size=40000, num_layers=2, dropout_rate=0.0,
                       max_position_embeddings=128)


def test_cli_end_to_end(tmp_path, capsys, pangu_40k):
    from pangu_zoo.tokenizers import load_tokenizer

    model_dir = tmp_path / "model"
    pangu_40k.save_pretrained(model_dir)
    tokenizer_dir = shared_data("pangu_tokenizer")
    data = shared_data("c3")
    output = tmp_path / "results.json"
    assert main(["eval", "c3", "--model_dir", str(model_dir), "--tokenizer_path", str(tokenizer_dir),
                 "--data_dir", str(data), "--limit", "3", "--output", str(output)]) == 0
    assert capsys.readouterr().out.startswith("{'top1_acc': ")
    result = json.loads(output.read_text(encoding="utf-8"))
    assert result["questions"] == 3 and len(result["per_question"]) == 3
    # the scores written are the reference formula applied to the tokenised example
    tokenizer = load_tokenizer("pangu-alpha", tokenizer_dir)
    example = build_c3_examples(load_c3(data / "c3-d-dev.json"), limit=1)[0]
    expected = reference_score(pangu_40k, tokenizer.encode(example.input_str), tokenizer.encode(example.prompt), 128)
    assert result["per_question"][0]["scores"][0] == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_full_c3_d_dev_with_tiny_model(tmp_path):
    """The whole dialogue dev split (1825 questions) at the reference length 1024 with a random tiny model."""
    import mindspore as ms

    from pangu_zoo.models import build_model
    from pangu_zoo.tokenizers import load_tokenizer

    ms.set_seed(0)
    model = build_model("pangu_alpha_tiny", dropout_rate=0.0)
    tokenizer = load_tokenizer("pangu-alpha", shared_data("pangu_tokenizer"))
    start = time.perf_counter()
    result = evaluate_c3(model, tokenizer, shared_data("c3"), output=tmp_path / "c3.json", progress=False)
    print(f"c3-d-dev full run: {time.perf_counter() - start:.1f} s, {result}")
    assert result["questions"] == 1825 and 0.15 < result["top1_acc"] < 0.5
