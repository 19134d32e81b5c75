"""Preprocessing and tokenizer throughput on the 西游记 + CMRC corpus (../shared/data/zh_corpus).

    PYTHONPATH=src python bench/bench_preprocess.py [--json bench_preprocess.json] [--write bench_preprocess.md]

Each measurement runs `--repeats` times; the median is reported, with the machine's load average. The PanGu-alpha
rows compare plain jieba (`--segmenter jieba`, the reference) with the fast segmentation (the default), and
check that both give the same ids:
- xiyouji.txt (2.17 MB) encoded by 1 worker process and by 2, as one text (the workers segment it in parts and
  this process makes its one SentencePiece call) and as its 3859 paragraphs (whole paragraphs to each worker):
  warm throughput, MB/s per worker, CPU seconds of every process (from /proc, so that a busy machine can be
  told apart from a slow program), and the workers' start-up;
- `pangu preprocess` (PanGu-alpha -> MindRecord) of xiyouji.txt (3859 paragraphs) and of both files with 1 and 2
  workers, start-up included;
- encode throughput: a per-line loop vs `encode_batch` with 1 and 2 workers (fast PanGu-alpha with its cache
  of HMM cuts emptied before each run, GPT-2).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from common import write_json

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
COMMAND = "PYTHONPATH=src python bench/bench_preprocess.py --json bench_preprocess.json --write bench_preprocess.md"
SEGMENTERS = ("jieba", "fast")


def _load() -> str:
    return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def _median_run(run, repeats: int) -> dict:
    """The run (a dict with "seconds") whose seconds are the median of `repeats` runs."""
    runs = sorted((run() for _ in range(repeats)), key=lambda result: result["seconds"])
    return {**runs[len(runs) // 2], "all_seconds": [result["seconds"] for result in runs]}


def _warm_text() -> str:
    """A different text to load each worker's dictionaries with before the timed document."""
    return (DATA / "zh_corpus" / "cmrc2018_contexts_zh.txt").read_text(encoding="utf-8")[:150_000]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _call(queue, function, args) -> None:
    queue.put(function(*args))


