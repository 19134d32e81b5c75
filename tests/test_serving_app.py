"""The HTTP server, end to end: a tiny random GPT-2 (real GPT-2 vocabulary) behind the real engine, the Flask app and
waitress on 127.0.0.1. Expected outputs come from the same model outside the server (`model.generate`,
`score_token_pairs`), run on the engine's thread because MindSpore takes calls from one thread only."""

from __future__ import annotations

import json
import threading

import pytest
import serving_fixtures
from serving_fixtures import MODEL_NAME, RawStream, serve_app, sse_payloads, wait_for

served = serving_fixtures.served
PROMPT = "The meaning of life is"


def greedy_reference(served, prompt_ids: list[int], max_tokens: int) -> str:
    """The model's own greedy continuation (stopping at the end ids), as text without special pieces."""
    from pangu_zoo.tokenizers.special import default_end_tokens, output_text

    end_ids = default_end_tokens(served.tokenizer)

    def run(model):
        return model.generate([prompt_ids], max_new_tokens=max_tokens, eos_token_id=end_ids)[0]

    new = served.engine.run_job(run)[len(prompt_ids):]
    if new and new[-1] in end_ids:
        new = new[:-1]
    return output_text(served.tokenizer, new)


def completion(served, **fields) -> dict:
    status, body = served.post("/v1/completions", {"model": MODEL_NAME, **fields})
    assert status == 200, body
    return body


def stream_texts(served, path: str, body: dict) -> tuple[list[dict], list[str]]:
    """(the JSON chunks, the payloads) of a streamed request; the stream must end with [DONE]."""
    status, headers, data = served.request("POST", path, {**body, "stream": True})
    assert status == 200, data
    assert headers["Content-Type"].startswith("text/event-stream")
    payloads = sse_payloads(data)
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]], payloads


def test_models_route(served):
    status, body = served.get("/v1/models")
    assert status == 200 and body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL_NAME]
    assert served.get(f"/v1/models/{MODEL_NAME}")[1]["id"] == MODEL_NAME
    status, body = served.get("/v1/models/other")
    assert status == 404 and body["error"]["type"] == "not_found_error"


def test_greedy_completion_equals_generate(served):
    ids = served.tokenizer.encode(PROMPT)
    body = completion(served, prompt=PROMPT, max_tokens=24, temperature=0)
    assert body["object"] == "text_completion" and body["model"] == MODEL_NAME
    choice = body["choices"][0]
    assert choice["text"] == greedy_reference(served, ids, 24)
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 24, "total_tokens": len(ids) + 24}
    # the same prompt as token ids, and as a list of one prompt
    assert completion(served, prompt=ids, max_tokens=24, temperature=0)["choices"][0]["text"] == choice["text"]
    assert completion(served, prompt=[PROMPT], max_tokens=24, temperature=0)["choices"][0]["text"] == choice["text"]


def test_stream_gives_the_same_text_in_pieces(served):
    expected = completion(served, prompt=PROMPT, max_tokens=30, temperature=0)["choices"][0]["text"]
    chunks, _ = stream_texts(served, "/v1/completions", {"prompt": PROMPT, "max_tokens": 30, "temperature": 0})
    assert all(c["object"] == "text_completion" for c in chunks)
    pieces = [c["choices"][0]["text"] for c in chunks]
    assert len([p for p in pieces if p]) >= 5
    assert "".join(pieces) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_stream_arrives_before_the_generation_ends(served):
    """The first token's event reaches the client while the request is still generating: after reading it,
    the engine is paused (a job on its thread) and the request is found still running."""
    stream = RawStream(served.port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 120, "temperature": 0,
                                                        "stream": True})
    entered, release = threading.Event(), threading.Event()

    def pause(model):
        entered.set()
        release.wait(30)
        return served.engine.running

    try:
        stream.read_until(b'"text":"', 1)
        result = {}
        pauser = threading.Thread(target=lambda: result.setdefault("running", served.engine.run_job(pause)))
        pauser.start()
        assert entered.wait(30)
        received = stream.received
        release.set()
        pauser.join(30)
        assert result["running"] == 1, "the generation had ended before the first event was read"
        assert b"[DONE]" not in received
        stream.read_until(b"[DONE]")
        assert stream.received.count(b"data: ") > 100
    finally:
        release.set()
        stream.close()
    assert served.wait_idle()


