"""Triton kernels of the fused pooling attention with decomposed relative positions, and their
launchers. The design note is in the package's ``__init__``; the math in ``torch_impl.py``.

Notation: one program handles one (batch, head) pair `bh` and one tile of BLOCK_M query rows (or
BLOCK_N key rows). sp = 1 with a class token (token 0, no rel-pos, no residual), else 0. Spatial
query row s = n - sp sits at (y, x) = (s // qw, s % qw); spatial key s = m - sp at (j, l) =
(s // kw, s % kw). The rel-pos tables are read through int32 index maps idx_h (qh, kh) and
idx_w (qw, kw) (the official dist formula, computed once on the host).

Kernels (all float32 accumulation; inputs upcast right after loading; no atomics):
    pool_attention_fwd_kernel        grid (cdiv(Nq, BLOCK_M), B*H): out (B, Nq, H, D) buffer, lse (B*H, Nq) float32
    pool_attention_fwd_kernel again  (BWD_PRE, the backward's first pass): delta = rowsum(dout * o) from the
                       float32 attention output o, rel_h (B*H, Nq, KH_PAD), rel_w float32
    pool_attention_bwd_dkdv_kernel   grid (cdiv(Nk, BLOCK_N), B*H): dk, dv, looping over all query tiles
    pool_attention_bwd_dq_kernel     grid (cdiv(Nq, BLOCK_M), B*H): dq, looping over all key tiles, and with
                       rel-pos drel_h, drel_w in the same pass (ONE_PASS; or a second launch, REL_PART)
    pool_attention_bwd_tables_kernel grid (table rows, 2): d rel_pos_h and d rel_pos_w from drel_h, drel_w and q,
                       one program per table row (no atomics)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ... import triton_helpers as helpers
from ...traffic import host_setup, nbytes, tensor_bytes
from ...triton_helpers import grid_position, head_rows, mma, onehot_matmul

# exp(x) = exp2(x * LOG2E): exp2 is the native instruction. A constexpr: jit code reads no other globals.
LOG2E = tl.constexpr(1.4426950408889634)


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------
@triton.jit
def _grid_coords(offs, N, height, width, SP: tl.constexpr, HAS_T: tl.constexpr):
    """Token rows (queries or keys) -> (the row is spatial and in range, its frame t, grid row y,
    grid column x), on a grid `height` x `width` (per frame) behind SP class tokens. Without a
    time axis (HAS_T False) t is 0 and y = s // width: today's 2-D arithmetic."""
    s = offs - SP
    spatial = (s >= 0) & (offs < N)
    t, y, x = grid_position(tl.where(spatial, s, 0), height, width, HAS_T)
    return spatial, t, y, x


@triton.jit
def _program_head(pid, n_win, n_win_w, Nq, Nk, qh, qw, kh, kw, WINDOW: tl.constexpr):
    """A program's axis-1 id -> (batch x head bh, window row wy, window column wx, the query and
    key rows its grid numbers n_q, n_k). Without windows (WINDOW False) the id is bh, the
    "window" is the whole grid (0, 0) and n_q, n_k = Nq, Nk; with windows n_q = qh * qw and
    n_k = kh * kw (the windows' sides)."""
    bh = pid
    wy = 0
    wx = 0
    n_q = Nq
    n_k = Nk
    if WINDOW:
        bh = pid // n_win
        w = pid - bh * n_win
        wy = w // n_win_w
        wx = w - wy * n_win_w
        n_q = qh * qw
        n_k = kh * kw
    return bh, wy, wx, n_q, n_k


@triton.jit
def _map_rows(offs, n_local, wy, wx, win_h, win_w, map_h, map_w, WINDOW: tl.constexpr):
    """Rows of a window, numbered window-locally (offs < n_local = win_h * win_w), -> (their rows
    in the whole map's token layout, the row holds data). A window row in the zero padding below
    or right of the map holds none: loads read zeros there and stores skip it. Without windows
    the rows are the map's own (offs < n_local = N)."""
    rows = offs
    inside = offs < n_local
    if WINDOW:
        ly = offs // win_w
        gy = wy * win_h + ly
        gx = wx * win_w + (offs - ly * win_w)
        rows = gy * map_w + gx
        inside = inside & (gy < map_h) & (gx < map_w)
    return rows, inside


@triton.jit
def _rel_term(q, row_sp, cell, k_side, idx_ptr, table_ptr, stride0, stride1, offs_d, mask_d,
              K_PAD: tl.constexpr):
    """One axis's rel term (BLOCK_M, K_PAD) float32, zero beyond k_side and on non-spatial rows:
    rel[r, j] = q[r] . table[idx[cell_r, j]] (q unscaled, float32; cell_r the row's coordinate on
    this axis: t, y or x).

    One pass per key coordinate j: gather the table row of every query row (from L1/L2: the tables
    are a few KB) and reduce q * row over D. (kt +) kh + kw passes of BLOCK_M * D FMAs per query
    tile, against 2 * Nk * BLOCK_M * D for the attention itself."""
    cols = tl.arange(0, K_PAD)
    rel = tl.zeros((q.shape[0], K_PAD), dtype=tl.float32)
    mask_rows = row_sp[:, None] & mask_d[None, :]
    for j in range(0, k_side):
        r = _table_rows(table_ptr, stride0, stride1, idx_ptr, cell, k_side, j, row_sp, offs_d, mask_rows)
        rel = tl.where(cols[None, :] == j, tl.sum(q * r, axis=1)[:, None], rel)
    return rel


@triton.jit
def _table_rows(table_ptr, stride0, stride1, idx_ptr, cell, k_side, j, row_sp, offs_d, mask_rows):
    """(BLOCK_M, BLOCK_D) float32: for every query row, the table row idx[cell, j] (cell its grid
    coordinate t, y or x; j a key coordinate on the same axis), zero on non-spatial rows."""
    t = tl.load(idx_ptr + cell * k_side + j, mask=row_sp, other=0)                   # (BLOCK_M,)
    return tl.load(table_ptr + t[:, None] * stride0 + offs_d[None, :] * stride1,
                   mask=mask_rows, other=0.0).to(tl.float32)