def _in_new_process(function, *args):
    """`function(*args)` in a new Python process (so nothing is loaded or cached yet), which may start its own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_call, args=(queue, function, args))
    process.start()
    result = queue.get()
    process.join()
    return result


def _encode_in_this_process(segmenter: str, texts: list[str]) -> dict:
    """One worker: this process loads the tokenizer, warms it up, then encodes the texts as `EncodePool` with one
    worker does (chunks of texts)."""
    from pangu_zoo.tokenizers.pangu_tokenizer import PanguTokenizer
    from pangu_zoo.tokenizers.pool import EncodePool

    started = time.perf_counter()
    tokenizer = PanguTokenizer(DATA / "pangu_tokenizer", segmenter=segmenter)
    tokenizer.encode(_warm_text())
    ready = time.perf_counter()
    cpu = time.process_time()
    ids = list(EncodePool(tokenizer, 1).imap(texts))
    return {"startup_s": ready - started, "seconds": time.perf_counter() - ready,
            "worker_cpu_s": [time.process_time() - cpu], "main_cpu_s": 0.0, "ids": ids}


def _document_run(segmenter: str, workers: int, texts: list[str]) -> dict:
    if workers == 1:
        return _in_new_process(_encode_in_this_process, segmenter, texts)
    from pangu_zoo.tokenizers.pangu_tokenizer import PanguTokenizer
    from pangu_zoo.tokenizers.pool import EncodePool

    tokenizer = PanguTokenizer(DATA / "pangu_tokenizer", segmenter=segmenter)
    started = time.perf_counter()
    with EncodePool(tokenizer, workers) as pool:
        list(pool.imap([_warm_text()]))  # about 7 parts: each worker starts and loads its dictionaries
        ready = time.perf_counter()
        before = {child.pid: _cpu_seconds(child.pid) for child in multiprocessing.active_children()}
        main_cpu = time.process_time()
        ids = list(pool.imap(texts))
        seconds = time.perf_counter() - ready
        main_cpu = time.process_time() - main_cpu
        worker_cpu = [_cpu_seconds(pid) - cpu for pid, cpu in before.items()]
    return {"startup_s": ready - started, "seconds": seconds, "worker_cpu_s": worker_cpu, "main_cpu_s": main_cpu,
            "ids": ids}


def _document_rows(repeats: int) -> list[dict]:
    from pangu_zoo.data.corpus import paragraphs, read_utf8

    document = read_utf8(DATA / "zh_corpus" / "xiyouji.txt")
    inputs = {"one text": [document], f"{len(paragraphs(document))} paragraphs": paragraphs(document)}
    rows = []
    for texts_name, texts in inputs.items():
        megabytes = sum(len(text.encode("utf-8")) for text in texts) / 1e6
        reference = None
        for segmenter, workers in itertools.product(SEGMENTERS, (1, 2)):
            run = _median_run(lambda s=segmenter, w=workers, t=texts: _document_run(s, w, t), repeats)
            ids = run.pop("ids")
            reference = reference or ids
            assert ids == reference, f"{segmenter} with {workers} worker(s) gave other ids than jieba"
            # wall time on an idle machine, every process on a core of its own: the workers' CPU time spread
            # evenly over them; this process's work comes after theirs for one text (its SentencePiece call
            # needs every part) and alongside for many texts (it receives results as they come)
            spread = sum(run["worker_cpu_s"]) / workers
            idle_estimate = spread + run["main_cpu_s"] if len(texts) == 1 else max(spread, run["main_cpu_s"])
            rows.append({"texts": texts_name, "segmenter": segmenter, "workers": workers, "megabytes": megabytes,
                         "tokens": sum(map(len, ids)),
                         **run, "mb_per_s": megabytes / run["seconds"],
                         "mb_per_s_per_worker": megabytes / run["seconds"] / workers,
                         "cpu_mb_per_s": megabytes / (sum(run["worker_cpu_s"]) + run["main_cpu_s"]),
                         "idle_estimate_s": idle_estimate})
    for row in rows:
        one = next(r for r in rows if (r["texts"], r["segmenter"], r["workers"]) == (row["texts"], row["segmenter"], 1))
        row["speedup_vs_1_worker"] = one["seconds"] / row["seconds"]
        row["idle_speedup_estimate"] = one["idle_estimate_s"] / row["idle_estimate_s"]
    return rows


def _preprocess_run(files: str, workers: int, segmenter: str) -> dict:
    """`pangu preprocess` as a new process runs it, less Python's start and the MindSpore import."""
    import mindspore.mindrecord  # noqa: F401  about 2 s, not part of a run

    from pangu_zoo.data.preprocess import add_arguments, preprocess

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with tempfile.TemporaryDirectory() as out:
        args = parser.parse_args(["--input_glob", str(DATA / "zh_corpus" / files), "--tokenizer", "jieba",
                                  "--model_file", str(DATA / "pangu_tokenizer" / "vocab.model"),
                                  "--segmenter", segmenter, "--output_file", f"{out}/zh.mindrecord",
                                  "--num_workers", str(workers), "--no_progress"])
        started = time.perf_counter()
        summary = preprocess(args)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "megabytes": summary.text_bytes / 1e6, "tokens": summary.tokens}


