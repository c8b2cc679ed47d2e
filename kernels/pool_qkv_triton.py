"""Triton kernels of the fused pooling prologue (`fastmvit.kernels.pool_qkv`), and their launchers.

The public op, its checks and the plain torch path live in `pool_qkv.py`; this module holds only
what runs on the device, so that importing ``fastmvit.kernels`` does not need triton.

Notation: the block's qkv projection output ``qkv`` is (B, N, 3 * heads * D) with the channel layout
[3][heads][D] and a contiguous last dim; N = SP + H * W, SP = 1 with a class token (row 0) else 0.
``t`` = 0, 1, 2 selects q, k, v. Pooled grid of t: (oh_t, ow_t) = ((H + 2 * (KH // 2) - KH) // sh_t + 1,
same for W); its output has N_t = SP + oh_t * ow_t rows. k and v share a stride, so a size.

Kernels (all float32 inside: loads are upcast at once, accumulators are float32):

- ``_pool_qkv_fwd_kernel``: grid (tiles of BLOCK_M output rows, B * heads, 3). A program computes
  BLOCK_M rows x the whole head dim (BLOCK_D >= D, LayerNorm needs the full row) of one (b, head, t):
  KH * KW masked tap loads of (BLOCK_M, BLOCK_D) straight from ``qkv`` (the class-token row loads its
  token instead), times the depthwise weight, then LayerNorm over D, one store into q, k or v.
- ``_pool_qkv_bwd_rows_kernel``: grid (chunks of TILES_PER_PROG row tiles, B * heads, 3). Per tile it
  recomputes the pooled rows and their LayerNorm statistics exactly as the forward does, takes the
  LayerNorm backward to the pre-norm gradient ``g`` (float32), stores ``g`` of the grid rows into a
  scratch buffer and ``g`` of the class-token row straight into d(qkv) (the token bypasses the
  conv). It accumulates, in registers over its tiles, the partial sums of d(norm weight) = sum dy *
  xhat, d(norm bias) = sum dy and d(conv weight)[tap] = sum g * input shifted by tap, and writes them
  once per program to a partials buffer.
- ``_pool_qkv_bwd_input_kernel``: grid (tiles of BLOCK_M input positions, B * heads, 3). The input
  gradient of the strided conv written as a gather (a transposed conv): input (iy, ix) sums
  g[oy, ox] * w[tap] over the taps with oy * sh - pad + dy = iy (same on x), a fixed order, no atomics.
  Every grid input row is written (zero where no output reads it, e.g. stride 4 with a 3x3 kernel).

The partials are then summed over programs by torch in a fixed order (``partials.sum(1)``, no
atomics), so the whole backward is bitwise repeatable on a GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Register tile of a program: BLOCK_M rows x BLOCK_D (head dim, next power of two) float32 values.
FWD_TILE_ELEMS = 4096      # 32 rows at D 96/128, 16 at D 256: 32 float32 per thread at 4 warps
BWD_TILE_ELEMS = 2048      # the backward keeps ~5 such tiles live, plus the (16, BLOCK_D) partials
FWD_WARPS = 4
BWD_WARPS = 4
# A backward-rows program walks several row tiles so that the partial sums it writes stay small
# next to the rows it reads: aim at about this many programs for the biggest of q, k, v.
BWD_TARGET_PROGRAMS = 1024


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
def _tile_coords(in_base, stride_n, rows, row_ok, H, W, sh, sw, ow,
                 SP: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr):
    """Where the output rows `rows` of a tile read. Returns (all (BLOCK_M,)):
    sp_ok, the grid rows (not the class token, not past the end); iy0, ix0, the input position of
    tap (0, 0) (may be outside the grid: the padding); tap0, a pointer to that input token in qkv.
    Tap (dy, dx) of a row is at tap0 + (dy * W + dx) * stride_n, inside the grid iff
    -dy <= iy0 < H - dy and -dx <= ix0 < W - dx."""
    p = rows - SP                                                      # index in the pooled grid
    sp_ok = row_ok & (p >= 0)
    p = tl.maximum(p, 0)
    iy0 = (p // ow) * sh - PAD_H
    ix0 = (p % ow) * sw - PAD_W
    tap0 = in_base + (SP + iy0 * W + ix0) * stride_n
    return sp_ok, iy0, ix0, tap0


@triton.jit
def _pooled_rows(in_base, stride_n, w_base, rows, row_ok, offs_d, d_ok, H, W, sh, sw, ow,
                 SP: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr):
    """(BLOCK_M, BLOCK_D) float32: output rows `rows` of t before the norm (the depthwise conv of the
    grid; row 0 is the class token itself when SP == 1), and the tile's coordinates (_tile_coords).

    Index math is hoisted out of the tap loop: per tap only compares and pointer increments."""
    sp_ok, iy0, ix0, tap0 = _tile_coords(in_base, stride_n, rows, row_ok, H, W, sh, sw, ow,
                                         SP, KH // 2, KW // 2)
    acc = tl.zeros((rows.shape[0], offs_d.shape[0]), dtype=tl.float32)
    row_ptr = tap0[:, None] + offs_d[None, :]                          # (BLOCK_M, BLOCK_D) at dy = 0
    w_ptr = w_base + offs_d * (KH * KW)                                # (BLOCK_D,) at tap 0
    for dy in tl.static_range(KH):
        y_ok = sp_ok & (iy0 >= -dy) & (iy0 < H - dy)
        ptr = row_ptr
        for dx in tl.static_range(KW):
            ok = y_ok & (ix0 >= -dx) & (ix0 < W - dx)
            x = tl.load(ptr, mask=ok[:, None] & d_ok[None, :], other=0.0)
            w = tl.load(w_ptr + (dy * KW + dx), mask=d_ok, other=0.0)
            acc += x.to(tl.float32) * w.to(tl.float32)[None, :]
            ptr += stride_n
        row_ptr += W * stride_n
    if SP:
        is_cls = row_ok & (rows == 0)
        cls = tl.load(in_base + offs_d[None, :] + 0 * rows[:, None],
                      mask=is_cls[:, None] & d_ok[None, :], other=0.0)
        acc += cls.to(tl.float32)
    return acc, sp_ok, iy0, ix0, tap0


@triton.jit
def _pool_qkv_fwd_kernel(
    qkv_ptr, stride_qkv_b, stride_qkv_n,          # (B, N, 3 * heads * D), last dim contiguous
    wq_ptr, wk_ptr, wv_ptr,                       # conv weights, (D, KH * KW) contiguous each
    gq_ptr, gk_ptr, gv_ptr,                       # LayerNorm weights, (D,)
    bq_ptr, bk_ptr, bv_ptr,                       # LayerNorm biases, (D,)
    q_ptr, k_ptr, v_ptr,                          # outputs, (B, heads, N_t, D) contiguous
    H, W, heads, D,
    q_sh, q_sw, q_oh, q_ow, kv_sh, kv_sw, kv_oh, kv_ow,
    eps,
    SP: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    t = tl.program_id(2)
    b = pid_bh // heads
    h = pid_bh % heads
    is_q = t == 0
    sh = tl.where(is_q, q_sh, kv_sh)
    sw = tl.where(is_q, q_sw, kv_sw)
    ow = tl.where(is_q, q_ow, kv_ow)
    n_rows = SP + tl.where(is_q, q_oh * q_ow, kv_oh * kv_ow)
    if pid_m * BLOCK_M < n_rows:                  # the grid is sized for the longest of q, k, v
        w_base = _select_t(t, wq_ptr, wk_ptr, wv_ptr)
        g_base = _select_t(t, gq_ptr, gk_ptr, gv_ptr)
        bias_base = _select_t(t, bq_ptr, bk_ptr, bv_ptr)
        out_base = _select_t(t, q_ptr, k_ptr, v_ptr) + pid_bh.to(tl.int64) * n_rows * D

        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        in_base = qkv_ptr + b.to(tl.int64) * stride_qkv_b + (t * heads + h) * D
        x, sp_ok, iy0, ix0, tap0 = _pooled_rows(in_base, stride_qkv_n, w_base, rows, row_ok,
                                                offs_d, d_ok, H, W, sh, sw, ow, SP, KH, KW)

        # LayerNorm over D (padded lanes are 0 in x and masked out of the variance)
        mean = tl.sum(x, axis=1) / D
        xc = tl.where(d_ok[None, :], x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
        gamma = tl.load(g_base + offs_d, mask=d_ok, other=0.0).to(tl.float32)
        beta = tl.load(bias_base + offs_d, mask=d_ok, other=0.0).to(tl.float32)
        y = xc * rstd[:, None] * gamma[None, :] + beta[None, :]
        tl.store(out_base + rows[:, None] * D + offs_d[None, :],
                 y.to(out_base.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _pool_qkv_bwd_rows_kernel(
    qkv_ptr, stride_qkv_b, stride_qkv_n,          # (B, N, 3 * heads * D), last dim contiguous
    wq_ptr, wk_ptr, wv_ptr,                       # conv weights, (D, KH * KW) contiguous each
    gq_ptr, gk_ptr, gv_ptr,                       # LayerNorm weights, (D,)
    dq_ptr, dk_ptr, dv_ptr,                       # output gradients, (B, heads, N_t, D) contiguous
    dqkv_ptr,                                     # (B, N, 3 * heads * D) contiguous: class-token rows
    g_ptr,                                        # float32 scratch: pre-norm gradient of grid rows,
                                                  # q then k then v, each (B, heads, oh_t * ow_t, D)
    part_ptr,                                     # float32 (3, programs, KH * KW + 2, D) partial sums
    H, W, heads, D,
    q_sh, q_sw, q_oh, q_ow, kv_sh, kv_sw, kv_oh, kv_ow,
    eps, tiles_per_prog,
    SP: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_TAPS: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    t = tl.program_id(2)
    n_bh = tl.num_programs(1)
    b = pid_bh // heads
    h = pid_bh % heads
    is_q = t == 0
    sh = tl.where(is_q, q_sh, kv_sh)
    sw = tl.where(is_q, q_sw, kv_sw)
    ow = tl.where(is_q, q_ow, kv_ow)
    n_grid = tl.where(is_q, q_oh * q_ow, kv_oh * kv_ow)
    n_rows = SP + n_grid
    w_base = _select_t(t, wq_ptr, wk_ptr, wv_ptr)
    gamma_base = _select_t(t, gq_ptr, gk_ptr, gv_ptr)
    dout_base = _select_t(t, dq_ptr, dk_ptr, dv_ptr) + pid_bh.to(tl.int64) * n_rows * D
    # scratch of t starts after those of q (and k); then this (b, head)
    g_start = tl.where(t > 0, q_oh * q_ow, 0) + tl.where(t > 1, kv_oh * kv_ow, 0)
    g_base = g_ptr + (n_bh * g_start.to(tl.int64) + pid_bh * n_grid) * D
    in_base = qkv_ptr + b.to(tl.int64) * stride_qkv_b + (t * heads + h) * D
    din_base = dqkv_ptr + b.to(tl.int64) * stride_qkv_b + (t * heads + h) * D

    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    taps = tl.arange(0, BLOCK_TAPS)
    gamma = tl.load(gamma_base + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    acc_w = tl.zeros((BLOCK_TAPS, BLOCK_D), dtype=tl.float32)      # d(conv weight), tap-major
    acc_gamma = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_beta = tl.zeros((BLOCK_D,), dtype=tl.float32)

    first = pid_c * tiles_per_prog
    n_tiles = tl.minimum(tiles_per_prog, tl.cdiv(n_rows, BLOCK_M) - first)  # <= 0: idle program
    for i in range(0, n_tiles):
        rows = (first + i) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        x, sp_ok, iy0, ix0, tap0 = _pooled_rows(in_base, stride_qkv_n, w_base, rows, row_ok,
                                                offs_d, d_ok, H, W, sh, sw, ow, SP, KH, KW)
        mean = tl.sum(x, axis=1) / D
        xc = tl.where(d_ok[None, :], x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
        xhat = xc * rstd[:, None]
        mask = row_ok[:, None] & d_ok[None, :]
        dy = tl.load(dout_base + rows[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
        dy = dy.to(tl.float32)
        acc_gamma += tl.sum(dy * xhat, axis=0)
        acc_beta += tl.sum(dy, axis=0)
        # LayerNorm backward: g = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        dxhat = dy * gamma[None, :]
        c1 = tl.sum(dxhat, axis=1) / D
        c2 = tl.sum(dxhat * xhat, axis=1) / D
        g = tl.where(mask, (dxhat - c1[:, None] - xhat * c2[:, None]) * rstd[:, None], 0.0)

        p = tl.maximum(rows - SP, 0)
        tl.store(g_base + p[:, None] * D + offs_d[None, :], g, mask=sp_ok[:, None] & d_ok[None, :])
        if SP:   # the class token bypasses the conv: its pre-norm gradient is its input gradient
            is_cls = row_ok & (rows == 0)
            tl.store(din_base + offs_d[None, :] + 0 * rows[:, None],
                     g.to(dqkv_ptr.dtype.element_ty), mask=is_cls[:, None] & d_ok[None, :])
        # d(conv weight)[tap] += sum over rows of g * (input at tap); the class row reads nothing
        # (the tap loads of _pooled_rows again: cache hits on a GPU)
        row_ptr = tap0[:, None] + offs_d[None, :]
        for dy_ in tl.static_range(KH):
            y_ok = sp_ok & (iy0 >= -dy_) & (iy0 < H - dy_)
            ptr = row_ptr
            for dx_ in tl.static_range(KW):
                ok = y_ok & (ix0 >= -dx_) & (ix0 < W - dx_)
                x_tap = tl.load(ptr, mask=ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
                contrib = tl.sum(g * x_tap, axis=0)                       # (BLOCK_D,)
                acc_w += tl.where(taps[:, None] == dy_ * KW + dx_, contrib[None, :], 0.0)
                ptr += stride_qkv_n
            row_ptr += W * stride_qkv_n

    # partials of this program: rows 0..KH*KW-1 d(conv weight), then d(norm weight), d(norm bias)
    n_prog = tl.num_programs(0) * n_bh
    prog = pid_c * n_bh + pid_bh
    part_base = part_ptr + ((t * n_prog + prog).to(tl.int64) * (KH * KW + 2)) * D
    tl.store(part_base + taps[:, None] * D + offs_d[None, :], acc_w,
             mask=(taps[:, None] < KH * KW) & d_ok[None, :])
    tl.store(part_base + (KH * KW) * D + offs_d, acc_gamma, mask=d_ok)
    tl.store(part_base + (KH * KW + 1) * D + offs_d, acc_beta, mask=d_ok)


@triton.jit
def _pool_qkv_bwd_input_kernel(
    g_ptr,                                        # float32 pre-norm gradients (see the rows kernel)
    wq_ptr, wk_ptr, wv_ptr,                       # conv weights, (D, KH * KW) contiguous each
    dqkv_ptr, stride_b, stride_n,                 # (B, N, 3 * heads * D): grid rows written here
    H, W, heads, D,
    q_sh, q_sw, q_oh, q_ow, kv_sh, kv_sw, kv_oh, kv_ow,
    SP: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    t = tl.program_id(2)
    n_bh = tl.num_programs(1)
    b = pid_bh // heads
    h = pid_bh % heads
    is_q = t == 0
    sh = tl.where(is_q, q_sh, kv_sh)
    sw = tl.where(is_q, q_sw, kv_sw)
    oh = tl.where(is_q, q_oh, kv_oh)
    ow = tl.where(is_q, q_ow, kv_ow)
    w_base = _select_t(t, wq_ptr, wk_ptr, wv_ptr)
    g_start = tl.where(t > 0, q_oh * q_ow, 0) + tl.where(t > 1, kv_oh * kv_ow, 0)
    g_base = g_ptr + (n_bh * g_start.to(tl.int64) + pid_bh * (oh * ow)) * D

    pos = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                      # input grid positions
    pos_ok = pos < H * W
    iy = pos // W
    ix = pos % W
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    w_ptr = w_base + offs_d * (KH * KW)
    for dy in tl.static_range(KH):
        oy_s = iy + (KH // 2 - dy)                                     # = oy * sh when this tap hits
        oy = tl.maximum(oy_s, 0) // sh
        y_ok = pos_ok & (oy_s >= 0) & (oy_s % sh == 0) & (oy < oh)
        g_row = g_base + (oy * ow) * D
        for dx in tl.static_range(KW):
            ox_s = ix + (KW // 2 - dx)
            ox = tl.maximum(ox_s, 0) // sw
            ok = y_ok & (ox_s >= 0) & (ox_s % sw == 0) & (ox < ow)
            g = tl.load((g_row + ox * D)[:, None] + offs_d[None, :],
                        mask=ok[:, None] & d_ok[None, :], other=0.0)
            w = tl.load(w_ptr + (dy * KW + dx), mask=d_ok, other=0.0)
            acc += g * w.to(tl.float32)[None, :]
    out = dqkv_ptr + b.to(tl.int64) * stride_b + (t * heads + h) * D
    tl.store(out + (SP + pos)[:, None] * stride_n + offs_d[None, :],
             acc.to(dqkv_ptr.dtype.element_ty), mask=pos_ok[:, None] & d_ok[None, :])


# --------------------------------------------------------------------------------------------
# Launchers. They take checked, device-ready tensors (pool_qkv.py checks) and launch; they never
# look at the device or at TRITON_INTERPRET, so that the GPU-compile harness can call them.
# --------------------------------------------------------------------------------------------

def _empty(*shape, device, dtype):
    """Every buffer the launchers allocate (tests poison them with NaN to catch unwritten values)."""
    return torch.empty(*shape, device=device, dtype=dtype)


def _block_sizes(D: int, tile_elems: int) -> tuple[int, int]:
    block_d = max(16, triton.next_power_of_2(D))
    return max(16, tile_elems // block_d), block_d


def _geometry_args(hw, q_size, k_size, strides) -> list[int]:
    (sqh, sqw), (skh, skw) = strides
    return [sqh, sqw, q_size[0], q_size[1], skh, skw, k_size[0], k_size[1]]


def launch_forward(qkv, weights, norm_weights, norm_biases, hw, num_heads, strides, q_size, k_size,
                   sp, eps):
    """q, k, v (B, heads, N_t, D) in qkv's dtype from qkv (B, N, 3 * heads * D), last dim contiguous.

    weights: 3 contiguous (D, 1, KH, KW); norm_weights, norm_biases: 3 contiguous (D,) each; strides:
    ((sqh, sqw), (skh, skw)); q_size, k_size: the pooled grids; sp: 1 with a class token, else 0."""
    B, N, C = qkv.shape
    D = C // (3 * num_heads)
    KH, KW = weights[0].shape[-2:]
    nq = sp + q_size[0] * q_size[1]
    nk = sp + k_size[0] * k_size[1]
    q = _empty(B, num_heads, nq, D, device=qkv.device, dtype=qkv.dtype)
    k = _empty(B, num_heads, nk, D, device=qkv.device, dtype=qkv.dtype)
    v = _empty(B, num_heads, nk, D, device=qkv.device, dtype=qkv.dtype)
    block_m, block_d = _block_sizes(D, FWD_TILE_ELEMS)
    grid = (triton.cdiv(max(nq, nk), block_m), B * num_heads, 3)
    _pool_qkv_fwd_kernel[grid](
        qkv, qkv.stride(0), qkv.stride(1), *weights, *norm_weights, *norm_biases, q, k, v,
        hw[0], hw[1], num_heads, D, *_geometry_args(hw, q_size, k_size, strides), eps,
        SP=sp, KH=KH, KW=KW, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=FWD_WARPS)
    return q, k, v


def launch_backward(grads, qkv, weights, norm_weights, hw, num_heads, strides, q_size, k_size, sp,
                    eps):
    """d(qkv) (B, N, 3 * heads * D) contiguous in qkv's dtype, and the float32 sums (3, KH*KW + 2, D):
    rows 0..KH*KW-1 d(conv weight) per tap, then d(norm weight), d(norm bias), for q, k, v.

    grads: contiguous (B, heads, N_t, D) gradients of q, k, v."""
    B, N, C = qkv.shape
    D = C // (3 * num_heads)
    KH, KW = weights[0].shape[-2:]
    nq_grid = q_size[0] * q_size[1]
    nk_grid = k_size[0] * k_size[1]
    bh = B * num_heads
    dqkv = _empty(B, N, C, device=qkv.device, dtype=qkv.dtype)
    scratch = _empty(bh * (nq_grid + 2 * nk_grid) * D, device=qkv.device, dtype=torch.float32)
    geometry = _geometry_args(hw, q_size, k_size, strides)

    block_m, block_d = _block_sizes(D, BWD_TILE_ELEMS)
    max_tiles = triton.cdiv(sp + max(nq_grid, nk_grid), block_m)
    tiles_per_prog = max(1, min(max_tiles, triton.cdiv(max_tiles * bh, BWD_TARGET_PROGRAMS)))
    n_chunks = triton.cdiv(max_tiles, tiles_per_prog)
    partials = _empty(3, n_chunks * bh, KH * KW + 2, D, device=qkv.device, dtype=torch.float32)
    _pool_qkv_bwd_rows_kernel[(n_chunks, bh, 3)](
        qkv, qkv.stride(0), qkv.stride(1), *weights, *norm_weights, *grads, dqkv, scratch, partials,
        hw[0], hw[1], num_heads, D, *geometry, eps, tiles_per_prog,
        SP=sp, KH=KH, KW=KW, BLOCK_M=block_m, BLOCK_D=block_d,
        BLOCK_TAPS=max(2, triton.next_power_of_2(KH * KW)), num_warps=BWD_WARPS)

    block_m, block_d = _block_sizes(D, FWD_TILE_ELEMS)
    _pool_qkv_bwd_input_kernel[(triton.cdiv(hw[0] * hw[1], block_m), bh, 3)](
        scratch, *weights, dqkv, dqkv.stride(0), dqkv.stride(1),
        hw[0], hw[1], num_heads, D, *geometry,
        SP=sp, KH=KH, KW=KW, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=FWD_WARPS)
    return dqkv, partials.sum(1)                  # fixed-order reduction over programs
