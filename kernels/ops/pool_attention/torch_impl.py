"""Pooling attention with decomposed relative positions in plain torch: checks and the CPU path.

This module holds the relative-position index and the per-row rel terms (which the Triton path
uses too) and the plain torch implementation that materialises the scores (autograd by torch
itself). The fused path lives in ``triton_impl.py``; the public op that checks its arguments and
picks one of them in the package's ``__init__``.

Notation (docs/design.md, "Pooling attention"): ``q`` (B, heads, Nq, D), ``k``/``v`` (B, heads, Nk, D), query grid
(qh, qw), key grid (kh, kw), ``sp`` = 1 with a class token (row / column 0), else 0, so
Nq = sp + qh*qw and Nk = sp + kh*kw.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


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
