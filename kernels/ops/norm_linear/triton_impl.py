"""Triton kernel of `norm_linear` (a LayerNorm folded into the next Linear), and its launchers.

The public op and the design note live in the package's ``__init__``. The GEMM machinery is
``gelu_linear``'s (``_gemm`` with its LAYER_NORM prologue; the backward's dX and dW kernels):
one GEMM, several prologues, written once.

Notation: x (B, T, K) read as M = B * T flat rows, any strides; weight (N, K); y (B, T, N)
contiguous in ELEM, the GEMM dtype (x's, or the autocast dtype). mean, rstd: (M,) float32.

- ``norm_linear_fwd_kernel``: grid (M tiles x N tiles, N tiles fastest). A program first walks
  its rows of x over K in BLOCK_K steps for their mean and variance (each step's mean and centred
  sum of squares merged into the running ones, Chan's update: no E[x^2] - E[x]^2 cancellation),
  then runs the GEMM with the normalisation as the prologue of each x tile:
  (x - mean) * rstd * g + beta, rounded to ELEM where eager rounds the LayerNorm's output. The
  programs of the first N tile store mean and rstd for the backward. x's second pass hits L1/L2.
- ``norm_linear_bwd_norm_kernel``: grid (about NORM_TARGET_PROGRAMS,). The LayerNorm backward over
  whole rows (BLOCK_K >= K), a program walking its share of the rows: dx from d(normed x), x, mean,
  rstd and g, plus x's gradient from its other use when given; per-program float32 partials of
  d g and d beta, summed in a fixed order by gelu_linear's split-sum kernel. No atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ... import triton_helpers as helpers
from ...traffic import tensor_bytes
from ..gelu_linear import triton_impl as gemm
from ..gelu_linear.triton_impl import LAYER_NORM, PLAIN, _gemm, _rows


@triton.jit
def _row_stats(x_ptr, x_row, stride_xk, row_ok, K, eps, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """(mean, rstd) (BLOCK_M,) float32 of the rows of x over its K columns."""
    mean = tl.zeros((BLOCK_M,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    seen = 0.0
    offs = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        ok = offs < K - k0
        x = tl.load(x_ptr + x_row[:, None] + (k0 + offs)[None, :] * stride_xk,
                    mask=row_ok[:, None] & ok[None, :], other=0.0).to(tl.float32)
        count = tl.minimum(K - k0, BLOCK_K).to(tl.float32)
        step_mean = tl.sum(x, axis=1) / count
        centred = tl.where(ok[None, :], x - step_mean[:, None], 0.0)
        step_m2 = tl.sum(centred * centred, axis=1)
        total = seen + count
        delta = step_mean - mean
        mean += delta * (count / total)
        m2 += step_m2 + delta * delta * (seen * count / total)
        seen = total
    return mean, 1.0 / tl.sqrt(m2 / K + eps)


@triton.jit(do_not_specialize=["M", "T", "stride_xb", "stride_xt"])
def norm_linear_fwd_kernel(
    x_ptr, stride_xb, stride_xt, stride_xk,       # (B, T, K), any strides
    g_ptr, beta_ptr,                              # (K,) the LayerNorm's weight and bias
    w_ptr, stride_wn, stride_wk,                  # (N, K), ELEM or float32
    bias_ptr,                                     # (N,) (unused without HAS_BIAS)
    y_ptr,                                        # (M, N) contiguous, ELEM
    mean_ptr, rstd_ptr,                           # (M,) float32
    M, N, K, T, eps,
    HAS_BIAS: tl.constexpr, FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    ELEM = y_ptr.dtype.element_ty
    n_tiles = tl.cdiv(N, BLOCK_N)
    pid_m = tl.program_id(0) // n_tiles
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    x_row, _ = _rows(rows, T, stride_xb, stride_xt)
    mean, rstd = _row_stats(x_ptr, x_row, stride_xk, row_ok, K, eps, BLOCK_M, BLOCK_K)
    if tl.program_id(0) - pid_m * n_tiles == 0:
        tl.store(mean_ptr + rows, mean, mask=row_ok)
        tl.store(rstd_ptr + rows, rstd, mask=row_ok)
    acc, rows, cols, row_ok, col_ok, _ = _gemm(M, N, K, T, x_ptr, stride_xb, stride_xt, stride_xk,
                                               w_ptr, stride_wn, stride_wk, ELEM, LAYER_NORM, FP32,
                                               BLOCK_M, BLOCK_N, BLOCK_K, mean, rstd, g_ptr, beta_ptr)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0)
        acc += bias.to(ELEM).to(tl.float32)[None, :]
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], acc.to(ELEM),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit(do_not_specialize=["M", "rows_per_prog"])
def norm_linear_bwd_norm_kernel(
    dxn_ptr,                                      # (M, K) contiguous: d(normed x)
    x_ptr, stride_xb, stride_xt, stride_xk,       # (B, T, K), any strides
    g_ptr,                                        # (K,) the norm's weight
    mean_ptr, rstd_ptr,                           # (M,) float32
    dx_ptr,                                       # (M, K) contiguous, x's dtype
    part_ptr,                                     # float32 (2, programs, K): d g, then d beta partials
    dres_ptr,                                     # (M, K) contiguous: x's other gradient (HAS_DRES)
    M, K, T, rows_per_prog,
    HAS_DRES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The LayerNorm backward of this program's rows (BLOCK_M at a time, whole rows):
    xhat = (x - mean) rstd, dxhat = dxn * g, dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
    (+ dres: the gradient x gets from its other use, the residual stream, added here instead of by
    a separate add); and its partial sums of d g = sum dxn * xhat and d beta = sum dxn."""
    pid = tl.program_id(0)
    offs_k = tl.arange(0, BLOCK_K)
    k_ok = offs_k < K
    g = tl.load(g_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
    acc_g = tl.zeros((BLOCK_K,), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_K,), dtype=tl.float32)
    row0 = pid * rows_per_prog
    for r0 in range(row0, tl.minimum(row0 + rows_per_prog, M), BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        mask = row_ok[:, None] & k_ok[None, :]
        x_row, _ = _rows(rows, T, stride_xb, stride_xt)
        x = tl.load(x_ptr + x_row[:, None] + offs_k[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
        flat = rows.to(tl.int64)[:, None] * K + offs_k[None, :]
        dxn = tl.load(dxn_ptr + flat, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        acc_g += tl.sum(dxn * xhat, axis=0)
        acc_b += tl.sum(dxn, axis=0)
        dxhat = dxn * g[None, :]
        c1 = tl.sum(dxhat, axis=1) / K
        c2 = tl.sum(dxhat * xhat, axis=1) / K
        dx = (dxhat - c1[:, None] - xhat * c2[:, None]) * rstd[:, None]
        if HAS_DRES:
            dx += tl.load(dres_ptr + flat, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + flat, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    base = part_ptr + pid.to(tl.int64) * K
    tl.store(base + offs_k, acc_g, mask=k_ok)
    tl.store(base + tl.num_programs(0).to(tl.int64) * K + offs_k, acc_b, mask=k_ok)


# The forward's configs: gelu_linear's forward tiles for half dtypes (the LayerNorm prologue is
# lighter than the erf); float32 64 x 64 x 16 with 8 warps (gelu_linear's float32 64 x 64 x 32 with
# 4 warps spilled 16 B on sm_90, and with 8 warps 8 B under triton 3.6: the statistics pass adds
# live rows). Checked spill-free by tools/gpu_compile.py through this op's compile_cases.
FWD_CONFIGS = gemm.FWD_CONFIGS
FWD_FP32_CONFIGS = [gemm._cfg(gemm._MNK, (64, 64, 16), 8, 3)]
INTERPRETER_CONFIGS = {"fwd": {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}}


_fwd_tuned = triton.autotune(FWD_CONFIGS + FWD_FP32_CONFIGS, key=["M", "N", "K"], prune_configs_by={
    "early_config_prune": gemm._prune(FWD_FP32_CONFIGS)})(norm_linear_fwd_kernel)   # float32 or half configs


def _fwd_states(a):
    """x, the norm's weight and bias, the weight (+ bias) in; y, mean and rstd out."""
    read = sum(tensor_bytes(a[n]) for n in ("x_ptr", "g_ptr", "beta_ptr", "w_ptr"))
    read += tensor_bytes(a["bias_ptr"]) if a["HAS_BIAS"] else 0
    return read, sum(tensor_bytes(a[n]) for n in ("y_ptr", "mean_ptr", "rstd_ptr"))


def _bwd_norm_states(a):
    """d(normed x), x, the norm's weight, mean and rstd (+ dres) in; dx and the partial sums out."""
    read = sum(tensor_bytes(a[n]) for n in ("dxn_ptr", "x_ptr", "g_ptr", "mean_ptr", "rstd_ptr"))
    read += tensor_bytes(a["dres_ptr"]) if a["HAS_DRES"] else 0
    return read, tensor_bytes(a["dx_ptr"]) + tensor_bytes(a["part_ptr"])


# The norm backward: whole rows per program (BLOCK_K >= K), NORM_TILE_ELEMS elements a step, and
# about NORM_TARGET_PROGRAMS programs (each writes 2 K float32 partials).
NORM_TILE_ELEMS = 4096
NORM_TARGET_PROGRAMS = 256
NORM_WARPS = 8


def norm_backward(dxn, x, norm_weight, mean, rstd, dres=None):
    """(dx (B, T, K) contiguous in x's dtype, d norm_weight, d norm_bias) of the LayerNorm, from
    d(normed x) (B, T, K) contiguous, plus dres (B, T, K) contiguous when given: one launch for dx
    and the partials, one to sum them."""
    B, T, K = x.shape
    M = B * T
    block_k = triton.next_power_of_2(K)
    block_m = max(1, NORM_TILE_ELEMS // block_k)
    n_progs = min(triton.cdiv(M, block_m), NORM_TARGET_PROGRAMS)
    rows_per_prog = triton.cdiv(triton.cdiv(M, n_progs), block_m) * block_m
    n_progs = triton.cdiv(M, rows_per_prog)
    dx = helpers.empty(B, T, K, dtype=x.dtype, device=x.device)
    part = helpers.empty(2, n_progs, K, dtype=torch.float32, device=x.device)     # d g's, then d beta's
    helpers.launch(norm_linear_bwd_norm_kernel, (n_progs,),
                   (dxn, x, *x.stride(), norm_weight, mean, rstd, dx, part, dres if dres is not None else dx,
                    M, K, T, rows_per_prog),
                   dict(HAS_DRES=dres is not None, BLOCK_M=block_m, BLOCK_K=block_k, num_warps=NORM_WARPS,
                        num_stages=1), _bwd_norm_states)
    dg, dbeta = gemm.sum_splits(part[0], norm_weight.dtype, part[1], norm_weight.dtype)
    return dx, dg, dbeta


def forward(x, norm_weight, norm_bias, weight, bias, eps: float, out_dtype, autotune: bool = True):
    """(y (B, T, N) contiguous in out_dtype, mean (B, T), rstd (B, T) float32)."""
    B, T, K = x.shape
    N = weight.shape[0]
    M = B * T
    y = helpers.empty(B, T, N, dtype=out_dtype, device=x.device)
    mean = helpers.empty(B, T, dtype=torch.float32, device=x.device)
    rstd = helpers.empty(B, T, dtype=torch.float32, device=x.device)
    if M == 0:
        return y, mean, rstd
    bias_t = bias if bias is not None else weight
    args = (x, *x.stride(), norm_weight, norm_bias, weight, *weight.stride(), bias_t, y, mean, rstd,
            M, N, K, T, eps)
    meta = dict(HAS_BIAS=bias is not None, FP32=out_dtype == torch.float32)
    helpers.launch_tuned(_fwd_tuned, lambda c: (triton.cdiv(M, c["BLOCK_M"]) * triton.cdiv(N, c["BLOCK_N"]),),
                         args, meta, _fwd_states, autotune, INTERPRETER_CONFIGS["fwd"])
    return y, mean, rstd


def backward(dy, x, norm_weight, norm_bias, weight, mean, rstd, has_bias: bool, bias_dtype, eps: float,
             autotune: bool = True, dres=None):
    """(dx like x, d norm_weight, d norm_bias, dW like weight, db (or None)) for y = norm_linear(x, ...)
    and its gradient dy (B, T, N) in the GEMM dtype; dres (B, T, K) contiguous, x's gradient from
    its other use, is added into dx. Three steps, no atomics:

    1. d(normed x) = dy @ weight: gelu_linear's dh kernel without a prologue, in dy's dtype;
    2. dx, d norm_weight, d norm_bias: the LayerNorm backward from x, mean and rstd (the normed x
       is never stored), ``norm_linear_bwd_norm_kernel`` and a fixed-order sum of its partials;
    3. dW = dy^T @ LayerNorm(x) and db = sum of dy: gelu_linear's dW kernel with the LAYER_NORM
       prologue (the normed x recomputed tile by tile), fixed-order split sums."""
    dxn = gemm.input_grad(dy, weight, x, None, PLAIN.value, autotune, out_dtype=dy.dtype)
    if dxn.dtype != x.dtype:            # autocast: the norm ran in x's dtype (float32)
        dxn = dxn.to(x.dtype)
    dx, dg, dbeta = norm_backward(dxn, x, norm_weight, mean, rstd, dres)
    dw, db = gemm.weight_grads(dy, x, weight, has_bias, bias_dtype, None, LAYER_NORM.value, autotune,
                               norm=(mean, rstd, norm_weight, norm_bias))
    return dx, dg, dbeta, dw, db
