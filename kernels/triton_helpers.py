"""What the ops' Triton code shares: @triton.jit helpers, the triton version, the one allocator.

Imports triton: only the ops' ``triton_impl`` modules import this, on an op's first launch.
"""
from typing import Callable

import torch
import triton
import triton.language as tl

from . import traffic

# (major, minor) of the triton in use. Its compiler decides what spills, so a launch config that is
# clean under one version may spill under another: the ops prune per version (see ops/gelu_linear/triton_impl.py, OLDER_COMPILER).
TRITON_VERSION = tuple(int(part) for part in triton.__version__.split(".")[:2])


@triton.jit
def mma(a, b, acc, FP32: tl.constexpr):
    """acc + a @ b, float32 accumulation. float32 operands: exact IEEE products (no TF32, which a
    float32 tl.dot uses by default on a GPU); half operands: tensor cores."""
    if FP32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def head_rows(ptr, bh, H, stride_b, stride_h, stride_n, ALIGN: tl.constexpr):
    """(ptr moved to sample bh // H, head bh % H of a (B, H, N, D) tensor; its row stride).

    The three strides arrive divided by ALIGN (the launcher's choice: the largest of 16, 8, 4, 2, 1
    that divides them all); multiplying by the constexpr tells the compiler every row starts
    ALIGN-element aligned, so loads vectorise (D = 72 rows too)."""
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    return ptr + b * (stride_b * ALIGN) + h * (stride_h * ALIGN), stride_n * ALIGN


@triton.jit
def grid_position(s, height, width, HAS_T: tl.constexpr):
    """Flat positions s on a (frames, height, width) grid -> (t, y, x). Without HAS_T (a 2-D grid)
    t is 0 and y = s // width: only the 2-D index math runs."""
    y = s // width
    x = s - y * width
    if HAS_T:
        t = y // height
        y = y - t * height
    else:
        t = y * 0
    return t, y, x


@triton.jit
def onehot_matmul(rel, onehot, acc, FP32: tl.constexpr, REL_LEFT: tl.constexpr):
    """acc + rel @ onehot (REL_LEFT) or acc + onehot @ rel, with rel float32 and onehot a 0/1 bool
    matrix: an exact gather-and-broadcast on tensor cores (the rel-pos bias expansion and its
    transpose; a register gather spills).

    Half inputs: rel is split into two bfloat16 parts, hi + lo, which together carry 16 bits of
    mantissa; 0/1 are exact in bfloat16 and every product is exact, so the result is rel to about
    2**-17 relative. float32 inputs: one exact IEEE float32 matmul."""
    if FP32:
        oh = onehot.to(tl.float32)
        if REL_LEFT:
            return tl.dot(rel, oh, acc, input_precision="ieee")
        else:
            return tl.dot(oh, rel, acc, input_precision="ieee")
    else:
        hi = rel.to(tl.bfloat16)
        lo = (rel - hi.to(tl.float32)).to(tl.bfloat16)
        oh = onehot.to(tl.float32).to(tl.bfloat16)  # via float32: the interpreter casts bool -> bf16 wrongly
        if REL_LEFT:
            return tl.dot(lo, oh, tl.dot(hi, oh, acc))
        else:
            return tl.dot(oh, lo, tl.dot(oh, hi, acc))


def empty(*shape, dtype, device) -> torch.Tensor:
    """Every buffer a launcher allocates, outputs and scratch alike, comes from here (the launchers
    call it as ``helpers.empty``), so a test can poison them all with one patch."""
    return torch.empty(*shape, dtype=dtype, device=device)


def kernel_name(kernel) -> str:
    """The @triton.jit function's name behind a kernel, autotuned or not, compiled or interpreted."""
    while hasattr(kernel, "fn"):
        kernel = kernel.fn
    return kernel.__name__


def launch(kernel, grid, args: tuple, meta: dict, states: Callable[[dict], tuple[int, int]]) -> None:
    """``kernel[grid](*args, **meta)``: every launch of the ops goes through here with `states`,
    its traffic statement: ``states(named) -> (bytes read, bytes written)``, the distinct bytes of
    the launch (see ``fastmvit.kernels.traffic``), where `named` maps the kernel's argument names
    to this launch's values (tensors, ints, constexprs; an autotuned kernel adds its first
    config's tiles).

    Inside ``traffic.stating_launches()`` (meta tensors) nothing is launched and the statement
    is recorded instead."""
    if not traffic.stating():
        kernel[grid](*args, **meta)
        return
    named = dict(zip(kernel.arg_names, args))       # a JITFunction's, or an Autotuner's (the same)
    if hasattr(kernel, "configs"):                  # an Autotuner: tiles of its first config
        named.update(kernel.configs[0].kwargs)
    named.update(meta)
    read, written = states(named)
    traffic.record(traffic.Launch(kernel_name(kernel), int(read), int(written)))


def launch_tuned(tuned, grid: Callable[[dict], tuple], args: tuple, meta: dict, states, autotune: bool,
                 interpreter_config: dict) -> None:
    """``launch`` of an autotuned kernel (`autotune`: on a GPU), or of the kernel behind it with the
    fixed `interpreter_config` tiles (the CPU interpreter: timing numpy would be pointless).
    grid(config) -> the grid for a config's tiles."""
    if autotune:
        launch(tuned, grid, args, meta, states)
    else:
        launch(tuned.fn, grid(interpreter_config), args, {**meta, **interpreter_config}, states)
