"""The HTTP server over the engine: the reference routes, an OpenAI-compatible API, health and metrics.

Routes (docs/serving.md has request and response examples):

* `GET /` the chat page (`static/chat.html`), `GET /static/<file>`;
* `GET /query?u=TEXT` and `POST /model/pangu/version/0:predict`: the reference server's routes (its Flask front
  end and its MindSpore Serving RESTful method), with the reference's sampling defaults and its bugs fixed;
* `POST /v1/completions`, `POST /v1/chat/completions` (both stream with `"stream": true`), `GET /v1/models`;
* `GET /health`, `GET /metrics` (Prometheus text).

Every generation goes through the engine, whose one thread owns MindSpore; a request thread only waits on its
request's event queue. Bad input of any kind gets a 4xx JSON error `{"error": {"message", "type", ...}}`; only a
fault of the server itself gives a 500. Each request is logged in one line when its response ends (for a stream:
when the stream ends), and counted in the metrics.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from flask import Flask, Response, request, send_from_directory
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import ClosingIterator

from pangu_zoo.errors import InputError
from pangu_zoo.evaluation.c3 import score_token_pairs
from pangu_zoo.serving.chat import ChatTemplate, check_messages, get_template
from pangu_zoo.serving.engine import QueueFull, Sampling
from pangu_zoo.tokenizers.special import default_end_tokens, output_text

log = logging.getLogger(__name__)
access_log = logging.getLogger("pangu_zoo.serving.access")

STATIC_DIR = Path(__file__).resolve().parent / "static"
CHAT_PAGE = "chat.html"
PLACEHOLDER_PAGE = ("<!doctype html><html><head><meta charset='utf-8'><title>PanGu zoo server</title></head><body>"
                    "<h1>PanGu zoo server</h1><p>The chat page is not installed. The API answers at "
                    "<code>/v1/completions</code>, <code>/v1/chat/completions</code> and <code>/query?u=</code>."
                    "</p></body></html>")
POLL_SECONDS = 0.25  # how often a waiting request looks whether its client is still there
MAX_STOP_LENGTH = 256
SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)
ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable",
               504: "timeout_error"}
RECORD_KEY = "pangu_zoo.record"


@dataclass
class Limits:
    """What one request may ask for. `max_prompt_tokens` None: the engine's context less one token."""

    max_prompt_tokens: int | None = None
    max_tokens: int = 1024  # the largest max_tokens (max_generate_length) a request may ask for
    max_body_bytes: int = 1 << 20
    max_streams: int = 24  # generation requests open at once, streamed or not (each holds a server thread)
    max_instances: int = 16  # instances in one :predict request
    max_stop_strings: int = 4
    request_timeout: float = 600.0


class ApiError(Exception):
    """A request the server refuses: becomes `{"error": {...}}` with `status`."""

    def __init__(self, status: int, message: str, error_type: str | None = None, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = error_type or ERROR_TYPES.get(status, "invalid_request_error")


class EngineFailure(Exception):
    """The engine reported an error for a request (a server fault, not the client's)."""


# ---- request bodies and fields ---------------------------------------------------------------------------------


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def read_json_object() -> dict:
    """The request body as a JSON object; `ApiError` 400 (or 413 from the size limit) otherwise."""
    raw = request.get_data(cache=False)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiError(400, f"the body is not valid UTF-8 (byte {error.start})") from None
    if not text.strip():
        raise ApiError(400, "the body is empty; send a JSON object")
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ApiError(400, "the body is not valid JSON: nested too deeply") from None
    except ValueError as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, not {_json_type(body)}")
    return body


def _json_type(value) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def get_int(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer, not {_json_type(value)}", param=name)
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}, got {value}", param=name)
    return value


def get_float(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"{name} must be a number, not {_json_type(value)}", param=name)
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low:g} and {high:g}, got {value:g}", param=name)
    return value


def get_bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, not {_json_type(value)}", param=name)
    return value