def _preprocess_rows(repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    for files in ("xiyouji.txt", "*.txt"):
        for segmenter in SEGMENTERS:
            for workers in (1, 2):
                run = _median_run(lambda f=files, s=segmenter, w=workers: _in_new_process(_preprocess_run, f, w, s),
                                  repeats)
                rows.append((f"preprocess {files}, PanGu-alpha ({segmenter}) -> MindRecord, {workers} worker(s)",
                             run["megabytes"], run["seconds"]))
    return rows


def _tokenizer_rows(kind: str, path: Path, lines: list[str], repeats: int) -> list[tuple[str, float, float]]:
    from pangu_zoo.tokenizers import load_tokenizer
    from pangu_zoo.tokenizers.jieba_fast import fast_jieba
    from pangu_zoo.tokenizers.pangu_tokenizer import NEWLINE_PIECE, SPACE_PIECE

    tokenizer = load_tokenizer(kind, path)
    tokenizer.warm_up()
    megabytes = sum(len(line.encode("utf-8")) for line in lines) / 1e6
    loop = [tokenizer.encode(line) for line in lines]
    segmenter = fast_jieba(SPACE_PIECE, NEWLINE_PIECE) if kind == "pangu-alpha" else None
    runs = {f"{kind} encode, per-line loop": lambda: [tokenizer.encode(line) for line in lines]}
    for workers in (1, 2):
        runs[f"{kind} encode_batch, {workers} worker(s)"] = \
            lambda w=workers: tokenizer.encode_batch(lines, num_workers=w, chunk_size=256)
    rows = []
    for name, run in runs.items():
        def timed(run=run):
            if segmenter is not None:
                segmenter.clear_cache()  # timed from an empty cache, as a new worker starts
            started = time.perf_counter()
            assert run() == loop, "encode_batch must equal the per-line loop"
            return {"seconds": time.perf_counter() - started}
        rows.append((name, megabytes, _median_run(timed, repeats)["seconds"]))
    return rows


def _document_table(rows: list[dict]) -> str:
    header = ("| xiyouji.txt as | segmenter | workers | seconds | MB/s | MB/s per worker | speed-up vs 1 worker "
              "| CPU s: workers + this process | MB per CPU second | idle-machine estimate: seconds, speed-up "
              "| start-up s |\n"
              "|---|---|---:|---:|---:|---:|---:|---|---:|---|---:|")
    lines = [f"| {r['texts']} | {r['segmenter']} | {r['workers']} | {r['seconds']:.2f} | {r['mb_per_s']:.2f} | "
             f"{r['mb_per_s_per_worker']:.2f} | {r['speedup_vs_1_worker']:.2f} | "
             f"{' + '.join(f'{cpu:.2f}' for cpu in r['worker_cpu_s'])} + {r['main_cpu_s']:.2f} | "
             f"{r['cpu_mb_per_s']:.2f} | {r['idle_estimate_s']:.2f}, {r['idle_speedup_estimate']:.2f} | "
             f"{r['startup_s']:.2f} |" for r in rows]
    return "\n".join([header, *lines])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--write", default=None, help="also write the results as Markdown to this file")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement (median reported)")
    args = parser.parse_args()
    if not (DATA / "zh_corpus").is_dir():
        print(f"benchmark data {DATA / 'zh_corpus'} is absent", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.WARNING)
    load_before = _load()
    document_rows = _document_rows(args.repeats)
    lines = [line for name in ("xiyouji.txt", "cmrc2018_contexts_zh.txt")
             for line in (DATA / "zh_corpus" / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = _preprocess_rows(args.repeats)
    rows += _tokenizer_rows("pangu-alpha", DATA / "pangu_tokenizer", lines, args.repeats)
    rows += _tokenizer_rows("gpt2", DATA / "gpt2_bpe", lines, args.repeats)
    load_after = _load()

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"Python {platform.python_version()}")
    document_table = _document_table(document_rows)
    header = "| what | MB of text | seconds | MB/s |\n|---|---:|---:|---:|"
    table = "\n".join(f"| {name} | {mb:.2f} | {seconds:.2f} | {mb / seconds:.2f} |" for name, mb, seconds in rows)
    print(f"{machine}; median of {args.repeats}; before: {load_before}; after: {load_after}")
    print("zh_corpus/xiyouji.txt encoded in worker processes (start-up apart):\n" + document_table)
    print(header + "\n" + table)
    write_json({"machine": machine, "repeats": args.repeats, "load_before": load_before, "load_after": load_after,
                "single_document": document_rows,
                "rows": [{"what": name, "megabytes": mb, "seconds": seconds, "mb_per_s": mb / seconds}
                         for name, mb, seconds in rows]}, args.json)
    if args.write:
        Path(args.write).write_text(
            "# Data pipeline benchmarks\n\n"
            f"Machine: {machine}; median of {args.repeats} runs; before: {load_before}; after: {load_after}.\n\n"
            f"Command: `{COMMAND}`\n\n"
            f"`zh_corpus/xiyouji.txt` encoded in worker processes (start-up apart):\n\n{document_table}\n\n"
            f"Corpus: `zh_corpus/xiyouji.txt` + `cmrc2018_contexts_zh.txt` ({len(lines)} non-empty lines).\n\n"
            f"{header}\n{table}\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
