"""Argument value types shared by the command modules."""

from __future__ import annotations

import argparse

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """`type=` for the reference scripts' boolean flags (`--use_past true`, `--distribute 1`, ...)."""
    value = str(text).strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false or 1/0, got {text!r}")