def get_text(value, name: str, required: bool = True) -> str:
    """A string field that can be encoded: no lone surrogates (JSON allows them, UTF-8 does not)."""
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string, not {_json_type(value)}", param=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{name} holds a lone surrogate (\\ud800-\\udfff), which is no text", param=name) from None
    return value


def get_stops(body: dict, limits: Limits) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list):
        raise ApiError(400, f"stop must be a string or an array of strings, not {_json_type(value)}", param="stop")
    if len(stops) > limits.max_stop_strings:
        raise ApiError(400, f"stop holds {len(stops)} strings; at most {limits.max_stop_strings}", param="stop")
    for stop in stops:
        get_text(stop, "stop")
        if not 0 < len(stop) <= MAX_STOP_LENGTH:
            raise ApiError(400, f"each stop string must have 1 to {MAX_STOP_LENGTH} characters", param="stop")
    return tuple(stops)


def check_unsupported(body: dict) -> None:
    """Fields OpenAI knows that change the answer's shape and that this server does not do: refused, not ignored."""
    get_int(body, "n", 1, 1, 1)
    get_int(body, "best_of", 1, 1, 1)
    logprobs = body.get("logprobs")
    if logprobs not in (None, False, 0):
        raise ApiError(400, "logprobs are not supported by this server", param="logprobs")


# ---- stop strings ---------------------------------------------------------------------------------------------


class StopScanner:
    """Cuts streamed text at the first stop string; holds back a tail that may be the start of one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """(text safe to send now, whether a stop string was found)."""
        text = self.pending + delta
        found = [text.find(stop) for stop in self.stops if stop in text]
        if found:
            self.pending = ""
            return text[:min(found)], True
        held = self._partial_stop_length(text)
        self.pending = text[len(text) - held:] if held else ""
        return text[:len(text) - held], False

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return rest

    def _partial_stop_length(self, text: str) -> int:
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest


# ---- metrics ---------------------------------------------------------------------------------------------------


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        prefix = labels + "," if labels else ""
        out = [f'{name}_bucket{{{prefix}le="{bound:g}"}} {count}'
               for bound, count in zip(self.buckets, self.counts, strict=True)]
        out.append(f'{name}_bucket{{{prefix}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.total:.6f}", f"{name}_count{suffix} {self.count}"]
        return out


class Metrics:
    """Counters of the HTTP side; the engine's own numbers are read from it when rendered."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.first_token = Histogram()
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def record_request(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[route, status] = self.requests.get((route, status), 0) + 1
            self.latency.setdefault(route, Histogram()).observe(seconds)

    def record_generation(self, prompt_tokens: int, completion_tokens: int, first_token: float | None) -> None:
        with self.lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            if first_token is not None:
                self.first_token.observe(first_token)

    def render(self, engine, open_requests: int) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[str]) -> None:
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples])

        with self.lock:
            metric("pangu_requests_total", "counter", "HTTP requests by route and status.",
                   [f'pangu_requests_total{{route="{_label(route)}",status="{status}"}} {count}'
                    for (route, status), count in sorted(self.requests.items())])
            metric("pangu_request_duration_seconds", "histogram", "Time from request to the end of the response.",
                   [line for route, histogram in sorted(self.latency.items())
                    for line in histogram.lines("pangu_request_duration_seconds", f'route="{_label(route)}"')])
            metric("pangu_time_to_first_token_seconds", "histogram", "Time from submission to the first token.",
                   self.first_token.lines("pangu_time_to_first_token_seconds"))
            metric("pangu_prompt_tokens_total", "counter", "Prompt tokens of HTTP generation requests.",
                   [f"pangu_prompt_tokens_total {self.prompt_tokens}"])
            metric("pangu_completion_tokens_total", "counter", "Tokens sent back to HTTP clients.",
                   [f"pangu_completion_tokens_total {self.completion_tokens}"])
        stats = engine.stats
        metric("pangu_generated_tokens_total", "counter", "Tokens the engine drew (end tokens included).",
               [f"pangu_generated_tokens_total {stats.tokens}"])
        metric("pangu_engine_requests_total", "counter", "Engine requests by how they ended.",
               [f'pangu_engine_requests_total{{outcome="{outcome}"}} {count}' for outcome, count in
                (("finished", stats.finished), ("cancelled", stats.cancelled), ("error", stats.errors))])
        metric("pangu_queue_depth", "gauge", "Requests waiting for a decode slot.",
               [f"pangu_queue_depth {engine.waiting}"])
        metric("pangu_running_slots", "gauge", "Decode slots in use.", [f"pangu_running_slots {engine.running}"])
        metric("pangu_slots", "gauge", "Decode slots.", [f"pangu_slots {engine.slots}"])
        metric("pangu_open_requests", "gauge", "Generation requests open (streamed or waiting).",
               [f"pangu_open_requests {open_requests}"])
        metric("pangu_ready", "gauge", "1 once the graphs are compiled.", [f"pangu_ready {int(engine.ready.is_set())}"])
        return "\n".join(lines) + "\n"


