"""Hundreds of malformed requests against the real server (waitress, Flask app, engine, tiny model): every one gets
a 4xx (429 allowed) with a JSON error, the server keeps answering, the log holds no traceback, and no decode slot
or queue place is left behind."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import serving_fixtures
from serving_fixtures import MODEL_NAME, RawStream

served = serving_fixtures.served

COMPLETIONS, CHAT, PREDICT = "/v1/completions", "/v1/chat/completions", "/model/pangu/version/0:predict"
FORM = "application/x-www-form-urlencoded"
GOOD = {"prompt": "Hello", "max_tokens": 2}
GOOD_CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
GOOD_INSTANCE = {"input_sentence": "Hello", "max_generate_length": 2}

BAD_BODIES = [
    b"", b" ", b"{", b"}", b"[", b"{'prompt': 'x'}", b'{"prompt": "x",}', b'{"prompt" "x"}', b"null", b"true",
    b"123", b'"prompt"', b"[1, 2]", b"[]", b'{"prompt": NaN}', b'{"prompt": "x", "max_tokens": Infinity}',
    b'{"max_tokens": -Infinity}', b"\x00", b"\xef\xbb\xbf{}", b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b'{"max_tokens": ' + b"9" * 5000 + b"}", b"<xml/>", b"prompt=hi",
    b"\xff\xfe{}", b'{"prompt": "\xc3\x28"}', b'{"prompt": "\xed\xa0\x80"}', b'{"prompt": "\xf0\x28\x8c\x28"}',
    b'{"prompt": "\xc0\xaf"}', b'{"prompt": "abc', b'{"prompt": "x"} trailing',
]

WRONG_FIELDS = {
    "prompt": [None, 1, 1.5, True, {}, [], [[]], [1.5], [True], [-1], [50257], [10 ** 20], [[1], [2]], ["a", "b"],
               [None], "", [""], "\ud800", [["a"]], {"text": "x"}, "word " * 400, list(range(5000))],
    "max_tokens": ["10", 1.5, True, -1, 0, 10 ** 9, 10 ** 30, [], {}, -(10 ** 30)],
    "temperature": ["1", -0.1, 2.1, 1e308, True, [], -1e-9],
    "top_p": [-1, 1.5, "x", False, 1.0000001],
    "top_k": [-1, 1.5, 10 ** 9, True, "3"],
    "frequency_penalty": [3, -3, "0", True, 2.0001],
    "presence_penalty": [-2.5, 9, "x", [0]],
    "seed": ["1", 1.5, 2 ** 70, -(2 ** 70), True],
    "stop": [1, [1], [""], ["a"] * 5, "x" * 1000, [None], {"a": 1}, "\udfff", True],
    "stream": ["yes", 1, 0, [], "true"],
    "echo": ["yes", 1],
    "n": [2, 0, -1, "1", True],
    "best_of": [3],
    "logprobs": [5, True],
    "stream_options": ["x", 1, []],
    "model": [1, [], {}, True],
}

BAD_MESSAGES = [
    None, "", "hi", [], {}, [{}], ["x"], [None], [{"role": "user"}], [{"content": "x"}],
    [{"role": "bot", "content": "x"}], [{"role": "tool", "content": "x"}], [{"role": "user", "content": 1}],
    [{"role": "user", "content": True}], [{"role": "user", "content": {"text": "x"}}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    [{"role": "user", "content": ["x"]}], [{"role": "user", "content": [{"type": "text", "text": 5}]}],
    [{"role": "user", "content": [{"type": "text"}]}], [{"role": 1, "content": "x"}],
    [{"role": "user", "content": "\ud83d"}],
    [{"role": "user", "content": "word " * 400}], [{"role": "user", "content": "x"}] * 200,
]

BAD_INSTANCES = [
    None, [], {}, "x", 1, [1], [None], [{}], [[]], [{"input_sentence": 1}], [{"input_sentence": ""}],
    [{"input_sentence": None}], [{"input_sentence": ["x"]}], [{"input_sentence": "x", "return_scores": "yes"}],
    [{"input_sentence": "x", "return_scores": 1}], [{"input_sentence": "x", "prompt": 5}],
    [{"input_sentence": "x", "max_generate_length": 0}], [{"input_sentence": "x", "max_generate_length": "3"}],
    [{"input_sentence": "x", "max_generate_length": 10 ** 12}], [GOOD_INSTANCE] * 17,
    [{"input_sentence": "word " * 400}], [{"input_sentence": "x", "prompt": "word " * 400}],
    [{"input_sentence": "\udc00"}], [GOOD_INSTANCE, {"input_sentence": 2}],
]

BAD_QUERIES = ["/query", "/query?u=", "/query?u=%20%20", "/query?u=%FF%FE", "/query?u=%C3%28", "/query?v=hi",
               "/query?u=" + "word%20" * 400, "/query?u=%ED%A0%80"]

UNKNOWN_ROUTES = ["/v2/completions", "/v1", "/v1/", "/v1/completion", "/model/pangu", "/model/other:predict",
                  "/model/pangu/version/x:predict", "/model/pangu/version/0:generate", "/static/none.js",
                  "/static/../app.py", "/..%2f..%2fetc/passwd", "/%ff%fe", "/" + "a" * 8000, "/query/x",
                  "/health/x", "/metrics.json", "/v1/models/other", "/favicon.ico", "/index.html", "/%00"]

GET_ROUTES = ["/", "/query?u=hi", "/health", "/metrics", "/v1/models"]
POST_ROUTES = [COMPLETIONS, CHAT, PREDICT, "/model/pangu:predict"]


def malformed_requests() -> list[tuple[str, str, bytes | None, dict]]:
    """(method, path, body, headers) of every malformed request; each must get a 4xx."""
    cases = []
    for path in POST_ROUTES:
        cases += [("POST", path, body, {}) for body in BAD_BODIES]
        cases += [("POST", path, body, {"Content-Type": FORM}) for body in BAD_BODIES]
    for field, values in WRONG_FIELDS.items():
        base = GOOD if field != "prompt" else {"max_tokens": 2}
        for value in values:
            cases.append(("POST", COMPLETIONS, _json({**base, field: value}), {}))
            if field != "prompt" and field not in ("echo", "best_of"):
                cases.append(("POST", CHAT, _json({**GOOD_CHAT, field: value}), {}))
    cases += [("POST", COMPLETIONS, _json({"max_tokens": 2}), {}), ("POST", CHAT, _json({"max_tokens": 2}), {})]
    cases += [("POST", CHAT, _json({"messages": messages, "max_tokens": 2}), {}) for messages in BAD_MESSAGES]
    cases += [("POST", PREDICT, _json({"instances": instances}), {}) for instances in BAD_INSTANCES]
    cases += [("POST", PREDICT, _json({"inputs": [GOOD_INSTANCE]}), {})]
    cases += [("GET", path, None, {}) for path in BAD_QUERIES]
    for path in UNKNOWN_ROUTES:
        cases += [("GET", path, None, {}), ("POST", path, _json(GOOD), {})]
    for path in POST_ROUTES:
        cases += [(method, path, None, {}) for method in ("GET", "PUT", "DELETE", "PATCH")]
    for path in GET_ROUTES:
        cases += [(method, path, _json(GOOD), {}) for method in ("POST", "PUT", "DELETE", "PATCH")]
    huge = _json({"prompt": "x" * (1 << 20)})
    cases += [("POST", path, huge, {}) for path in POST_ROUTES]
    cases += [("POST", COMPLETIONS, _json({"prompt": "token " * 20_000, "max_tokens": 2}), {})]
    cases += [("POST", COMPLETIONS, _json({"prompt": list(range(100_000)), "max_tokens": 2}), {})]
    cases += [("POST", COMPLETIONS, _json({"prompt": "Hello", "max_tokens": 1024 + 1}), {})]
    return cases


def acceptable_requests() -> list[tuple[str, str, bytes | None, dict]]:
    """Odd but valid requests: unknown fields are ignored, nulls mean defaults, any content type is read."""
    return [
        ("POST", COMPLETIONS, _json({**GOOD, "foo": 1, "user": "x", "suffix": None, "logit_bias": {}}), {}),
        ("POST", COMPLETIONS, _json({**GOOD, "temperature": None, "stream": None, "stop": None}), {}),
        ("POST", COMPLETIONS, _json({**GOOD, "prompt": [[15496]]}), {}),
        ("POST", COMPLETIONS, _json(GOOD), {"Content-Type": "text/plain"}),
        ("POST", CHAT, _json({**GOOD_CHAT, "tools": [], "response_format": {"type": "text"}, "x": [1]}), {}),
        ("POST", CHAT, _json({**GOOD_CHAT, "messages": [{"role": "assistant", "content": None},
                                                        {"role": "user", "content": [{"type": "text",
                                                                                     "text": "Hi"}]}]}), {}),
        ("POST", PREDICT, _json({"instances": [{**GOOD_INSTANCE, "extra": True}], "meta": 1}), {}),
    ]


def _json(value) -> bytes:
    return json.dumps(value).encode("utf-8")


def send(url: str, case) -> tuple[int, bytes]:
    method, path, body, headers = case
    status, _, data = serving_fixtures.http_request(url, method, path, body, headers, timeout=60)
    return status, data


def raw_exchange(port: int, payload: bytes, read: bool = True) -> bytes:
    """Send bytes on a plain socket; return what comes back (or nothing when `read` is false: the client drops)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(payload)
        if not read:
            return b""
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def dropped_streams(port: int) -> None:
    """Clients that go away: after the first event of a stream, in the middle of headers or body, at once."""
    for number in range(12):
        path, body = (CHAT, {**GOOD_CHAT, "max_tokens": 60}) if number % 2 else (COMPLETIONS, {**GOOD,
                                                                                                "max_tokens": 60})
        stream = RawStream(port, path, {**body, "stream": True, "temperature": 0})
        stream.read_until(b"data: ", 1 + number % 3)
        stream.close()
    body = _json(GOOD)
    head = f"POST {COMPLETIONS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
    raw_exchange(port, head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5], read=False)
    raw_exchange(port, head, read=False)
    raw_exchange(port, b"POST /v1/compl", read=False)
    raw_exchange(port, head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body, read=False)
    stream_body = _json({**GOOD, "max_tokens": 60, "stream": True})
    raw_exchange(port, head + f"Content-Length: {len(stream_body)}\r\n\r\n".encode() + stream_body, read=False)