def test_chat_completion_and_its_stream(served):
    from pangu_zoo.serving.chat import chat_prompt

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    prompt = chat_prompt(messages, served.tokenizer)
    assert prompt == "Be brief.\nUser: Hello there\nAssistant:"
    status, body = served.post("/v1/chat/completions", {"model": MODEL_NAME, "messages": messages,
                                                        "max_tokens": 20, "temperature": 0})
    assert status == 200, body
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    same = completion(served, prompt=prompt, max_tokens=20, temperature=0, stop=["\nUser:"])["choices"][0]
    assert message["content"] == same["text"]
    assert body["choices"][0]["finish_reason"] == same["finish_reason"]
    chunks, _ = stream_texts(served, "/v1/chat/completions", {"messages": messages, "max_tokens": 20,
                                                              "temperature": 0})
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == message["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_stream_usage_when_asked(served):
    chunks, _ = stream_texts(served, "/v1/completions", {"prompt": PROMPT, "max_tokens": 5, "temperature": 0,
                                                         "stream_options": {"include_usage": True}})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


def test_stop_strings_cut_the_text(served):
    full = completion(served, prompt=PROMPT, max_tokens=40, temperature=0)["choices"][0]["text"]
    stop = full[12:16]
    expected = full[:full.find(stop)]
    cut = completion(served, prompt=PROMPT, max_tokens=40, temperature=0, stop=stop)["choices"][0]
    assert (cut["text"], cut["finish_reason"]) == (expected, "stop")
    chunks, _ = stream_texts(served, "/v1/completions", {"prompt": PROMPT, "max_tokens": 40, "temperature": 0,
                                                         "stop": [stop, "never seen"]})
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert served.wait_idle()


def test_seed_repeats_a_sampled_completion(served):
    first = completion(served, prompt=PROMPT, max_tokens=12, temperature=0.9, top_k=20, seed=5)
    again = completion(served, prompt=PROMPT, max_tokens=12, temperature=0.9, top_k=20, seed=5)
    assert first["choices"][0]["text"] == again["choices"][0]["text"]


def test_query_route(served):
    status, body = served.get("/query?u=" + "Hello%20world")
    assert status == 200 and body["ok"] is True
    assert isinstance(body["rsvp"], str) and body["rsvp"]
    assert "<|endoftext|>" not in body["rsvp"]
    status, body = served.get("/query")
    assert status == 400 and body["error"]["param"] == "u"


def test_predict_route_generates_and_scores(served):
    from pangu_zoo.evaluation.c3 import score_token_pairs

    tokenizer = served.tokenizer
    text, prompt = "Question: who?\nAnswer: me\nFrom: a talk about me", "Question: who?\nAnswer: me\nFrom:"
    request = {"instances": [{"input_sentence": text, "prompt": prompt, "return_scores": True},
                             {"input_sentence": "Once upon a time"}]}
    status, body = served.post("/model/pangu/version/0:predict", request)
    assert status == 200, body
    score, generated = (instance["output_sentence"] for instance in body["instances"])
    expected = served.engine.run_job(score_token_pairs, [(tokenizer.encode(text), tokenizer.encode(prompt))],
                                     tokenizer.pad_id)
    assert score == pytest.approx(float(expected[0]), rel=1e-9)
    assert isinstance(generated, str) and "Once upon a time" not in generated
    # the servable name without a version, and one instance given as an object
    one = {"instances": {"input_sentence": "Hi", "max_generate_length": 3}}
    status, body = served.post("/model/pangu:predict", one)
    assert status == 200 and isinstance(body["instances"][0]["output_sentence"], str)
    status, body = served.post("/model/other/version/0:predict", request)
    assert status == 404 and body["error_msg"]


def test_predict_route_serves_the_c3_client(served):
    """`predict.py --enable_client --eval_task c3` reads the scores through this route."""
    from pangu_zoo.serving.client import predict_instances

    answers = predict_instances(served.url, [{"input_sentence": "问：谁？\n答：我\n该答案来自对话：我说", "prompt":
                                              "问：谁？\n答：我\n该答案来自对话：", "return_scores": True}])
    assert float(answers[0]["output_sentence"]) > 0


def test_health_and_metrics(served):
    assert served.get("/health") == (200, {"status": "ok"})
    completion(served, prompt=PROMPT, max_tokens=3, temperature=0)
    status, headers, data = served.request("GET", "/metrics")
    text = data.decode("utf-8")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ("pangu_requests_total", "pangu_generated_tokens_total", "pangu_queue_depth", "pangu_running_slots",
                 "pangu_slots", "pangu_request_duration_seconds_bucket", "pangu_time_to_first_token_seconds_count"):
        assert name in text
    assert 'pangu_requests_total{route="/v1/completions",status="200"}' in text
    assert "pangu_slots 4" in text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["pangu_generated_tokens_total"] >= 3
    assert values["pangu_time_to_first_token_seconds_count"] >= 1


def test_health_is_503_before_the_engine_is_ready(served):
    from pangu_zoo.serving.app import create_app
    from pangu_zoo.serving.engine import Engine

    idle = Engine(served.model, served.tokenizer, slots=1)  # never started: it stays not ready
    with serve_app(create_app(idle, served.tokenizer, MODEL_NAME)) as url:
        status, _, data = serving_fixtures.http_request(url, "GET", "/health")
    assert status == 503 and json.loads(data)["status"] == "starting"


def test_chat_page_or_placeholder(served, tmp_path, monkeypatch):
    from pangu_zoo.serving import app as app_module

    status, headers, data = served.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = app_module.STATIC_DIR / app_module.CHAT_PAGE
    if page.is_file():
        assert data == page.read_bytes()
    monkeypatch.setattr(app_module, "STATIC_DIR", tmp_path)
    client = app_module.create_app(served.engine, served.tokenizer, MODEL_NAME).test_client()
    response = client.get("/")
    assert response.status_code == 200 and b"chat page is not installed" in response.data


def test_body_too_large_is_413(served):
    from pangu_zoo.serving.app import Limits

    status, body = served.post("/v1/completions", {"prompt": "x" * (Limits().max_body_bytes + 10)})
    assert status == 413 and body["error"]["message"].startswith("the body is larger")


def test_too_many_streams_is_429(served):
    from pangu_zoo.serving.app import Limits, create_app

    app = create_app(served.engine, served.tokenizer, MODEL_NAME, Limits(max_streams=1))
    with serve_app(app) as url:
        port = int(url.rsplit(":", 1)[1])
        stream = RawStream(port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 120, "temperature": 0,
                                                     "stream": True})
        try:
            stream.read_until(b"data: ")
            status, _, data = serving_fixtures.http_request(url, "POST", "/v1/completions", {"prompt": "hi"})
            assert status == 429 and json.loads(data)["error"]["type"] == "rate_limit_error"
        finally:
            stream.close()
        assert served.wait_idle()
        assert wait_for(lambda: app.extensions["pangu_zoo"].gate.open == 0), "the dropped stream kept its place"
        status, _, _ = serving_fixtures.http_request(url, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})
        assert status == 200