@triton.jit
def _query_tile(q_ptr, bh, H, stride_qb, stride_qh, stride_qn, stride_qd, n_q, wy, wx, qh, qw, map_qh, map_qw,
                D: tl.constexpr, ALIGN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                WINDOW: tl.constexpr):
    """This program's query tile (program_id 0) of head bh (and window (wy, wx)): (q (BLOCK_M,
    BLOCK_D) in q's dtype, zero outside, its window-local rows, their rows in q, the head-dim
    offsets, rows holding data, head-dim lanes in range). Without windows both row numbers agree."""
    q_ptr, stride_qn = head_rows(q_ptr, bh, H, stride_qb, stride_qh, stride_qn, ALIGN)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_m, mask_m = _map_rows(offs_m, n_q, wy, wx, qh, qw, map_qh, map_qw, WINDOW)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q = tl.load(q_ptr + rows_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    return q, offs_m, rows_m, offs_d, mask_m, mask_d


@triton.jit
def _score_tile(q, k_ptr, stride_kn, stride_kd, start_n, n_k, wy, wx, kh, kw, map_kh, map_kw, qk_scale,
                rel_t, rel_h, rel_w, offs_d, mask_d, SP: tl.constexpr, HAS_REL: tl.constexpr, HAS_T: tl.constexpr,
                FP32: tl.constexpr, KT_PAD: tl.constexpr, KH_PAD: tl.constexpr, KW_PAD: tl.constexpr,
                BLOCK_N: tl.constexpr, WINDOW: tl.constexpr):
    """The query tile's scores against keys start_n .. start_n + BLOCK_N, in base 2:
    s2 = (scale q.k + rel_t[i] + rel_h[j] + rel_w[l]) * log2(e) (the rel terms already in base-2
    units; rel_t only with HAS_T), the bias expanded by one-hot matmuls. Returns (s2 (BLOCK_M,
    BLOCK_N), the k tile (BLOCK_D, BLOCK_N), key rows in k, keys in range, keys holding data, the one-hot matrices
    (K*_PAD, BLOCK_N) of t, h and w; without rel-pos (or without t) the key mask stands in for
    them). Out-of-range keys are not masked here.

    With windows (WINDOW) the keys are the window's, n_k = kh * kw of them, numbered locally (kh,
    kw the window's sides): key_rows are their rows in k, key_inside says which hold data. Keys in
    the window's zero padding are in range (mask_n): they read zeros (logit 0 + the rel bias) and
    stay in the softmax, as detectron2's zero-padded windows do. Without windows n_k = Nk and
    key_rows = the key offsets."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_k
    rows_n, inside_n = _map_rows(offs_n, n_k, wy, wx, kh, kw, map_kh, map_kw, WINDOW)
    kT = tl.load(k_ptr + rows_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                 mask=inside_n[None, :] & mask_d[:, None], other=0.0)               # (BLOCK_D, BLOCK_N)
    s = mma(q, kT, tl.zeros((q.shape[0], BLOCK_N), dtype=tl.float32), FP32) * qk_scale
    onehot_t = mask_n
    onehot_h = mask_n
    onehot_w = mask_n
    if HAS_REL:
        key_sp, i, j, l = _grid_coords(offs_n, n_k, kh, kw, SP, HAS_T)
        onehot_h = (tl.arange(0, KH_PAD)[:, None] == j[None, :]) & key_sp[None, :]   # (KH_PAD, BLOCK_N)
        onehot_w = (tl.arange(0, KW_PAD)[:, None] == l[None, :]) & key_sp[None, :]   # (KW_PAD, BLOCK_N)
        s = onehot_matmul(rel_w, onehot_w, onehot_matmul(rel_h, onehot_h, s, FP32, True), FP32, True)
        if HAS_T:
            onehot_t = (tl.arange(0, KT_PAD)[:, None] == i[None, :]) & key_sp[None, :]   # (KT_PAD, BLOCK_N)
            s = onehot_matmul(rel_t, onehot_t, s, FP32, True)
    return s, kT, rows_n, mask_n, inside_n, onehot_t, onehot_h, onehot_w


# Shape integers and the batch / head / row strides are not specialised (no divisibility-by-16
# variants): shapes only enter masks and index math, and the strides' alignment comes from the
# ALIGN constexpr. One compile then serves every MViTv2 shape with the same constexprs (dtype, D,
# class token, padded grid sides). The head-dim strides stay specialised (== 1: contiguous rows).
_ROW_STRIDES = [f"stride_{t}{a}" for t in ("q", "k", "v") for a in ("b", "h", "n")]
_WINDOW_ARGS = ["map_qh", "map_qw", "map_kh", "map_kw", "n_win", "n_win_w"]
_SHAPE_ARGS = ["H", "Nq", "Nk", "qh", "qw", "kh", "kw"] + _WINDOW_ARGS + _ROW_STRIDES


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=_SHAPE_ARGS + ["stride_ob", "stride_oh", "stride_on"])
def pool_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, tt_ptr, th_ptr, tw_ptr, idx_t_ptr, idx_h_ptr, idx_w_ptr, out_ptr, lse_ptr,
    do_ptr, delta_ptr, relt_ptr, relh_ptr, relw_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_tt0, stride_tt1, stride_th0, stride_th1, stride_tw0, stride_tw1,
    H, Nq, Nk, D: tl.constexpr, qh, qw, kt, kh, kw, scale, map_qh, map_qw, map_kh, map_kw, n_win, n_win_w,
    SP: tl.constexpr, HAS_REL: tl.constexpr, HAS_T: tl.constexpr, RESIDUAL: tl.constexpr, FP32: tl.constexpr,
    BWD_PRE: tl.constexpr, KT_PAD: tl.constexpr, KH_PAD: tl.constexpr, KW_PAD: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ALIGN: tl.constexpr = 1,
    WINDOW: tl.constexpr = False,
):
    """out[r] = softmax_m(scale * q[r] . k[m] + bias[r, m]) @ v (+ q[r]); lse[r] = log2 sum_m exp(...)
    in base 2 (the log-sum-exp times log2(e): converting units would cost a rounding of a large
    number, visible in dv at large logits).

    q, k, v: (B, H, N, D) any strides, float32/float16/bfloat16; out: (B, H, Nq, D) strides of a
    (B, Nq, H, D) buffer; lse: (B*H, Nq) float32. Video (HAS_T): grids (qt, qh, qw) and
    (kt, kh, kw), a third table tt and index map idx_t, a third rel term.

    BWD_PRE (the backward's first pass): out_ptr / stride_o* then describe dout, and instead of out
    and lse the kernel writes delta[r] = dout[r] . o[r] from the float32 attention output o (before
    the residual; the softmax backward's row term), and rel_h / rel_w (and rel_t) (B*H, Nq, K*_PAD)
    float32 for the two backward kernels. delta from the stored half-precision out would carry the rounding of
    out = o + q, a few times larger than o itself with the residual.

    Windows (WINDOW, 2-D grids, no class token): the grid's axis 1 is (batch x head, window);
    (qh, qw) and (kh, kw) are then the q and k/v windows' sides (the rel-pos grids), (map_qh,
    map_qw) and (map_kh, map_kw) the maps', n_win windows per map, n_win_w per window row. Each
    program attends its window's queries to its window's keys, reading and writing the maps' own
    rows (no partition copy); keys in the zero padding stay in the softmax, queries there are
    neither loaded nor stored (see _score_tile). The residual is the query row's own q."""
    bh, wy, wx, n_q, n_k = _program_head(tl.program_id(1), n_win, n_win_w, Nq, Nk, qh, qw, kh, kw, WINDOW)
    q, offs_m, rows_m, offs_d, mask_m, mask_d = _query_tile(q_ptr, bh, H, stride_qb, stride_qh, stride_qn,
                                                            stride_qd, n_q, wy, wx, qh, qw, map_qh, map_qw,
                                                            D, ALIGN, BLOCK_M, BLOCK_D, WINDOW)
    k_ptr, stride_kn = head_rows(k_ptr, bh, H, stride_kb, stride_kh, stride_kn, ALIGN)
    v_ptr, stride_vn = head_rows(v_ptr, bh, H, stride_vb, stride_vh, stride_vn, ALIGN)
    out_ptr, stride_on = head_rows(out_ptr, bh, H, stride_ob, stride_oh, stride_on, ALIGN)
    row_sp, t, y, x = _grid_coords(offs_m, n_q, qh, qw, SP, HAS_T)
    rel_t, rel_h, rel_w = 0.0, 0.0, 0.0   # unused without rel-pos (rel_t: without time)
    if HAS_REL:
        # Work in base 2: s2 = (scale * qk + bias) * log2(e), so exp(s) = exp2(s2).
        q32 = q.to(tl.float32)
        rel_h = _rel_term(q32, row_sp, y, kh, idx_h_ptr, th_ptr, stride_th0, stride_th1, offs_d, mask_d, KH_PAD) * LOG2E
        rel_w = _rel_term(q32, row_sp, x, kw, idx_w_ptr, tw_ptr, stride_tw0, stride_tw1, offs_d, mask_d, KW_PAD) * LOG2E
        if HAS_T:
            rel_t = _rel_term(q32, row_sp, t, kt, idx_t_ptr, tt_ptr, stride_tt0, stride_tt1, offs_d, mask_d,
                              KT_PAD) * LOG2E
    qk_scale = scale * LOG2E

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)   # running row max (base 2)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)                 # running sum of exp2(s2 - m_i)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)         # running sum of exp2(s2 - m_i) v
    for start_n in range(0, n_k, BLOCK_N):
        s, _, rows_n, mask_n, inside_n, _, _, _ = _score_tile(
            q, k_ptr, stride_kn, stride_kd, start_n, n_k, wy, wx, kh, kw, map_kh, map_kw, qk_scale,
            rel_t, rel_h, rel_w, offs_d, mask_d, SP, HAS_REL, HAS_T, FP32, KT_PAD, KH_PAD, KW_PAD, BLOCK_N, WINDOW)
        s = tl.where(mask_n[None, :], s, float("-inf"))
        # Online softmax: rescale what was summed under the old max by exp2(m_old - m_new).
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + rows_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=inside_n[:, None] & mask_d[None, :], other=0.0)            # (BLOCK_N, BLOCK_D)
        acc = mma(p.to(v.dtype), v, acc * alpha[:, None], FP32)
        m_i = m_new

    out = acc / l_i[:, None]
    mask_md = mask_m[:, None] & mask_d[None, :]
    row = bh.to(tl.int64) * Nq + rows_m
    if BWD_PRE:
        do = tl.load(out_ptr + rows_m[:, None] * stride_on + offs_d[None, :] * stride_od,
                     mask=mask_md, other=0.0).to(tl.float32)
        tl.store(delta_ptr + row, tl.sum(do * out, axis=1), mask=mask_m)
        if HAS_REL:
            # Stored in base-2 units (times log2(e)), as the backward kernels use them.
            tl.store(relh_ptr + row[:, None] * KH_PAD + tl.arange(0, KH_PAD)[None, :], rel_h,
                     mask=mask_m[:, None])
            tl.store(relw_ptr + row[:, None] * KW_PAD + tl.arange(0, KW_PAD)[None, :], rel_w,
                     mask=mask_m[:, None])
            if HAS_T:
                tl.store(relt_ptr + row[:, None] * KT_PAD + tl.arange(0, KT_PAD)[None, :], rel_t,
                         mask=mask_m[:, None])
    else:
        if RESIDUAL:
            out += tl.where(row_sp[:, None], q.to(tl.float32), 0.0)
        tl.store(out_ptr + rows_m[:, None] * stride_on + offs_d[None, :] * stride_od,
                 out.to(out_ptr.dtype.element_ty), mask=mask_md)
        tl.store(lse_ptr + row, m_i + tl.log2(l_i), mask=mask_m)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _rel_rows_T(rel_ptr, bh, Nq, offs_m, mask_m, K_PAD: tl.constexpr):
    """(K_PAD, BLOCK_M) float32: a stored rel term (B*H, Nq, K_PAD) of the query rows, transposed."""
    row = bh.to(tl.int64) * Nq + offs_m[None, :]
    return tl.load(rel_ptr + row * K_PAD + tl.arange(0, K_PAD)[:, None], mask=mask_m[None, :], other=0.0)


