"""Triton kernels of the token max-pool (`fastmvit.kernels.max_pool_tokens`), and their launchers.

The public op, its checks and the design note live in the package's ``__init__``, the custom ops in
``op``, the plain torch path in ``torch_impl``; this module holds what runs on the device.

Video (HAS_T): the grid is (T, H, W), the window (KT, KH, KW), the stride (ST, SH, SW), and the
argmax offset (kt * KH + ky) * KW + kx; without HAS_T, T = KT = ST = 1 and only the 2-D index math runs.

Notation: x is (B, N, C) tokens with a contiguous channel dim, N = SP + H * W, SP = 1 with a class
token (row 0) else 0. The grid is max-pooled with a (KH, KW) window, stride (SH, SW), padding
(PAD_H, PAD_W) = (KH // 2, KW // 2) (padding never wins); the pooled grid is (OH, OW) and the output
y is (B, SP + OH * OW, C) contiguous. The argmax of output (b, p, c) (p a pooled-grid position) is
the offset ky * KW + kx of the winning tap inside its window, uint8, (B, OH * OW, C) contiguous.

Kernels (comparisons in float32, which preserves the order of fp16/bf16 values exactly):

- ``max_pool_tokens_fwd_kernel``: grid (tiles of BLOCK_P flat output rows (b, r), channel blocks
  of BLOCK_C). A program scans the KH * KW taps of its rows' windows in row-major order (ky outer,
  kx inner), each tap one masked (BLOCK_P, BLOCK_C) load (channels contiguous: coalesced), keeping
  the running max and the winning tap: a tap wins when ``val > max or isnan(val)``, which is
  torch's rule (the first maximum wins a tie, a NaN propagates, the last NaN wins). The running
  max starts at -inf with the first in-grid tap as the winner (torch's start too: a window of -inf
  points at its first valid element). Padding taps load -inf, so they never win. The class-token
  row (r == 0 when SP) copies its token. Stores y and, when WRITE_ARGMAX, the uint8 argmax.
- ``max_pool_tokens_bwd_kernel``: grid (tiles of BLOCK_P flat input rows (b, n), channel blocks).
  The input gradient as a gather, no atomics: input position (iy, ix) lies in the windows
  oy = (iy + PAD_H) // SH - j, j < cdiv(KH, SH), at tap ky = iy + PAD_H - oy * SH when ky < KH and
  0 <= oy < OH (same along x): at most cdiv(KH, SH) * cdiv(KW, SW) windows, visited in a fixed
  order. Where a window's argmax equals that tap, its output gradient is added (float32
  accumulator). The class-token row copies its gradient. Every row of dx is written.

Strides SH, SW and the window are constexprs (MViTv2 uses 3x3 stride 2 only, so a handful of
variants), so the window arithmetic is shifts and the backward loop has exactly the windows that can
contain a position; grid sizes, batch and row strides are runtime values (one compile per model).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ... import triton_helpers as helpers
from ...args import window_coverage
from ...triton_helpers import grid_position
from ...traffic import tensor_bytes

# A program's tile: BLOCK_P rows x BLOCK_C channels, TILE_ELEMS values. BLOCK_C is the power of two
# in CHANNEL_BLOCKS that pads C least (ties: the larger): 64 at C 192/768, 32 at C 96, 16 at C 72
# or 144, so that a row's channels are one to a few full 32-byte sectors. 8 warps: 8 values per
# thread per tap (forward) or window (backward). The compiler issues the taps' loads together, so
# registers grow with taps x values per thread: with 4 warps the forward that writes the argmax took
# 187 registers (fp16, sm_80) and 4 KB of shared memory for a layout change; with 8, under 100 and none.
TILE_ELEMS = 2048
CHANNEL_BLOCKS = (64, 32, 16)
FWD_WARPS = 8
BWD_WARPS = 8


@triton.jit
def _token_tile(C, n_rows, n_per_sample, SP: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's BLOCK_P flat token rows (b, token) x BLOCK_C channels: (rows, channels,
    channels in range, rows in range, sample b, token in the sample, grid position (0 for the class token),
    the row is an in-range grid row)."""
    rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < n_rows
    b = rows // n_per_sample
    token = rows - b * n_per_sample
    return rows, offs_c, offs_c < C, row_ok, b, token, tl.maximum(token - SP, 0), row_ok & (token >= SP)


