"""Argument checks and geometry shared by the ops (plain Python and tensor metadata, no torch ops)."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .backend import TRITON_DTYPES

__all__ = ["MAX_HEAD_DIM", "check_3d", "check_token_count", "pooled_size", "positive_ints", "shape_of"]

# The widest head the attention kernels take (a power of two: the tiles pad D up to one).
MAX_HEAD_DIM = 256


def shape_of(t) -> str:
    """A tensor's shape for an error message, or the type name of what came instead."""
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def check_3d(t, name: str, layout: str, op: str) -> None:
    """`t` must be a 3-D tensor (a ValueError naming `layout`, e.g. "(B, N, C) tokens") in a
    supported dtype (a TypeError): the Triton dtypes, or float64 for the torch backend."""
    if not isinstance(t, torch.Tensor) or t.dim() != 3:
        raise ValueError(f"{op}: {name} must be {layout}, got {shape_of(t)}")
    if t.dtype not in TRITON_DTYPES + (torch.float64,):
        raise TypeError(f"{op}: {name} dtype {t.dtype} is not supported (float32, float16, bfloat16; "
                        f"float64 on the torch backend)")


def check_token_count(n_tokens: int, hw: Sequence[int], sp: int, name: str, op: str) -> None:
    """A ValueError unless the token count is sp + the grid's size ((H, W) or (T, H, W); sp = 1
    with a class token in front)."""
    size = math.prod(hw)
    if n_tokens != sp + size:
        raise ValueError(f"{op}: the grid {'x'.join(map(str, hw))} {'with' if sp else 'without'} a class token "
                         f"needs N = {sp + size} tokens, but {name} has N = {n_tokens}")


def pooled_size(hw: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> tuple[int, ...]:
    """Output grid of a window op (conv or pool) with padding kernel // 2:
    (H + 2 * pad - kernel) // stride + 1 per axis."""
    return tuple((n + 2 * (k // 2) - k) // s + 1 for n, k, s in zip(hw, kernel, stride))


def window_coverage(hw: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> int:
    """How many grid positions of `hw` at least one window of a (kernel, stride, padding
    kernel // 2) window op reads (a stride above the kernel skips positions): the distinct grid
    tokens its kernel loads (see ``fastmvit.kernels.traffic``)."""
    count = 1
    for n, k, s, o in zip(hw, kernel, stride, pooled_size(hw, kernel, stride)):
        count *= len({i * s - k // 2 + d for i in range(o) for d in range(k)} & set(range(n)))
    return count


def positive_ints(value, n: int, name: str, op: str) -> tuple[int, ...]:
    """``value`` as ``n`` positive ints, one per grid axis (an int means the same on every axis);
    a ValueError naming `op` and the argument otherwise (bools are not ints here)."""
    ints = (value,) * n if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(ints) != n or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in ints):
        what = "a pair of them" if n == 2 else f"{n} of them"
        raise ValueError(f"{op}: {name} must be a positive int or {what}, got {value!r}")
    return ints
