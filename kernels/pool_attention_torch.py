"""Pooling attention with decomposed relative positions in plain torch: checks and the CPU path.

This module holds what both implementations share (input checks, the relative-position index,
the per-row rel terms) and the plain torch implementation that materialises the scores
(autograd by torch itself). The fused Triton path lives in ``pool_attention_triton.py``; the public
op that picks one of them in ``pool_attention.py``.

Notation (SPEC section 3): ``q`` (B, heads, Nq, D), ``k``/``v`` (B, heads, Nk, D), query grid
(qh, qw), key grid (kh, kw), ``sp`` = 1 with a class token (row / column 0), else 0, so
Nq = sp + qh*qw and Nk = sp + kh*kw.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float64: torch backend only
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


def _pair(size: Sequence[int], name: str) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"pool_attention: {name} must be a pair (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"pool_attention: {name} must be positive, got {(h, w)}")
    return h, w


def check_inputs(q: Tensor, k: Tensor, v: Tensor, rel_pos_h: Optional[Tensor], rel_pos_w: Optional[Tensor],
                 q_size: Sequence[int], k_size: Sequence[int], has_cls_token: bool
                 ) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validate the op's arguments; return (q_size, k_size) as int pairs. Raises ValueError naming
    the problem (rank, B/heads/D mismatch, token count vs grid, table length, dtype, device)."""
    qh, qw = _pair(q_size, "q_size")
    kh, kw = _pair(k_size, "k_size")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"pool_attention: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"pool_attention: {name} must have rank 4 (B, heads, N, D), got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"pool_attention: {name} has dtype {t.dtype}; expected float32, float16 or bfloat16 (float64 on the torch backend)")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"pool_attention: mixed dtypes q {q.dtype}, k {k.dtype}, v {v.dtype}")
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
    if Nq != sp + qh * qw:
        raise ValueError(f"pool_attention: q has {Nq} tokens but q_size {(qh, qw)} with "
                         f"has_cls_token={bool(has_cls_token)} needs {sp + qh * qw}")
    if k.shape[2] != sp + kh * kw:
        raise ValueError(f"pool_attention: k/v have {k.shape[2]} tokens but k_size {(kh, kw)} with "
                         f"has_cls_token={bool(has_cls_token)} needs {sp + kh * kw}")
    check_tables(rel_pos_h, rel_pos_w, (qh, qw), (kh, kw), D, q.dtype, q.device)
    return (qh, qw), (kh, kw)


def check_tables(rel_pos_h: Optional[Tensor], rel_pos_w: Optional[Tensor], q_size: Sequence[int],
                 k_size: Sequence[int], D: int, dtype: torch.dtype, device: torch.device) -> None:
    """Validate the rel-pos tables for q and k grids (int pairs), head dim D and q's dtype and
    device: both or neither, 2-D, exactly 2 * max(q, k) - 1 rows per axis, D columns."""
    if (rel_pos_h is None) != (rel_pos_w is None):
        raise ValueError("pool_attention: give both rel_pos_h and rel_pos_w, or neither")
    if rel_pos_h is not None:
        axes = (("rel_pos_h", rel_pos_h, q_size[0], k_size[0]), ("rel_pos_w", rel_pos_w, q_size[1], k_size[1]))
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
                raise ValueError(f"pool_attention: {name} has dtype {t.dtype} but q has {dtype}")
            if t.device != device:
                raise ValueError(f"pool_attention: {name} is on {t.device} but q is on {device}")


def rel_pos_index(q_len: int, k_len: int, device: torch.device | str | None = None) -> Tensor:
    """Table row for each (query coordinate i, key coordinate j) along one axis: (q_len, k_len) int64.

    dist[i, j] = i * max(k/q, 1) - j * max(q/k, 1) + (k - 1) * max(q/k, 1), truncated, computed in
    float32 exactly as the official code does (so fractional ratios round the same way)."""
    q_ratio = max(k_len / q_len, 1.0)
    k_ratio = max(q_len / k_len, 1.0)
    q_coords = torch.arange(q_len, device=device, dtype=torch.float32)[:, None] * q_ratio
    k_coords = torch.arange(k_len, device=device, dtype=torch.float32)[None, :] * k_ratio
    return (q_coords - k_coords + (k_len - 1) * k_ratio).long()


def rel_terms(q_sp: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, q_size: tuple[int, int],
              k_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Per-row relative-position logits.

    q_sp: (B, heads, qh*qw, D) spatial queries, unscaled, any strides.
    Returns rel_h (B, heads, qh, qw, kh) and rel_w (B, heads, qh, qw, kw) in q_sp's dtype:
    rel_h[..., y, x, j] = q[y, x] . rel_pos_h[dist_h[y, j]], rel_w likewise along the width.
    """
    (qh, qw), (kh, kw) = q_size, k_size
    Rh = rel_pos_h[rel_pos_index(qh, kh, q_sp.device)]             # (qh, kh, D)
    Rw = rel_pos_w[rel_pos_index(qw, kw, q_sp.device)]             # (qw, kw, D)
    r_q = q_sp.unflatten(2, (qh, qw))                                # (B, heads, qh, qw, D)
    rel_h = torch.einsum("bnyxc,yjc->bnyxj", r_q, Rh)
    rel_w = torch.einsum("bnyxc,xlc->bnyxl", r_q, Rw)
    return rel_h, rel_w


def pool_attention_torch(q: Tensor, k: Tensor, v: Tensor, rel_pos_h: Optional[Tensor],
                         rel_pos_w: Optional[Tensor], q_size: tuple[int, int], k_size: tuple[int, int],
                         has_cls_token: bool, residual_pooling: bool, scale: float) -> Tensor:
    """The op in plain torch, in the inputs' dtype (inputs already checked).

    Materialises the (B, heads, Nq, Nk) scores once and adds the rel terms in place, broadcast
    over the key grid (no (Nq, Nk) bias tensor). Returns (B, heads, Nq, D) as a view of a
    contiguous (B, Nq, heads, D) buffer, like the fused path.
    """
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    sp = int(bool(has_cls_token))
    attn = torch.matmul(q * scale, k.transpose(-2, -1))             # (B, heads, Nq, Nk)
    if rel_pos_h is not None:
        (qh, qw), (kh, kw) = q_size, k_size
        rel_h, rel_w = rel_terms(q[:, :, sp:], rel_pos_h, rel_pos_w, q_size, k_size)
        grid = attn[:, :, sp:, sp:].unflatten(3, (kh, kw)).unflatten(2, (qh, qw))  # (B, heads, qh, qw, kh, kw)
        grid += rel_h[..., :, None]
        grid += rel_w[..., None, :]
    attn = attn.softmax(dim=-1)
    out = torch.matmul(attn, v)                                       # (B, heads, Nq, D)
    result = out.new_empty(B, Nq, H, D).transpose(1, 2)              # the layout the output projection wants
    result.copy_(out)
    if residual_pooling:
        result[:, :, sp:] += q[:, :, sp:]
    return result