# ---- one request through the engine ----------------------------------------------------------------------------


class Gate:
    """Counts open generation requests; past `limit` a new one is refused (429)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.lock = threading.Lock()

    def enter(self) -> Callable[[], None]:
        """Take a place; return the function that gives it back (once, however often it is called)."""
        with self.lock:
            if self.open >= self.limit:
                raise ApiError(429, f"{self.limit} generation requests are already open; retry later")
            self.open += 1
        left = threading.Event()

        def leave() -> None:
            with self.lock:
                if not left.is_set():
                    left.set()
                    self.open -= 1
        return leave


class Generation:
    """One request in the engine, read as text pieces. `close` cancels it if it has not ended (its slot is freed)."""

    def __init__(self, engine, prompt_ids: list[int], sampling: Sampling, stops: tuple[str, ...], timeout: float,
                 disconnected: Callable[[], bool] | None = None) -> None:
        self.prompt_tokens = len(prompt_ids)
        self.request = engine.submit(prompt_ids, sampling)
        self.scanner = StopScanner(stops)
        self.timeout = timeout
        self.disconnected = disconnected or (lambda: False)
        self.ids: list[int] = []
        self.finish_reason: str | None = None
        self.closed = False

    @property
    def completion_tokens(self) -> int:
        return len(self.ids)

    @property
    def first_token_seconds(self) -> float | None:
        first = self.request.first_token_at
        return None if first is None else first - self.request.submitted

    def pieces(self) -> Iterator[str]:
        """The generated text, piece by piece; `finish_reason` is set once it ends."""
        for kind, *payload in self._events():
            if kind == "token":
                self.ids.append(payload[0])
                text, stopped = self.scanner.feed(payload[1])
                if text:
                    yield text
                if stopped:
                    self._end("stop", cancel=True)  # a stop string: the engine would go on
                    return
            elif kind == "done":
                rest = self.scanner.flush()
                if rest:
                    yield rest
                self._end(payload[0], cancel=False)
                return
            else:
                self._end("error", cancel=False)
                raise EngineFailure(payload[0])

    def text(self) -> str:
        return "".join(self.pieces())

    def _events(self) -> Iterator[tuple]:
        deadline = time.monotonic() + self.timeout
        while True:
            if self.disconnected():
                self._end("cancelled", cancel=True)
                return
            try:
                yield self.request.events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if time.monotonic() > deadline:
                    self._end("timeout", cancel=True)
                    raise ApiError(504, f"no answer within {self.timeout:g} s") from None

    def _end(self, reason: str, cancel: bool) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
            if cancel:
                self.request.cancel()  # the engine frees the slot at its next step

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._end("cancelled", cancel=True)


# ---- the service: shared state of the routes --------------------------------------------------------------------


class Service:
    def __init__(self, engine, tokenizer, model_name: str, limits: Limits, chat_template: ChatTemplate) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.limits = limits
        self.chat_template = chat_template
        # the engine's end ids (an export's) and the tokenizer's <eot> and document separator
        self.end_ids = tuple(dict.fromkeys((*engine.end_ids, *default_end_tokens(tokenizer))))
        self.metrics = Metrics()
        self.gate = Gate(limits.max_streams)
        self.created = int(time.time())

    @property
    def max_prompt_tokens(self) -> int:
        return self.limits.max_prompt_tokens or self.engine.max_context - 1

    @property
    def vocab_size(self) -> int:
        return self.engine.model.config.vocab_size

    def encode(self, text: str, name: str = "prompt") -> list[int]:
        ids = self.tokenizer.encode(text)
        if not ids:
            raise ApiError(400, f"{name} encodes to no tokens", param=name)
        return self.check_length(ids, name)

    def check_length(self, ids: list[int], name: str = "prompt") -> list[int]:
        if len(ids) > self.max_prompt_tokens:
            raise ApiError(400, f"{name} has {len(ids)} tokens; this server reads at most {self.max_prompt_tokens}",
                           param=name, code="context_length_exceeded")
        return ids

    def start(self, prompt_ids: list[int], sampling: Sampling, stops: tuple[str, ...] = ()) -> Generation:
        """Submit a request; `ApiError` 400 for what the engine refuses, 429 when its queue is full."""
        sampling.stop_ids = self.end_ids
        disconnected = request.environ.get("waitress.client_disconnected")
        try:
            return Generation(self.engine, prompt_ids, sampling, stops, self.limits.request_timeout, disconnected)
        except QueueFull as error:
            raise ApiError(429, f"the server is busy ({error}); retry later") from None
        except InputError as error:
            raise ApiError(400, str(error)) from None

    def finished(self, generation: Generation, record: dict) -> None:
        """Close a generation (cancelling it if it still runs) and count it in the metrics and the request's log
        line, once."""
        if generation.closed:
            return
        generation.close()
        self.metrics.record_generation(generation.prompt_tokens, generation.completion_tokens,
                                       generation.first_token_seconds)
        record["tokens"] += generation.completion_tokens

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        """Reference C3 scores, computed on the engine thread (it owns MindSpore)."""
        try:
            scores = self.engine.run_job(score_token_pairs, pairs, self.tokenizer.pad_id,
                                         timeout=self.limits.request_timeout)
        except InputError as error:
            raise ApiError(400, str(error)) from None
        except TimeoutError:
            raise ApiError(504, f"no score within {self.limits.request_timeout:g} s") from None
        return [float(score) for score in scores]


# ---- responses -------------------------------------------------------------------------------------------------


def json_response(payload: dict, status: int = 200) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return Response(body + "\n", status=status, mimetype="application/json")


def error_response(status: int, message: str, error_type: str | None = None, param: str | None = None,
                   code: str | None = None) -> Response:
    error = {"message": message, "type": error_type or ERROR_TYPES.get(status, "invalid_request_error"),
             "param": param, "code": code}
    payload: dict = {"error": error}
    if request.path.endswith(":predict"):
        payload["error_msg"] = message  # what MindSpore Serving's RESTful clients read
    return json_response(payload, status)


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


def streamed(events: Iterator[str], close: Callable[[], None]) -> Response:
    response = Response(events, mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.call_on_close(close)
    return response


def usage(generation: Generation) -> dict:
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens}


def openai_finish_reason(generation: Generation) -> str:
    return "length" if generation.finish_reason == "length" else "stop"


# ---- the application -------------------------------------------------------------------------------------------


def create_app(engine, tokenizer, model_name: str, limits: Limits | None = None,
               chat_template: str | ChatTemplate | None = None) -> Flask:
    """The Flask app serving `engine` (started by the caller) under the model id `model_name`."""
    limits = limits or Limits()
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes
    service = Service(engine, tokenizer, model_name, limits, get_template(chat_template, tokenizer))
    app.extensions["pangu_zoo"] = service
    _page_routes(app)
    _reference_routes(app, service)
    _openai_routes(app, service)
    _operations_routes(app, service)
    _error_handlers(app)
    app.wsgi_app = RequestAccounting(app.wsgi_app, service.metrics)
    return app


def _page_routes(app: Flask) -> None:
    @app.before_request
    def name_route():
        # the route pattern, not the path, labels the metrics (a path may be anything a client sends)
        request.environ[RECORD_KEY]["route"] = request.url_rule.rule if request.url_rule else "unmatched"

    @app.get("/")
    def index():
        if (STATIC_DIR / CHAT_PAGE).is_file():
            return send_from_directory(STATIC_DIR, CHAT_PAGE)
        return Response(PLACEHOLDER_PAGE, mimetype="text/html")


def _reference_routes(app: Flask, service: Service) -> None:
    @app.get("/query")
    def query():
        text = _query_text("u")
        if not text.strip():
            raise ApiError(400, "u (the text to continue) is empty", param="u")
        sampling = Sampling(max_tokens=min(Sampling.max_tokens, service.limits.max_tokens))
        ids = service.encode(text, "u")
        leave = service.gate.enter()
        generation = None
        try:
            generation = service.start(ids, sampling)
            generation.text()
        finally:
            if generation is not None:
                service.finished(generation, request.environ[RECORD_KEY])
            leave()
        return json_response({"ok": True, "rsvp": output_text(service.tokenizer, generation.ids)})

    def predict(name: str, version: int = 0):
        if name not in ("pangu", service.model_name):
            raise ApiError(404, f"no servable named {name!r}; this server serves 'pangu'")
        instances = _predict_instances(read_json_object(), service)
        leave = service.gate.enter()
        try:
            outputs = _run_instances(instances, service)
        finally:
            leave()
        return json_response({"instances": [{"output_sentence": output} for output in outputs]})

    app.add_url_rule("/model/<name>:predict", "predict", predict, methods=["POST"])
    app.add_url_rule("/model/<name>/version/<int:version>:predict", "predict_version", predict, methods=["POST"])


def _query_text(name: str) -> str:
    """A query-string parameter decoded strictly (the usual decoding puts U+FFFD for invalid UTF-8)."""
    # latin-1 maps bytes to characters one to one, so the percent-decoded bytes come back unchanged
    values = parse_qs(request.query_string.decode("latin-1"), keep_blank_values=True, encoding="latin-1").get(name)
    if not values:
        raise ApiError(400, f"{name} is required (GET /query?{name}=TEXT)", param=name)
    try:
        return values[0].encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"{name} is not valid UTF-8", param=name) from None


@dataclass
class Instance:
    input_ids: list[int]
    prompt_ids: list[int]
    return_scores: bool
    max_tokens: int


def _predict_instances(body: dict, service: Service) -> list[Instance]:
    instances = body.get("instances")
    if isinstance(instances, dict):
        instances = [instances]
    if not isinstance(instances, list) or not instances:
        raise ApiError(400, "instances must be a non-empty array of objects", param="instances")
    if len(instances) > service.limits.max_instances:
        raise ApiError(400, f"{len(instances)} instances; at most {service.limits.max_instances} per request",
                       param="instances")
    return [_predict_instance(instance, number, service) for number, instance in enumerate(instances)]


def _predict_instance(instance, number: int, service: Service) -> Instance:
    where = f"instances[{number}]"
    if not isinstance(instance, dict):
        raise ApiError(400, f"{where} must be an object", param="instances")
    text = get_text(instance.get("input_sentence"), f"{where}.input_sentence")
    prompt = get_text(instance.get("prompt"), f"{where}.prompt", required=False)
    return_scores = get_bool(instance, "return_scores")
    limit = min(Sampling.max_tokens, service.limits.max_tokens)
    max_tokens = get_int(instance, "max_generate_length", limit, 1, service.limits.max_tokens)
    if return_scores:  # scored as the reference: cut to the model's sequence length, as `pangu eval c3` does
        input_ids = service.tokenizer.encode(text)
        if not input_ids:
            raise ApiError(400, f"{where}.input_sentence encodes to no tokens", param=f"{where}.input_sentence")
        return Instance(input_ids, service.tokenizer.encode(prompt) if prompt else [], True, max_tokens)
    prompt_ids = service.check_length(service.tokenizer.encode(prompt), f"{where}.prompt") if prompt else []
    return Instance(service.encode(text, f"{where}.input_sentence"), prompt_ids, return_scores, max_tokens)


def _run_instances(instances: list[Instance], service: Service) -> list[str | float]:
    """Generate for the instances that ask for text (batched by the engine) and score the others in one job."""
    outputs: list[str | float] = [""] * len(instances)
    running: list[tuple[int, Generation]] = []
    try:
        for number, instance in enumerate(instances):
            if not instance.return_scores:
                running.append((number, service.start(instance.input_ids, Sampling(max_tokens=instance.max_tokens))))
        scored = [number for number, instance in enumerate(instances) if instance.return_scores]
        if scored:
            scores = service.score([(instances[n].input_ids, instances[n].prompt_ids) for n in scored])
            for number, score in zip(scored, scores, strict=True):
                outputs[number] = score
        for number, generation in running:
            generation.text()
            outputs[number] = output_text(service.tokenizer, generation.ids)
    finally:
        for _, generation in running:
            service.finished(generation, request.environ[RECORD_KEY])
    return outputs


def _openai_routes(app: Flask, service: Service) -> None:
    @app.get("/v1/models")
    def models():
        return json_response({"object": "list", "data": [_model_card(service)]})

    @app.get("/v1/models/<path:model_id>")
    def model(model_id: str):
        if model_id != service.model_name:
            raise ApiError(404, f"the model {model_id!r} does not exist; this server serves {service.model_name!r}",
                           param="model", code="model_not_found")
        return json_response(_model_card(service))

    @app.post("/v1/completions")
    def completions():
        body = read_json_object()
        prompt_ids, prompt_text = _completion_prompt(body, service)
        sampling, stops, stream = _openai_settings(body, service, default_max_tokens=16)
        echo = prompt_text if get_bool(body, "echo") else ""
        return _answer(service, prompt_ids, sampling, stops, stream, _CompletionShape(service, echo), body)

    @app.post("/v1/chat/completions")
    def chat_completions():
        body = read_json_object()
        messages = _messages(body)
        prompt = service.chat_template.render(messages, service.tokenizer)
        prompt_ids = service.encode(prompt, "messages")
        sampling, stops, stream = _openai_settings(body, service, default_max_tokens=service.limits.max_tokens,
                                                   chat=True)
        stops = tuple(dict.fromkeys(stops + service.chat_template.stops(service.tokenizer)))
        return _answer(service, prompt_ids, sampling, stops, stream, _ChatShape(service), body)


def _model_card(service: Service) -> dict:
    return {"id": service.model_name, "object": "model", "created": service.created, "owned_by": "pangu_zoo",
            "max_context": service.engine.max_context}


def _completion_prompt(body: dict, service: Service) -> tuple[list[int], str]:
    """(prompt ids, prompt text) from a string, a list of one string, token ids, or a list of one id list."""
    value = body.get("prompt")
    if value is None:
        raise ApiError(400, "prompt is required", param="prompt")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]
    if isinstance(value, str):
        return service.encode(get_text(value, "prompt")), value
    if isinstance(value, list) and value and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        if not all(0 <= i < service.vocab_size for i in value):
            raise ApiError(400, f"prompt token ids must lie in 0..{service.vocab_size - 1}", param="prompt")
        return service.check_length(list(value)), output_text(service.tokenizer, value)
    raise ApiError(400, "prompt must be a string, an array of token ids, or an array holding one of those (one "
                   "prompt per request)", param="prompt")


def _messages(body: dict) -> list[dict]:
    value = body.get("messages")
    if not isinstance(value, list) or not value:
        raise ApiError(400, "messages must be a non-empty array of {role, content} objects", param="messages")
    messages = []
    for number, message in enumerate(value):
        if not isinstance(message, dict):
            raise ApiError(400, f"messages[{number}] must be an object", param="messages")
        role = message.get("role")
        messages.append({"role": role, "content": _content(message.get("content"), role, number)})
    try:
        check_messages(messages)
    except InputError as error:
        raise ApiError(400, str(error), param="messages") from None
    return messages


def _content(value, role, number: int) -> str:
    """A message's text: a string, or an array of {"type": "text", "text": ...} parts."""
    name = f"messages[{number}].content"
    if value is None and role == "assistant":
        return ""  # an assistant turn that only called tools
    if isinstance(value, list):
        parts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ApiError(400, f"{name}: only text parts are supported", param="messages")
            parts.append(get_text(part.get("text"), f"{name}.text"))
        return "".join(parts)
    return get_text(value, name)


