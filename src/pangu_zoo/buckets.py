"""Shape buckets: lengths are rounded up to a multiple so compiled graphs see few distinct shapes."""

from __future__ import annotations


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is at least `value`."""
    return -(-value // multiple) * multiple
