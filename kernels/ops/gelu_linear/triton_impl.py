"""Triton kernels of the fused MLP tail (`fastmvit.kernels.gelu_linear`), and their launchers.

The public op, its checks and the design note live in the package's ``__init__``, the plain torch
path in ``torch_impl``; this module holds what runs on the device (docs/design.md, "gelu_linear").

Notation: h is (B, T, K) read as M = B * T flat rows (row m is token m % T of sample m // T, any
strides), weight is (N, K), y and dy are (B, T, N) (float32 with a float32 residual). ELEM is h's dtype; a = gelu(h) rounded to ELEM.
g = dy * sample_scale[b] (or dy). All accumulation is float32; every value is upcast to float32 right
after loading (the interpreter cannot do bf16 arithmetic) and cast to ELEM only for tl.dot operands
and stores.

Kernels (no atomics anywhere: every output element is summed by one program in a fixed order):

- ``gelu_linear_fwd_kernel``: grid (M tiles x N tiles, N tiles fastest). Tile (BLOCK_M, BLOCK_N) of
  y = residual + s[b] * (a @ weight^T + bias); loop over K in BLOCK_K steps: load the h tile, gelu in
  float32, round to ELEM (the GEMM prologue: gelu(h) never reaches memory), load weight^T's tile and
  cast it to ELEM in registers (float32 master weights under autocast), tl.dot into float32.
  The epilogue adds bias, scales by the row's sample, adds the residual and stores y once.
  No grouped tile order: the weight (at most 1152 x 4608 in MViTv2, ~10 MB in bf16) stays in L2, and
  the N tiles of one row block (1 to 18) run side by side, so h is read from HBM about once.
- ``gelu_linear_bwd_dh_kernel``: grid (M tiles x K tiles). dh tile (BLOCK_M, BLOCK_K) = (dy @ weight) over N in
  BLOCK_N steps, then the epilogue scales by s[b], reads the h tile and multiplies by gelu'(h):
  the intermediate dy @ weight is never written.
- ``gelu_linear_bwd_dw_kernel``: grid (N tiles, K tiles, S splits of the rows). Tile (DW_BLOCK_N, DW_BLOCK_K)
  of dW = g^T @ a summed over the split's rows in BLOCK_M steps (a recomputed from h), stored as a
  float32 partial (S, N, K). Programs of the first K tile also sum g over their rows: the partial
  db (S, N). S is chosen so that N tiles x K tiles x S fills the GPU (``dw_splits``).
- ``gelu_linear_sum_splits_kernel``: dW = sum over S of the partials in a fixed order (s = 0, 1, ...), cast to
  the weight's dtype; launched again for db.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ... import triton_helpers as helpers
from ...traffic import tensor_bytes
from ...triton_helpers import TRITON_VERSION, mma

# What the GEMMs do to their A operand (x) as it is loaded, the PROLOGUE constexpr:
PLAIN = tl.constexpr(0)        # cast only (a plain Linear)
GELU = tl.constexpr(1)         # gelu(x): the MLP tail
LAYER_NORM = tl.constexpr(2)   # (x - mean[row]) * rstd[row] * g[col] + beta[col]: a LayerNorm (norm_linear)

SQRT1_2 = tl.constexpr(0.7071067811865476)       # 1 / sqrt(2)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)  # 1 / sqrt(2 pi)


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------
@triton.jit
def _gelu(x):
    """Exact (erf) GELU of float32 x: 0.5 x (1 + erf(x / sqrt 2))."""
    return 0.5 * x * (1.0 + tl.math.erf(x * SQRT1_2))


@triton.jit
def _gelu_grad(x):
    """d gelu / dx of float32 x: Phi(x) + x phi(x)."""
    cdf = 0.5 * (1.0 + tl.math.erf(x * SQRT1_2))
    pdf = tl.exp(-0.5 * x * x) * INV_SQRT_2PI
    return cdf + x * pdf


@triton.jit
def _rows(rows, T, stride_b, stride_t):
    """Flat rows m -> (int64 offset of row m in a (B, T, .) tensor with these strides, sample b)."""
    b = rows // T
    t = rows - b * T
    return b.to(tl.int64) * stride_b + t.to(tl.int64) * stride_t, b


@triton.jit
def _prologue(x, PROLOGUE: tl.constexpr, mean, rstd, g_ptr, beta_ptr, offs_col, col_ok):
    """x (float32, rows x cols of the A operand) through the GEMM prologue (see PLAIN, GELU,
    LAYER_NORM); mean, rstd: (rows,) float32 and g, beta indexed by the columns, for LAYER_NORM."""
    if PROLOGUE == GELU:
        x = _gelu(x)
    elif PROLOGUE == LAYER_NORM:
        g = tl.load(g_ptr + offs_col, mask=col_ok, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + offs_col, mask=col_ok, other=0.0).to(tl.float32)
        x = (x - mean[:, None]) * rstd[:, None] * g[None, :] + beta[None, :]
    return x


@triton.jit
def _gemm(M, N_OUT, RED, T, a_ptr, stride_ab, stride_at, stride_ared, w_ptr, stride_wout, stride_wred,
          ELEM: tl.constexpr, PROLOGUE: tl.constexpr, FP32: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_RED: tl.constexpr,
          mean=0.0, rstd=0.0, g_ptr=None, beta_ptr=None):
    """This program's tile of the GEMM A @ W: (M, RED) @ (RED, N_OUT), tiles in row-major order (a
    row block's column tiles side by side), A's rows the flat (b, t) rows of a (B, T, .) tensor,
    stride_wout / stride_wred the weight's strides along the output / reduction dims.

    Each A tile is upcast, put through the prologue (GELU, or LAYER_NORM with the rows' mean and
    rstd) and rounded to ELEM where eager rounds gelu's (or the norm's) output, or just rounded to
    ELEM (PLAIN: a float32 dy under autocast); the W
    tile is cast to ELEM in registers (float32 master weights). Returns (float32 acc (BLOCK_M,
    BLOCK_OUT), rows, output cols, rows in range, cols in range, each row's sample)."""
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N_OUT, BLOCK_OUT)
    pid_m = pid // n_tiles
    pid_n = pid - pid_m * n_tiles
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    row_ok = rows < M
    col_ok = cols < N_OUT
    a_row, b = _rows(rows, T, stride_ab, stride_at)
    offs_red = tl.arange(0, BLOCK_RED)
    a_ptrs = a_ptr + a_row[:, None] + offs_red[None, :] * stride_ared            # (BLOCK_M, BLOCK_RED)
    w_ptrs = w_ptr + cols[None, :] * stride_wout + offs_red[:, None] * stride_wred  # (BLOCK_RED, BLOCK_OUT)
    acc = tl.zeros((BLOCK_M, BLOCK_OUT), dtype=tl.float32)
    for r0 in range(0, RED, BLOCK_RED):
        r_ok = offs_red < RED - r0
        a = tl.load(a_ptrs, mask=row_ok[:, None] & r_ok[None, :], other=0.0)
        if PROLOGUE == PLAIN:
            a = a.to(ELEM)
        else:
            a = _prologue(a.to(tl.float32), PROLOGUE, mean, rstd, g_ptr, beta_ptr, r0 + offs_red, r_ok).to(ELEM)
        w = tl.load(w_ptrs, mask=r_ok[:, None] & col_ok[None, :], other=0.0).to(ELEM)
        acc = mma(a, w, acc, FP32)
        a_ptrs += BLOCK_RED * stride_ared
        w_ptrs += BLOCK_RED * stride_wred
    return acc, rows, cols, row_ok, col_ok, b