def _openai_settings(body: dict, service: Service, default_max_tokens: int,
                     chat: bool = False) -> tuple[Sampling, tuple[str, ...], bool]:
    """(sampling, stop strings, stream) from an OpenAI request; OpenAI's ranges and defaults."""
    check_unsupported(body)
    model = body.get("model")
    if model is not None:
        get_text(model, "model")
    limit = service.limits.max_tokens
    max_tokens = get_int(body, "max_tokens", None, 1, limit)
    if chat:
        max_tokens = get_int(body, "max_completion_tokens", max_tokens, 1, limit)
    temperature = get_float(body, "temperature", 1.0, 0.0, 2.0)
    top_p = get_float(body, "top_p", 1.0, 0.0, 1.0)
    seed = get_int(body, "seed", None, *SEED_RANGE)
    greedy = temperature == 0.0 or top_p == 0.0
    sampling = Sampling(
        max_tokens=max_tokens or min(default_max_tokens, limit),
        top_k=get_int(body, "top_k", 0, 0, service.vocab_size),
        top_p=1.0 if greedy else top_p,
        temperature=1.0 if greedy else temperature,
        frequency_penalty=get_float(body, "frequency_penalty", 0.0, -2.0, 2.0),
        presence_penalty=get_float(body, "presence_penalty", 0.0, -2.0, 2.0),
        greedy=greedy,
        seed=None if seed is None else seed % 2 ** 64,
    )
    stream = get_bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    return sampling, get_stops(body, service.limits), stream