RAW_GARBAGE = [
    b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
]


def test_malformed_requests_get_4xx_and_leave_nothing_behind(served):
    cases = malformed_requests()
    assert len(cases) >= 500
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda case: send(served.url, case), cases))
        dropper = pool.submit(dropped_streams, served.port)
        accepted = list(pool.map(lambda case: send(served.url, case), acceptable_requests()))
        dropper.result()
    wrong = [(case[0], case[1], (case[2] or b"")[:80], status, data[:160])
             for case, (status, data) in zip(cases, results, strict=True) if not _is_json_4xx(status, data)]
    assert not wrong, f"{len(wrong)} requests got no 4xx JSON error, e.g. {wrong[:5]}"
    assert any(status == 413 for status, _ in results) and any(status == 405 for status, _ in results)
    assert [status for status, _ in accepted] == [200] * len(accepted), [d[:200] for _, d in accepted]

    for garbage in RAW_GARBAGE:
        answer = raw_exchange(served.port, garbage)
        assert not answer or 400 <= int(answer.split(b" ", 2)[1]) < 500, answer[:200]

    status, body = served.post(COMPLETIONS, {"model": MODEL_NAME, "prompt": "Still there?", "max_tokens": 3})
    assert status == 200 and body["usage"]["completion_tokens"] == 3
    assert served.wait_idle(), "a decode slot or queue place was left behind"
    assert (served.engine.running, served.engine.waiting) == (0, 0)
    gate = served.app.extensions["pangu_zoo"].gate
    assert serving_fixtures.wait_for(lambda: gate.open == 0), f"{gate.open} request places were left behind"
    log = served.log.text()
    assert "Traceback" not in log and " 500 " not in log


def _is_json_4xx(status: int, data: bytes) -> bool:
    if not 400 <= status < 500:
        return False
    try:
        error = json.loads(data)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error.get("message"), str) and isinstance(error.get("type"), str)