@triton.jit(do_not_specialize=["T", "H", "W", "OT", "OH", "OW", "n_rows", "stride_xb"])
def max_pool_tokens_fwd_kernel(
    x_ptr, stride_xb, stride_xn,          # (B, N, C), channel dim contiguous
    y_ptr,                                # (B, SP + OT * OH * OW, C) contiguous, x's dtype
    arg_ptr,                              # (B, OT * OH * OW, C) contiguous uint8 (unused unless WRITE_ARGMAX)
    T, H, W, OT, OH, OW, C, n_rows,       # n_rows = B * (SP + OT * OH * OW); T = OT = 1 without HAS_T
    SP: tl.constexpr, KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, HAS_T: tl.constexpr,
    WRITE_ARGMAX: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    PAD_T: tl.constexpr = KT // 2
    PAD_H: tl.constexpr = KH // 2
    PAD_W: tl.constexpr = KW // 2
    # flat (b, r) output rows; p: the pooled-grid position
    rows, offs_c, c_ok, row_ok, b, r, p, grid_ok = _token_tile(C, n_rows, SP + OT * OH * OW, SP, BLOCK_P, BLOCK_C)
    ot, oy, ox = grid_position(p, OH, OW, HAS_T)
    it0 = ot * ST - PAD_T                                            # window origin (may be padding)
    iy0 = oy * SH - PAD_H
    ix0 = ox * SW - PAD_W
    x_row = x_ptr + b.to(tl.int64) * stride_xb                       # token 0 of batch b
    tap_row = x_row + (SP + (it0 * H + iy0) * W + ix0).to(tl.int64) * stride_xn  # tap (0, 0, 0)
    m = tl.full((BLOCK_P, BLOCK_C), float("-inf"), dtype=tl.float32)
    # the first in-grid tap is the winner until one beats -inf (torch starts there too)
    first = (tl.maximum(-it0, 0) * KH + tl.maximum(-iy0, 0)) * KW + tl.maximum(-ix0, 0)
    arg = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.int32) + first[:, None]
    for kt in tl.static_range(KT):
        if HAS_T:
            t_ok = grid_ok & (it0 >= -kt) & (it0 < T - kt)
        else:
            t_ok = grid_ok
        for ky in tl.static_range(KH):
            y_ok = t_ok & (iy0 >= -ky) & (iy0 < H - ky)
            for kx in tl.static_range(KW):
                ok = y_ok & (ix0 >= -kx) & (ix0 < W - kx)
                ptr = tap_row + ((kt * H + ky) * W + kx) * stride_xn
                # padding loads -inf: it never wins (-inf > m is false, and it is not NaN)
                val = tl.load(ptr[:, None] + offs_c[None, :], mask=ok[:, None] & c_ok[None, :],
                              other=float("-inf")).to(tl.float32)
                win = (val > m) | (val != val)                       # torch's rule: > or NaN
                m = tl.where(win, val, m)
                arg = tl.where(win, (kt * KH + ky) * KW + kx, arg)
    if SP:   # the class token passes through
        is_cls = row_ok & (r == 0)
        cls = tl.load(x_row[:, None] + offs_c[None, :], mask=is_cls[:, None] & c_ok[None, :], other=0.0)
        m = tl.where(is_cls[:, None], cls.to(tl.float32), m)
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * C + offs_c[None, :], m.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & c_ok[None, :])
    if WRITE_ARGMAX:
        arg_row = (b.to(tl.int64) * (OT * OH * OW) + p) * C
        tl.store(arg_ptr + arg_row[:, None] + offs_c[None, :], arg.to(tl.uint8),
                 mask=grid_ok[:, None] & c_ok[None, :])


