"""The serving engine: continuous batching over the prefill and decode graphs, owned by one thread.

MindSpore must not be entered from two threads at once (two threads on one graph crash it, on two graphs they
deadlock; `docs/serving.md`), so one engine thread makes every MindSpore call and request threads talk to it
through queues:

* `submit` puts a request on the waiting queue (refused with `QueueFull` past `queue_limit`);
* the engine admits waiting requests while decode slots are free: it prefills them together, draws each one's
  first token, and appends their caches to the running batch, so they join it at the next decode step;
* every decode step feeds each running row its last token, draws each row's next token with the row's own
  sampling settings, and streams it to the request's event queue;
* a row that drew an end id, reached its `max_tokens`, filled the context, or whose client went away
  (`cancel`) leaves the batch at once and frees its slot.

Events on `Request.events`: `("token", token_id, text)` with the text the token adds, then one
`("done", finish_reason)` (`stop`, `length` or `cancelled`) or `("error", message)`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import astuple, dataclass, field

import numpy as np

from pangu_zoo.errors import InputError
from pangu_zoo.inference.generation import DecodeState, IncrementalDecoder
from pangu_zoo.inference.sampling import SamplingConfig, draw

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The waiting queue is at its limit: the caller should answer 429."""


@dataclass
class Sampling:
    """A request's sampling settings; the defaults are the reference server's (pangu_alpha.md §11)."""

    max_tokens: int = 500
    top_k: int = 3
    top_p: float = 1.0
    temperature: float = 1.0
    frequency_penalty: float = 1.5
    presence_penalty: float = 0.3
    greedy: bool = False
    seed: int | None = None
    stop_ids: tuple[int, ...] = ()

    def config(self) -> SamplingConfig:
        return SamplingConfig(do_sample=not self.greedy, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, frequency_penalty=self.frequency_penalty,
                              presence_penalty=self.presence_penalty)


@dataclass
class Request:
    prompt_ids: list[int]
    sampling: Sampling
    id: int = 0
    events: queue.Queue = field(default_factory=queue.Queue)
    generated: list[int] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class _Row:
    """A running request in the decode batch."""

    request: Request
    config: SamplingConfig
    rng: np.random.Generator
    text: str = ""


@dataclass
class EngineStats:
    requests: int = 0
    finished: int = 0
    cancelled: int = 0
    errors: int = 0
    tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    latencies: deque = field(default_factory=lambda: deque(maxlen=1000))


def penalise_generated(scores: np.ndarray, generated: list[int], config: SamplingConfig) -> None:
    """The reference penalties (`scores - count * frequency - (count > 0) * presence`, counting generated tokens)
    applied in place to the tokens generated so far only: the others have count 0 and keep their score."""
    if generated:
        tokens, counts = np.unique(np.asarray(generated), return_counts=True)
        # the same float32-then-float64 steps as `apply_penalties` on float32 logits
        frequency = scores[tokens].astype(np.float32) - counts.astype(np.float32) * np.float32(config.frequency_penalty)
        scores[tokens] = frequency.astype(np.float64) - config.presence_penalty


