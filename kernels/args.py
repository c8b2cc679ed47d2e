"""Argument checks shared by the ops (plain Python, no torch ops)."""
from __future__ import annotations

__all__ = ["positive_pair"]


def positive_pair(value, name: str, op: str) -> tuple[int, int]:
    """``value`` as an (h, w) pair of positive ints (an int n means (n, n)); a ValueError naming
    `op` and the argument otherwise (bools are not ints here)."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in pair):
        raise ValueError(f"{op}: {name} must be a positive int or a pair of them, got {value!r}")
    return pair
