"""Merge per-server rank tables into one (the reference merge_hccl.py): python scripts/merge_hccl.py a.json b.json"""

import json
import sys
from pathlib import Path

from pangu_zoo.errors import PanguError
from pangu_zoo.parallel.rank_table import merge_rank_tables, write_json


def main(argv=None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    try:
        tables = []
        for path in paths:
            if not path.is_file():
                raise PanguError(f"rank table {path} does not exist")
            tables.append(json.loads(path.read_text(encoding="utf-8")))
        merged = merge_rank_tables(tables)
    except (PanguError, json.JSONDecodeError, KeyError) as error:
        print(f"merge_hccl: error: {error}", file=sys.stderr)
        return 2
    ranks = sum(len(s["device"]) for s in merged["server_list"])
    path = write_json(merged, Path(f"hccl_{merged['server_count']}s_{ranks}p.json"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
