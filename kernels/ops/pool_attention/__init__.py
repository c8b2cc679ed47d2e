"""Fused pooling attention with decomposed relative positions (MViTv2), forward and backward.

    out = pool_attention(q, k, v, rel_pos_h, rel_pos_w, q_size, k_size,
                         has_cls_token=False, residual_pooling=True, scale=None,
                         rel_pos_t=None, window=None)

q (B, H, Nq, D), Nq = qh*qw (+1 class token); k, v (B, H, Nk, D), Nk = kh*kw (+1); tables
(2*max(qh, kh) - 1, D) and (2*max(qw, kw) - 1, D) or both None. Returns (B, H, Nq, D) in q's
dtype: softmax(scale q k^T + rel_h + rel_w) v, + q on the spatial rows with residual pooling
(docs/design.md, "Pooling attention"). The result is a view of a (B, Nq, H, D) contiguous buffer, so the model's
`out.transpose(1, 2).reshape(B, Nq, H * D)` is free. float32, float16 and bfloat16 inputs,
accumulation in float32; any strides.

Backends (`fastmvit.use_backend`, FASTMVIT_BACKEND): "torch" runs `pool_attention_torch` (plain
torch, materialised scores, autograd by torch); "triton" runs the custom op
`fastmvit::pool_attention` (one op under torch.compile, a fake implementation for meta tensors,
its backward the custom op `fastmvit::pool_attention_backward`); "auto" = Triton on CUDA.

Design (kernels in `triton_impl.py`)
------------------------------------
Tiling. FlashAttention-2 style: one program per (batch*head, BLOCK_M query rows); it keeps its
q tile, the float32 accumulator and the running max / sum in registers and streams K and V in
BLOCK_N tiles with an online softmax (rescale the partial sums by exp2(m_old - m_new) when the
row max grows), so memory is O(Nq + Nk) for any Nk (4096+) and Nq. The head dim is padded to a
power of two (96 -> 128, 72 -> 128) by masks; HBM traffic is not padded. MViTv2's attention is
small in keys (Nk <= 784 at 224) and memory-bound: each q, k, v element is read once from HBM per
query tile (K/V of a head are re-read by each query tile from L2), out and lse written once.

Relative positions. rel_h[r, j] = q[r] . Rh[y_r, j] and rel_w[r, l] = q[r] . Rw[x_r, l] are small
(Nq * (kh + kw) against Nq * Nk scores), so each query tile computes them once, before the key
loop, from table rows gathered through int32 index maps (the official dist formula, evaluated on
the host so indices agree bit for bit). Inside the key loop the bias tile is expanded by a matmul
with a one-hot matrix of the key coordinates: bias = rel_h @ onehot_h + rel_w @ onehot_w, on
tensor cores. A register gather (tl.gather) would be the direct way but spills on sm_80/sm_90.
No bias tile and no rel tensor goes through HBM in the forward. Compiled for sm_80 / sm_90 the
forward and dK/dV use BLOCK_M x BLOCK_N = 64 x 64 with 8 warps, dQ 32 x 32 with 8 warps, no
spills on either target (tools/gpu_compile.py; what was tried is listed in
`triton_impl.py`). The head dim is a constexpr and row
strides are passed divided by their alignment, so D = 72 rows still load vectorised.

Saved for backward: q, k, v, the tables and the log-sum-exp per row (B, H, Nq) float32, in base 2;
never the probabilities and not even out. The backward recomputes P = exp2(s - lse).

Backward, deterministic (no atomics; every output element is summed by one program in a fixed
order):
1. first pass = the forward kernel again (BWD_PRE): delta = rowsum(dout * o) from the float32
   attention output o, and rel_h / rel_w of every row written once (float32, Nq * (KH_PAD +
   KW_PAD)), which the next kernels load instead of recomputing per tile. Why not delta from the
   stored out, as FlashAttention-2 does: with residual pooling out = o + q, and its bf16 rounding
   (a few times larger than o) made dq 3x less accurate than eager torch in bf16.
2. dK/dV (per key tile, looping over all query tiles): dv = P^T dout, dk = scale dS^T q.
3. dQ (per query tile, looping over all key tiles): dq = scale dS k (+ dout on spatial rows),
   and in the same pass drel_h = dS @ onehot_h^T (the transposed one-hot matmul), drel_w
   likewise; then dq += drel_h @ Rh + drel_w @ Rw (gathered table rows), and drel_h / drel_w are
   written (float32, Nq * (KH_PAD + KW_PAD)). One launch (ONE_PASS): with 32 x 32 tiles and 8
   warps the dq and drel accumulators fit in registers without spills; the earlier two-launch
   path (REL_PART: dS recomputed, a float32 partial dq written and read back) stays behind
   `triton_impl.DQ_ONE_PASS`, tested.
4. The table gradients, one launch: a program per table row t sums drel[.., j] * q over the
   index-map cells (y, j) that name t (host-built lists sorted by t), in a fixed order (a scatter
   as a gather: index_add_ would use float atomics on CUDA).
Per-key-tile and per-query-tile kernels instead of one kernel with atomic dq (FlashAttention-2's
choice) cost extra passes over K/V and q; both are small here (Nk is small, K/V of a head stay in
L2), and the result is bitwise repeatable.

Traffic: every launch states the distinct bytes it reads and writes (`triton_impl`'s `_*_states`,
checked against the interpreter's loads and stores by tests/test_kernel_traffic.py); the cost
model counts the op by them.

Windows (detectron2's detection backbone, docs/design.md sections 7 and 9): ``window=(q_window,
kv_window)`` (each an int or (height, width)) cuts the (h, w) maps q_size and k_size into windows,
and each window's queries attend only to its window's keys. No partition copy: a program owns a
(batch x head, window) pair and a tile of the window's rows, and turns window-local rows into rows
of the maps by index math. The maps are zero-padded at the bottom and right to whole windows, as
detectron2 does, and the padding is not masked: a padded key reads zeros, so its logit is 0 plus
the rel bias, and it stays in the softmax with value 0; padded query rows are neither read nor
written. The rel-pos index maps are over the windows' sides (positions are window-local), so
the tables have 2 * max(q window, kv window) - 1 rows; the residual adds the query row's own
pooled q. The backward walks the same windows; the padded keys' ds feeds drel (they carry the
bias), their dk / dv are dropped; the table gradients' cells are window-local coordinates, each
covering the map rows at that offset in every window. Windows need 2-D grids, no class token, and
the same number of windows on both maps.

Precision: the bias is expanded as bf16 hi + lo parts (16-bit mantissa) so half-precision inputs
lose nothing to it; float32 inputs use IEEE float32 matmuls (no TF32) throughout.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from ...args import MAX_HEAD_DIM
from ...backend import require_triton_runnable, resolve_backend
from . import op as _op  # noqa: F401  (registers the custom ops)
from .torch_impl import pool_attention_torch, pool_attention_window_torch, rel_pos_index

__all__ = ["check_inputs", "check_tables", "check_window", "pool_attention", "pool_attention_torch",
           "pool_attention_window_torch", "rel_pos_index", "require_triton_attention"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float64: torch backend only


def _grid(size: Sequence[int], name: str) -> tuple[int, ...]:
    try:
        grid = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"pool_attention: {name} must be (height, width) or (time, height, width), got {size!r}") from None
    if len(grid) not in (2, 3):
        raise ValueError(f"pool_attention: {name} must be (height, width) or (time, height, width), got {size!r}")
    if min(grid) < 1:
        raise ValueError(f"pool_attention: {name} must be positive, got {grid}")
    return grid


def _window_side(side, name: str) -> tuple[int, int]:
    """A window side given as an int or (height, width), as a positive (height, width)."""
    try:
        pair = (int(side), int(side)) if isinstance(side, int) else tuple(int(s) for s in side)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"pool_attention: {name} must be a positive int or (height, width), got {side!r}")
    return pair


def check_window(window, q_size: tuple[int, ...], k_size: tuple[int, ...],
                 has_cls_token: bool) -> Optional[tuple[int, int, int, int]]:
    """Validate ``window`` = (q_window, kv_window) for the maps q_size and k_size; return
    (wqh, wqw, wkh, wkw), or None without windows. Windows need (h, w) grids, no class token, and
    the same number of windows on both maps (each map padded at the bottom and right to whole
    windows)."""
    if window is None:
        return None
    if isinstance(window, (str, bytes)) or not hasattr(window, "__len__") or len(window) != 2:
        raise ValueError(f"pool_attention: window must be (q_window, kv_window), got {window!r}")
    wq, wk = _window_side(window[0], "the q window"), _window_side(window[1], "the kv window")
    if len(q_size) != 2:
        raise ValueError(f"pool_attention: windows need (height, width) grids, got q_size {q_size}")
    if has_cls_token:
        raise ValueError("pool_attention: windows take no class token (detectron2's backbone has none)")
    n_q = tuple(-(-s // w) for s, w in zip(q_size, wq))
    n_k = tuple(-(-s // w) for s, w in zip(k_size, wk))
    if n_q != n_k:
        raise ValueError(f"pool_attention: the q map {q_size} in {wq} windows gives {n_q[0]}x{n_q[1]} windows "
                         f"but the k map {k_size} in {wk} windows gives {n_k[0]}x{n_k[1]}")
    return (*wq, *wk)


def check_inputs(q: Tensor, k: Tensor, v: Tensor, rel_pos_h: Optional[Tensor], rel_pos_w: Optional[Tensor],
                 q_size: Sequence[int], k_size: Sequence[int], has_cls_token: bool,
                 rel_pos_t: Optional[Tensor] = None, window=None):
    """Validate the op's arguments; return (q_size, k_size, window): the grids as int tuples (2 or
    3 each, the same number) and the window as ``check_window`` gives it. Raises a TypeError for a
    dtype fault and a ValueError for any other (rank, B/heads/D mismatch, token count vs grid,
    table length, window, device), naming the problem, as every op does."""
    q_grid, k_grid = _grid(q_size, "q_size"), _grid(k_size, "k_size")
    if len(q_grid) != len(k_grid):
        raise ValueError(f"pool_attention: q_size {q_grid} and k_size {k_grid} have different numbers of axes")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"pool_attention: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"pool_attention: {name} must have rank 4 (B, heads, N, D), got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"pool_attention: {name} has dtype {t.dtype}; expected float32, float16 or bfloat16 (float64 on the torch backend)")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"pool_attention: mixed dtypes q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"pool_attention: mixed devices q {q.device}, k {k.device}, v {v.device}")
    B, H, Nq, D = q.shape
    if k.shape[:2] != (B, H) or v.shape[:2] != (B, H):
        raise ValueError(f"pool_attention: batch/heads differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[3] != D or v.shape[3] != D:
        raise ValueError(f"pool_attention: head dim differs: q {D}, k {k.shape[3]}, v {v.shape[3]}")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"pool_attention: k has {k.shape[2]} tokens but v has {v.shape[2]}")
    sp = int(bool(has_cls_token))
    if Nq != sp + math.prod(q_grid):
        raise ValueError(f"pool_attention: q has {Nq} tokens but q_size {q_grid} with "
                         f"has_cls_token={bool(has_cls_token)} needs {sp + math.prod(q_grid)}")
    if k.shape[2] != sp + math.prod(k_grid):
        raise ValueError(f"pool_attention: k/v have {k.shape[2]} tokens but k_size {k_grid} with "
                         f"has_cls_token={bool(has_cls_token)} needs {sp + math.prod(k_grid)}")
    win = check_window(window, q_grid, k_grid, has_cls_token)
    rel_q, rel_k = (q_grid, k_grid) if win is None else (win[:2], win[2:])     # windows: window-local positions
    check_tables(rel_pos_h, rel_pos_w, rel_q, rel_k, D, q.dtype, q.device, rel_pos_t)
    return q_grid, k_grid, win


def check_tables(rel_pos_h: Optional[Tensor], rel_pos_w: Optional[Tensor], q_size: Sequence[int],
                 k_size: Sequence[int], D: int, dtype: torch.dtype, device: torch.device,
                 rel_pos_t: Optional[Tensor] = None) -> None:
    """Validate the rel-pos tables for q and k grids (int tuples, (h, w) or (t, h, w)), head dim D
    and q's dtype and device: h and w both or neither, t exactly when the grids have a time axis
    (and there are tables), 2-D, exactly 2 * max(q, k) - 1 rows per axis, D columns."""
    if (rel_pos_h is None) != (rel_pos_w is None):
        raise ValueError("pool_attention: give both rel_pos_h and rel_pos_w, or neither")
    video = len(q_size) == 3
    if rel_pos_h is None:
        if rel_pos_t is not None:
            raise ValueError("pool_attention: rel_pos_t given without rel_pos_h and rel_pos_w")
        return
    if video and rel_pos_t is None:
        raise ValueError(f"pool_attention: a (time, height, width) grid {tuple(q_size)} needs rel_pos_t "
                         "beside rel_pos_h and rel_pos_w")
    if not video and rel_pos_t is not None:
        raise ValueError(f"pool_attention: rel_pos_t given for a 2-D grid {tuple(q_size)}; "
                         "pass (time, height, width) sizes")
    axes = [("rel_pos_h", rel_pos_h, q_size[-2], k_size[-2]), ("rel_pos_w", rel_pos_w, q_size[-1], k_size[-1])]
    if video:
        axes.insert(0, ("rel_pos_t", rel_pos_t, q_size[0], k_size[0]))
    for name, t, qs, ks in axes:
        if not isinstance(t, Tensor) or t.dim() != 2:
            raise ValueError(f"pool_attention: {name} must be a 2-D tensor (length, D), got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        length = 2 * max(qs, ks) - 1
        if t.shape[0] != length:
            raise ValueError(f"pool_attention: {name} has {t.shape[0]} rows but grids q {qs} / k {ks} "
                             f"need exactly 2*max({qs}, {ks})-1 = {length} (resize the table with "
                             f"linear interpolation first)")
        if t.shape[1] != D:
            raise ValueError(f"pool_attention: {name} has width {t.shape[1]}, expected the head dim {D}")
        if t.dtype != dtype:
            raise TypeError(f"pool_attention: {name} has dtype {t.dtype} but q has {dtype}")
        if t.device != device:
            raise ValueError(f"pool_attention: {name} is on {t.device} but q is on {device}")


@torch.compiler.assume_constant_result
def _resolve_backend(device_type: str) -> str:
    """resolve_backend, read once at trace time under torch.compile (dynamo cannot trace the
    ContextVar that holds the backend)."""
    return resolve_backend(torch.device(device_type))


def pool_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   rel_pos_h: Optional[torch.Tensor], rel_pos_w: Optional[torch.Tensor],
                   q_size: Sequence[int], k_size: Sequence[int], *, rel_pos_t: Optional[torch.Tensor] = None,
                   has_cls_token: bool = False, residual_pooling: bool = True,
                   scale: Optional[float] = None, window=None) -> torch.Tensor:
    """MViTv2 pooling attention: softmax(scale q k^T + rel_h + rel_w (+ rel_t)) v (+ q on spatial rows).

    q: (B, H, Nq, D); k, v: (B, H, Nk, D); rel_pos_h: (2*max(qh, kh) - 1, D) and rel_pos_w:
    (2*max(qw, kw) - 1, D), or both None. q_size = (qh, qw), k_size = (kh, kw); Nq = qh*qw and
    Nk = kh*kw, +1 each with a class token (token 0: no rel-pos, no residual). Video:
    q_size = (qt, qh, qw), k_size = (kt, kh, kw) and rel_pos_t (2*max(qt, kt) - 1, D) as well.
    scale defaults to D ** -0.5. window = (q_window, kv_window), each an int or (height, width):
    attention within windows of the (h, w) maps (module docstring, "Windows"); the tables then fit
    the windows' sides. Returns (B, H, Nq, D) in q's dtype, a view of a (B, Nq, H, D) contiguous
    buffer. Differentiable in q, k, v and every table."""
    q_size, k_size, window = check_inputs(q, k, v, rel_pos_h, rel_pos_w, q_size, k_size, has_cls_token, rel_pos_t,
                                          window)
    D = q.shape[-1]
    scale = float(D ** -0.5 if scale is None else scale)
    if _resolve_backend(q.device.type) == "torch":
        tables = None if rel_pos_h is None else (rel_pos_h, rel_pos_w) if rel_pos_t is None else \
            (rel_pos_t, rel_pos_h, rel_pos_w)
        if window is not None:
            return pool_attention_window_torch(q, k, v, tables, q_size, k_size, window, residual_pooling, scale)
        return pool_attention_torch(q, k, v, tables, q_size, k_size, has_cls_token, residual_pooling, scale)
    require_triton_attention(q.dtype, D, q.device)
    out, _ = torch.ops.fastmvit.pool_attention(q, k, v, rel_pos_h, rel_pos_w, list(q_size), list(k_size),
                                               bool(has_cls_token), bool(residual_pooling), scale, rel_pos_t,
                                               None if window is None else list(window))
    return out


def require_triton_attention(dtype: torch.dtype, head_dim: int, device: torch.device) -> None:
    """Raise naming the problem when the Triton kernels cannot take these inputs: a dtype they do not
    take (float64: a TypeError, as in every op), a head dim over MAX_HEAD_DIM, CPU without the
    interpreter, another device type."""
    require_triton_runnable(device, "pool_attention", dtype)
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"pool_attention: the Triton kernels take head dims up to {MAX_HEAD_DIM}, got {head_dim}; "
                         "use the torch backend")
    if device.type not in ("cuda", "cpu", "meta"):
        raise ValueError(f"pool_attention: the triton backend does not run on {device.type} tensors")
