"""Build a small SFT set from the C3 train split: one conversation per question, in the openPangu demo's format.

    python scripts/make_c3_sft.py --data_dir ../shared/data/c3 --out c3_sft.jsonl [--limit 2000]

Each question becomes {"meta_prompt": <a fixed system text>, "data": [user, assistant]}: the user turn holds the
dialogue or passage, the question and the choices; the assistant turn is the text of the correct choice.
The file is generated data: keep it out of the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pangu_zoo.errors import DataError, PanguError
from pangu_zoo.evaluation.c3 import load_c3

SYSTEM_PROMPT = "你是一个阅读理解助手。请阅读材料，从选项中选出正确答案，只回答答案本身。"
DEFAULT_SPLITS = ("c3-d-train", "c3-m-train")


def conversation(passage: list[str], question: dict) -> dict:
    """The demo-format record of one C3 question."""
    choices = "\n".join(f"{letter}. {choice}" for letter, choice in zip("ABCDEFGH", question["choice"], strict=False))
    user = f"材料：\n{chr(10).join(passage)}\n问题：{question['question']}\n选项：\n{choices}"
    return {"meta_prompt": SYSTEM_PROMPT,
            "data": [{"role": "user", "content": user}, {"role": "assistant", "content": question["answer"]}]}


def c3_conversations(path: Path, limit: int | None = None) -> list[dict]:
    """The records of one C3 file, questions in file order (at most `limit`)."""
    records = []
    for number, (passage, questions, *_) in enumerate(load_c3(path)):
        for question in questions:
            if question["answer"] not in question["choice"]:
                raise DataError(f"{path}: instance {number}: the answer {question['answer']!r} is not a choice")
            if limit is not None and len(records) >= limit:
                return records
            records.append(conversation(passage, question))
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True, help="folder with the C3 json files (nlpdata/c3 data/)")
    parser.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), help="file names without .json")
    parser.add_argument("--out", required=True, help="JSON-lines file to write")
    parser.add_argument("--limit", type=int, default=None, help="at most this many questions per split")
    args = parser.parse_args(argv)
    try:
        records = [record for split in args.splits
                   for record in c3_conversations(Path(args.data_dir) / f"{split}.json", args.limit)]
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = out.with_name(f".{out.name}.tmp")
        with temporary.open("w", encoding="utf-8") as stream:
            for record in records:
                stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        temporary.replace(out)
    except (PanguError, OSError) as error:
        print(f"make_c3_sft.py: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(records)} conversations from {', '.join(args.splits)} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
