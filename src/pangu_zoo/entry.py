"""Support for the top-level reference-style scripts (train.py, predict.py, export.py)."""

from __future__ import annotations

import sys

NOT_YET = {
    "export": "export.py is not implemented yet (export and serving milestone).",
}


def not_yet(script: str) -> int:
    """Say that `script` comes with a later milestone; return the exit status (1)."""
    print(f"not yet: {NOT_YET[script]}", file=sys.stderr)
    return 1