@triton.jit(do_not_specialize=_SHAPE_ARGS + ["stride_dob", "stride_doh", "stride_don"])
def pool_attention_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, relt_ptr, relh_ptr, relw_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    H, Nq, Nk, D: tl.constexpr, qh, qw, kh, kw, scale, map_qh, map_qw, map_kh, map_kw, n_win, n_win_w,
    SP: tl.constexpr, HAS_REL: tl.constexpr, HAS_T: tl.constexpr, FP32: tl.constexpr,
    KT_PAD: tl.constexpr, KH_PAD: tl.constexpr, KW_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ALIGN: tl.constexpr = 1, WINDOW: tl.constexpr = False,
):
    """dk, dv of one key tile: loops over every query tile (no atomics: deterministic). With
    windows (WINDOW), of one key tile of a window, looping over the window's query tiles.

    Works on transposed scores sT (BLOCK_N, BLOCK_M): dv += pT @ do, dk += dsT @ q * scale.
    dk, dv: (B, H, Nk, D) contiguous, in k's dtype (keys in a window's padding are not stored:
    their gradient goes to zeros no one reads)."""
    pid_n = tl.program_id(0)
    bh, wy, wx, n_q, n_k = _program_head(tl.program_id(1), n_win, n_win_w, Nq, Nk, qh, qw, kh, kw, WINDOW)
    q_ptr, stride_qn = head_rows(q_ptr, bh, H, stride_qb, stride_qh, stride_qn, ALIGN)
    k_ptr, stride_kn = head_rows(k_ptr, bh, H, stride_kb, stride_kh, stride_kn, ALIGN)
    v_ptr, stride_vn = head_rows(v_ptr, bh, H, stride_vb, stride_vh, stride_vn, ALIGN)
    do_ptr, stride_don = head_rows(do_ptr, bh, H, stride_dob, stride_doh, stride_don, ALIGN)
    lse_ptr += bh.to(tl.int64) * Nq
    delta_ptr += bh.to(tl.int64) * Nq

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_n, inside_n = _map_rows(offs_n, n_k, wy, wx, kh, kw, map_kh, map_kw, WINDOW)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    mask_nd = inside_n[:, None] & mask_d[None, :]
    k = tl.load(k_ptr + rows_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=mask_nd, other=0.0)
    v = tl.load(v_ptr + rows_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=mask_nd, other=0.0)
    if HAS_REL:
        key_sp, i, j, l = _grid_coords(offs_n, n_k, kh, kw, SP, HAS_T)
        onehot_hT = (j[:, None] == tl.arange(0, KH_PAD)[None, :]) & key_sp[:, None]   # (BLOCK_N, KH_PAD)
        onehot_wT = (l[:, None] == tl.arange(0, KW_PAD)[None, :]) & key_sp[:, None]   # (BLOCK_N, KW_PAD)
        if HAS_T:
            onehot_tT = (i[:, None] == tl.arange(0, KT_PAD)[None, :]) & key_sp[:, None]   # (BLOCK_N, KT_PAD)
    qk_scale = scale * LOG2E

    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for start_m in range(0, n_q, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows_m, mask_m = _map_rows(offs_m, n_q, wy, wx, qh, qw, map_qh, map_qw, WINDOW)
        qT = tl.load(q_ptr + rows_m[None, :] * stride_qn + offs_d[:, None] * stride_qd,
                     mask=mask_m[None, :] & mask_d[:, None], other=0.0)            # (BLOCK_D, BLOCK_M)
        sT = mma(k, qT, tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32), FP32) * qk_scale
        if HAS_REL:
            # the rel terms of these query rows, base 2, (K*_PAD, BLOCK_M)
            sT = onehot_matmul(_rel_rows_T(relh_ptr, bh, Nq, rows_m, mask_m, KH_PAD), onehot_hT, sT, FP32, False)
            sT = onehot_matmul(_rel_rows_T(relw_ptr, bh, Nq, rows_m, mask_m, KW_PAD), onehot_wT, sT, FP32, False)
            if HAS_T:
                sT = onehot_matmul(_rel_rows_T(relt_ptr, bh, Nq, rows_m, mask_m, KT_PAD), onehot_tT, sT, FP32, False)
        lse = tl.load(lse_ptr + rows_m, mask=mask_m, other=0.0)                     # base 2
        pT = tl.exp2(sT - lse[None, :])                                             # (BLOCK_N, BLOCK_M)
        pT = tl.where(mask_m[None, :], pT, 0.0)
        do = tl.load(do_ptr + rows_m[:, None] * stride_don + offs_d[None, :] * stride_dod,
                     mask=mask_m[:, None] & mask_d[None, :], other=0.0)             # (BLOCK_M, BLOCK_D)
        dv = mma(pT.to(do.dtype), do, dv, FP32)
        dpT = mma(v, tl.trans(do), tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32), FP32)
        delta = tl.load(delta_ptr + rows_m, mask=mask_m, other=0.0)
        dsT = pT * (dpT - delta[None, :])
        dk = mma(dsT.to(qT.dtype), tl.trans(qT), dk, FP32)

    dk *= scale
    out_off = bh.to(tl.int64) * Nk * D + rows_n[:, None] * D + offs_d[None, :]
    tl.store(dk_ptr + out_off, dk.to(dk_ptr.dtype.element_ty), mask=mask_nd)
    tl.store(dv_ptr + out_off, dv.to(dv_ptr.dtype.element_ty), mask=mask_nd)


@triton.jit
def _rel_grad_out(dq, drel, row, row_sp, cell, k_side, idx_ptr, table_ptr, stride0, stride1, drel_ptr,
                  offs_d, mask_d, mask_m, K_PAD: tl.constexpr):
    """One axis: dq + sum_j drel[r, j] table[idx[cell_r, j]] (gathered table rows), and drel
    (B*H, Nq, K_PAD) float32 stored for the table-gradient kernel."""
    cols = tl.arange(0, K_PAD)
    mask_rows = row_sp[:, None] & mask_d[None, :]
    for jj in range(0, k_side):
        r = _table_rows(table_ptr, stride0, stride1, idx_ptr, cell, k_side, jj, row_sp, offs_d, mask_rows)
        dq += tl.sum(tl.where(cols[None, :] == jj, drel, 0.0), axis=1)[:, None] * r
    tl.store(drel_ptr + row[:, None] * K_PAD + cols[None, :], drel, mask=mask_m[:, None])
    return dq