class _CompletionShape:
    """The objects of `/v1/completions`."""

    object, chunk_object, id_prefix = "text_completion", "text_completion", "cmpl-"

    def __init__(self, service: Service, echo: str = "") -> None:
        self.service, self.echo = service, echo

    def head(self, ident: str, created: int) -> dict:
        return {"id": ident, "object": self.object, "created": created, "model": self.service.model_name}

    def choice(self, text: str, finish_reason: str) -> dict:
        return {"index": 0, "text": self.echo + text, "logprobs": None, "finish_reason": finish_reason}

    def first_chunk(self, ident: str, created: int) -> dict | None:
        return self.chunk(ident, created, self.echo, None) if self.echo else None

    def chunk(self, ident: str, created: int, text: str, finish_reason: str | None) -> dict:
        return {**self.head(ident, created), "object": self.chunk_object,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}


class _ChatShape(_CompletionShape):
    """The objects of `/v1/chat/completions`."""

    object, chunk_object, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl-"

    def choice(self, text: str, finish_reason: str) -> dict:
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish_reason}

    def first_chunk(self, ident: str, created: int) -> dict | None:
        return self._delta_chunk(ident, created, {"role": "assistant", "content": ""}, None)

    def chunk(self, ident: str, created: int, text: str, finish_reason: str | None) -> dict:
        return self._delta_chunk(ident, created, {"content": text} if text else {}, finish_reason)

    def _delta_chunk(self, ident: str, created: int, delta: dict, finish_reason: str | None) -> dict:
        return {**self.head(ident, created), "object": self.chunk_object, "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def _answer(service: Service, prompt_ids: list[int], sampling: Sampling, stops: tuple[str, ...], stream: bool,
            shape: _CompletionShape, body: dict) -> Response:
    """Run the request and answer as one JSON object, or as server-sent events when `stream` is set."""
    leave = service.gate.enter()
    try:
        generation = service.start(prompt_ids, sampling, stops)
    except BaseException:
        leave()
        raise
    ident, created = shape.id_prefix + uuid.uuid4().hex, int(time.time())
    if stream:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = _stream_events(generation, shape, ident, created, include_usage)
        record = request.environ[RECORD_KEY]

        def close() -> None:
            service.finished(generation, record)
            leave()
        return streamed(events, close)
    try:
        text = generation.text()
    finally:
        service.finished(generation, request.environ[RECORD_KEY])
        leave()
    choice = shape.choice(text, openai_finish_reason(generation))
    return json_response({**shape.head(ident, created), "choices": [choice], "usage": usage(generation)})