@triton.jit(do_not_specialize=["T", "H", "W", "OT", "OH", "OW", "n_rows", "stride_db"])
def max_pool_tokens_bwd_kernel(
    dy_ptr, stride_db, stride_dn,         # (B, SP + OT * OH * OW, C), channel dim contiguous
    arg_ptr,                              # (B, OT * OH * OW, C) contiguous uint8 window offsets
    dx_ptr,                               # (B, SP + T * H * W, C) contiguous, written whole
    T, H, W, OT, OH, OW, C, n_rows,       # n_rows = B * (SP + T * H * W)
    SP: tl.constexpr, KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, HAS_T: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    PAD_T: tl.constexpr = KT // 2
    PAD_H: tl.constexpr = KH // 2
    PAD_W: tl.constexpr = KW // 2
    # flat (b, n) input rows; pos: the grid position
    rows, offs_c, c_ok, row_ok, b, n, pos, grid_ok = _token_tile(C, n_rows, SP + T * H * W, SP, BLOCK_P, BLOCK_C)
    it, iy, ix = grid_position(pos, H, W, HAS_T)
    tx = ix + PAD_W                        # = ox * SW + kx for each window (ox, kx) holding ix
    ty = iy + PAD_H
    tt = it + PAD_T                        # 0 without HAS_T
    dy_row = dy_ptr + b.to(tl.int64) * stride_db
    arg_b = arg_ptr + b.to(tl.int64) * (OT * OH * OW) * C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for jt in tl.static_range((KT + ST - 1) // ST):
        if HAS_T:
            o_t = tt // ST - jt
            k_t = tt - o_t * ST
            t_ok = grid_ok & (o_t >= 0) & (o_t < OT) & (k_t < KT)
        else:
            o_t = tt
            k_t = tt
            t_ok = grid_ok
        for j in tl.static_range((KH + SH - 1) // SH):
            oy = ty // SH - j
            ky = ty - oy * SH
            y_ok = t_ok & (oy >= 0) & (oy < OH) & (ky < KH)
            for i in tl.static_range((KW + SW - 1) // SW):
                ox = tx // SW - i
                kx = tx - ox * SW
                ok = y_ok & (ox >= 0) & (ox < OW) & (kx < KW)
                q = (o_t * OH + oy) * OW + ox                        # the window's output position
                mask = ok[:, None] & c_ok[None, :]
                a = tl.load((arg_b + q.to(tl.int64) * C)[:, None] + offs_c[None, :], mask=mask, other=0)
                hit = mask & (a.to(tl.int32) == ((k_t * KH + ky) * KW + kx)[:, None])
                g = tl.load((dy_row + (SP + q).to(tl.int64) * stride_dn)[:, None] + offs_c[None, :],
                            mask=hit, other=0.0)
                acc += g.to(tl.float32)
    if SP:   # the class token's gradient passes through
        is_cls = row_ok & (n == 0)
        g = tl.load(dy_row[:, None] + offs_c[None, :], mask=is_cls[:, None] & c_ok[None, :], other=0.0)
        acc += g.to(tl.float32)
    tl.store(dx_ptr + rows.to(tl.int64)[:, None] * C + offs_c[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=row_ok[:, None] & c_ok[None, :])


# --------------------------------------------------------------------------------------------
# Launchers. They take checked, device-ready tensors (the package's ``__init__`` checks them) and launch; they
# never look at the device or at TRITON_INTERPRET, so that the GPU-compile harness can call them.
# --------------------------------------------------------------------------------------------

# Traffic statements (distinct bytes per launch, see fastmvit.kernels.traffic).
def _fwd_states(a):
    """The grid tokens the windows cover and the class tokens in; y (and the argmax) out."""
    x = a["x_ptr"]
    tokens = a["SP"] + window_coverage((a["T"], a["H"], a["W"]), (a["KT"], a["KH"], a["KW"]),
                                       (a["ST"], a["SH"], a["SW"]))
    written = tensor_bytes(a["y_ptr"]) + (tensor_bytes(a["arg_ptr"]) if a["WRITE_ARGMAX"] else 0)
    return x.shape[0] * tokens * a["C"] * x.element_size(), written


def _bwd_states(a):
    """dy (every output is its window winner's: padding never wins) and the argmax in; dx out."""
    return tensor_bytes(a["dy_ptr"]) + tensor_bytes(a["arg_ptr"]), tensor_bytes(a["dx_ptr"])


def block_sizes(C: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C) for C channels: BLOCK_C from CHANNEL_BLOCKS padding C least (ties: the
    larger block), BLOCK_P = TILE_ELEMS // BLOCK_C."""
    block_c = min(CHANNEL_BLOCKS, key=lambda bc: (triton.cdiv(C, bc) * bc, -bc))
    return TILE_ELEMS // block_c, block_c


def _as3(size) -> tuple[int, int, int]:
    """A (h, w) or (t, h, w) size, kernel or stride as (t, h, w) (one frame, kernel and stride 1)."""
    return (1, *size) if len(size) == 2 else tuple(size)


def _window_meta(hw, kernel, stride, sp) -> dict:
    (kt, kh, kw), (st, sh, sw) = _as3(kernel), _as3(stride)
    return dict(SP=sp, KT=kt, KH=kh, KW=kw, ST=st, SH=sh, SW=sw, HAS_T=len(hw) == 3)


def forward(x, hw, out_hw, kernel, stride, sp, write_argmax):
    """y (B, sp + prod(out_hw), C) contiguous in x's dtype, and the argmax: uint8
    (B, prod(out_hw), C) contiguous when `write_argmax`, else an empty (0,) uint8 tensor (nothing
    written). x: (B, sp + prod(hw), C) with x.stride(2) == 1 (any batch and token strides);
    hw = (H, W) or (T, H, W), out_hw the pooled grid, kernel and stride one int per axis; sp: 1
    with a class token, else 0."""
    assert x.stride(2) == 1, "forward: x's channel dim must be contiguous"
    B, N, C = x.shape
    n_out = math.prod(out_hw)
    y = helpers.empty(B, sp + n_out, C, device=x.device, dtype=x.dtype)
    arg = helpers.empty(*((B, n_out, C) if write_argmax else (0,)), device=x.device, dtype=torch.uint8)
    n_rows = B * (sp + n_out)
    block_p, block_c = block_sizes(C)
    grid = (triton.cdiv(n_rows, block_p), triton.cdiv(C, block_c))
    helpers.launch(max_pool_tokens_fwd_kernel, grid, (
        x, x.stride(0), x.stride(1), y, arg if write_argmax else y, *_as3(hw), *_as3(out_hw), C, n_rows),
        dict(_window_meta(hw, kernel, stride, sp), WRITE_ARGMAX=bool(write_argmax),
             BLOCK_P=block_p, BLOCK_C=block_c, num_warps=FWD_WARPS, num_stages=1), _fwd_states)
    return y, arg


def backward(dy, arg, hw, out_hw, kernel, stride, sp):
    """dx (B, sp + prod(hw), C) contiguous in dy's dtype from dy (B, sp + prod(out_hw), C) (channel
    dim contiguous, any batch and token strides) and the uint8 argmax (B, prod(out_hw), C) contiguous."""
    assert dy.stride(2) == 1 and arg.is_contiguous(), "backward: layout"
    B, _, C = dy.shape
    dx = helpers.empty(B, sp + math.prod(hw), C, device=dy.device, dtype=dy.dtype)
    n_rows = B * (sp + math.prod(hw))
    block_p, block_c = block_sizes(C)
    grid = (triton.cdiv(n_rows, block_p), triton.cdiv(C, block_c))
    helpers.launch(max_pool_tokens_bwd_kernel, grid,
                   (dy, dy.stride(0), dy.stride(1), arg, dx, *_as3(hw), *_as3(out_hw), C, n_rows),
                   dict(_window_meta(hw, kernel, stride, sp), BLOCK_P=block_p, BLOCK_C=block_c,
                        num_warps=BWD_WARPS, num_stages=1), _bwd_states)
    return dx
