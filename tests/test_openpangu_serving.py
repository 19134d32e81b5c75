"""A tiny openPangu-shaped model fine-tuned with the SFT pipeline and served: `pangu sft-preprocess` on a folder
holding the openPangu tokenizer, `pangu train --stage sft --model openpangu`, then the real engine and app. The chat
endpoint (which the chat page calls) prompts with openPangu's own template after BOS and stops at `[unused10]`;
the export serves the same tokens."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import serving_fixtures
from openpangu_fixtures import write_tokenizer

from pangu_zoo.cli import main

REPLY = "好的。"
QUESTIONS = ["今天天气很好", "我们去公园散步吧", "机器学习是什么", "你好，世界", "请简洁地回答", "用户问了一个问题",
             "Hello world", "The quick brown fox"]


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """(model folder, tokenizer, data prefix, losses): trained for 60 steps to answer every question with REPLY."""
    from pangu_zoo.tokenizers import load_tokenizer

    root = tmp_path_factory.mktemp("openpangu_sft")
    base = root / "base"
    base.mkdir()
    write_tokenizer(base, specials_in_model=False)
    tokenizer = load_tokenizer("openpangu", base)
    records = [{"meta_prompt": "请简洁地回答。" if i % 2 else "", "data": [
        {"role": "user", "content": question}, {"role": "assistant", "content": REPLY}]}
        for i, question in enumerate(QUESTIONS * 4)]
    source = root / "sft.jsonl"
    source.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    assert main(["sft-preprocess", "--input", str(source), "--tokenizer_path", str(base), "--seq_length", "64",
                 "--output_prefix", str(root / "data" / "sft"), "--no_progress"]) == 0
    model_dir = root / "model"
    log = root / "log.jsonl"
    assert main(["train", "--stage", "sft", "--model", "openpangu", "--mode", "openpangu_embedded_tiny",
                 "--vocab_size", str(tokenizer.vocab_size), "--seq_length", "64", "--data_url",
                 str(root / "data" / "sft"), "--per_batch_size", "4", "--max_steps", "60", "--start_lr", "5e-3",
                 "--end_lr", "1e-4", "--warmup_step", "5", "--decay_steps", "60", "--dropout_rate", "0",
                 "--save_checkpoint_path", str(root / "ck"), "--save_checkpoint_steps", "1000", "--log_file",
                 str(log), "--save_pretrained", str(model_dir)]) == 0
    losses = [json.loads(line)["loss"] for line in log.read_text().splitlines()]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) / 4, losses
    for name in ("tokenizer.model", "tokenizer_config.json"):  # the served folder carries its tokenizer
        shutil.copy(base / name, model_dir / name)
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "PanguEmbedded"
    return model_dir, tokenizer, root / "data" / "sft", losses


@pytest.fixture(scope="module")
def served(fine_tuned):
    from pangu_zoo.models import from_pretrained

    model_dir, tokenizer, _, _ = fine_tuned
    with serving_fixtures.serve_model(from_pretrained(model_dir, dropout_rate=0.0), tokenizer) as server:
        yield server


MESSAGES = [{"role": "system", "content": "请简洁地回答。"}, {"role": "user", "content": "今天天气很好"}]


def test_the_chat_prompt_is_openpangus_template_after_bos(served):
    from pangu_zoo.serving.chat import chat_prompt

    prompt = chat_prompt(MESSAGES, served.tokenizer)
    assert prompt == "<s>[unused9]系统：请简洁地回答。[unused10][unused9]用户：今天天气很好[unused10][unused9]助手："
    ids = served.tokenizer.encode(prompt)
    assert ids[:2] == [served.tokenizer.bos_id, served.tokenizer.token_to_id("[unused9]")]
    assert chat_prompt(MESSAGES[1:], served.tokenizer).startswith("<s>[unused9]系统：[unused10][unused9]用户：")


def test_chat_completion_answers_in_the_template_and_stops_at_the_turn_end(served):
    status, body = served.post("/v1/chat/completions", {"model": serving_fixtures.MODEL_NAME, "messages": MESSAGES,
                                                        "max_tokens": 20, "temperature": 0})
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": REPLY}
    assert choice["finish_reason"] == "stop"  # at [unused10], not at max_tokens
    from pangu_zoo.serving.chat import chat_prompt

    ids = served.tokenizer.encode(chat_prompt(MESSAGES, served.tokenizer))
    end = served.tokenizer.eot_id

    def greedy(model):
        return model.generate([ids], max_new_tokens=20, eos_token_id=end)[0][len(ids):]

    reply = served.engine.run_job(greedy)
    assert reply[-1] == end and served.tokenizer.decode(reply[:-1]) == REPLY
    assert body["usage"]["completion_tokens"] == len(reply) - 1  # the turn end is not counted
    chunks = serving_fixtures.sse_payloads(served.request("POST", "/v1/chat/completions", {
        "messages": MESSAGES, "max_tokens": 20, "temperature": 0, "stream": True})[2])
    deltas = [json.loads(c)["choices"][0]["delta"].get("content", "") for c in chunks[:-1]]
    assert "".join(deltas) == REPLY


def test_the_chat_page_is_served(served):
    status, headers, data = served.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")


def test_export_serves_the_same_reply(fine_tuned, tmp_path):
    """`pangu serve MODEL_DIR` exports first: the export keeps the grouped cache and only the tokenizer's files."""
    from pangu_zoo.models import from_pretrained
    from pangu_zoo.serving import server
    from pangu_zoo.serving.exported import ExportedModel

    model_dir, tokenizer, _, _ = fine_tuned
    parser = argparse.ArgumentParser()
    server.add_arguments(parser)
    args = parser.parse_args([str(model_dir), "--export_dir", str(tmp_path)])
    exported, tokenizer_dir, kind, _, _ = server.load_served_model(args)
    assert isinstance(exported, ExportedModel) and kind == "openpangu"
    assert sorted(p.name for p in tokenizer_dir.iterdir()) == ["tokenizer.model", "tokenizer_config.json"]
    decode = exported.manifest["graphs"]["decode"]["inputs"]
    assert decode[4] == ["key_0", "float32", [None, 2, None, 16]]  # [B, kv heads, T, d]
    prompt = tokenizer.encode("<s>[unused9]系统：[unused10][unused9]用户：你好[unused10][unused9]助手：")
    model = from_pretrained(model_dir, dropout_rate=0.0)
    assert exported.generate([prompt], max_new_tokens=8) == model.generate([prompt], max_new_tokens=8)


def test_training_starts_from_a_hugging_face_folder(fine_tuned, tmp_path):
    """`--load_ckpt_path` takes the folder (its 32768 positions bound nothing: rotary embeddings have no table, so the
    run trains at --seq_length); the first loss is the fine-tuned model's, far below the random start's."""
    model_dir, _, data, first_run = fine_tuned
    folder = tmp_path / "start"
    shutil.copytree(model_dir, folder)
    values = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(values, max_position_embeddings=32768)))
    log = tmp_path / "log.jsonl"
    assert main(["train", "--stage", "sft", "--model", "openpangu", "--load_ckpt_path", str(folder), "--seq_length",
                 "64", "--data_url", str(data), "--per_batch_size", "4", "--max_steps", "2", "--start_lr", "1e-6",
                 "--end_lr", "1e-7", "--warmup_step", "1", "--decay_steps", "2", "--dropout_rate", "0",
                 "--save_checkpoint_path", str(tmp_path / "ck"), "--save_checkpoint_steps", "1000", "--log_file",
                 str(log)]) == 0
    losses = [json.loads(line)["loss"] for line in log.read_text().splitlines()]
    assert losses[0] < first_run[0] / 4 and losses[0] == pytest.approx(np.mean(first_run[-5:]), rel=1.0)
