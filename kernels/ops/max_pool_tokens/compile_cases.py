"""`max_pool_tokens`' compile cases for tools/gpu_compile.py."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from ...args import pooled_size

# No tl.dot in these kernels: the GPU-compile harness should find no tensor-core instructions.
EXPECTS_TENSOR_CORES = False

# What is specialised: dtype, class token (SP), window and strides, BLOCK_C (from C), whether the
# argmax is written, and the divisibility by 16 of C and of the row strides. Grid sizes and batch
# are runtime values. MViTv2 pools its shortcut 3x3 with stride 2 (kernel = stride + 1).
# (label, batch, grid side, C, class token)
_COMPILE_SHAPES = (
    ("MViTv2-T stage 1->2", 1, 56, 96, 1),
    ("MViTv2-T stage 3->4", 1, 14, 768, 1),
    ("MViTv2-T stage 1->2 no cls", 1, 56, 96, 0),
    ("MViTv2-T stage 3->4 no cls", 1, 14, 768, 0),
    ("MViTv2-T stage 1->2 training batch 64", 64, 56, 96, 1),
    ("MViTv2-L stage 1->2", 1, 56, 144, 1),
    ("MViTv2-L stage 1->2 (C 72)", 1, 56, 72, 0),
    ("MViTv2-S stage 2->3", 8, 28, 192, 1),
)


# Video: the (1, 3, 3) / (1, 2, 2) shortcut of mvit_v2_s (8 frames): (label, batch, (T, side), C, class token)
_VIDEO_SHAPES = (
    ("mvit_v2_s stage 1->2", 4, (8, 56), 96, 1),
    ("mvit_v2_s stage 3->4", 4, (8, 14), 384, 1),
)

_SAMPLE = {"MViTv2-T stage 1->2", "MViTv2-T stage 3->4", "MViTv2-T stage 1->2 no cls",
           "MViTv2-T stage 3->4 no cls"}


def cases(sample: bool = False) -> Iterable[tuple[str, Callable[[], None]]]:
    """(label, thunk) pairs; each thunk calls the Triton launchers (forward with and without the
    argmax, backward) directly with CPU tensors at one MViTv2 shape (3x3 window, stride 2), so that
    under the stand-in driver of ``tools/gpu_compile.py`` every kernel variant the op launches
    for MViTv2 gets compiled.

    sample: the representative subset the test suite compiles: fp16 and bf16, with and without a
    class token, C 96 and 768."""
    from .triton_impl import backward, forward

    def thunk(B, side, C, dtype, sp, frames=None):
        def run():
            hw, kernel, stride = (side, side), (3, 3), (2, 2)
            if frames is not None:
                hw, kernel, stride = (frames, *hw), (1, *kernel), (1, *stride)
            out_hw = pooled_size(hw, kernel, stride)
            x = torch.empty(B, sp + math.prod(hw), C, dtype=dtype)
            y, arg = forward(x, hw, out_hw, kernel, stride, sp, True)
            forward(x, hw, out_hw, kernel, stride, sp, False)
            backward(torch.empty_like(y), arg, hw, out_hw, kernel, stride, sp)
        return run

    for label, B, side, C, sp in _COMPILE_SHAPES:
        if sample and label not in _SAMPLE:
            continue
        for dtype in (torch.float16, torch.bfloat16):
            yield (f"max_pool_tokens {label}: B{B} {side}x{side} C{C} "
                   f"{str(dtype).removeprefix('torch.')} cls{sp}", thunk(B, side, C, dtype, sp))
    for label, B, (frames, side), C, sp in _VIDEO_SHAPES:
        if sample:
            continue
        for dtype in (torch.float16, torch.bfloat16):
            yield (f"max_pool_tokens {label}: B{B} {frames}x{side}x{side} C{C} "
                   f"{str(dtype).removeprefix('torch.')} cls{sp}", thunk(B, side, C, dtype, sp, frames))