# Batch-dependent sizes (M, T, batch and token strides) are not specialised: one compiled kernel
# serves every batch size and token count of a block.
@triton.jit(do_not_specialize=["M", "T", "stride_hb", "stride_ht", "stride_rb", "stride_rt"])
def gelu_linear_fwd_kernel(
    h_ptr, stride_hb, stride_ht, stride_hk,       # (B, T, K), ELEM
    w_ptr, stride_wn, stride_wk,                  # (N, K), ELEM or float32
    bias_ptr, stride_bias,                        # (N,), ELEM or float32 (unused without HAS_BIAS)
    res_ptr, stride_rb, stride_rt, stride_rn,     # (B, T, N), ELEM (unused without HAS_RES)
    scale_ptr,                                    # (B,) floating, contiguous (unused without HAS_SCALE)
    y_ptr,                                        # (M, N) contiguous, ELEM
    M, N, K, T,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, HAS_SCALE: tl.constexpr, FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PROLOGUE: tl.constexpr = GELU,
):
    ELEM = h_ptr.dtype.element_ty
    acc, rows, cols, row_ok, col_ok, b = _gemm(M, N, K, T, h_ptr, stride_hb, stride_ht, stride_hk,      # gelu(h) @ W^T
                                               w_ptr, stride_wn, stride_wk, ELEM, PROLOGUE, FP32, BLOCK_M, BLOCK_N, BLOCK_K)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols * stride_bias, mask=col_ok, other=0.0)
        acc += bias.to(ELEM).to(tl.float32)[None, :]
    if HAS_SCALE:
        s = tl.load(scale_ptr + b, mask=row_ok, other=0.0).to(tl.float32)
        acc = acc * s[:, None]
    mask = row_ok[:, None] & col_ok[None, :]
    if HAS_RES:
        r_row, _ = _rows(rows, T, stride_rb, stride_rt)
        res = tl.load(res_ptr + r_row[:, None] + cols[None, :] * stride_rn, mask=mask, other=0.0)
        acc += res.to(tl.float32)
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "T", "stride_db", "stride_dt", "stride_hb", "stride_ht"])
def gelu_linear_bwd_dh_kernel(
    dy_ptr, stride_db, stride_dt, stride_dn,      # (B, T, N), y's dtype (any strides: an expanded grad too)
    w_ptr, stride_wn, stride_wk,                  # (N, K), ELEM or float32
    h_ptr, stride_hb, stride_ht, stride_hk,       # (B, T, K), ELEM
    scale_ptr,                                    # (B,) (unused without HAS_SCALE)
    dh_ptr,                                       # (M, K) contiguous, ELEM
    M, N, K, T,
    HAS_SCALE: tl.constexpr, FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, PROLOGUE: tl.constexpr = GELU,
):
    ELEM = dh_ptr.dtype.element_ty              # h's dtype (gelu_linear), dy's (norm_linear's d normed x)
    acc, rows, cols, row_ok, col_ok, b = _gemm(M, K, N, T, dy_ptr, stride_db, stride_dt, stride_dn,     # dy @ W
                                               w_ptr, stride_wk, stride_wn, ELEM, PLAIN, FP32, BLOCK_M, BLOCK_K, BLOCK_N)
    if HAS_SCALE:   # (s dy) @ W = s (dy @ W): the per-row scale goes in the epilogue, unrounded
        s = tl.load(scale_ptr + b, mask=row_ok, other=0.0).to(tl.float32)
        acc = acc * s[:, None]
    mask = row_ok[:, None] & col_ok[None, :]
    if PROLOGUE == GELU:
        h_row, _ = _rows(rows, T, stride_hb, stride_ht)
        x = tl.load(h_ptr + h_row[:, None] + cols[None, :] * stride_hk, mask=mask, other=0.0).to(tl.float32)
        dh = acc * _gelu_grad(x)
    else:   # a plain linear (or a norm_linear's d normed input): dh = dy @ W, h not read
        dh = acc
    tl.store(dh_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], dh.to(ELEM), mask=mask)


