"""Serving throughput and latency: concurrent clients against the HTTP server, side by side with the engine called
directly in-process, and with the server decoding one request at a time.

GPT-2 small with random weights (made by transformers, loaded through `from_pretrained`), exported to MindIR,
fp32, the GPT-2 tokenizer from ../shared/data/gpt2_bpe. Each request: a prompt of `--prompt_tokens` tokens,
`--max_tokens` new tokens sampled with the reference defaults (top-k 3, penalties 1.5/0.3), streamed
(`/v1/completions`, `stream: true`), so time to first token is measured as a client sees it.

1. engine: `--clients` threads x `--requests` requests, each `Engine.submit` + waiting for its events (in a
   process of its own, as the export: the process running the HTTP clients never loads MindSpore);
2. server: the same load over HTTP against `pangu serve` (a separate process) with the same slots;
3. one at a time: `pangu serve --slots 1` and one client (`--sequential_requests` requests).

Reported: errors, p50/p95 latency and time to first token, generated tokens/s; ratios server/engine (the server's
overhead) and batched/one-at-a-time (what continuous batching gives).

    python bench/bench_serving.py [--clients 16] [--requests 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import write_json

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prompts(count: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50000, size=length).tolist() for _ in range(count)]


def summary(latencies: list[float], first_tokens: list[float], tokens: int, seconds: float, errors: int) -> dict:
    def pct(values, q):
        return round(float(np.percentile(values, q)), 3) if values else None
    return {"requests": len(latencies), "errors": errors, "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "latency_p50_s": pct(latencies, 50),
            "latency_p95_s": pct(latencies, 95), "ttft_p50_s": pct(first_tokens, 50),
            "ttft_p95_s": pct(first_tokens, 95)}


def run_clients(clients: int, per_client: int, one_request) -> dict:
    """`clients` threads, each making `per_client` calls of one_request(prompt_index) -> (tokens, ttft, latency)."""
    latencies, first_tokens, counts, errors = [], [], [0], [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        for k in range(per_client):
            try:
                tokens, ttft, latency = one_request(index * per_client + k)
            except Exception as error:  # noqa: BLE001 - counted and reported
                with lock:
                    errors[0] += 1
                print(f"request failed: {error}", file=sys.stderr)
                continue
            with lock:
                latencies.append(latency)
                first_tokens.append(ttft)
                counts[0] += tokens
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summary(latencies, first_tokens, counts[0], time.perf_counter() - start, errors[0])


def http_stream_request(port: int, prompt: list[int], max_tokens: int) -> tuple[int, float, float]:
    """One streamed /v1/completions request; (tokens, time to first token, latency)."""
    body = json.dumps({"model": "gpt2", "prompt": prompt, "max_tokens": max_tokens, "stream": True, "top_k": 3,
                       "frequency_penalty": 1.5, "presence_penalty": 0.3})
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
    ttft, chunks = None, 0
    for raw in response:
        line = raw.decode("utf-8").strip()
        if not line.startswith("data:"):
            continue
        if line == "data: [DONE]":
            break
        chunk = json.loads(line[5:])
        if chunk["choices"][0].get("text"):
            chunks += 1
            ttft = ttft or time.perf_counter() - start
    connection.close()
    usage_tokens = chunks  # one chunk per streamed token with text
    return usage_tokens, ttft or time.perf_counter() - start, time.perf_counter() - start


def start_server(export: Path, tokenizer: Path, slots: int, context: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "pangu_zoo.cli", "serve", str(export), "--tokenizer_path", str(tokenizer),
               "--port", str(port), "--slots", str(slots), "--max_context", str(context), "--queue_limit", "1000",
               "--max_streams", "1000"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server, port
        except OSError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError("the server did not start")


def measure_server(export, tokenizer, slots, context, clients, per_client, prompt_ids, max_tokens) -> dict:
    server, port = start_server(export, tokenizer, slots, context)
    try:
        http_stream_request(port, prompt_ids[0], 4)  # warm-up: compile the shapes the load will use
        return run_clients(clients, per_client,
                           lambda i: http_stream_request(port, prompt_ids[i % len(prompt_ids)], max_tokens))
    finally:
        server.terminate()
        server.wait(30)


def measure_engine(export, tokenizer_path, slots, context, clients, per_client, prompt_ids, max_tokens) -> dict:
    from pangu_zoo.serving.engine import Engine, Sampling
    from pangu_zoo.serving.exported import ExportedModel
    from pangu_zoo.tokenizers import load_tokenizer
    from pangu_zoo.tokenizers.special import special_ids

    tokenizer = load_tokenizer("gpt2", tokenizer_path)
    engine = Engine(ExportedModel(export), tokenizer, slots=slots, max_context=context, queue_limit=1000,
                    end_ids=(tokenizer.eot_id,), hidden_ids=frozenset(special_ids(tokenizer)))
    engine.start()
    engine.ready.wait()

    def one(i: int):
        start = time.perf_counter()
        request = engine.submit(prompt_ids[i % len(prompt_ids)], Sampling(max_tokens=max_tokens))
        ttft, tokens = None, 0
        while True:
            kind, *payload = request.events.get(timeout=600)
            if kind == "token":
                tokens += 1 if payload[1] else 0
                ttft = ttft or time.perf_counter() - start
            elif kind == "done":
                return tokens, ttft or time.perf_counter() - start, time.perf_counter() - start
            else:
                raise RuntimeError(payload[0])
    one(0)  # warm-up
    try:
        return run_clients(clients, per_client, one)
    finally:
        engine.stop()


def export_gpt2_small(folder: Path) -> Path:
    from common import gpt2_small_pair

    from pangu_zoo.serving.export import export_model

    _, ours = gpt2_small_pair()
    return export_model(ours, folder)


def in_subprocess(args: argparse.Namespace, step: str, *extra: str) -> dict:
    """Run one step (`export` or `engine`) in a process of its own: MindSpore's runtime threads stay busy for a
    while after use, so the process that runs the HTTP clients must never load it."""
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    command = [sys.executable, __file__, "--_step", step, "--_out", str(out), "--clients", str(args.clients),
               "--requests", str(args.requests), "--prompt_tokens", str(args.prompt_tokens), "--max_tokens",
               str(args.max_tokens), "--context", str(args.context), "--tokenizer_path", args.tokenizer_path, *extra]
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def run_step(args: argparse.Namespace) -> None:
    if args._step == "export":
        result = {"export": str(export_gpt2_small(Path(args.export)))}
    else:
        ids = prompts(args.clients * args.requests, args.prompt_tokens)
        result = measure_engine(Path(args.export), args.tokenizer_path, args.clients, args.context, args.clients,
                                args.requests, ids, args.max_tokens)
    Path(args._out).write_text(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--sequential_requests", type=int, default=16)
    parser.add_argument("--prompt_tokens", type=int, default=32)
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--context", type=int, default=128, help="max_context of the engine (cache length)")
    parser.add_argument("--tokenizer_path", default=str(DATA / "gpt2_bpe"))
    parser.add_argument("--export", help="an existing export (default: export GPT-2 small with random weights)")
    parser.add_argument("--json")
    parser.add_argument("--_step", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._step:
        run_step(args)
        return 0
    export = Path(args.export) if args.export else Path(
        in_subprocess(args, "export", "--export", tempfile.mkdtemp(prefix="bench-serving-"))["export"])
    ids = prompts(args.clients * args.requests, args.prompt_tokens)
    load = (args.clients, args.requests, ids, args.max_tokens)
    results = {"config": vars(args), "cpu_count": os.cpu_count()}
    print(f"{args.clients} clients x {args.requests} requests, prompt {args.prompt_tokens}, {args.max_tokens} new "
          f"tokens each, {args.clients} slots", flush=True)
    results["engine"] = in_subprocess(args, "engine", "--export", str(export))
    print("engine direct:", results["engine"], flush=True)
    results["server"] = measure_server(export, args.tokenizer_path, args.clients, args.context, *load)
    print("server:       ", results["server"], flush=True)
    results["one_at_a_time"] = measure_server(export, args.tokenizer_path, 1, args.context, 1,
                                              args.sequential_requests, ids, args.max_tokens)
    print("one at a time:", results["one_at_a_time"], flush=True)
    engine_rate, server_rate = results["engine"]["tokens_per_s"], results["server"]["tokens_per_s"]
    results["server_overhead"] = round(1 - server_rate / engine_rate, 3)
    results["batching_speedup"] = round(server_rate / results["one_at_a_time"]["tokens_per_s"], 2)
    print(f"server overhead vs the engine: {100 * results['server_overhead']:.1f}% of tokens/s; continuous "
          f"batching: {results['batching_speedup']:.2f}x the tokens/s of one request at a time")
    write_json(results, args.json)
    return 0 if results["engine"]["errors"] == results["server"]["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
