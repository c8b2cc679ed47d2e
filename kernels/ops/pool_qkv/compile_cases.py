"""`pool_qkv`'s compile cases for tools/gpu_compile.py."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from ...args import pooled_size

# No tl.dot in these kernels: the GPU-compile harness should find no tensor-core instructions.
EXPECTS_TENSOR_CORES = False

# One representative launch per distinct compiled variant (a cold compile takes seconds). What is
# specialised: dtype, head dim D (a constexpr), class token (SP), the qkv row stride's divisibility
# by 16 (3 * heads * D: always with D 96; with D 72 for heads >= 2, which MViTv2-L always has) and,
# in the backward rows kernel, TILES_PER_PROG (1 up to batch x rows ~ 8k, then powers of two: a
# training batch at 56x56 needs 16 to 32). Grid sizes, strides and batch are runtime values.
# (label, batch, grid side, stride_q, stride_kv, heads, D, class token)
_COMPILE_SHAPES = (
    ("MViTv2-T/S/B stage 1", 1, 56, 1, 4, 1, 96, 1),
    ("MViTv2-L stage 1", 1, 56, 1, 4, 2, 72, 0),
    ("MViTv2-T stage 1, training batch 64", 64, 56, 1, 4, 1, 96, 1),
)
# Video (mvit_v2_s at 16 x 224 x 224: 8 frames, 3x3x3 kernels, strides (1, s, s)):
# (label, batch, (T, side), stride_q, stride_kv, heads, D, class token)
_VIDEO_SHAPES = (
    ("mvit_v2_s block 0", 1, (8, 56), 1, 8, 1, 96, 1),
    ("mvit_v2_s block 1, training batch 4", 4, (8, 56), 2, 4, 2, 96, 1),
    ("mvit_v2_s stage 3", 4, (8, 14), 1, 2, 4, 96, 1),
)


# The test suite's subset (cases(sample=True)): every image case, and of the video ones the strided
# training block (the one whose rows kernel spilled before its frame loop), both dtypes.
_VIDEO_SAMPLE = {"mvit_v2_s block 1, training batch 4"}


def cases(sample: bool = False) -> Iterable[tuple[str, Callable[[], None]]]:
    """(label, thunk) pairs; each thunk calls the Triton launchers (forward and backward) directly
    with CPU tensors at one MViTv2 shape (head dims 96 and 72, fp16 and bf16, with and without a
    class token, batch 1 and a training batch; and the video shapes, 3x3x3), so that under the stand-in driver of
    ``tools/gpu_compile.py`` every kernel variant the op launches for MViTv2 gets compiled.

    sample: the subset the test suite compiles (see _VIDEO_SAMPLE)."""
    from .triton_impl import backward, forward

    def thunk(B, side, sq, skv, heads, D, dtype, sp, frames=None):
        def run():
            hw = (side, side) if frames is None else (frames, side, side)
            t = () if frames is None else (1,)
            kernel = (3,) * len(hw)
            strides = (t + (sq, sq), t + (skv, skv))
            q_size, k_size = pooled_size(hw, kernel, strides[0]), pooled_size(hw, kernel, strides[1])
            qkv = torch.empty(B, sp + math.prod(hw), 3 * heads * D, dtype=dtype)
            w = [torch.empty(D, 1, *kernel, dtype=dtype) for _ in range(3)]
            g = [torch.empty(D, dtype=dtype) for _ in range(3)]
            b = [torch.empty(D, dtype=dtype) for _ in range(3)]
            q, k, v = forward(qkv, w, g, b, hw, heads, strides, q_size, k_size, sp, 1e-6)
            backward([torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)], qkv, w,
                            g, hw, heads, strides, q_size, k_size, sp, 1e-6)
        return run

    for label, B, side, sq, skv, heads, D, sp in _COMPILE_SHAPES:
        for dtype in (torch.float16, torch.bfloat16):
            yield (f"pool_qkv {label}: B{B} {side}x{side} sq{sq} skv{skv} heads{heads} D{D} "
                   f"{str(dtype).removeprefix('torch.')} cls{sp}",
                   thunk(B, side, sq, skv, heads, D, dtype, sp))
    for label, B, (frames, side), sq, skv, heads, D, sp in _VIDEO_SHAPES:
        if sample and label not in _VIDEO_SAMPLE:
            continue
        for dtype in (torch.float16, torch.bfloat16):
            yield (f"pool_qkv {label}: B{B} {frames}x{side}x{side} sq{sq} skv{skv} heads{heads} D{D} "
                   f"{str(dtype).removeprefix('torch.')} cls{sp}",
                   thunk(B, side, sq, skv, heads, D, dtype, sp, frames))