@triton.jit(do_not_specialize=["M", "T", "rows_per_split", "stride_db", "stride_dt", "stride_hb", "stride_ht"])
def gelu_linear_bwd_dw_kernel(
    dy_ptr, stride_db, stride_dt, stride_dn,      # (B, T, N), y's dtype
    h_ptr, stride_hb, stride_ht, stride_hk,       # (B, T, K), ELEM
    scale_ptr,                                    # (B,) (unused without HAS_SCALE)
    part_w_ptr,                                   # float32 (S, N, K) partial dW
    part_b_ptr,                                   # float32 (S, N) partial db (unused without HAS_BIAS)
    M, N, K, T, rows_per_split,                   # rows_per_split: a multiple of BLOCK_M
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, FP32: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, PROLOGUE: tl.constexpr = GELU,
    mean_ptr=None, rstd_ptr=None, g_ptr=None, beta_ptr=None,   # LAYER_NORM: (M,) float32 stats, (K,) affine
):
    # the GEMM dtype: h's, or with LAYER_NORM dy's (h is the norm's input, float32 under autocast)
    ELEM = dy_ptr.dtype.element_ty if PROLOGUE == LAYER_NORM else h_ptr.dtype.element_ty
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok = offs_n < N
    k_ok = offs_k < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row0 = pid_s * rows_per_split
    for r0 in range(row0, tl.minimum(row0 + rows_per_split, M), BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        dy_row, b = _rows(rows, T, stride_db, stride_dt)
        # g^T tile (BLOCK_N, BLOCK_M): dy read transposed through its strides
        g = tl.load(dy_ptr + dy_row[None, :] + offs_n[:, None] * stride_dn,
                    mask=n_ok[:, None] & row_ok[None, :], other=0.0).to(tl.float32)
        if HAS_SCALE:
            s = tl.load(scale_ptr + b, mask=row_ok, other=0.0).to(tl.float32)
            g = g * s[None, :]
        if HAS_BIAS:
            acc_b += tl.sum(g, axis=1)        # cheap next to the matmul; stored by the first K tile
        h_row, _ = _rows(rows, T, stride_hb, stride_ht)
        x = tl.load(h_ptr + h_row[:, None] + offs_k[None, :] * stride_hk,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        if PROLOGUE == LAYER_NORM:
            mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
            rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
            x = _prologue(x, PROLOGUE, mean, rstd, g_ptr, beta_ptr, offs_k, k_ok)
        else:
            x = _prologue(x, PROLOGUE, 0.0, 0.0, g_ptr, beta_ptr, offs_k, k_ok)
        acc = mma(g.to(ELEM), x.to(ELEM), acc, FP32)
    # float32 partials, or with a single split dW and db themselves (in their own dtypes)
    part = part_w_ptr + pid_s.to(tl.int64) * N * K
    tl.store(part + offs_n[:, None] * K + offs_k[None, :], acc.to(part_w_ptr.dtype.element_ty),
             mask=n_ok[:, None] & k_ok[None, :])
    if HAS_BIAS:
        if pid_k == 0:
            tl.store(part_b_ptr + pid_s.to(tl.int64) * N + offs_n, acc_b.to(part_b_ptr.dtype.element_ty),
                     mask=n_ok)


@triton.jit
def _sum_rows(part_ptr, out_ptr, S, L, block, BLOCK: tl.constexpr):
    offs = block * BLOCK + tl.arange(0, BLOCK)
    ok = offs < L
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    ptrs = part_ptr + offs
    for _ in range(S):
        acc += tl.load(ptrs, mask=ok, other=0.0)
        ptrs += L
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit(do_not_specialize=["S", "L", "L2", "tiles"])
def gelu_linear_sum_splits_kernel(part_ptr, out_ptr, part2_ptr, out2_ptr, S, L, L2, tiles, BLOCK: tl.constexpr):
    """out (L,) = sum over s of part (S, L) float32, and out2 (L2,) the same of part2 (S, L2), in
    the order s = 0, 1, ..., cast to the outputs' dtypes: the first `tiles` programs do part."""
    pid = tl.program_id(0)
    if pid < tiles:
        _sum_rows(part_ptr, out_ptr, S, L, pid, BLOCK)
    else:
        _sum_rows(part2_ptr, out2_ptr, S, L2, pid - tiles, BLOCK)


# ----------------------------------------------------------------------------------------------
# Launch configurations
# ----------------------------------------------------------------------------------------------
# Every config is correct for every shape (all loads and stores are masked); configs only trade
# speed. Checked for sm_80 / sm_90 (registers, shared memory, spills, HMMA / HGMMA) by
# tests/test_gpu_compile.py through this op's ``compile_cases``.
def _cfg(names, values, warps, stages):
    return triton.Config(dict(zip(names, values)), num_warps=warps, num_stages=stages)


_MNK = ("BLOCK_M", "BLOCK_N", "BLOCK_K")
_MKN = ("BLOCK_M", "BLOCK_K", "BLOCK_N")
# Measured with tools/gpu_compile.py (fp16 / bf16, K 384 and 3072, with and without the epilogue
# extras, float32 weights): every config below compiles with STACK 0 / LOCAL 0 and HMMA / HGMMA on
# sm_80 and sm_90. The forward's limit is the GELU prologue: the erf of each h element held by a
# thread is a libdevice polynomial with several live temporaries, so a thread can afford about 16 h
# elements per K step (BLOCK_M * BLOCK_K / threads). Dropped because they spilled (sm_80, 24 to
# 1100 B of stack): 64x64x64 and 128x64x64 with 4 warps, 64x128x64 with 4 warps, 128x128x32 with 8
# warps and 2 or 3 stages; in the dh GEMM (no erf in the loop) 128x64x64 and 64x128x32 with 4 warps,
# and 128x128x32 with 8 warps (8 B on sm_90).
# (rows, output columns, reduction step, warps, stages)
FWD_CONFIGS = [_cfg(_MNK, c[:3], *c[3:]) for c in (
    (64, 64, 32, 4, 3), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (128, 128, 16, 8, 4),
    (64, 128, 64, 8, 3))]
DH_CONFIGS = [_cfg(_MKN, c[:3], *c[3:]) for c in (
    (64, 64, 64, 4, 3), (128, 64, 64, 8, 3), (64, 128, 64, 8, 3))]
# dW: the output tile is fixed (DW_BLOCK_N x DW_BLOCK_K, so that the split count and the partials
# buffer do not depend on the config); only the row step, warps and stages are tuned (32 rows with
# 4 warps spilled 8 B on sm_80).
DW_BLOCK_N, DW_BLOCK_K = 64, 64
DW_CONFIGS = [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=s)
              for bm, w, s in ((64, 4, 3), (64, 8, 3), (32, 8, 3))]
# float32 (exact IEEE tl.dot, i.e. FMAs, no tensor cores: the operands live in registers) gets its
# own small tiles; the half configs above spilled 24 to 2200 B in float32 (dh 64x64x64 on sm_90, dW
# with 64-row steps on both targets).
FWD_FP32_CONFIGS = [_cfg(_MNK, (64, 64, 32), 4, 3)]
DH_FP32_CONFIGS = [_cfg(_MKN, (64, 64, 32), 8, 3)]    # 4 warps spilled 56-64 B on sm_80
DW_FP32_CONFIGS = [triton.Config({"BLOCK_M": 32}, num_warps=8, num_stages=3)]

# Splitting dW's reduction over rows: aim at this many programs (one wave of 132 SMs on an H100;
# two waves doubled the float32 partials, a quarter of the kernel's traffic at stage 1 by the cost
# model, for parallelism nobody has measured yet), but give every split at least DW_MIN_ROWS rows,
# so that the float32 partials (S * N * K * 4 bytes) stay small next to the dy and h they sum
# (M * (N + K) * E bytes).
DW_TARGET_PROGRAMS = 132
DW_MIN_ROWS = 256
SUM_BLOCK = 1024

# The interpreter (CPU tests) runs one fixed small config: autotuning there would time numpy.
# Tests may change these to exercise other tilings.
# ("dw": BLOCK_N x BLOCK_K is its fixed output tile, DW_BLOCK_N x DW_BLOCK_K on a GPU.)
INTERPRETER_CONFIGS = {"fwd": {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32},
                       "dh": {"BLOCK_M": 32, "BLOCK_K": 32, "BLOCK_N": 32},
                       "dw": {"BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_M": 32}}


def _prune(fp32_configs, out_name=None, red_name=None):
    """early_config_prune: float32 runs fp32_configs only, half dtypes the others, with no output
    tile wider than the padded output dim (N = 96 takes 128 but not more) and no reduction step
    longer than the padded reduction."""
    def prune(configs, named_args, **kwargs):
        if kwargs.get("FP32", False):
            return [c for c in configs if any(c is f for f in fp32_configs)]
        kept = [c for c in configs if not any(c is f for f in fp32_configs)]
        if out_name is not None:
            fits = [c for c in kept
                    if c.kwargs["BLOCK_" + out_name] <= max(32, triton.next_power_of_2(named_args[out_name]))
                    and c.kwargs["BLOCK_" + red_name] <= max(32, triton.next_power_of_2(named_args[red_name]))]
            kept = fits or kept[:1]
        return kept
    return prune


# Per compiler version: triton 3.6 (the floor of the supported range) spilled two configs on sm_80 that
# 3.9 compiles clean (the full compile table, FASTMVIT_GPU_COMPILE=all, under each version):
# - forward 64x128x64, 8 warps, with float32 weights (autocast): STACK 8 B;
# - dW 64-row step with 4 warps and a sample scale (fp16 and bf16): STACK 104-136 B.
# They are not launched under triton < 3.9.
OLDER_COMPILER = TRITON_VERSION < (3, 9)
_FWD_SPILLS_ON_OLDER = next(c for c in FWD_CONFIGS if c.num_warps == 8
                            and [c.kwargs[n] for n in _MNK] == [64, 128, 64])
_prune_fwd_by_dtype = _prune(FWD_FP32_CONFIGS, "N", "K")


def _prune_fwd(configs, named_args, **kwargs):
    kept = _prune_fwd_by_dtype(configs, named_args, **kwargs)
    if OLDER_COMPILER and named_args["w_ptr"].dtype == torch.float32 and not kwargs.get("FP32", False):
        kept = [c for c in kept if c is not _FWD_SPILLS_ON_OLDER] or kept
    return kept


_fwd_tuned = triton.autotune(FWD_CONFIGS + FWD_FP32_CONFIGS, key=["M", "N", "K"], prune_configs_by={
    "early_config_prune": _prune_fwd})(gelu_linear_fwd_kernel)
_dh_tuned = triton.autotune(DH_CONFIGS + DH_FP32_CONFIGS, key=["M", "N", "K"], prune_configs_by={
    "early_config_prune": _prune(DH_FP32_CONFIGS, "K", "N")})(gelu_linear_bwd_dh_kernel)
_prune_dw_by_dtype = _prune(DW_FP32_CONFIGS)


def _prune_dw(configs, named_args, **kwargs):
    """dW's prune, and no 64-row step with 4 warps where it spilled on sm_80: with a float32 dy (half
    h, float32 residual: autocast; 104 B, the float32 dy tiles of 3 stages), and under an older
    compiler with a sample scale (see OLDER_COMPILER). Without the GELU (the attention projection)
    and a float32 dy the 8-warp 64-row step spilled too (8 B, sm_80): 32-row steps only there.
    With the GELU, a sample scale and bf16, the 8-warp 64-row step spilled 8 B on sm_80 (triton
    3.9, K 384 and 1536): not launched there."""
    kept = _prune_dw_by_dtype(configs, named_args, **kwargs)
    half = not kwargs.get("FP32", False)
    fp32_dy = named_args["dy_ptr"].dtype == torch.float32
    scaled = kwargs.get("HAS_SCALE", False)
    prologue = kwargs.get("PROLOGUE", GELU.value)
    if half and (fp32_dy or (OLDER_COMPILER and scaled)):
        kept = [c for c in kept if not (c.kwargs["BLOCK_M"] == 64 and c.num_warps == 4)] or kept
    if half and fp32_dy and prologue == PLAIN.value:
        kept = [c for c in kept if c.kwargs["BLOCK_M"] != 64] or kept
    if half and scaled and prologue == GELU.value and named_args["h_ptr"].dtype == torch.bfloat16:
        kept = [c for c in kept if not (c.kwargs["BLOCK_M"] == 64 and c.num_warps == 8)] or kept
    return kept


_dw_tuned = triton.autotune(DW_CONFIGS + DW_FP32_CONFIGS, key=["M", "N", "K"], prune_configs_by={
    "early_config_prune": _prune_dw})(gelu_linear_bwd_dw_kernel)


# ----------------------------------------------------------------------------------------------
# Launchers (no checks here: `gelu_linear` validates; the GPU-compile harness calls these)
# ----------------------------------------------------------------------------------------------
# Traffic statements (distinct bytes per launch, see fastmvit.kernels.traffic): every operand is
# read whole (masked to its valid rows and columns), an expanded dy by its distinct elements.
def _optional(a, name, flag) -> int:
    return tensor_bytes(a[name]) if a[flag] else 0


def _fwd_states(a):
    """h, the weight (+ bias, residual, sample scale) in; y out."""
    read = (tensor_bytes(a["h_ptr"]) + tensor_bytes(a["w_ptr"]) + _optional(a, "bias_ptr", "HAS_BIAS")
            + _optional(a, "res_ptr", "HAS_RES") + _optional(a, "scale_ptr", "HAS_SCALE"))
    return read, tensor_bytes(a["y_ptr"])


def _dh_states(a):
    """dy, the weight, h (with the GELU) (+ sample scale) in; dh out."""
    read = (tensor_bytes(a["dy_ptr"]) + tensor_bytes(a["w_ptr"])
            + (tensor_bytes(a["h_ptr"]) if a["PROLOGUE"] == GELU.value else 0) + _optional(a, "scale_ptr", "HAS_SCALE"))
    return read, tensor_bytes(a["dh_ptr"])


def _dw_states(a):
    """dy, h (+ sample scale, + the norm's statistics and affine) in; the dW (and db) partials of
    every split out (or dW and db themselves with one split)."""
    read = tensor_bytes(a["dy_ptr"]) + tensor_bytes(a["h_ptr"]) + _optional(a, "scale_ptr", "HAS_SCALE")
    if a["PROLOGUE"] == LAYER_NORM.value:   # the rows' mean and rstd, the norm's weight and bias
        read += sum(tensor_bytes(a[n]) for n in ("mean_ptr", "rstd_ptr", "g_ptr", "beta_ptr"))
    return read, tensor_bytes(a["part_w_ptr"]) + _optional(a, "part_b_ptr", "HAS_BIAS")


def _sum_splits_states(a):
    """The (S, L) partials (and the (S, L2) ones) in, the (L,) (and (L2,)) sums out."""
    second = a["L2"] > 0
    read = tensor_bytes(a["part_ptr"]) + (tensor_bytes(a["part2_ptr"]) if second else 0)
    return read, tensor_bytes(a["out_ptr"]) + (tensor_bytes(a["out2_ptr"]) if second else 0)


def _scale_args(sample_scale, like):
    return (sample_scale, True) if sample_scale is not None else (like, False)


def forward(h, weight, bias, residual, sample_scale, autotune: bool = True, gelu: bool = True) -> torch.Tensor:
    """y (B, T, N) contiguous = residual + sample_scale[b] * (gelu(h) @ weight^T + bias), in the
    residual's dtype (h's, or float32 under autocast), else h's; h instead of gelu(h) when not gelu.

    h (B, T, K) and residual (B, T, N): any strides; weight (N, K); bias (N,) or None; sample_scale
    (B,) contiguous or None (only with residual)."""
    B, T, K = h.shape
    N = weight.shape[0]
    M = B * T
    y = helpers.empty(B, T, N, dtype=h.dtype if residual is None else residual.dtype, device=h.device)
    bias_t = bias if bias is not None else weight
    res_t = residual if residual is not None else h
    scale_t, has_scale = _scale_args(sample_scale, h)
    args = (h, *h.stride(), weight, *weight.stride(), bias_t, bias_t.stride(0),
            res_t, *res_t.stride(), scale_t, y, M, N, K, T)
    meta = dict(HAS_BIAS=bias is not None, HAS_RES=residual is not None, HAS_SCALE=has_scale,
                FP32=h.dtype == torch.float32, PROLOGUE=(GELU if gelu else PLAIN).value)
    if M == 0:
        return y
    helpers.launch_tuned(_fwd_tuned, lambda c: (triton.cdiv(M, c["BLOCK_M"]) * triton.cdiv(N, c["BLOCK_N"]),),
                         args, meta, _fwd_states, autotune, INTERPRETER_CONFIGS["fwd"])
    return y


def dw_splits(M: int, N: int, K: int, block_n: int, block_k: int, row_align: int) -> tuple[int, int]:
    """(S, rows per split) for the dW reduction over M rows: enough programs to fill the GPU
    (N tiles x K tiles x S >= DW_TARGET_PROGRAMS where the rows allow), at least DW_MIN_ROWS rows
    per split, rows per split a multiple of row_align (every BLOCK_M the kernel may run with)."""
    tiles = triton.cdiv(N, block_n) * triton.cdiv(K, block_k)
    splits = max(1, min(triton.cdiv(DW_TARGET_PROGRAMS, tiles), M // DW_MIN_ROWS))
    rows = triton.cdiv(triton.cdiv(M, splits), row_align) * row_align
    return triton.cdiv(M, rows), rows


def backward(dy, h, weight, has_bias: bool, bias_dtype, sample_scale, autotune: bool = True, gelu: bool = True):
    """dh (B, T, K) contiguous in h's dtype, dW (N, K) in weight's dtype, db (N,) in bias_dtype (None
    without bias), for y = gelu_linear(h, weight, bias, residual, sample_scale) and its gradient dy
    (B, T, N, any strides, h's dtype). Deterministic: fixed-order sums, no atomics."""
    B, T, K = h.shape
    N = weight.shape[0]
    dev = h.device
    if B * T == 0:                                 # no rows: nothing to launch, zero dW and db
        db = torch.zeros(N, dtype=bias_dtype, device=dev) if has_bias else None
        return torch.empty_like(h), torch.zeros(N, K, dtype=weight.dtype, device=dev), db
    prologue = (GELU if gelu else PLAIN).value
    dh = input_grad(dy, weight, h, sample_scale, prologue, autotune)
    dw, db = weight_grads(dy, h, weight, has_bias, bias_dtype, sample_scale, prologue, autotune)
    return dh, dw, db


def input_grad(dy, weight, h, sample_scale, prologue: int, autotune: bool, out_dtype=None):
    """dh (B, T, K) contiguous = (s[b] dy) @ weight, times gelu'(h) with the GELU prologue; in
    out_dtype (h's by default). dy (B, T, N) any strides; h (B, T, K) (read only with the GELU).
    Also the d(normed input) of ``norm_linear`` (PLAIN)."""
    B, T, K = h.shape[0], h.shape[1], weight.shape[1]
    N = weight.shape[0]
    M = B * T
    out_dtype = out_dtype or h.dtype
    scale_t, has_scale = _scale_args(sample_scale, h)
    dh = helpers.empty(B, T, K, dtype=out_dtype, device=h.device)
    dh_args = (dy, *dy.stride(), weight, *weight.stride(), h, *h.stride(), scale_t, dh, M, N, K, T)
    dh_meta = dict(HAS_SCALE=has_scale, FP32=out_dtype == torch.float32, PROLOGUE=prologue)
    helpers.launch_tuned(_dh_tuned, lambda c: (triton.cdiv(M, c["BLOCK_M"]) * triton.cdiv(K, c["BLOCK_K"]),),
                         dh_args, dh_meta, _dh_states, autotune, INTERPRETER_CONFIGS["dh"])
    return dh


def weight_grads(dy, h, weight, has_bias: bool, bias_dtype, sample_scale, prologue: int, autotune: bool,
                 norm=None):
    """(dW (N, K) in weight's dtype, db (N,) in bias_dtype or None): dW = (s[b] dy)^T @ prologue(h)
    reduced over the rows in S splits (float32 partials summed in a fixed order; with one split the
    kernel writes dW and db). norm: (mean, rstd, g, beta) for the LAYER_NORM prologue."""
    B, T, K = h.shape
    N = weight.shape[0]
    M = B * T
    dev = h.device
    fp32 = (dy.dtype if prologue == LAYER_NORM.value else h.dtype) == torch.float32
    scale_t, has_scale = _scale_args(sample_scale, h)
    c_dw = INTERPRETER_CONFIGS["dw"]
    bn, bk = (DW_BLOCK_N, DW_BLOCK_K) if autotune else (c_dw["BLOCK_N"], c_dw["BLOCK_K"])
    row_align = (max(c.kwargs["BLOCK_M"] for c in DW_CONFIGS + DW_FP32_CONFIGS) if autotune
                 else c_dw["BLOCK_M"])
    S, rows = dw_splits(M, N, K, bn, bk, row_align)
    if S == 1:   # few rows (stage 4: 49 tokens a sample): the kernel writes dW and db directly
        part_w = helpers.empty(N, K, dtype=weight.dtype, device=dev)
        part_b = helpers.empty(N, dtype=bias_dtype, device=dev) if has_bias else part_w
    else:
        part_w = helpers.empty(S, N, K, dtype=torch.float32, device=dev)
        part_b = helpers.empty(S, N, dtype=torch.float32, device=dev) if has_bias else part_w
    dw_args = (dy, *dy.stride(), h, *h.stride(), scale_t, part_w, part_b, M, N, K, T, rows)
    dw_meta = dict(HAS_BIAS=has_bias, HAS_SCALE=has_scale, FP32=fp32, BLOCK_N=bn, BLOCK_K=bk, PROLOGUE=prologue)
    if norm is not None:
        dw_meta.update(zip(("mean_ptr", "rstd_ptr", "g_ptr", "beta_ptr"), norm))
    grid = (triton.cdiv(N, bn), triton.cdiv(K, bk), S)
    helpers.launch_tuned(_dw_tuned, lambda c: grid, dw_args, dw_meta, _dw_states, autotune,
                         {"BLOCK_M": c_dw["BLOCK_M"]})   # the output tile is fixed: bn, bk above

    if S == 1:
        return part_w, part_b if has_bias else None
    if not has_bias:
        return sum_splits(part_w.view(S, N * K), weight.dtype)[0].view(N, K), None
    dw, db = sum_splits(part_w.view(S, N * K), weight.dtype, part_b, bias_dtype)
    return dw.view(N, K), db


def sum_splits(part, dtype, part2=None, dtype2=None):
    """[The (L,) sum over s of float32 partials (S, L) contiguous, in a fixed order, in `dtype`]
    and with part2 (S, L2) its sum as well, in dtype2: one launch either way."""
    S, L = part.shape
    out = helpers.empty(L, dtype=dtype, device=part.device)
    L2 = part2.shape[1] if part2 is not None else 0
    out2 = helpers.empty(L2, dtype=dtype2, device=part.device) if part2 is not None else out
    tiles = triton.cdiv(L, SUM_BLOCK)
    helpers.launch(gelu_linear_sum_splits_kernel, (tiles + triton.cdiv(L2, SUM_BLOCK),),
                   (part, out, part if part2 is None else part2, out2, S, L, L2, tiles),
                   dict(BLOCK=SUM_BLOCK), _sum_splits_states)
    return [out] if part2 is None else [out, out2]
