"""SFT preprocessing throughput and packing efficiency on the C3-derived set (../shared/data/c3).

    PYTHONPATH=src python bench/bench_sft_preprocess.py [--json bench_sft_preprocess.json]

Builds the C3 SFT set (scripts/make_c3_sft.py: c3-d-train + c3-m-train, one conversation per question), then
times `pangu sft-preprocess` (read, template + labels, tokenise, pack, write Megatron + MindRecord) for each
tokenizer, worker count and row length: samples/s, MB/s of input JSON lines, and what the packing gives.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from common import write_json

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CASES = [  # tokenizer kind, folder, workers, seq_length
    ("pangu-alpha", "pangu_tokenizer", 1, 256),
    ("pangu-alpha", "pangu_tokenizer", 2, 256),
    ("pangu-alpha", "pangu_tokenizer", 1, 1024),
    ("gpt2", "gpt2_bpe", 1, 256),
    ("gpt2", "gpt2_bpe", 1, 1024),
]


def _case(source: Path, kind: str, folder: str, workers: int, seq_length: int, out: Path) -> dict:
    from pangu_zoo.data.sft.pipeline import preprocess_sft
    from pangu_zoo.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(kind, DATA / folder)
    # jieba loads its dictionary and HMM tables once per process, on first use: not part of a run (workers
    # started by a run still load them)
    tokenizer.encode(source.read_text(encoding="utf-8")[:20000])
    started = time.perf_counter()
    summary = preprocess_sft([str(source)], tokenizer, seq_length, out / f"{kind}_{workers}_{seq_length}",
                             num_workers=workers)
    seconds = time.perf_counter() - started
    return {"tokenizer": kind, "workers": workers, "seq_length": seq_length, "seconds": seconds,
            "samples_per_s": summary.samples_read / seconds, "mb_per_s": summary.text_bytes / 1e6 / seconds,
            **{key: getattr(summary, key) for key in ("samples_read", "samples_kept", "dropped_too_long", "rows",
                                                       "packing_efficiency", "tokens_trained", "real_tokens")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if not (DATA / "c3").is_dir():
        print(f"benchmark data {DATA / 'c3'} is absent", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    import mindspore.mindrecord  # noqa: F401  imported once per process (about 2 s), not part of a run
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_c3_sft import main as make_c3_sft

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "c3_sft.jsonl"
        make_c3_sft(["--data_dir", str(DATA / "c3"), "--out", str(source)])
        megabytes = source.stat().st_size / 1e6
        for kind, folder, workers, seq_length in CASES:
            rows.append(_case(source, kind, folder, workers, seq_length, Path(tmp)))
    print(f"input: {rows[0]['samples_read']} conversations, {megabytes:.2f} MB of JSON lines")
    print("| tokenizer | workers | seq_length | seconds | samples/s | MB/s | kept | dropped | rows | packing "
          "efficiency | tokens trained |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tokenizer']} | {r['workers']} | {r['seq_length']} | {r['seconds']:.2f} | "
              f"{r['samples_per_s']:.0f} | {r['mb_per_s']:.2f} | {r['samples_kept']} | {r['dropped_too_long']} | "
              f"{r['rows']} | {100 * r['packing_efficiency']:.1f}% | {r['tokens_trained']} |")
    write_json({"input_mb": megabytes, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
