"""MViTv2's residual max-pool shortcut on tokens, fused: (B, N, C) tokens -> pooled tokens.

    y = max_pool_tokens(x, (H, W), kernel, stride, has_cls_token=False)

What it computes: x is (B, N, C), channels last, N = sp + H * W (sp = 1 with a class token, row 0).
The (H, W) grid ``x[:, sp:].reshape(B, H, W, C)`` is max-pooled exactly like
``nn.MaxPool2d(kernel, stride, padding=(kh // 2, kw // 2))`` (ceil_mode False, padding never wins),
the class token passes through, and y = (B, sp + H' * W', C) contiguous in x's dtype, with
H' = (H + 2 * (kh // 2) - kh) // sh + 1 (same for W). Ties and NaN follow torch: the window is
scanned row-major and an element wins when ``val > max or isnan(val)`` (the first maximum wins a
tie, a NaN propagates); the gradient goes to the winner only.

Two implementations, chosen by ``fastmvit.use_backend`` through ``resolve_backend(x.device)``:

- "torch": ``F.max_pool2d`` on the channels-last view of the grid and ``torch.cat`` for the token,
  autograd by torch; the CPU path of the model (float64 too).
- "triton": the custom op ``fastmvit::max_pool_tokens`` (returns y and the uint8 argmax; fake
  implementation and autograd registered, the backward being ``fastmvit::max_pool_tokens_backward``),
  so the cost model and ``torch.compile(fullgraph=True)`` see one op each way. Kernels in
  ``triton_impl.py``. CPU tensors need TRITON_INTERPRET=1; on the meta device the fake
  implementations run.

Design (the Triton path)
------------------------
Forward: one launch, grid (tiles of BLOCK_P flat output rows (b, r), channel blocks of BLOCK_C).
Channels are contiguous, so each of the kh * kw tap loads of a tile reads BLOCK_C consecutive
channels per row (coalesced, 32-byte sectors used in full when BLOCK_C divides C); the class-token
row copies its token in the same launch. The program keeps the running max (float32) and the winning
tap, and stores y and the argmax as one uint8 per output element: the tap's offset ky * kw + kx in
its window (kh * kw <= 256). Backward: one launch, grid (tiles of flat input rows, channel blocks),
a gather without atomics: each input position visits the at most cdiv(kh, sh) * cdiv(kw, sw)
windows that contain it, in a fixed order, and adds the window's output gradient where its argmax
points at this position (float32 accumulator); the class-token row copies its gradient. Every row
of dx is written once, so there is no zero-fill pass and the result is bitwise repeatable.
BLOCK_P * BLOCK_C = 2048 (8 warps); BLOCK_C = 64 at C 192/384/768, 32 at 96,
16 at 72/144 (the power of two padding C least). Strides and window are constexprs.

Compiled for sm_80 and sm_90 by ``tools/gpu_compile.py`` (``scripts/kernel_table.py`` prints the table):
no spills, no tensor cores.

Memory traffic per call (E = element size; grid G = H * W, pooled G' = H' * W'; per batch element,
C channels each; halo re-reads of overlapping windows are cache hits and not counted):

- fused forward: read x once ((sp + G) C E), write y ((sp + G') C E) and, when a gradient is needed,
  the argmax (G' C bytes); nothing else.
- eager forward (``F.max_pool2d`` + ``cat``): max_pool2d_with_indices reads the grid and writes the
  pooled grid plus int64 indices (8 G' C bytes), then ``cat`` reads the token and the pooled grid and
  writes y again: 2 launches.
- fused backward: read dy and the argmax, write dx ((sp + G) C E): 1 launch.
- eager backward: max_pool2d_with_indices_backward reads dy's grid part, the int64 indices and the
  input, and writes the grid gradient; then autograd pads the token's and the grid's gradients back
  to (B, N, C) (two slice_backward: zero-fill + copy) and adds them: 4 launches.
- the modeled bytes and launches, fused against eager, at MViTv2-T's pooled shortcuts:
  ``benchmarks/bench_max_pool_tokens.py``; ``tests/test_max_pool_tokens.py`` checks the op's bytes on
  meta tensors.

Saved for backward: the uint8 argmax only (G' C bytes per batch element), never x; the eager path
keeps x (its grid view holds x's storage) and the int64 indices (8 G' C bytes). Under
``torch.no_grad()`` or when x does not require grad, no argmax is written at all.

Dtypes: x float32, float16 or bfloat16 (float64 on the torch backend); y and dx in x's dtype; the
comparison and the gradient accumulation are float32 (exact for the max; dx sums at most
cdiv(kh, sh) * cdiv(kw, sw) gradients). Layout: any batch and token strides are read in place
(e.g. a (B, N, C) view of a wider buffer); a channel dim that is not contiguous is copied first.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ...args import check_3d, check_token_count, pooled_size, positive_ints
from ...backend import require_triton_runnable, resolve_backend
from . import op as _op  # noqa: F401  (registers the custom ops)
from .torch_impl import max_pool_tokens_torch

__all__ = ["max_pool_tokens", "max_pool_tokens_torch", "pooled_size"]

_MAX_WINDOW = 256  # the argmax is one uint8 window offset


def _check(x, hw_shape, kernel, stride, has_cls_token):
    """Check the arguments; return the grid ((H, W) or (T, H, W)), the kernel and the stride (one
    int per axis each), sp."""
    check_3d(x, "x", "(B, N, C) tokens", "max_pool_tokens")
    if (not isinstance(hw_shape, (tuple, list)) or len(hw_shape) not in (2, 3)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in hw_shape)):
        raise ValueError(f"max_pool_tokens: hw_shape must be two positive ints (H, W) or three (T, H, W), "
                         f"got {hw_shape!r}")
    grid = tuple(hw_shape)
    kernel = positive_ints(kernel, len(grid), "kernel", "max_pool_tokens")
    stride = positive_ints(stride, len(grid), "stride", "max_pool_tokens")
    if math.prod(kernel) > _MAX_WINDOW:
        raise ValueError(f"max_pool_tokens: the window {'x'.join(map(str, kernel))} has more than "
                         f"{_MAX_WINDOW} taps (the argmax is one uint8 offset)")
    sp = 1 if has_cls_token else 0
    B, N, C = x.shape
    check_token_count(N, grid, sp, "x", "max_pool_tokens")
    if C < 1 or B < 1:
        raise ValueError(f"max_pool_tokens: x must have B >= 1 and C >= 1, got {tuple(x.shape)}")
    return grid, kernel, stride, sp


def max_pool_tokens(x: torch.Tensor, hw_shape: Sequence[int], kernel, stride,
                    has_cls_token: bool = False) -> torch.Tensor:
    """Max-pool the (H, W) (or (T, H, W)) token grid of x; the class token (row 0, if any) passes through.

    Args:
        x: (B, N, C), N = sp + H * W (sp = 1 with a class token); float32/16, bf16 (float64 on the
            torch backend). Batch and token strides are free; the channel dim is copied if strided.
        hw_shape: the token grid (H, W), or (T, H, W) for video.
        kernel, stride: int or one positive int per grid axis; padding is kernel // 2 per axis.
        has_cls_token: whether row 0 of each batch element is a class token.
    Returns:
        y (B, sp + H' * W', C), contiguous, in x's dtype; H' = (H + 2 * (kh // 2) - kh) // sh + 1.
    """
    hw, kernel, stride, sp = _check(x, hw_shape, kernel, stride, has_cls_token)
    if resolve_backend(x.device) == "torch":
        return max_pool_tokens_torch(x, hw, kernel, stride, sp)
    require_triton_runnable(x.device, "max_pool_tokens", x.dtype)
    need_argmax = torch.is_grad_enabled() and x.requires_grad
    y, _ = torch.ops.fastmvit.max_pool_tokens(x, list(hw), list(kernel), list(stride), bool(sp),
                                              need_argmax)
    return y
