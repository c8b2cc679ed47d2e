"""What each kernel launch moves, as its launcher states it: the cost model's view inside the ops.

A fused op is several launches, scratch buffers and a few torch ops, not one op reading its
inputs and writing its outputs. So every Triton launch goes through ``triton_helpers.launch``
with a *traffic statement*: a function of the launch's arguments (shapes, dtypes, tiles)
giving the distinct bytes the launch reads and the distinct bytes it writes. Distinct means
each byte once per launch however many programs touch it, and masked-off lanes do not count:
the convention ``fastmvit.costmodel`` uses for eager ops (an L2-resident re-read is free).

Run an op's launcher on meta tensors inside ``stating_launches()`` and nothing is launched:
each launch appends its :class:`Launch` instead, while the launcher's own torch ops (a partial
sum, a cast) run on meta where a dispatch mode can count them. ``fastmvit.costmodel`` does this
for every custom op registered with :func:`implementation`. ``tests/test_kernel_traffic.py``
holds every statement to the loads and stores the interpreter really executes (within 2%).

Imports no triton: the cost model runs where triton cannot.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Callable, Iterator, Optional

import torch

__all__ = ["Launch", "IMPLEMENTATIONS", "host_setup", "implementation", "nbytes", "record", "stating",
           "stating_launches", "tensor_bytes"]


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch: its name and the distinct bytes it reads and writes."""
    kernel: str
    read: int
    written: int

    @property
    def bytes(self) -> int:
        return self.read + self.written


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements of `t`: numel over its non-broadcast (stride != 0) dims."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
        elif size == 0:
            n = 0
    return n * t.element_size()


def nbytes(numel: int, dtype: torch.dtype) -> int:
    """Bytes of `numel` elements of `dtype`."""
    return int(numel) * dtype.itemsize


_stated: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar("fastmvit_stated", default=None)


@contextlib.contextmanager
def stating_launches() -> Iterator[list[Launch]]:
    """Within: launchers launch nothing and append the :class:`Launch` each launch states to the
    yielded list (run them on meta tensors)."""
    launches: list[Launch] = []
    token = _stated.set(launches)
    try:
        yield launches
    finally:
        _stated.reset(token)


def stating() -> bool:
    """True inside ``stating_launches()``."""
    return _stated.get() is not None


def record(launch: Launch) -> None:
    """Append a stated launch (``triton_helpers.launch`` calls this)."""
    _stated.get().append(launch)


# custom op name ("fastmvit::pool_attention") -> the Python function behind it, which runs the
# launchers. The cost model calls it on meta tensors inside stating_launches().
IMPLEMENTATIONS: dict[str, Callable] = {}


def implementation(qualname: str) -> Callable[[Callable], Callable]:
    """Register `fn` as the implementation of custom op `qualname` (a decorator that returns
    `fn` unchanged; put it under ``torch.library.custom_op``)."""
    def register(fn: Callable) -> Callable:
        IMPLEMENTATIONS[qualname] = fn
        return fn
    return register


@contextlib.contextmanager
def host_setup() -> Iterator[None]:
    """Torch work a launcher does once per shape and caches (index tables built on the host):
    hidden from any dispatch mode, so a cost count does not depend on what is cached."""
    from torch.utils._python_dispatch import _disable_current_modes
    with _disable_current_modes():
        yield