@triton.jit
def _rel_grads_out(dq, drel_t, drel_h, drel_w, row, offs_m, Nq, qh, qw, kt, kh, kw,
                   idx_t_ptr, idx_h_ptr, idx_w_ptr, tt_ptr, th_ptr, tw_ptr,
                   stride_tt0, stride_tt1, stride_th0, stride_th1, stride_tw0, stride_tw1,
                   drelt_ptr, drelh_ptr, drelw_ptr, offs_d, mask_d, mask_m, SP: tl.constexpr, HAS_T: tl.constexpr,
                   KT_PAD: tl.constexpr, KH_PAD: tl.constexpr, KW_PAD: tl.constexpr):
    """dq + the table terms of every axis (``_rel_grad_out``), the drel buffers stored."""
    row_sp, t, y, x = _grid_coords(offs_m, Nq, qh, qw, SP, HAS_T)
    dq = _rel_grad_out(dq, drel_h, row, row_sp, y, kh, idx_h_ptr, th_ptr, stride_th0, stride_th1, drelh_ptr,
                       offs_d, mask_d, mask_m, KH_PAD)
    dq = _rel_grad_out(dq, drel_w, row, row_sp, x, kw, idx_w_ptr, tw_ptr, stride_tw0, stride_tw1, drelw_ptr,
                       offs_d, mask_d, mask_m, KW_PAD)
    if HAS_T:
        dq = _rel_grad_out(dq, drel_t, row, row_sp, t, kt, idx_t_ptr, tt_ptr, stride_tt0, stride_tt1, drelt_ptr,
                           offs_d, mask_d, mask_m, KT_PAD)
    return dq


@triton.jit(do_not_specialize=_SHAPE_ARGS + ["stride_dob", "stride_doh", "stride_don"])
def pool_attention_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, relt_ptr, relh_ptr, relw_ptr,
    tt_ptr, th_ptr, tw_ptr, idx_t_ptr, idx_h_ptr, idx_w_ptr, dq_ptr, dq32_ptr, drelt_ptr, drelh_ptr, drelw_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_tt0, stride_tt1, stride_th0, stride_th1, stride_tw0, stride_tw1,
    H, Nq, Nk, D: tl.constexpr, qh, qw, kt, kh, kw, scale, map_qh, map_qw, map_kh, map_kw, n_win, n_win_w,
    SP: tl.constexpr, HAS_REL: tl.constexpr, HAS_T: tl.constexpr, RESIDUAL: tl.constexpr, FP32: tl.constexpr,
    REL_PART: tl.constexpr, KT_PAD: tl.constexpr, KH_PAD: tl.constexpr, KW_PAD: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ALIGN: tl.constexpr = 1,
    ONE_PASS: tl.constexpr = False, WINDOW: tl.constexpr = False,
):
    """dq of one query tile, looping over every key tile, in one or two launches.

    ds = p * (dp - delta) is the score gradient; dq = scale * ds @ k (+ dout on spatial rows for
    the residual) + drel_h @ Rh + drel_w @ Rw (+ drel_t @ Rt), with drel_h = ds @ onehot_h^T (the
    transposed one-hot matmul), the others likewise.
    REL_PART = False: the ds @ k part. Without rel-pos it writes the final dq (B, H, Nq, D)
    contiguous in q's dtype; with rel-pos a float32 partial dq into dq32 (same layout).
    REL_PART = True (second launch, rel-pos only): recomputes ds, accumulates the drel terms, adds
    their table rows to the partial dq, writes the final dq and the drel terms (B*H, Nq, K*_PAD)
    float32 for the table gradients.
    ONE_PASS = True (with rel-pos, REL_PART = False; the default, see DQ_ONE_PASS): both in one
    launch: dq and the drel terms accumulated together, the final dq and the drel terms written,
    no float32 partial dq.
    WINDOW: one query tile of a window over the window's keys, the padding keys included (their
    ds feeds drel: they carry the rel bias), as in the forward kernel."""
    bh, wy, wx, n_q, n_k = _program_head(tl.program_id(1), n_win, n_win_w, Nq, Nk, qh, qw, kh, kw, WINDOW)
    q, offs_m, rows_m, offs_d, mask_m, mask_d = _query_tile(q_ptr, bh, H, stride_qb, stride_qh, stride_qn,
                                                            stride_qd, n_q, wy, wx, qh, qw, map_qh, map_qw,
                                                            D, ALIGN, BLOCK_M, BLOCK_D, WINDOW)
    k_ptr, stride_kn = head_rows(k_ptr, bh, H, stride_kb, stride_kh, stride_kn, ALIGN)
    v_ptr, stride_vn = head_rows(v_ptr, bh, H, stride_vb, stride_vh, stride_vn, ALIGN)
    do_ptr, stride_don = head_rows(do_ptr, bh, H, stride_dob, stride_doh, stride_don, ALIGN)
    mask_md = mask_m[:, None] & mask_d[None, :]
    do = tl.load(do_ptr + rows_m[:, None] * stride_don + offs_d[None, :] * stride_dod,
                 mask=mask_md, other=0.0)
    row = bh.to(tl.int64) * Nq + rows_m
    lse = tl.load(lse_ptr + row, mask=mask_m, other=0.0)                            # base 2
    delta = tl.load(delta_ptr + row, mask=mask_m, other=0.0)
    rel_t, rel_h, rel_w = 0.0, 0.0, 0.0   # unused without rel-pos (rel_t: without time)
    drel_t, drel_h, drel_w = 0.0, 0.0, 0.0
    if HAS_REL:
        # rel terms in base-2 units, from the first backward pass
        rel_h = tl.load(relh_ptr + row[:, None] * KH_PAD + tl.arange(0, KH_PAD)[None, :], mask=mask_m[:, None], other=0.0)
        rel_w = tl.load(relw_ptr + row[:, None] * KW_PAD + tl.arange(0, KW_PAD)[None, :], mask=mask_m[:, None], other=0.0)
        if HAS_T:
            rel_t = tl.load(relt_ptr + row[:, None] * KT_PAD + tl.arange(0, KT_PAD)[None, :], mask=mask_m[:, None],
                            other=0.0)
        if REL_PART or ONE_PASS:
            drel_h = tl.zeros((BLOCK_M, KH_PAD), dtype=tl.float32)
            drel_w = tl.zeros((BLOCK_M, KW_PAD), dtype=tl.float32)
            if HAS_T:
                drel_t = tl.zeros((BLOCK_M, KT_PAD), dtype=tl.float32)
    qk_scale = scale * LOG2E

    if (not REL_PART) or ONE_PASS:
        dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start_n in range(0, n_k, BLOCK_N):
        s, kT, rows_n, mask_n, inside_n, onehot_t, onehot_h, onehot_w = _score_tile(
            q, k_ptr, stride_kn, stride_kd, start_n, n_k, wy, wx, kh, kw, map_kh, map_kw, qk_scale,
            rel_t, rel_h, rel_w, offs_d, mask_d, SP, HAS_REL, HAS_T, FP32, KT_PAD, KH_PAD, KW_PAD, BLOCK_N, WINDOW)
        vT = tl.load(v_ptr + rows_n[None, :] * stride_vn + offs_d[:, None] * stride_vd,
                     mask=inside_n[None, :] & mask_d[:, None], other=0.0)           # (BLOCK_D, BLOCK_N)
        p = tl.exp2(s - lse[:, None])
        p = tl.where(mask_n[None, :], p, 0.0)
        dp = mma(do, vT, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), FP32)
        ds = p * (dp - delta[:, None])                                              # (BLOCK_M, BLOCK_N)
        if HAS_REL and (REL_PART or ONE_PASS):
            drel_h = onehot_matmul(ds, tl.trans(onehot_h), drel_h, FP32, True)
            drel_w = onehot_matmul(ds, tl.trans(onehot_w), drel_w, FP32, True)
            if HAS_T:
                drel_t = onehot_matmul(ds, tl.trans(onehot_t), drel_t, FP32, True)
        if (not REL_PART) or ONE_PASS:
            dq = mma(ds.to(kT.dtype), tl.trans(kT), dq, FP32)

    out_off = row[:, None] * D + offs_d[None, :]
    if REL_PART and not ONE_PASS:
        dq = tl.load(dq32_ptr + out_off, mask=mask_md, other=0.0)     # the first launch's partial dq
    else:
        dq *= scale
        if RESIDUAL:
            row_sp, _, _, _ = _grid_coords(offs_m, n_q, qh, qw, SP, False)
            dq += tl.where(row_sp[:, None], do.to(tl.float32), 0.0)
    if HAS_REL and (REL_PART or ONE_PASS):
        # dq[r] += sum_j drel_h[r, j] table_h[idx_h[y_r, j]] (+ w, + t): gathered table rows.
        dq = _rel_grads_out(dq, drel_t, drel_h, drel_w, row, offs_m, n_q, qh, qw, kt, kh, kw,
                            idx_t_ptr, idx_h_ptr, idx_w_ptr, tt_ptr, th_ptr, tw_ptr,
                            stride_tt0, stride_tt1, stride_th0, stride_th1, stride_tw0, stride_tw1,
                            drelt_ptr, drelh_ptr, drelw_ptr, offs_d, mask_d, mask_m, SP, HAS_T,
                            KT_PAD, KH_PAD, KW_PAD)
    if HAS_REL and not (REL_PART or ONE_PASS):
        tl.store(dq32_ptr + out_off, dq, mask=mask_md)                 # the partial dq, for REL_PART
    else:
        tl.store(dq_ptr + out_off, dq.to(dq_ptr.dtype.element_ty), mask=mask_md)


