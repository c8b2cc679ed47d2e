"""Which implementation an op runs: the Triton kernels or plain torch.

    with fastmvit.use_backend("triton"):   # or "torch", "auto"
        ...

The default comes from the environment variable ``FASTMVIT_BACKEND`` (``auto`` when unset).

- ``auto``: Triton on CUDA tensors, plain torch on anything else.
- ``triton``: the Triton kernels whatever the device. CPU tensors then need Triton's interpreter
  (``TRITON_INTERPRET=1`` set before triton is imported); the test suite does this.
- ``torch``: plain torch everywhere (the readable math, materialising what the kernels fuse).

The choice is read when an op is called, in Python: under ``torch.compile`` it is fixed at trace
time.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator

import torch

BACKENDS = ("auto", "triton", "torch")


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown fastmvit backend {name!r}: expected one of {BACKENDS}")
    return name


_backend: contextvars.ContextVar[str] = contextvars.ContextVar(
    "fastmvit_backend", default=_check(os.environ.get("FASTMVIT_BACKEND", "auto").strip().lower() or "auto")
)


# torch.compile cannot trace ContextVar.get: read it at trace time as a constant (no graph break).
@torch.compiler.assume_constant_result
def get_backend() -> str:
    """The backend in force: "auto", "triton" or "torch"."""
    return _backend.get()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed code with the given backend ("auto", "triton" or "torch")."""
    token = _backend.set(_check(name))
    try:
        yield
    finally:
        _backend.reset(token)


def triton_interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def resolve_backend(device: torch.device) -> str:
    """The implementation to run for tensors on `device`: "triton" or "torch"."""
    name = get_backend()
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return name


# What the Triton kernels take; float64 runs on the torch backend only.
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def require_triton_runnable(device: torch.device, op: str, dtype: torch.dtype | None = None) -> None:
    """Raise naming `op` when its Triton kernels cannot run: a TypeError for a `dtype` they do not
    take (float64: use the torch backend), a RuntimeError on CPU tensors without Triton's
    interpreter. (Meta tensors go through the ops' fake implementations.)"""
    if dtype is not None and dtype not in TRITON_DTYPES:
        raise TypeError(f"{op}: the 'triton' backend takes float32, float16 or bfloat16, "
                        f"not {dtype} (use the 'torch' backend)")
    if device.type == "cpu" and not triton_interpreting():
        raise RuntimeError(f"{op}: the 'triton' backend on CPU tensors needs Triton's interpreter "
                           "(set TRITON_INTERPRET=1 before triton is imported), or use the 'torch' backend")


def autotune_on(device: torch.device) -> bool:
    """Whether the ops autotune their launch configs: on a GPU yes; in the interpreter they run
    one fixed config (timing numpy would be pointless)."""
    return not (device.type == "cpu" and triton_interpreting())