class Engine:
    """Continuous batching over `model` (a CausalLM or an ExportedModel) with `slots` decode rows."""

    def __init__(self, model, tokenizer, slots: int = 8, max_context: int | None = None, queue_limit: int = 64,
                 end_ids: tuple[int, ...] = (), hidden_ids: frozenset[int] = frozenset()) -> None:
        if slots < 1:
            raise InputError(f"slots ({slots}) must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.slots = slots
        positions = model.config.max_position_embeddings
        self.max_context = min(max_context or positions, positions)
        self.queue_limit = queue_limit
        self.end_ids = tuple(end_ids)
        self.hidden_ids = hidden_ids  # ids left out of the streamed text (special pieces)
        # batch sizes decode is compiled for: powers of two up to the slots, and the slots
        self.decode_batches = sorted({2 ** i for i in range(slots.bit_length()) if 2 ** i < slots} | {slots})
        self.decoder = IncrementalDecoder(model)
        self.stats = EngineStats()
        self._waiting: queue.Queue = queue.Queue()
        self._jobs: queue.Queue = queue.Queue()  # other work for the MindSpore thread (scoring)
        self._rows: list[_Row] = []
        self._state: DecodeState | None = None
        self._lock = threading.Lock()
        self._next_id = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()

    # ---- request side (any thread) -----------------------------------------------------------------

    def start(self, warm_up: bool = True) -> None:
        self._thread = threading.Thread(target=self._loop, args=(warm_up,), name="mindspore-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._waiting.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def check_prompt(self, prompt_ids: list[int], max_tokens: int) -> int:
        """Raise `InputError` for a prompt the engine cannot take; return the tokens it may generate."""
        if not prompt_ids:
            raise InputError("the prompt encodes to no tokens")
        if max_tokens < 1:
            raise InputError(f"max_tokens ({max_tokens}) must be at least 1")
        vocab = self.model.config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise InputError(f"token ids must lie in 0..{vocab - 1}")
        room = self.max_context - len(prompt_ids)
        if room < 1:
            raise InputError(f"the prompt has {len(prompt_ids)} tokens; this server reads at most "
                             f"{self.max_context - 1}")
        return min(max_tokens, room)

    @property
    def waiting(self) -> int:
        return self._waiting.qsize()

    @property
    def running(self) -> int:
        return len(self._rows)

    def submit(self, prompt_ids: list[int], sampling: Sampling) -> Request:
        sampling.max_tokens = self.check_prompt(prompt_ids, sampling.max_tokens)
        sampling.config()  # validates the settings in the caller's thread
        if self._waiting.qsize() >= self.queue_limit:
            raise QueueFull(f"{self.queue_limit} requests are already waiting")
        with self._lock:
            self._next_id += 1
            request = Request(list(map(int, prompt_ids)), sampling, id=self._next_id)
            self.stats.requests += 1
        self._waiting.put(request)
        return request

    def run_job(self, function: Callable, *args, timeout: float | None = None):
        """Run `function(model, *args)` on the engine thread (it owns MindSpore); return its result."""
        future: Future = Future()
        self._jobs.put((future, function, args))
        self._waiting.put(None)  # wake the loop
        return future.result(timeout)

    # ---- the engine thread -------------------------------------------------------------------------

    def _loop(self, warm_up: bool) -> None:
        try:
            if warm_up:
                self._warm_up()
        except Exception:  # noqa: BLE001 - a model that cannot run is reported by /health
            log.exception("warm-up failed")
        self.ready.set()
        while not self._stop.is_set():
            self._run_jobs()
            admitted = self._admit(block=not self._rows)
            if self._rows:
                self._decode_step()
            elif not admitted:
                continue

    def _warm_up(self) -> None:
        """Compile the graphs before the first request: prefill, and decode at each of `decode_batches` (a decode
        graph compiles once per batch size; compiling while serving would stall every stream)."""
        started = time.perf_counter()
        logits, state = self.decoder.prefill([np.array([0, 1])] * self.slots, cache_len=self.max_context)
        tokens = np.argmax(logits, axis=-1)
        for batch in self.decode_batches:
            self.decoder.step(tokens[:batch], state.rows(range(batch)))
        log.info("graphs compiled in %.1f s (decode for batches of %s)", time.perf_counter() - started,
                 ", ".join(map(str, self.decode_batches)))

    def _run_jobs(self) -> None:
        while True:
            try:
                future, function, args = self._jobs.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(self.model, *args))
                except Exception as error:  # noqa: BLE001 - handed to the caller
                    future.set_exception(error)

    def _admit(self, block: bool) -> bool:
        """Prefill waiting requests into free slots; return whether any joined."""
        new: list[Request] = []
        while len(self._rows) + len(new) < self.slots:
            try:
                request = self._waiting.get(timeout=0.05) if block and not new else self._waiting.get_nowait()
            except queue.Empty:
                break
            if request is None:  # a wake-up
                if block and not new:
                    return False
                continue
            if request.cancelled.is_set():
                self._finish_cancelled(request)
                continue
            new.append(request)
        if not new:
            return False
        started = time.perf_counter()
        try:
            logits, state = self.decoder.prefill([np.array(r.prompt_ids) for r in new], cache_len=self.max_context)
        except Exception as error:  # noqa: BLE001 - the requests fail, the server goes on
            log.exception("prefill failed")
            for request in new:
                self._fail(request, f"prefill failed: {error}")
            return False
        self.stats.prefill_seconds += time.perf_counter() - started
        rows = [self._new_row(request) for request in new]
        self._join(state)
        self._rows.extend(rows)
        self._emit(list(range(len(self._rows) - len(rows), len(self._rows))), logits)
        return True

    def _new_row(self, request: Request) -> _Row:
        return _Row(request, request.sampling.config(), np.random.default_rng(request.sampling.seed))

    def _batch_size(self, rows: int) -> int:
        """The decode batch for `rows` requests: the smallest of `decode_batches` that holds them."""
        return next(size for size in self.decode_batches if size >= rows)

    def _rebuild(self, parts: list[tuple[DecodeState, list[int]]]) -> None:
        """The batch state from the given rows of each state, then padding rows up to the decode batch size (their
        outputs are ignored): decode is compiled for a few batch sizes only, since each compiled size holds its
        own copy of the weights."""
        rows = sum(len(index) for _, index in parts)
        if rows == 0:
            self._state = None
            return
        pieces = [state if len(index) == state.lengths.shape[0] and index == list(range(len(index)))
                  else state.rows(index) for state, index in parts]
        self._state = DecodeState.concat(pieces).padded(self._batch_size(rows) - rows)

    def _join(self, state: DecodeState) -> None:
        running = list(range(len(self._rows)))
        parts = [(self._state, running)] if self._state is not None and running else []
        self._rebuild(parts + [(state, list(range(state.lengths.shape[0])))])

    def _keep(self, keep: list[int]) -> None:
        """Drop every batch row not in `keep` (finished or cancelled requests free their slots)."""
        if len(keep) == len(self._rows):
            return
        self._rebuild([(self._state, keep)] if keep else [])
        self._rows = [self._rows[i] for i in keep]

    def _decode_step(self) -> None:
        tokens = np.zeros(self._state.lengths.shape[0], dtype=np.int64)
        tokens[:len(self._rows)] = [row.request.generated[-1] for row in self._rows]
        started = time.perf_counter()
        try:
            logits, self._state = self.decoder.step(tokens, self._state)
        except Exception as error:  # noqa: BLE001
            log.exception("decode step failed")
            for row in self._rows:
                self._fail(row.request, f"decode failed: {error}")
            self._rows, self._state = [], None
            return
        self.stats.decode_seconds += time.perf_counter() - started
        self._emit(list(range(len(self._rows))), logits[:len(self._rows)])

    def _choose(self, positions: list[int], logits: np.ndarray) -> list[int]:
        """The next token of each row in `positions`: rows with the same settings are sampled together (one
        vectorised pass), each with a uniform number from its own generator."""
        tokens = [0] * len(positions)
        groups: dict[tuple, list[int]] = {}
        for index, position in enumerate(positions):
            config = self._rows[position].config
            groups.setdefault(astuple(config), []).append(index)
        for members in groups.values():
            rows = [self._rows[positions[i]] for i in members]
            config = rows[0].config
            scores = logits[members]
            if config.frequency_penalty or config.presence_penalty:
                scores = scores.astype(np.float64)  # as `apply_penalties` gives them, so both choose alike
                for j, row in enumerate(rows):
                    penalise_generated(scores[j], row.request.generated, config)
            if config.do_sample:
                chosen = draw(scores, config, np.array([row.rng.random() for row in rows]))
            else:
                chosen = np.argmax(scores, axis=-1)
            for i, token in zip(members, chosen, strict=True):
                tokens[i] = int(token)
        return tokens

    def _emit(self, positions: list[int], logits: np.ndarray) -> None:
        """Draw a token for each batch row in `positions` (logits row by row), stream it, retire done rows."""
        now = time.perf_counter()
        for position, token in zip(positions, self._choose(positions, logits), strict=True):
            row = self._rows[position]
            request = row.request
            if request.cancelled.is_set():
                continue
            request.generated.append(token)
            request.first_token_at = request.first_token_at or now
            self.stats.tokens += 1
            stop_ids = request.sampling.stop_ids or self.end_ids
            if token in stop_ids:
                request.finish_reason = "stop"
                continue
            request.events.put(("token", token, self._text_delta(row)))
            if len(request.generated) >= request.sampling.max_tokens:
                request.finish_reason = "length"
        keep = []
        for index, row in enumerate(self._rows):
            request = row.request
            if request.cancelled.is_set():
                self._finish_cancelled(request)
            elif request.finish_reason is not None:
                self._finish(request)
            else:
                keep.append(index)
        self._keep(keep)

    def _text_delta(self, row: _Row) -> str:
        """The text the newest token adds (held back while the decoded text is not yet stable)."""
        ids = [i for i in row.request.generated if i not in self.hidden_ids]
        text = self.tokenizer.decode(ids)
        if text.startswith(row.text) and not text.endswith("\ufffd"):
            delta, row.text = text[len(row.text):], text
            return delta
        return ""

    def _finish(self, request: Request) -> None:
        request.finished_at = time.perf_counter()
        self.stats.finished += 1
        self.stats.latencies.append(request.finished_at - request.submitted)
        request.events.put(("done", request.finish_reason))

    def _finish_cancelled(self, request: Request) -> None:
        request.finish_reason = "cancelled"
        request.finished_at = time.perf_counter()
        self.stats.cancelled += 1
        request.events.put(("done", "cancelled"))

    def _fail(self, request: Request, message: str) -> None:
        request.finish_reason = "error"
        self.stats.errors += 1
        request.events.put(("error", message))


def collect(request: Request, timeout: float = 600.0) -> tuple[list[int], str, str]:
    """Wait for a request to end; return (generated ids without the end id, its text, finish reason)."""
    pieces = []
    deadline = time.monotonic() + timeout
    while True:
        kind, *payload = request.events.get(timeout=max(deadline - time.monotonic(), 0.001))
        if kind == "token":
            pieces.append(payload[1])
        elif kind == "done":
            ids = request.generated[:-1] if payload[0] == "stop" else list(request.generated)
            return ids, "".join(pieces), payload[0]
        else:
            raise RuntimeError(payload[0])