def test_full_queue_is_429(served):
    from pangu_zoo.serving.engine import QueueFull, Sampling

    engine = served.engine
    ids = served.tokenizer.encode(PROMPT)

    def long_request():
        return engine.submit(ids, Sampling(max_tokens=120, greedy=True, top_k=0, frequency_penalty=0.0,
                                           presence_penalty=0.0))

    held = [long_request() for _ in range(engine.slots)]
    try:
        assert wait_for(lambda: engine.running == engine.slots)
        with pytest.raises(QueueFull):
            for _ in range(engine.queue_limit + 1):
                held.append(long_request())
        status, body = served.post("/v1/completions", {"prompt": "hi", "max_tokens": 2})
        assert status == 429 and "busy" in body["error"]["message"]
    finally:
        for request in held:
            request.cancel()
    assert served.wait_idle()


def test_dropped_stream_frees_its_slot(served):
    cancelled = served.engine.stats.cancelled
    stream = RawStream(served.port, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                             "max_tokens": 120, "temperature": 0, "stop": "never",
                                                             "stream": True})
    stream.read_until(b'"content":"', 2)
    stream.close()
    assert served.wait_idle(), "the dropped stream still holds its slot"
    assert served.engine.stats.cancelled == cancelled + 1
    assert completion(served, prompt=PROMPT, max_tokens=2)["usage"]["completion_tokens"] == 2


def test_one_log_line_per_request(served):
    def logged() -> list[str]:
        return [line for line in served.log.text().splitlines() if "POST /v1/completions 200" in line]

    # an earlier test's line may still be on its way (see below): count once the log has been quiet for a while
    before = -1
    while before != len(logged()):
        before = len(logged())
        wait_for(lambda count=before: len(logged()) != count, timeout=0.5)
    completion(served, prompt=PROMPT, max_tokens=4, temperature=0)
    # the line is written when waitress closes the response, which may be just after the client has read it
    assert wait_for(lambda: len(logged()) == before + 1)
    assert logged()[-1].endswith("tokens=4")


def test_chat_prompt_follows_the_tokenizer_kind_and_takes_other_templates(served):
    from conftest import shared_data

    from pangu_zoo.errors import InputError
    from pangu_zoo.serving.chat import ChatTemplate, chat_prompt, register_template
    from pangu_zoo.tokenizers import load_tokenizer

    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
                {"role": "user", "content": "今天天气如何？"}]
    pangu = load_tokenizer("pangu-alpha", shared_data("pangu_tokenizer"))
    assert chat_prompt(messages, pangu) == "用户：你好\n助手：你好！\n用户：今天天气如何？\n助手："
    assert chat_prompt(messages, served.tokenizer).endswith("\nUser: 今天天气如何？\nAssistant:")
    register_template(ChatTemplate("tagged", lambda turns, _: "".join(f"<{m['role']}>{m['content']}" for m in turns)))
    assert chat_prompt(messages[:1], pangu, "tagged") == "<user>你好"
    with pytest.raises(InputError):
        chat_prompt(messages, pangu, "no such template")
    with pytest.raises(InputError):
        chat_prompt([{"role": "bot", "content": "x"}], pangu)