def _stream_events(generation: Generation, shape: _CompletionShape, ident: str, created: int,
                   include_usage: bool) -> Iterator[str]:
    first = shape.first_chunk(ident, created)
    if first is not None:
        yield sse(first)
    try:
        for piece in generation.pieces():
            yield sse(shape.chunk(ident, created, piece, None))
    except ApiError as error:
        yield sse({"error": {"message": error.message, "type": error.type, "param": None, "code": None}})
        return
    except Exception as error:  # noqa: BLE001 - the stream has begun: report it in the stream, log one line
        log.error("stream %s failed: %s: %s", ident, type(error).__name__, error)
        yield sse({"error": {"message": "the server failed while generating", "type": "server_error",
                             "param": None, "code": None}})
        return
    if generation.finish_reason == "cancelled":
        return
    yield sse(shape.chunk(ident, created, "", openai_finish_reason(generation)))
    if include_usage:
        yield sse({**shape.head(ident, created), "object": shape.chunk_object, "choices": [],
                   "usage": usage(generation)})
    yield sse("[DONE]")


def _operations_routes(app: Flask, service: Service) -> None:
    @app.get("/health")
    def health():
        if service.engine.ready.is_set():
            return json_response({"status": "ok"})
        return json_response({"status": "starting"}, 503)

    @app.get("/metrics")
    def metrics():
        text = service.metrics.render(service.engine, service.gate.open)
        return Response(text, mimetype="text/plain", content_type="text/plain; version=0.0.4; charset=utf-8")


