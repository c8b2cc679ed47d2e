"""Triton kernels of the fused pooling prologue (`fastmvit.kernels.pool_qkv`), and their launchers.

The public op, its checks and the design note live in the package's ``__init__``, the plain torch
path in ``torch_impl``; this module holds only
what runs on the device, so that importing ``fastmvit.kernels`` does not need triton.

Notation: the block's qkv projection output ``qkv`` is (B, N, 3 * heads * D) with the channel layout
[3][heads][D] and a contiguous last dim; N = SP + H * W, SP = 1 with a class token (row 0) else 0.
``t`` = 0, 1, 2 selects q, k, v. Pooled grid of t: (oh_t, ow_t) = ((H + 2 * (KH // 2) - KH) // sh_t + 1,
same for W); its output has N_t = SP + oh_t * ow_t rows. k and v share a stride, so a size.
Video (HAS_T): the grid is (T, H, W), the kernel (KT, KH, KW), the pooled grid (ot_t, oh_t, ow_t);
N = SP + T * H * W. Without HAS_T, T = KT = 1 and the kernels run the 2-D index math only.

Kernels (all float32 inside: loads are upcast at once, accumulators are float32):

Rows are flat over (batch, head, row): row i of t is (b * heads + head) * N_t + r.

- ``pool_qkv_fwd_kernel``: grid (the tiles of BLOCK_M flat output rows of q, then k, then v). A program computes
  BLOCK_M rows x the whole head dim (BLOCK_D >= D, LayerNorm needs the full row) of t:
  KH * KW masked tap loads of (BLOCK_M, BLOCK_D) straight from ``qkv`` (the class-token row loads its
  token instead), times the depthwise weight, then LayerNorm over D, one store into q, k or v.
- ``pool_qkv_bwd_rows_kernel``: grid (chunks of TILES_PER_PROG row tiles, 3). Per tile it
  recomputes the pooled rows and their LayerNorm statistics exactly as the forward does, takes the
  LayerNorm backward to the pre-norm gradient ``g`` (float32), stores ``g`` of the grid rows into a
  scratch buffer and ``g`` of the class-token row straight into d(qkv) (the token bypasses the
  conv). It accumulates, in registers over its tiles, the partial sums of d(norm weight) = sum dy *
  xhat, d(norm bias) = sum dy and d(conv weight)[tap] = sum g * input shifted by tap, and writes them
  once per program to a partials buffer.
- ``pool_qkv_bwd_input_kernel``: grid (tiles of BLOCK_M flat input positions, 3). The input
  gradient of the strided conv written as a gather (a transposed conv): input (iy, ix) sums
  g[oy, ox] * w[tap] over the taps with oy * sh - pad + dy = iy (same on x), a fixed order, no atomics.
  Every grid input row is written (zero where no output reads it, e.g. stride 4 with a 3x3 kernel).

The partials are then summed over programs by torch in a fixed order (``partials.sum(1)``, no
atomics), so the whole backward is bitwise repeatable on a GPU.
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

# Register tile of a program: BLOCK_M rows x BLOCK_D (head dim, next power of two) float32 values.
# The compiler issues the KH * KW tap loads of a tile together (memory-level parallelism), so the
# registers grow with taps x elements per thread: 16 elements per thread (forward, bf16 taps) and 8
# (backward: float32 gradient taps in the input kernel, ~6 live tiles in the rows kernel) keep every
# kernel under the 255-register cap without spills on sm_80 and sm_90.
TILE_ELEMS = 2048          # 16 rows at D 96/128 (padded), 32 at D 64, 128 at D 16, 8 at D 256
ROWS_TILE_ELEMS = 1024     # the backward rows kernel: 4 elements per thread
FWD_WARPS = 4
# A register cap for ptxas (.maxnreg). Without one, ptxas chose a 64-register budget for some fp16
# builds on sm_90 and spilled (STACK 32 B); 128 spilled too (it hoists more tap loads when allowed);
# 168 compiles every variant without spills on sm_80 and sm_90: 3 forward blocks (12 warps) per SM.
MAX_REGISTERS = 168
BWD_WARPS = 8
# Video (a 3x3x3 kernel, 27 taps): the forward with 8 warps (4 spilled 512 B at 168 registers and
# 16 B at 255 on sm_90), the backward rows kernel with its frame loop at up to 255 registers (168
# spilled 24 B on sm_90). No spills on sm_80 / sm_90 under triton 3.6 and 3.9.
FWD_WARPS_3D = 8
ROWS_MAX_REGISTERS_3D = 255
# A backward-rows program walks several row tiles so that the partial sums it writes stay small
# next to the rows it reads: aim at about this many programs for the biggest of q, k, v (times 3
# for q, k, v: about 3 programs of 8 warps per SM of an H100). Each program writes
# (KH * KW + 2) * D float32 partials, which the params kernel reads back (the statements below).
BWD_TARGET_PROGRAMS = 128


@triton.jit
def _select_t(t, a, b, c):
    """a, b or c for t = 0, 1, 2 (pointers or scalars of the three tensors q, k, v)."""
    if t == 0:
        r = a
    elif t == 1:
        r = b
    else:
        r = c
    return r


@triton.jit
def _pooling_of(t, q_st, q_sh, q_sw, q_ot, q_oh, q_ow, kv_st, kv_sh, kv_sw, kv_ot, kv_oh, kv_ow):
    """The pooling of tensor t (0 = q, 1 = k, 2 = v): (strides t, h, w, pooled grid t, h, w, and the
    pooled rows of the tensors before t: where t's part of a per-row scratch starts)."""
    is_q = t == 0
    start = tl.where(t > 0, q_ot * q_oh * q_ow, 0) + tl.where(t > 1, kv_ot * kv_oh * kv_ow, 0)
    return (tl.where(is_q, q_st, kv_st), tl.where(is_q, q_sh, kv_sh), tl.where(is_q, q_sw, kv_sw),
            tl.where(is_q, q_ot, kv_ot), tl.where(is_q, q_oh, kv_oh), tl.where(is_q, q_ow, kv_ow), start)


@triton.jit
def _token_rows(base_ptr, stride_b, rows, n_rows, heads, t, D):
    """Flat rows (b, head, r) of t, r < n_rows -> (pointer to token 0 of (b, t, head) in a tensor laid
    out like qkv (BLOCK_M,), r (BLOCK_M,), b * heads + head (BLOCK_M,))."""
    bh = rows // n_rows
    r = rows - bh * n_rows
    b = bh // heads
    h = bh - b * heads
    return base_ptr + b.to(tl.int64) * stride_b + (t * heads + h) * D, r, bh


@triton.jit
def _tile_coords(in_row, stride_n, r, row_ok, H, W, st, sh, sw, oh, ow,
                 SP: tl.constexpr, PAD_T: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
                 HAS_T: tl.constexpr):
    """Where output rows r (local to their (b, head); in_row points at their token 0) read.
    Returns (all (BLOCK_M,)): sp_ok, the grid rows (not the class token, not past the end); it0,
    iy0, ix0, the input position of tap (0, 0, 0) (may be in the padding; it0 = 0 without HAS_T);
    tap0, a pointer to that token. Tap (dt, dy, dx) of a row is at
    tap0 + ((dt * H + dy) * W + dx) * stride_n, inside the grid iff -dy <= iy0 < H - dy,
    -dx <= ix0 < W - dx (and -dt <= it0 < T - dt)."""
    p = r - SP                                                         # index in the pooled grid
    sp_ok = row_ok & (p >= 0)
    ot, oy, ox = grid_position(tl.maximum(p, 0), oh, ow, HAS_T)
    it0 = ot * st - PAD_T                                              # 0 without HAS_T (KT = 1)
    iy0 = oy * sh - PAD_H
    ix0 = ox * sw - PAD_W
    tap0 = in_row + (SP + (it0 * H + iy0) * W + ix0) * stride_n
    return sp_ok, it0, iy0, ix0, tap0


@triton.jit
def _tap_ok(sp_ok, it0, iy0, ix0, T, H, W, dt, dy, dx, HAS_T: tl.constexpr):
    """Rows whose tap (dt, dy, dx) lies inside the grid (not in the padding)."""
    ok = sp_ok & (iy0 >= -dy) & (iy0 < H - dy) & (ix0 >= -dx) & (ix0 < W - dx)
    if HAS_T:
        ok = ok & (it0 >= -dt) & (it0 < T - dt)
    return ok


@triton.jit
def _pooled_rows(in_row, stride_n, w_base, r, row_ok, offs_d, d_ok, T, H, W, st, sh, sw, oh, ow,
                 SP: tl.constexpr, KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_T: tl.constexpr):
    """(BLOCK_M, BLOCK_D) float32: output rows r of t before the norm (the depthwise conv of the
    grid; row 0 is the class token itself when SP == 1), and the tile's coordinates (_tile_coords).

    Index math is hoisted out of the tap loop: per tap only compares and pointer offsets."""
    sp_ok, it0, iy0, ix0, tap0 = _tile_coords(in_row, stride_n, r, row_ok, H, W, st, sh, sw, oh, ow,
                                              SP, KT // 2, KH // 2, KW // 2, HAS_T)
    acc = tl.zeros((r.shape[0], offs_d.shape[0]), dtype=tl.float32)
    w_ptr = w_base + offs_d * (KT * KH * KW)                           # (BLOCK_D,) at tap 0
    for dt in tl.static_range(KT):
        for dy in tl.static_range(KH):
            for dx in tl.static_range(KW):
                ok = _tap_ok(sp_ok, it0, iy0, ix0, T, H, W, dt, dy, dx, HAS_T)
                ptr = tap0 + ((dt * H + dy) * W + dx) * stride_n
                x = tl.load(ptr[:, None] + offs_d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
                w = tl.load(w_ptr + ((dt * KH + dy) * KW + dx), mask=d_ok, other=0.0)
                acc += x.to(tl.float32) * w.to(tl.float32)[None, :]
    if SP:
        is_cls = row_ok & (r == 0)
        cls = tl.load(in_row[:, None] + offs_d[None, :], mask=is_cls[:, None] & d_ok[None, :], other=0.0)
        acc += cls.to(tl.float32)
    return acc, sp_ok, it0, iy0, ix0, tap0


@triton.jit
def _weight_grad_taps(acc_w, g, taps, tap0, stride_n, sp_ok, it0, iy0, ix0, offs_d, d_ok, T, H, W, kt,
                      KH: tl.constexpr, KW: tl.constexpr, HAS_T: tl.constexpr):
    """acc_w (BLOCK_TAPS, BLOCK_D) + the conv-weight gradient of the KH * KW taps of kernel frame kt:
    d w[tap] = sum over the tile's rows of g * (the input at the tap)."""
    for ky in tl.static_range(KH):
        for kx in tl.static_range(KW):
            ok = _tap_ok(sp_ok, it0, iy0, ix0, T, H, W, kt, ky, kx, HAS_T)
            ptr = tap0 + ((kt * H + ky) * W + kx) * stride_n
            x_tap = tl.load(ptr[:, None] + offs_d[None, :], mask=ok[:, None] & d_ok[None, :],
                            other=0.0).to(tl.float32)
            contrib = tl.sum(g * x_tap, axis=0)                               # (BLOCK_D,)
            acc_w += tl.where(taps[:, None] == (kt * KH + ky) * KW + kx, contrib[None, :], 0.0)
    return acc_w


@triton.jit
def _layer_norm_rows(x, d_ok, D, eps):
    """xhat = (x - mean) * rstd over the last axis (D valid lanes of BLOCK_D; padded lanes -> 0)."""
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(d_ok[None, :], x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
    return xc * rstd[:, None], rstd


# Only the head dim and the row strides are specialised (their divisibility by 16 decides vector
# loads); grid sizes, strides of the pooling and batch strides are not, so that one compiled kernel
# serves every block of a model (fewer compiles, no recompiles across input sizes).
_GEOMETRY = ["T", "H", "W", "heads", "q_st", "q_sh", "q_sw", "q_ot", "q_oh", "q_ow",
             "kv_st", "kv_sh", "kv_sw", "kv_ot", "kv_oh", "kv_ow", "n_bh"]


@triton.jit(do_not_specialize=_GEOMETRY + ["stride_qkv_b"])
def pool_qkv_fwd_kernel(
    qkv_ptr, stride_qkv_b, stride_qkv_n,          # (B, N, 3 * heads * D), last dim contiguous
    wq_ptr, wk_ptr, wv_ptr,                       # conv weights, (D, KT * KH * KW) contiguous each
    gq_ptr, gk_ptr, gv_ptr,                       # LayerNorm weights, (D,)
    bq_ptr, bk_ptr, bv_ptr,                       # LayerNorm biases, (D,)
    q_ptr, k_ptr, v_ptr,                          # outputs, (B, heads, N_t, D) contiguous
    T, H, W, heads, D: tl.constexpr,
    q_st, q_sh, q_sw, q_ot, q_oh, q_ow, kv_st, kv_sh, kv_sw, kv_ot, kv_oh, kv_ow,
    n_bh, eps,                                    # n_bh = B * heads
    SP: tl.constexpr, KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # A 1-D grid with exactly the tiles of q, then those of k, then v: no idle programs when q and
    # k/v are pooled with different strides (stage 1: q has 16x the rows of k and v).
    pid = tl.program_id(0)
    q_tiles = tl.cdiv(n_bh * (SP + q_ot * q_oh * q_ow), BLOCK_M)
    kv_tiles = tl.cdiv(n_bh * (SP + kv_ot * kv_oh * kv_ow), BLOCK_M)
    t = tl.where(pid < q_tiles, 0, tl.where(pid < q_tiles + kv_tiles, 1, 2))
    pid = pid - tl.where(t > 0, q_tiles, 0) - tl.where(t > 1, kv_tiles, 0)     # tile within t
    st, sh, sw, ot, oh, ow, _ = _pooling_of(t, q_st, q_sh, q_sw, q_ot, q_oh, q_ow,
                                            kv_st, kv_sh, kv_sw, kv_ot, kv_oh, kv_ow)
    n_rows = SP + ot * oh * ow
    w_base = _select_t(t, wq_ptr, wk_ptr, wv_ptr)
    g_base = _select_t(t, gq_ptr, gk_ptr, gv_ptr)
    bias_base = _select_t(t, bq_ptr, bk_ptr, bv_ptr)
    out_base = _select_t(t, q_ptr, k_ptr, v_ptr)

    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)   # flat (b, head, r) = row of the output
    row_ok = rows < n_bh * n_rows
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    in_row, r, _ = _token_rows(qkv_ptr, stride_qkv_b, rows, n_rows, heads, t, D)
    x, _, _, _, _, _ = _pooled_rows(in_row, stride_qkv_n, w_base, r, row_ok, offs_d, d_ok,
                                    T, H, W, st, sh, sw, oh, ow, SP, KT, KH, KW, HAS_T)    # (BLOCK_M, BLOCK_D)
    xhat, _ = _layer_norm_rows(x, d_ok, D, eps)
    gamma = tl.load(g_base + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    beta = tl.load(bias_base + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    y = xhat * gamma[None, :] + beta[None, :]
    tl.store(out_base + rows.to(tl.int64)[:, None] * D + offs_d[None, :],
             y.to(out_base.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=_GEOMETRY + ["stride_qkv_b", "stride_dqkv_b"])
def pool_qkv_bwd_rows_kernel(
    qkv_ptr, stride_qkv_b, stride_qkv_n,          # (B, N, 3 * heads * D), last dim contiguous
    wq_ptr, wk_ptr, wv_ptr,                       # conv weights, (D, KT * KH * KW) contiguous each
    gq_ptr, gk_ptr, gv_ptr,                       # LayerNorm weights, (D,)
    dq_ptr, dk_ptr, dv_ptr,                       # output gradients, (B, heads, N_t, D) contiguous
    dqkv_ptr, stride_dqkv_b,                      # (B, N, 3 * heads * D): class-token rows written
    g_ptr,                                        # scratch in qkv's dtype: pre-norm gradient of grid rows,
                                                  # q then k then v, each (B, heads, ot_t * oh_t * ow_t, D)
    part_ptr,                                     # float32 (3, programs, TAPS + 2, D) partial sums
    T, H, W, heads, D: tl.constexpr,
    q_st, q_sh, q_sw, q_ot, q_oh, q_ow, kv_st, kv_sh, kv_sw, kv_ot, kv_oh, kv_ow,
    n_bh, eps,
    SP: tl.constexpr, KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_TAPS: tl.constexpr,
    TILES_PER_PROG: tl.constexpr,                 # a power of two: few compiled variants
):
    pid = tl.program_id(0)
    t = tl.program_id(1)
    st, sh, sw, ot, oh, ow, g_start = _pooling_of(t, q_st, q_sh, q_sw, q_ot, q_oh, q_ow,
                                                  kv_st, kv_sh, kv_sw, kv_ot, kv_oh, kv_ow)
    n_grid = ot * oh * ow
    n_rows = SP + n_grid
    w_base = _select_t(t, wq_ptr, wk_ptr, wv_ptr)
    gamma_base = _select_t(t, gq_ptr, gk_ptr, gv_ptr)
    dout_base = _select_t(t, dq_ptr, dk_ptr, dv_ptr)
    g_base = g_ptr + n_bh * g_start.to(tl.int64) * D

    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    taps = tl.arange(0, BLOCK_TAPS)
    gamma = tl.load(gamma_base + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    acc_w = tl.zeros((BLOCK_TAPS, BLOCK_D), dtype=tl.float32)      # d(conv weight), tap-major
    acc_gamma = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_beta = tl.zeros((BLOCK_D,), dtype=tl.float32)

    # A fixed trip count (tiles past the end of t are masked: no memory traffic). A runtime trip
    # count made ptxas keep a value on the stack across the loop-skip branch (STACK 8 on sm_80).
    for i in range(TILES_PER_PROG):
        rows = (pid * TILES_PER_PROG + i) * BLOCK_M + tl.arange(0, BLOCK_M)   # flat (b, head, r)
        row_ok = rows < n_bh * n_rows
        in_row, r, bh = _token_rows(qkv_ptr, stride_qkv_b, rows, n_rows, heads, t, D)
        x, sp_ok, it0, iy0, ix0, tap0 = _pooled_rows(in_row, stride_qkv_n, w_base, r, row_ok, offs_d, d_ok,
                                                     T, H, W, st, sh, sw, oh, ow, SP, KT, KH, KW, HAS_T)
        xhat, rstd = _layer_norm_rows(x, d_ok, D, eps)
        mask = row_ok[:, None] & d_ok[None, :]
        dy = tl.load(dout_base + rows.to(tl.int64)[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
        dy = dy.to(tl.float32)
        acc_gamma += tl.sum(dy * xhat, axis=0)
        acc_beta += tl.sum(dy, axis=0)
        # LayerNorm backward: g = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        dxhat = dy * gamma[None, :]
        c1 = tl.sum(dxhat, axis=1) / D
        c2 = tl.sum(dxhat * xhat, axis=1) / D
        g = tl.where(mask, (dxhat - c1[:, None] - xhat * c2[:, None]) * rstd[:, None], 0.0)

        g_row = (bh.to(tl.int64) * n_grid + tl.maximum(r - SP, 0)) * D    # (b, head, grid row)
        tl.store(g_base + g_row[:, None] + offs_d[None, :], g.to(g_ptr.dtype.element_ty),
                 mask=sp_ok[:, None] & d_ok[None, :])
        if SP:   # the class token bypasses the conv: its pre-norm gradient is its input gradient
            din_row, _, _ = _token_rows(dqkv_ptr, stride_dqkv_b, rows, n_rows, heads, t, D)
            is_cls = row_ok & (r == 0)
            tl.store(din_row[:, None] + offs_d[None, :], g.to(dqkv_ptr.dtype.element_ty),
                     mask=is_cls[:, None] & d_ok[None, :])
        # d(conv weight)[tap] += sum over rows of g * (input at tap): the tap loads of
        # _pooled_rows again (cache hits on a GPU); the class-token row reads nothing. Video: a
        # loop over the kernel's frames, not unrolled, so that 9 tap loads are in flight rather
        # than 27 (unrolled, the 3x3x3 kernel spilled on sm_90 even at 255 registers).
        if HAS_T:
            for kt in range(KT):
                acc_w = _weight_grad_taps(acc_w, g, taps, tap0, stride_qkv_n, sp_ok, it0, iy0, ix0, offs_d, d_ok,
                                          T, H, W, kt, KH, KW, HAS_T)
        else:
            acc_w = _weight_grad_taps(acc_w, g, taps, tap0, stride_qkv_n, sp_ok, it0, iy0, ix0, offs_d, d_ok,
                                      T, H, W, 0, KH, KW, HAS_T)

    # partials of this program: rows 0..TAPS-1 d(conv weight), then d(norm weight), d(norm bias)
    n_taps = KT * KH * KW
    part_base = part_ptr + ((t * tl.num_programs(0) + pid).to(tl.int64) * (n_taps + 2)) * D
    tl.store(part_base + taps[:, None] * D + offs_d[None, :], acc_w,
             mask=(taps[:, None] < n_taps) & d_ok[None, :])
    tl.store(part_base + n_taps * D + offs_d, acc_gamma, mask=d_ok)
    tl.store(part_base + (n_taps + 1) * D + offs_d, acc_beta, mask=d_ok)


@triton.jit(do_not_specialize=_GEOMETRY + ["stride_b"])
def pool_qkv_bwd_input_kernel(
    g_ptr,                                        # pre-norm gradients, qkv's dtype (see the rows kernel)
    wq_ptr, wk_ptr, wv_ptr,                       # conv weights, (D, KT * KH * KW) contiguous each
    dqkv_ptr, stride_b, stride_n,                 # (B, N, 3 * heads * D): grid rows written here
    T, H, W, heads, D: tl.constexpr,
    q_st, q_sh, q_sw, q_ot, q_oh, q_ow, kv_st, kv_sh, kv_sw, kv_ot, kv_oh, kv_ow,
    n_bh,
    SP: tl.constexpr, KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.program_id(1)
    st, sh, sw, ot, oh, ow, g_start = _pooling_of(t, q_st, q_sh, q_sw, q_ot, q_oh, q_ow,
                                                  kv_st, kv_sh, kv_sw, kv_ot, kv_oh, kv_ow)
    w_base = _select_t(t, wq_ptr, wk_ptr, wv_ptr)
    g_base = g_ptr + n_bh * g_start.to(tl.int64) * D

    n_in = T * H * W
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)                       # flat (b, head, position)
    row_ok = rows < n_bh * n_in
    out_row, pos, bh = _token_rows(dqkv_ptr, stride_b, rows, n_in, heads, t, D)
    it, iy, ix = grid_position(pos, H, W, HAS_T)
    g_bh = g_base + bh.to(tl.int64) * (ot * oh * ow) * D               # pooled grid of (b, head)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    w_ptr = w_base + offs_d * (KT * KH * KW)
    for kt in tl.static_range(KT):
        if HAS_T:
            ot_s = it + (KT // 2 - kt)                                 # = o_t * st when this tap hits
            o_t = tl.maximum(ot_s, 0) // st
            t_ok = row_ok & (ot_s >= 0) & (ot_s % st == 0) & (o_t < ot)
            g_plane = g_bh + (o_t * (oh * ow)) * D
        else:
            t_ok = row_ok
            g_plane = g_bh
        for ky in tl.static_range(KH):
            oy_s = iy + (KH // 2 - ky)                                 # = oy * sh when this tap hits
            oy = tl.maximum(oy_s, 0) // sh
            y_ok = t_ok & (oy_s >= 0) & (oy_s % sh == 0) & (oy < oh)
            g_row = g_plane + (oy * ow) * D
            for kx in tl.static_range(KW):
                ox_s = ix + (KW // 2 - kx)
                ox = tl.maximum(ox_s, 0) // sw
                ok = y_ok & (ox_s >= 0) & (ox_s % sw == 0) & (ox < ow)
                g = tl.load((g_row + ox * D)[:, None] + offs_d[None, :],
                            mask=ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
                w = tl.load(w_ptr + ((kt * KH + ky) * KW + kx), mask=d_ok, other=0.0)
                acc += g * w.to(tl.float32)[None, :]
    tl.store((out_row + (SP + pos) * stride_n)[:, None] + offs_d[None, :],
             acc.to(dqkv_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=["n_progs"])
def pool_qkv_bwd_params_kernel(
    part_ptr,                                     # float32 (3, n_progs, TAPS + 2, D) partial sums
    dwq_ptr, dwk_ptr, dwv_ptr,                    # conv weight gradients, (D, TAPS) contiguous each
    dgq_ptr, dgk_ptr, dgv_ptr,                    # norm weight gradients, (D,)
    dbq_ptr, dbk_ptr, dbv_ptr,                    # norm bias gradients, (D,)
    n_progs, D: tl.constexpr, TAPS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The nine parameter gradients of q, k, v (program t = 0, 1, 2): the rows kernel's partial
    sums added over its programs in a fixed order, written in the parameters' dtype and layout."""
    t = tl.program_id(0)
    rows = tl.arange(0, BLOCK_ROWS)                                    # taps, then norm weight, bias
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < TAPS + 2) & (offs_d[None, :] < D)
    base = part_ptr + (t * n_progs).to(tl.int64) * (TAPS + 2) * D + rows[:, None] * D + offs_d[None, :]
    acc = tl.zeros((BLOCK_ROWS, BLOCK_D), dtype=tl.float32)
    for i in range(n_progs):
        acc += tl.load(base + i * (TAPS + 2) * D, mask=mask, other=0.0)
    dw_ptr = _select_t(t, dwq_ptr, dwk_ptr, dwv_ptr)
    dg_ptr = _select_t(t, dgq_ptr, dgk_ptr, dgv_ptr)
    db_ptr = _select_t(t, dbq_ptr, dbk_ptr, dbv_ptr)
    tl.store(dw_ptr + offs_d[None, :] * TAPS + rows[:, None], acc.to(dw_ptr.dtype.element_ty),
             mask=mask & (rows[:, None] < TAPS))
    tl.store(dg_ptr + offs_d[None, :] + 0 * rows[:, None], acc.to(dg_ptr.dtype.element_ty),
             mask=mask & (rows[:, None] == TAPS))
    tl.store(db_ptr + offs_d[None, :] + 0 * rows[:, None], acc.to(db_ptr.dtype.element_ty),
             mask=mask & (rows[:, None] == TAPS + 1))


# --------------------------------------------------------------------------------------------
# Launchers. They take checked, device-ready tensors (the package's ``__init__`` checks them) and launch; they never
# look at the device or at TRITON_INTERPRET, so that the GPU-compile harness can call them.
# --------------------------------------------------------------------------------------------

# Traffic statements (distinct bytes per launch, see fastmvit.kernels.traffic). Every load is
# masked to the D valid lanes of in-range rows; a tap in the padding loads nothing, so a pooling
# whose stride exceeds its kernel (kv stride 4, 3x3) reads only the covered grid positions.
def _pooled_inputs_read(a) -> int:
    """The qkv tokens the q, k and v poolings read (and their class tokens), weights and norm
    weights of all three: what the forward and the backward rows kernel load."""
    qkv = a["qkv_ptr"]
    B, E, D, heads, sp = qkv.shape[0], qkv.element_size(), a["D"], a["heads"], a["SP"]
    grid, kernel = (a["T"], a["H"], a["W"]), (a["KT"], a["KH"], a["KW"])
    tokens = sum(sp + window_coverage(grid, kernel, (a[f"{x}_st"], a[f"{x}_sh"], a[f"{x}_sw"]))
                 for x in ("q", "kv", "kv"))
    params = sum(tensor_bytes(a[n]) for n in ("wq_ptr", "wk_ptr", "wv_ptr", "gq_ptr", "gk_ptr", "gv_ptr"))
    return B * heads * tokens * D * E + params


def _fwd_states(a):
    """qkv's pooled tokens, conv and norm weights and biases in; q, k, v out."""
    biases = sum(tensor_bytes(a[n]) for n in ("bq_ptr", "bk_ptr", "bv_ptr"))
    return (_pooled_inputs_read(a) + biases,
            sum(tensor_bytes(a[n]) for n in ("q_ptr", "k_ptr", "v_ptr")))


def _bwd_rows_states(a):
    """As the forward, plus the q, k, v gradients in; the pre-norm gradient (qkv's dtype) of the grid
    rows, the class-token rows of d(qkv) and the float32 partial sums out."""
    grads = sum(tensor_bytes(a[n]) for n in ("dq_ptr", "dk_ptr", "dv_ptr"))
    dqkv = a["dqkv_ptr"]
    cls_rows = a["SP"] * dqkv.shape[0] * dqkv.shape[2] * dqkv.element_size()
    return _pooled_inputs_read(a) + grads, tensor_bytes(a["g_ptr"]) + cls_rows + tensor_bytes(a["part_ptr"])


def _bwd_input_states(a):
    """The pre-norm gradients and the conv weights in; the grid rows of d(qkv) out."""
    dqkv = a["dqkv_ptr"]
    weights = sum(tensor_bytes(a[n]) for n in ("wq_ptr", "wk_ptr", "wv_ptr"))
    return (tensor_bytes(a["g_ptr"]) + weights,
            dqkv.shape[0] * a["T"] * a["H"] * a["W"] * dqkv.shape[2] * dqkv.element_size())


def _bwd_params_states(a):
    """The partial sums in; the nine parameter gradients out."""
    names = [f"d{p}{t}_ptr" for p in "wgb" for t in "qkv"]
    return tensor_bytes(a["part_ptr"]), sum(tensor_bytes(a[n]) for n in names)


def _block_sizes(D: int, tile_elems: int, taps: int = 9) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_D) of a register tile of about tile_elems float32 values; halved for a 3-D
    kernel (27 taps: the tap loads the compiler issues together grow with the taps)."""
    block_d = max(16, triton.next_power_of_2(D))
    if taps > 9:
        tile_elems //= 2
    return max(8, tile_elems // block_d), block_d


def _grid3(size) -> tuple[int, int, int]:
    """A (h, w) or (t, h, w) size as (t, h, w): a 2-D grid is one frame."""
    return (1, *size) if len(size) == 2 else tuple(size)


def _geometry_args(q_size, k_size, strides) -> list[int]:
    """q's (st, sh, sw, ot, oh, ow), then k / v's, all 3-D (one frame for a 2-D grid)."""
    return [*_grid3(strides[0]), *_grid3(q_size), *_grid3(strides[1]), *_grid3(k_size)]


def _launch_meta(hw, weights, sp):
    """The constexprs every pool_qkv kernel takes: SP, KT, KH, KW, HAS_T."""
    kt, kh, kw = _grid3(tuple(weights[0].shape[2:]))
    return dict(SP=sp, KT=kt, KH=kh, KW=kw, HAS_T=len(hw) == 3)


def forward(qkv, weights, norm_weights, norm_biases, hw, num_heads, strides, q_size, k_size,
            sp, eps):
    """q, k, v (B, heads, N_t, D) in qkv's dtype from qkv (B, N, 3 * heads * D), last dim contiguous.

    hw: the grid, (H, W) or (T, H, W); weights: 3 contiguous (D, 1, KH, KW) or (D, 1, KT, KH, KW);
    norm_weights, norm_biases: 3 contiguous (D,) each; strides: (q's, k / v's), one int per grid
    axis each; q_size, k_size: the pooled grids; sp: 1 with a class token, else 0."""
    B, N, C = qkv.shape
    D = C // (3 * num_heads)
    meta = _launch_meta(hw, weights, sp)
    nq = sp + math.prod(q_size)
    nk = sp + math.prod(k_size)
    q = helpers.empty(B, num_heads, nq, D, device=qkv.device, dtype=qkv.dtype)
    k = helpers.empty(B, num_heads, nk, D, device=qkv.device, dtype=qkv.dtype)
    v = helpers.empty(B, num_heads, nk, D, device=qkv.device, dtype=qkv.dtype)
    bh = B * num_heads
    block_m, block_d = _block_sizes(D, TILE_ELEMS, meta["KT"] * meta["KH"] * meta["KW"])
    grid = (triton.cdiv(bh * nq, block_m) + 2 * triton.cdiv(bh * nk, block_m),)
    helpers.launch(pool_qkv_fwd_kernel, grid, (
        qkv, qkv.stride(0), qkv.stride(1), *weights, *norm_weights, *norm_biases, q, k, v,
        *_grid3(hw), num_heads, D, *_geometry_args(q_size, k_size, strides), bh, eps),
        dict(meta, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=FWD_WARPS_3D if meta["HAS_T"] else FWD_WARPS,
             num_stages=1, maxnreg=MAX_REGISTERS), _fwd_states)
    return q, k, v


def backward(grads, qkv, weights, norm_weights, hw, num_heads, strides, q_size, k_size, sp,
             eps):
    """d(qkv) (B, N, 3 * heads * D) contiguous in qkv's dtype, and the nine parameter gradients
    [d wq, d wk, d wv, d gq, d gk, d gv, d bq, d bk, d bv], each like its parameter (contiguous).

    grads: contiguous (B, heads, N_t, D) gradients of q, k, v."""
    B, N, C = qkv.shape
    D = C // (3 * num_heads)
    meta = _launch_meta(hw, weights, sp)
    taps = meta["KT"] * meta["KH"] * meta["KW"]
    nq_grid = math.prod(q_size)
    nk_grid = math.prod(k_size)
    bh = B * num_heads
    dqkv = helpers.empty(B, N, C, device=qkv.device, dtype=qkv.dtype)
    # the pre-norm gradient in qkv's dtype (rounded once, as the eager LayerNorm backward rounds its
    # output); the input kernel sums its taps in float32
    scratch = helpers.empty(bh * (nq_grid + 2 * nk_grid) * D, device=qkv.device, dtype=qkv.dtype)
    geometry = [*_grid3(hw), num_heads, D, *_geometry_args(q_size, k_size, strides), bh]

    block_m, block_d = _block_sizes(D, ROWS_TILE_ELEMS, taps)
    max_tiles = triton.cdiv(bh * (sp + max(nq_grid, nk_grid)), block_m)
    tiles_per_prog = triton.next_power_of_2(triton.cdiv(max_tiles, BWD_TARGET_PROGRAMS))
    n_progs = triton.cdiv(max_tiles, tiles_per_prog)
    partials = helpers.empty(3, n_progs, taps + 2, D, device=qkv.device, dtype=torch.float32)
    helpers.launch(pool_qkv_bwd_rows_kernel, (n_progs, 3), (
        qkv, qkv.stride(0), qkv.stride(1), *weights, *norm_weights, *grads, dqkv, dqkv.stride(0),
        scratch, partials, *geometry, eps),
        dict(meta, BLOCK_M=block_m, BLOCK_D=block_d,
             BLOCK_TAPS=max(2, triton.next_power_of_2(taps)), TILES_PER_PROG=tiles_per_prog,
             num_warps=BWD_WARPS, num_stages=1,
             maxnreg=ROWS_MAX_REGISTERS_3D if meta["HAS_T"] else MAX_REGISTERS), _bwd_rows_states)

    block_m, block_d = _block_sizes(D, TILE_ELEMS, taps)
    helpers.launch(pool_qkv_bwd_input_kernel, (triton.cdiv(bh * math.prod(hw), block_m), 3), (
        scratch, *weights, dqkv, dqkv.stride(0), dqkv.stride(1), *geometry),
        dict(meta, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=BWD_WARPS, num_stages=1,
             maxnreg=MAX_REGISTERS), _bwd_input_states)
    # the partials summed over programs in a fixed order, into the nine parameter gradients
    w, g = weights[0], norm_weights[0]
    params = ([helpers.empty(*w.shape, device=w.device, dtype=w.dtype) for _ in range(3)]
              + [helpers.empty(*g.shape, device=g.device, dtype=g.dtype) for _ in range(6)])
    helpers.launch(pool_qkv_bwd_params_kernel, (3,), (partials, *params, n_progs),
                   dict(D=D, TAPS=taps, BLOCK_ROWS=triton.next_power_of_2(taps + 2), BLOCK_D=block_d,
                        num_warps=4, num_stages=1), _bwd_params_states)
    return dqkv, params