@triton.jit
def _table_row_grad(t, q_ptr, stride_qb, stride_qh, stride_qn, stride_qd, drel_ptr, starts_ptr, cells_ptr,
                    out_ptr, BH, H, Nq, cell_step, n_other, n_lo, lo_step, hi_step, win_step, win_side,
                    D: tl.constexpr, SP: tl.constexpr, K_PAD: tl.constexpr, TWO_LEVEL: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr = False,
                    WIN_ON_HI: tl.constexpr = False):
    """Row t of one table's gradient: the sum over the cells naming t (see the kernel below).

    A cell c (a coordinate on the table's axis) covers the query rows SP + c * cell_step + o_row
    for the n_other positions o along the other axes: o_row = o * lo_step, or with TWO_LEVEL (the
    h axis of a (t, h, w) grid, whose other axes t and w are not adjacent)
    (o // n_lo) * hi_step + (o % n_lo) * lo_step.
    WINDOW: c is a window-local coordinate, and one of the two levels (the high one with
    WIN_ON_HI) counts windows along the table's axis: the row's map coordinate c + m * win_step
    must lie inside the map (< win_side); rows in the padding are skipped."""
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    n = BH * n_other
    for p in range(tl.load(starts_ptr + t), tl.load(starts_ptr + t + 1)):
        code = tl.load(cells_ptr + p)
        c = code // K_PAD                                      # the query grid coordinate on this axis
        j = code - c * K_PAD                                   # the key grid coordinate
        for i0 in range(0, n, BLOCK_R):
            i = i0 + tl.arange(0, BLOCK_R)                     # flat (bh, position along the other axes)
            ok = i < n
            bh = i // n_other
            o = i - bh * n_other
            if TWO_LEVEL:
                hi = o // n_lo
                lo = o - hi * n_lo
                o_row = hi * hi_step + lo * lo_step
                if WINDOW:
                    if WIN_ON_HI:
                        ok = ok & (c + hi * win_step < win_side)
                    else:
                        ok = ok & (c + lo * win_step < win_side)
            else:
                o_row = o * lo_step
            row = SP + c * cell_step + o_row
            dr = tl.load(drel_ptr + (bh.to(tl.int64) * Nq + row) * K_PAD + j, mask=ok, other=0.0)
            q_row = (bh // H).to(tl.int64) * stride_qb + (bh % H).to(tl.int64) * stride_qh + row * stride_qn
            qv = tl.load(q_ptr + q_row[:, None] + offs_d[None, :] * stride_qd,
                         mask=ok[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(dr[:, None] * qv, axis=0)
    tl.store(out_ptr + t * D + offs_d, acc.to(out_ptr.dtype.element_ty), mask=mask_d)


@triton.jit(do_not_specialize=["BH", "H", "Nq", "qt", "qh", "qw", "len_t", "len_h", "len_w",
                               "win_qh", "win_qw", "n_win_h", "n_win_w", "stride_qb", "stride_qh", "stride_qn"])
def pool_attention_bwd_tables_kernel(
    q_ptr, drelt_ptr, drelh_ptr, drelw_ptr, starts_t_ptr, cells_t_ptr, starts_h_ptr, cells_h_ptr,
    starts_w_ptr, cells_w_ptr, dtt_ptr, dth_ptr, dtw_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    BH, H, Nq, qt, qh, qw, len_t, len_h, len_w, win_qh, win_qw, n_win_h, n_win_w,
    D: tl.constexpr, SP: tl.constexpr, HAS_T: tl.constexpr, KT_PAD: tl.constexpr, KH_PAD: tl.constexpr,
    KW_PAD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr = False,
):
    """The table gradients, one table row per program: grid (the longest table, 2 or 3), axis 1
    picking the h table (0), the w table (1) or the t table (2, HAS_T).

        d table_h[t] = sum over the cells (y, j) with idx_h[y, j] == t, over (b, h) and the other
                       axes (x; and the frames), of drel_h[(b, h), row (., y, x), j] * q[(b, h), row]

    and the w (and t) tables likewise. The cells naming row t come from a host-built list sorted
    by t: cells[starts[t]:starts[t + 1]], each c * K_PAD + j. One program owns a row and sums in a
    fixed order: deterministic, no atomics; rows no cell names get zeros.
    q: (B, H, Nq, D) any strides; drel_*: (B*H, Nq, K*_PAD) float32; d tables (len, D) contiguous
    in the tables' dtype. Without HAS_T, qt is 1.

    WINDOW (2-D): (qh, qw) is the whole q map, cut into n_win_h x n_win_w windows of win_qh x
    win_qw; the cells' coordinates are window-local, so cell y covers the map rows y + m * win_qh
    (m a window row) that lie inside the map, and every column; cell x likewise."""
    t = tl.program_id(0)
    axis = tl.program_id(1)
    plane = qh * qw
    if WINDOW:
        if axis == 0:
            if t < len_h:
                # cells: window rows y; the other axes: (window row m, map column x)
                _table_row_grad(t, q_ptr, stride_qb, stride_qh, stride_qn, stride_qd, drelh_ptr, starts_h_ptr,
                                cells_h_ptr, dth_ptr, BH, H, Nq, qw, n_win_h * qw, qw, 1, win_qh * qw, win_qh, qh,
                                D, SP, KH_PAD, True, BLOCK_R, BLOCK_D, True, True)
        elif axis == 1:
            if t < len_w:
                # cells: window columns x; the other axes: (map row y, window column m)
                _table_row_grad(t, q_ptr, stride_qb, stride_qh, stride_qn, stride_qd, drelw_ptr, starts_w_ptr,
                                cells_w_ptr, dtw_ptr, BH, H, Nq, 1, qh * n_win_w, n_win_w, win_qw, qw, win_qw, qw,
                                D, SP, KW_PAD, True, BLOCK_R, BLOCK_D, True, False)
    elif axis == 0:
        if t < len_h:
            # cells: rows y; the other axes: (frame, x)
            _table_row_grad(t, q_ptr, stride_qb, stride_qh, stride_qn, stride_qd, drelh_ptr, starts_h_ptr,
                            cells_h_ptr, dth_ptr, BH, H, Nq, qw, qt * qw, qw, 1, plane, 0, 1, D, SP, KH_PAD, HAS_T,
                            BLOCK_R, BLOCK_D)
    elif axis == 1:
        if t < len_w:
            # cells: columns x; the other axes: (frame, y), rows qw apart
            _table_row_grad(t, q_ptr, stride_qb, stride_qh, stride_qn, stride_qd, drelw_ptr, starts_w_ptr,
                            cells_w_ptr, dtw_ptr, BH, H, Nq, 1, qt * qh, qt * qh, qw, 0, 0, 1, D, SP, KW_PAD, False,
                            BLOCK_R, BLOCK_D)
    else:
        if HAS_T:
            if t < len_t:
                # cells: frames; the other axes: the (y, x) plane, adjacent rows
                _table_row_grad(t, q_ptr, stride_qb, stride_qh, stride_qn, stride_qd, drelt_ptr, starts_t_ptr,
                                cells_t_ptr, dtt_ptr, BH, H, Nq, plane, plane, plane, 1, 0, 0, 1, D, SP, KT_PAD, False,
                                BLOCK_R, BLOCK_D)


# ----------------------------------------------------------------------------------------------
# Launch configurations
# ----------------------------------------------------------------------------------------------
# Every config is correct for every shape (all loads and stores are masked); configs only trade
# speed. Checked by tests/test_gpu_compile.py through this op's ``compile_cases``.
def _config(bm, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


# Measured with tools/gpu_compile.py at the MViTv2 shapes (fp16/bf16, D 96 and 72 padded to 128):
# these compile with STACK 0 / LOCAL 0 and tensor-core MMAs on sm_80 and sm_90. Tried and dropped:
# 4-warp tiles (forward 32 x 64 spilled 8-32 B on both targets at some shapes; dQ 32 x 64 16-664 B),
# dQ 64 x 64 (24-128 B at the 28 x 28 key grid), forward 128 x 64 and 64 x 64 with 4 warps (spilled
# on sm_80); for the one-pass dQ see DQ_ONE_PASS. One config per kernel, so there is nothing left
# to prune per target; the autotune wrappers stay so a config list can grow (with a
# prune_configs_by hook) as GPUs are measured.
FWD_CONFIGS = [_config(64, 64, 8, 2)]
DKDV_CONFIGS = [_config(64, 64, 8, 2)]
DQ_CONFIGS = [_config(32, 32, 8, 1)]
# dQ in one launch (ONE_PASS: the dq accumulator and the two drel accumulators together), not two
# (REL_PART: ds recomputed, q, k, v, dout re-read, a float32 partial dq written and read back):
# with 32 x 32 tiles and 8 warps it compiles without spills on sm_80 and sm_90 (64 x 32 and
# 64 x 16 with 8 warps spilled 56-232 B, 32 x 32 with 4 warps 8-24 B on sm_90). The two-launch
# path stays, tested, for a GPU where measurements favour its 64-row tiles.
DQ_ONE_PASS = True
# The one-pass dQ with the third (time) term: 32 x 32 spilled 8 B on sm_90 (no class token; 255
# registers), 32 x 32 with 4 warps 16-32 B; 32 x 16 with 8 warps compiles at 240-254 registers with
# no spills on sm_80 and sm_90 under triton 3.6 and 3.9. Video only: 2-D calls keep DQ_CONFIGS.
DQ_VIDEO_CONFIGS = [_config(32, 16, 8, 1)]

# The interpreter (CPU tests) runs one fixed small config: autotuning there would time every
# config in numpy for nothing. Tests may change it to exercise other tilings.
INTERPRETER_CONFIGS = {kernel: {"BLOCK_M": 32, "BLOCK_N": 32} for kernel in ("fwd", "dkdv", "dq")}
INTERPRETER_CONFIGS["dq_video"] = {"BLOCK_M": 32, "BLOCK_N": 16}      # the GPU's video dQ tiling
INTERPRETER_CONFIGS["dkdv_window"] = {"BLOCK_M": 64, "BLOCK_N": 32}   # the GPU's window tilings
INTERPRETER_CONFIGS["dq_window"] = {"BLOCK_M": 32, "BLOCK_N": 16}

# The table-gradient kernel's row step, (BLOCK_R, BLOCK_D) q rows per iteration, and its warps: 16
# elements per thread (64 x 128 with 4 warps spilled 1.3-1.5 KB on sm_90: 64-bit addresses per
# element). A register cap of 128: without one, triton 3.6's ptxas gave it 80 registers on sm_90
# and spilled 8 B; with it, 114-124 registers and no spills on sm_80 / sm_90 under 3.6 and 3.9.
TABLES_BLOCK_R = 32
TABLES_WARPS = 8
TABLES_LAUNCH = {"maxnreg": 128}

# Windows (the detection backbone): the window-to-map row arithmetic adds registers, and at 1024 x 1024
# the 2-D tiles above spilled on sm_90 (dK/dV 64 x 64: 56-104 B; dQ 32 x 32 at a 28 x 28 key window: 8 B;
# the tables kernel at 128 registers: 24 B). Window launches use these instead, which compile with no
# spills on sm_80 and sm_90. Tried and dropped for dK/dV: 32 x 64 (16 B on sm_80), 32 x 64 and 64 x 64
# with 4 warps (24-6192 B); for dQ: 16 x 32 (8 B on sm_90), 32 x 32 with 4 warps (8-24 B on sm_90).
DKDV_WINDOW_CONFIGS = [_config(64, 32, 8, 2)]
DQ_WINDOW_CONFIGS = [_config(32, 16, 8, 1)]
TABLES_WINDOW_LAUNCH = {"maxnreg": 160}

_PADS = ["BLOCK_D", "KT_PAD", "KH_PAD", "KW_PAD"]
_fwd_tuned = triton.autotune(FWD_CONFIGS, key=["Nq", "Nk", *_PADS, "BWD_PRE"])(pool_attention_fwd_kernel)
_dq_tuned = triton.autotune(DQ_CONFIGS, key=["Nq", "Nk", *_PADS, "REL_PART", "ONE_PASS"])(pool_attention_bwd_dq_kernel)
_dkdv_tuned = triton.autotune(DKDV_CONFIGS, key=["Nq", "Nk", *_PADS])(pool_attention_bwd_dkdv_kernel)
_dq_video_tuned = triton.autotune(DQ_VIDEO_CONFIGS, key=["Nq", "Nk", *_PADS, "REL_PART", "ONE_PASS"])(
    pool_attention_bwd_dq_kernel)
_dkdv_window_tuned = triton.autotune(DKDV_WINDOW_CONFIGS, key=["Nq", "Nk", *_PADS])(pool_attention_bwd_dkdv_kernel)
_dq_window_tuned = triton.autotune(DQ_WINDOW_CONFIGS, key=["Nq", "Nk", *_PADS, "REL_PART", "ONE_PASS"])(
    pool_attention_bwd_dq_kernel)


# ----------------------------------------------------------------------------------------------
# Traffic statements: distinct bytes each launch reads and writes (see fastmvit.kernels.traffic),
# from the launch's tensors and constexprs. Every load and store is masked to the D valid lanes,
# the Nq / Nk valid rows and, for the tables, the rows the index maps name; the (B*H, Nq, K*_PAD)
# float32 rel-term buffers are read and written whole (their padding columns included).
# ----------------------------------------------------------------------------------------------
_DISTINCT_TABLE_ROWS: dict = {}


def _table_rows_read(q_side: int, k_side: int) -> int:
    """How many distinct table rows the (q_side, k_side) index map names."""
    key = (q_side, k_side)
    if key not in _DISTINCT_TABLE_ROWS:
        from .torch_impl import rel_pos_index
        with host_setup():
            _DISTINCT_TABLE_ROWS[key] = int(rel_pos_index(q_side, k_side).unique().numel())
    return _DISTINCT_TABLE_ROWS[key]


def _axes(a):
    """The (index map, table) pairs of a launch's rel-pos axes: (h, w), and t with HAS_T."""
    pairs = [(a["idx_h_ptr"], a["th_ptr"]), (a["idx_w_ptr"], a["tw_ptr"])]
    return pairs + [(a["idx_t_ptr"], a["tt_ptr"])] if a["HAS_T"] else pairs


def _rel_inputs_read(a) -> int:
    """Index maps and table rows read by a launch that adds the rel-pos terms in the prologue (or
    gathers table rows for dq): all of each (q side, k side) map, the rows they name."""
    return sum(nbytes(idx.numel(), torch.int32) + nbytes(_table_rows_read(*idx.shape) * a["D"], table.dtype)
               for idx, table in _axes(a))


def _per_row(a, pad: int) -> int:
    """Bytes of a float32 (B*H, Nq, pad) per-query-row buffer (pad = 1: lse, delta)."""
    B, H, Nq, _ = a["q_ptr"].shape
    return nbytes(B * H * Nq * pad, torch.float32)


def _rel_rows(a) -> int:
    """Bytes of the rel term buffers (or of the drel ones): whole rows of K*_PAD, per axis."""
    return sum(_per_row(a, a[pad]) for pad in ("KH_PAD", "KW_PAD", "KT_PAD")[:3 if a["HAS_T"] else 2])


def _qkv_read(a, dout=None) -> int:
    """Bytes of q, k, v (and dout when given): every row, D lanes."""
    return sum(tensor_bytes(t) for t in (a["q_ptr"], a["k_ptr"], a["v_ptr"], dout) if t is not None)


def _fwd_states(a):
    """Forward: q, k, v (+ tables) in; out and lse out. BWD_PRE: dout in as well; delta and the
    float32 rel terms out instead."""
    read = (_qkv_read(a, a["out_ptr"] if a["BWD_PRE"] else None)      # BWD_PRE: out_ptr is dout
            + (_rel_inputs_read(a) if a["HAS_REL"] else 0))
    if a["BWD_PRE"]:
        written = _per_row(a, 1) + (_rel_rows(a) if a["HAS_REL"] else 0)
    else:
        out = a["out_ptr"]
        written = tensor_bytes(out) + _per_row(a, 1)
    return read, written


def _dkdv_states(a):
    """dK/dV: q, k, v, dout, lse, delta (+ the rel terms) in; dk, dv out."""
    read = _qkv_read(a, a["do_ptr"]) + 2 * _per_row(a, 1) + (_rel_rows(a) if a["HAS_REL"] else 0)
    return read, sum(tensor_bytes(t) for t in (a["dk_ptr"], a["dv_ptr"]))


def _tables_states(a):
    """Table gradients: the cell lists, the drel terms at the k_side columns of the spatial rows,
    and q's spatial rows (read by every table, counted once) in; the table gradients out."""
    q = a["q_ptr"]
    BH, Nq, D, sp = a["BH"], a["Nq"], a["D"], a["SP"]
    axes = ("t", "h", "w") if a["HAS_T"] else ("h", "w")
    if a["WINDOW"]:                                                               # cells over the windows' sides
        q_sides = dict(h=a["win_qh"], w=a["win_qw"])
    else:
        q_sides = dict(t=a["qt"], h=a["qh"], w=a["qw"])
    k_sides = sum(a[f"cells_{x}_ptr"].numel() // q_sides[x] for x in axes)          # kt + kh + kw
    lists = sum(tensor_bytes(a[f"{n}_{x}_ptr"]) for n in ("starts", "cells") for x in axes)
    drel = nbytes(BH * (Nq - sp) * k_sides, torch.float32)
    return (lists + drel + nbytes(BH * (Nq - sp) * D, q.dtype),
            sum(tensor_bytes(a[f"dt{x}_ptr"]) for x in axes))


def _dq_states(a):
    """dQ: q, k, v, dout, lse, delta (+ the rel terms) in. Without rel-pos: dq out. With rel-pos,
    part 1: the float32 partial dq out; part 2 (REL_PART): the partial dq, index maps and table
    rows in as well, drel_h, drel_w and dq out."""
    read = _qkv_read(a, a["do_ptr"]) + 2 * _per_row(a, 1)
    dq, dq32 = a["dq_ptr"], a["dq32_ptr"]
    if not a["HAS_REL"]:
        return read, tensor_bytes(dq)
    read += _rel_rows(a)
    if a.get("ONE_PASS", False):
        return read + _rel_inputs_read(a), _rel_rows(a) + tensor_bytes(dq)
    if not a["REL_PART"]:
        return read, tensor_bytes(dq32)
    read += tensor_bytes(dq32) + _rel_inputs_read(a)
    return read, _rel_rows(a) + tensor_bytes(dq)


# ----------------------------------------------------------------------------------------------
# Launchers (no checks here: `pool_attention` validates; the GPU-compile harness calls these)
# ----------------------------------------------------------------------------------------------
def _align(*tensors) -> int:
    """The largest ALIGN in (16, 8, 4, 2, 1) dividing every batch / head / row stride of the
    (B, H, N, D) tensors: the kernels take those strides divided by ALIGN (see triton_helpers.head_rows)."""
    strides = [st for t in tensors for st in t.stride()[:3]]
    for align in (16, 8, 4, 2):
        if all(st % align == 0 for st in strides):
            return align
    return 1


def _strides(t, align):
    """(b, h, n, d) strides of a (B, H, N, D) tensor with b, h, n divided by align."""
    sb, sh, sn, sd = t.stride()
    return sb // align, sh // align, sn // align, sd


def _pad16(n: int) -> int:
    """Matmul dims must be powers of 2 and at least 16 for tl.dot."""
    return max(16, triton.next_power_of_2(n))


_INDEX_CACHE: dict = {}


def _index_map(q_side: int, k_side: int, device) -> torch.Tensor:
    """(q_side, k_side) int32 table rows (official formula), cached per device."""
    key = (q_side, k_side, str(device))
    idx = _INDEX_CACHE.get(key)
    if idx is None:
        from .torch_impl import rel_pos_index
        with host_setup():
            idx = rel_pos_index(q_side, k_side).to(device=device, dtype=torch.int32)
        _INDEX_CACHE[key] = idx
    return idx


def _grid3(size) -> tuple[int, int, int]:
    """(t, h, w) of a grid given as (h, w) or (t, h, w): a 2-D grid is one frame."""
    return (1, *size) if len(size) == 2 else tuple(size)


def _geometry(q_size, k_size, window, Nq: int, Nk: int) -> dict:
    """What the kernels walk: the rel-pos (cell) grids q (t, h, w) and k (t, h, w), the window
    arguments map_qh, map_qw, map_kh, map_kw, n_win, n_win_w, the windows per map side n_win_h,
    the query and key rows one program's grid numbers (n_q, n_k) and WINDOW. With ``window`` =
    (wqh, wqw, wkh, wkw) the cell grids are the windows and q_size / k_size the whole maps;
    without, the cell grids are the maps and there is one "window" per (batch, head)."""
    (qt, qh, qw), (kt, kh, kw) = _grid3(q_size), _grid3(k_size)
    if window is None:
        return dict(q=(qt, qh, qw), k=(kt, kh, kw), maps=(qh, qw, kh, kw, 1, 1), n_win_h=1, n_win=1,
                    n_q=Nq, n_k=Nk, WINDOW=False)
    wqh, wqw, wkh, wkw = window
    n_win_h, n_win_w = triton.cdiv(qh, wqh), triton.cdiv(qw, wqw)
    return dict(q=(1, wqh, wqw), k=(1, wkh, wkw), maps=(qh, qw, kh, kw, n_win_h * n_win_w, n_win_w),
                n_win_h=n_win_h, n_win=n_win_h * n_win_w, n_q=wqh * wqw, n_k=wkh * wkw, WINDOW=True)


def _rel_args(q, rel_pos_h, rel_pos_w, rel_pos_t, q_size, k_size):
    """Pointers, strides and padded widths of the rel-pos inputs (dummies when there are none)."""
    (qt, qh, qw), (kt, kh, kw) = _grid3(q_size), _grid3(k_size)
    if rel_pos_h is None:
        return dict(tt=q, th=q, tw=q, idx_t=q, idx_h=q, idx_w=q, st=(0,) * 6, KT_PAD=16, KH_PAD=16, KW_PAD=16,
                    HAS_REL=False, HAS_T=False)
    has_t = rel_pos_t is not None
    tt = rel_pos_t if has_t else rel_pos_h
    return dict(tt=tt, th=rel_pos_h, tw=rel_pos_w,
                idx_t=_index_map(qt, kt, q.device) if has_t else q,
                idx_h=_index_map(qh, kh, q.device), idx_w=_index_map(qw, kw, q.device),
                st=(*(tt.stride() if has_t else (0, 0)), *rel_pos_h.stride(), *rel_pos_w.stride()),
                KT_PAD=_pad16(kt) if has_t else 16, KH_PAD=_pad16(kh), KW_PAD=_pad16(kw), HAS_REL=True, HAS_T=has_t)


def forward(q, k, v, rel_pos_h, rel_pos_w, q_size, k_size, sp: int, residual: bool, scale: float,
            autotune: bool = True, rel_pos_t=None, window=None):
    """Launch the forward kernel. Returns out (B, H, Nq, D), a view of a (B, Nq, H, D) buffer, in
    q's dtype, and lse (B, H, Nq) float32: the log-sum-exp of each score row in base 2
    (log2 sum exp(s), i.e. the natural one times log2(e)). Grids (h, w), or (t, h, w) with
    ``rel_pos_t`` (or without tables); ``window`` (wqh, wqw, wkh, wkw) attends within windows of
    the (h, w) maps (the tables then fit the windows' sides)."""
    B, H, Nq, D = q.shape
    out = helpers.empty(B, Nq, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = helpers.empty(B, H, Nq, dtype=torch.float32, device=q.device)
    g = _geometry(q_size, k_size, window, Nq, k.shape[2])
    r = _rel_args(q, rel_pos_h, rel_pos_w, rel_pos_t, g["q"], g["k"])
    _launch_fwd(q, k, v, r, out, lse, (lse, lse, lse, lse, lse), g, sp, residual, scale,
                bwd_pre=False, autotune=autotune)
    return out, lse


def _launch_fwd(q, k, v, r, out, lse, pre_bufs, g, sp, residual, scale, bwd_pre, autotune):
    """The forward kernel over the geometry g (``_geometry``); with bwd_pre, `out` is dout and
    pre_bufs = (dout, delta, rel_t, rel_h, rel_w) receive the backward's first pass (see
    `pool_attention_fwd_kernel`)."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    (_, qh, qw), (kt, kh, kw) = g["q"], g["k"]
    a = _align(q, k, v, out)
    args = (q, k, v, r["tt"], r["th"], r["tw"], r["idx_t"], r["idx_h"], r["idx_w"], out, lse, *pre_bufs,
            *_strides(q, a), *_strides(k, a), *_strides(v, a), *_strides(out, a), *r["st"],
            H, Nq, Nk, D, qh, qw, kt, kh, kw, scale, *g["maps"])
    meta = dict(SP=sp, HAS_REL=r["HAS_REL"], HAS_T=r["HAS_T"], RESIDUAL=residual,
                FP32=q.dtype == torch.float32, BWD_PRE=bwd_pre, KT_PAD=r["KT_PAD"], KH_PAD=r["KH_PAD"],
                KW_PAD=r["KW_PAD"], BLOCK_D=_pad16(D), ALIGN=a, WINDOW=g["WINDOW"])
    helpers.launch_tuned(_fwd_tuned, lambda cfg: (triton.cdiv(g["n_q"], cfg["BLOCK_M"]), B * H * g["n_win"]), args,
                         meta, _fwd_states, autotune, INTERPRETER_CONFIGS["fwd"])


def backward(dout, q, k, v, rel_pos_h, rel_pos_w, lse, q_size, k_size, sp: int,
             residual: bool, scale: float, autotune: bool = True, rel_pos_t=None, window=None):
    """Launch the three backward passes, then reduce the table gradients.

    Returns dq (like q), dk, dv (like k, v), d_rel_pos_h, d_rel_pos_w, d_rel_pos_t (like the tables;
    None without rel-pos, d_rel_pos_t None without a time table). Deterministic: every output
    element is summed by one program in a fixed order (no atomics)."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    g = _geometry(q_size, k_size, window, Nq, Nk)
    (qt, qh, qw), (kt, kh, kw) = g["q"], g["k"]                   # the cell grids (windows, or the maps)
    r = _rel_args(q, rel_pos_h, rel_pos_w, rel_pos_t, g["q"], g["k"])
    HAS_REL, HAS_T = r["HAS_REL"], r["HAS_T"]
    pads = dict(KT_PAD=r["KT_PAD"], KH_PAD=r["KH_PAD"], KW_PAD=r["KW_PAD"])
    fp32 = q.dtype == torch.float32
    dev = q.device
    delta = helpers.empty(B * H, Nq, dtype=torch.float32, device=dev)
    axes = ("t", "h", "w") if HAS_T else ("h", "w") if HAS_REL else ()
    rel = {x: helpers.empty(B * H, Nq, pads[f"K{x.upper()}_PAD"], dtype=torch.float32, device=dev) for x in axes}
    drel = {x: helpers.empty(B * H, Nq, pads[f"K{x.upper()}_PAD"], dtype=torch.float32, device=dev) for x in axes}
    rel_bufs = [rel.get(x, delta) for x in ("t", "h", "w")]      # delta: never read or written
    drel_bufs = [drel.get(x, delta) for x in ("t", "h", "w")]
    dq = helpers.empty(B, H, Nq, D, dtype=q.dtype, device=dev)
    dk = helpers.empty(B, H, Nk, D, dtype=k.dtype, device=dev)
    dv = helpers.empty(B, H, Nk, D, dtype=v.dtype, device=dev)
    BLOCK_D = _pad16(D)

    # Pass 1: the forward again, writing delta and the rel terms (see pool_attention_fwd_kernel, BWD_PRE).
    _launch_fwd(q, k, v, r, dout, lse, (dout, delta, *rel_bufs), g, sp, residual, scale,
                bwd_pre=True, autotune=autotune)

    a = _align(q, k, v, dout)
    st = (*_strides(q, a), *_strides(k, a), *_strides(v, a), *_strides(dout, a))
    dkdv_args = (q, k, v, dout, lse, delta, *rel_bufs, dk, dv, *st, H, Nq, Nk, D, qh, qw, kh, kw, scale, *g["maps"])
    if not HAS_REL:
        dq_passes = [dict(REL_PART=False)]
    elif DQ_ONE_PASS:
        dq_passes = [dict(REL_PART=False, ONE_PASS=True)]
    else:
        dq_passes = [dict(REL_PART=False), dict(REL_PART=True)]
    dq32 = helpers.empty(B, H, Nq, D, dtype=torch.float32, device=dev) if len(dq_passes) == 2 else dq
    dq_args = (q, k, v, dout, lse, delta, *rel_bufs, r["tt"], r["th"], r["tw"], r["idx_t"], r["idx_h"], r["idx_w"],
               dq, dq32, *drel_bufs, *st, *r["st"], H, Nq, Nk, D, qh, qw, kt, kh, kw, scale, *g["maps"])
    meta = dict(SP=sp, HAS_REL=HAS_REL, HAS_T=HAS_T, FP32=fp32, BLOCK_D=BLOCK_D, ALIGN=a, WINDOW=g["WINDOW"], **pads)
    programs = B * H * g["n_win"]
    helpers.launch_tuned(_dkdv_window_tuned if g["WINDOW"] else _dkdv_tuned,
                         lambda cfg: (triton.cdiv(g["n_k"], cfg["BLOCK_N"]), programs), dkdv_args,
                         meta, _dkdv_states, autotune, INTERPRETER_CONFIGS["dkdv_window" if g["WINDOW"] else "dkdv"])
    if HAS_T and DQ_ONE_PASS:
        dq_tuned, dq_interp = _dq_video_tuned, INTERPRETER_CONFIGS["dq_video"]
    else:
        dq_tuned, dq_interp = ((_dq_window_tuned, INTERPRETER_CONFIGS["dq_window"]) if g["WINDOW"] else
                               (_dq_tuned, INTERPRETER_CONFIGS["dq"]))
    for dq_pass in dq_passes:
        helpers.launch_tuned(dq_tuned, lambda cfg: (triton.cdiv(g["n_q"], cfg["BLOCK_M"]), programs), dq_args,
                             dict(meta, RESIDUAL=residual, **dq_pass), _dq_states, autotune, dq_interp)

    if not HAS_REL:
        return dq, dk, dv, None, None, None
    tables = dict(t=rel_pos_t, h=rel_pos_h, w=rel_pos_w)
    q_sides = dict(t=qt, h=qh, w=qw)
    k_sides = dict(t=kt, h=kh, w=kw)
    grads = {x: helpers.empty(*tables[x].shape, dtype=tables[x].dtype, device=dev) for x in axes}
    lists = {x: _cells_by_table_row(q_sides[x], k_sides[x], pads[f"K{x.upper()}_PAD"], tables[x].shape[0], dev)
             for x in axes}
    dummy = (delta, delta)                                        # the t lists without a time table: never read
    t_lists = lists.get("t", dummy)
    lengths = {x: tables[x].shape[0] for x in axes}
    map_qh, map_qw, _, _, _, n_win_w = g["maps"]            # the q map: rows of q (the cell grid without windows)
    helpers.launch(pool_attention_bwd_tables_kernel, (max(lengths.values()), len(axes)),
                   (q, *drel_bufs, *t_lists, *lists["h"], *lists["w"], grads.get("t", delta), grads["h"], grads["w"],
                    *q.stride(), B * H, H, Nq, qt, map_qh, map_qw, lengths.get("t", 0), lengths["h"], lengths["w"],
                    qh, qw, g["n_win_h"], n_win_w),
                   dict(D=D, SP=sp, HAS_T=HAS_T, BLOCK_R=TABLES_BLOCK_R, BLOCK_D=BLOCK_D, WINDOW=g["WINDOW"],
                        num_warps=TABLES_WARPS, num_stages=1, **pads,
                        **(TABLES_WINDOW_LAUNCH if g["WINDOW"] else TABLES_LAUNCH)), _tables_states)
    return dq, dk, dv, grads["h"], grads["w"], grads.get("t")


_CELLS_CACHE: dict = {}


def _cells_by_table_row(q_side: int, k_side: int, k_pad: int, length: int, device):
    """(starts (length + 1,), cells (q_side * k_side,)) int32: the cells (c, j) of the index map,
    as c * k_pad + j, sorted by the table row they name; row t's are cells[starts[t]:starts[t+1]].
    Built on the host once per shape and device."""
    key = (q_side, k_side, k_pad, length, str(device))
    if key not in _CELLS_CACHE:
        from .torch_impl import rel_pos_index
        with host_setup():
            idx = rel_pos_index(q_side, k_side).reshape(-1).long()
            order = torch.argsort(idx, stable=True)
            c, j = order // k_side, order % k_side
            starts = torch.zeros(length + 1, dtype=torch.long)
            starts[1:] = torch.bincount(idx, minlength=length).cumsum(0)
            _CELLS_CACHE[key] = (starts.to(device=device, dtype=torch.int32),
                                 (c * k_pad + j).to(device=device, dtype=torch.int32))
    return _CELLS_CACHE[key]