def _error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(error: ApiError):
        return error_response(error.status, error.message, error.type, error.param, error.code)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if error.code is None or error.code < 400:
            return error.get_response()
        response = error_response(error.code, _http_message(error))
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def server_fault(error: Exception):
        log.error("%s %s failed: %s: %s", request.method, request.path, type(error).__name__, error)
        log.debug("fault details", exc_info=error)
        return error_response(500, "the server failed to answer this request", "server_error")


def _http_message(error: HTTPException) -> str:
    messages = {404: f"no route {request.path!r}",
                405: f"{request.method} is not allowed on {request.path!r}",
                413: f"the body is larger than {request.max_content_length} bytes"}
    return messages.get(error.code, error.description or error.name)


# ---- access log and request metrics ----------------------------------------------------------------------------


class RequestAccounting:
    """WSGI wrapper: one log line and one metrics entry per request, when its response is closed (for a stream,
    when the stream ends)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    def __call__(self, environ: dict, start_response):
        started = time.perf_counter()
        record = {"status": 0, "tokens": 0, "route": "unmatched"}
        environ[RECORD_KEY] = record

        def capture(status: str, headers, exc_info=None):
            record["status"] = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        body = self.app(environ, capture)
        return ClosingIterator(body, [lambda: self._done(environ, record, started)])

    def _done(self, environ: dict, record: dict, started: float) -> None:
        seconds = time.perf_counter() - started
        self.metrics.record_request(record["route"], record["status"], seconds)
        path = environ.get("PATH_INFO", "")
        printable = path.encode("unicode_escape").decode("ascii")[:200]
        access_log.info("%s %s %d %.3fs tokens=%d", environ.get("REQUEST_METHOD", "-"), printable, record["status"],
                        seconds, record["tokens"])
