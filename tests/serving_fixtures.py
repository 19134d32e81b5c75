"""Shared pieces of the HTTP serving tests: a tiny random GPT-2 with the real GPT-2 vocabulary (50257 ids, 128
positions) behind the real engine, the Flask app and waitress on 127.0.0.1 (a free port), plus small HTTP helpers.

Import the fixtures into a test module by name (`served = serving_fixtures.served`).
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from conftest import shared_data

MODEL_NAME = "gpt2-tiny-random"
CONTEXT = 128


def serving_tokenizer():
    from pangu_zoo.tokenizers import load_tokenizer

    return load_tokenizer("gpt2", shared_data("gpt2_bpe"))


@functools.cache
def serving_model():
    """One model for every serving test module (each module's engine uses it in turn, never two at once)."""
    import mindspore as ms

    from pangu_zoo.models import build_model

    ms.set_seed(7)
    return build_model("gpt2-tiny", vocab_size=50257, dropout_rate=0.0, max_position_embeddings=CONTEXT)


class LogRecords(logging.Handler):
    """Every record logged anywhere in the process while installed, formatted with its traceback if any."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.lock_lines = threading.Lock()
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock_lines:
            self.lines.append(self.format(record))

    def text(self) -> str:
        with self.lock_lines:
            return "\n".join(self.lines)


@dataclass
class Served:
    url: str
    engine: object
    app: object
    tokenizer: object
    model: object
    log: LogRecords = field(default_factory=LogRecords)

    @property
    def port(self) -> int:
        return urlsplit(self.url).port

    def request(self, method: str, path: str, body: bytes | str | dict | None = None, headers: dict | None = None,
                timeout: float = 60.0) -> tuple[int, dict, bytes]:
        """(status, headers, body bytes) of one request on a fresh connection."""
        return http_request(self.url, method, path, body, headers, timeout)

    def post(self, path: str, body, timeout: float = 60.0) -> tuple[int, dict | str]:
        status, _, data = self.request("POST", path, body, timeout=timeout)
        return status, parse_json(data)

    def get(self, path: str, timeout: float = 60.0) -> tuple[int, dict | str]:
        status, _, data = self.request("GET", path, timeout=timeout)
        return status, parse_json(data)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until the engine runs and holds no request; whether it got there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.engine.running == 0 and self.engine.waiting == 0:
                return True
            time.sleep(0.02)
        return False


def parse_json(data: bytes) -> dict | str:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return data.decode("utf-8", "replace")


def http_request(url: str, method: str, path: str, body=None, headers: dict | None = None,
                 timeout: float = 60.0) -> tuple[int, dict, bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    if isinstance(body, dict | list):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    headers = {"Content-Type": "application/json", **(headers or {})} if body is not None else dict(headers or {})
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def sse_payloads(data: bytes) -> list[str]:
    """The `data:` payloads of a server-sent event stream, in order."""
    return [line[len("data: "):] for line in data.decode("utf-8").split("\n") if line.startswith("data: ")]


@contextmanager
def serve_model(model, tokenizer, slots: int = 4, queue_limit: int = 8, limits=None, threads: int = 32):
    """The real engine, app and waitress for `model`; yields a `Served`, stops both after."""
    from pangu_zoo.serving.app import create_app
    from pangu_zoo.serving.engine import Engine
    from pangu_zoo.serving.wsgi import BackgroundServer
    from pangu_zoo.tokenizers.special import default_end_tokens, special_ids

    log = LogRecords()
    root = logging.getLogger()
    root.addHandler(log)
    previous_level = root.level
    root.setLevel(logging.INFO)
    engine = Engine(model, tokenizer, slots=slots, max_context=CONTEXT, queue_limit=queue_limit,
                    end_ids=default_end_tokens(tokenizer), hidden_ids=frozenset(special_ids(tokenizer)))
    engine.start()
    app = create_app(engine, tokenizer, MODEL_NAME, limits)
    server = BackgroundServer(app, threads=threads)
    try:
        url = server.start()
        assert engine.ready.wait(180), "the engine did not finish its warm-up"
        yield Served(url, engine, app, tokenizer, model, log)
    finally:
        server.stop()
        engine.stop()
        root.removeHandler(log)
        root.setLevel(previous_level)


@contextmanager
def serve_app(app, threads: int = 8):
    """Another app (other limits) on the same engine, on its own port; yields its URL."""
    from pangu_zoo.serving.wsgi import BackgroundServer

    with BackgroundServer(app, threads=threads) as url:
        yield url


@pytest.fixture(scope="module")
def served():
    """The tiny model served on a free port for the whole test module."""
    with serve_model(serving_model(), serving_tokenizer()) as server:
        yield server


class RawStream:
    """A streaming request on a plain socket, read by hand: the tests drop it whenever they like."""

    def __init__(self, port: int, path: str, body: dict, timeout: float = 30.0) -> None:
        import socket

        data = json.dumps(body).encode("utf-8")
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode("ascii") + data)
        self.received = b""

    def read_until(self, marker: bytes, count: int = 1) -> bytes:
        """Read until `marker` has been received `count` times (or the server closes); return all so far."""
        while self.received.count(marker) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.received += chunk
        return self.received

    def status(self) -> int:
        self.read_until(b"\r\n")
        return int(self.received.split(b" ", 2)[1])

    def close(self) -> None:
        self.sock.close()


def wait_for(condition, timeout: float = 30.0) -> bool:
    """Poll `condition` until it holds; whether it did within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False
