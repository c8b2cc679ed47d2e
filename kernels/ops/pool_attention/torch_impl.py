"""Pooling attention with decomposed relative positions in plain torch: checks and the CPU path.

This module holds the relative-position index and the per-row rel terms (which the Triton path
uses too) and the plain torch implementation that materialises the scores (autograd by torch
itself). The fused path lives in ``triton_impl.py``; the public op that checks its arguments and
picks one of them in the package's ``__init__``.

Notation (docs/design.md, "Pooling attention"): ``q`` (B, heads, Nq, D), ``k``/``v`` (B, heads, Nk, D), query grid
(qh, qw), key grid (kh, kw), or (qt, qh, qw) and (kt, kh, kw) for video, ``sp`` = 1 with a class
token (row / column 0), else 0, so Nq = sp + qh*qw (*qt) and Nk = sp + kh*kw (*kt).
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


def rel_terms(q_sp: Tensor, tables: tuple[Tensor, ...], q_size: tuple[int, ...],
              k_size: tuple[int, ...]) -> list[Tensor]:
    """Per-row relative-position logits, one per grid axis.

    q_sp: (B, heads, prod(q_size), D) spatial queries, unscaled, any strides; tables in grid-axis
    order ((h, w) or (t, h, w)). Returns, per axis a, rel_a (B, heads, *q_size, k_size[a]) in
    q_sp's dtype: rel_h[..., y, x, j] = q[y, x] . rel_pos_h[dist_h[y, j]], the others alike.
    """
    axes = "tyx"[-len(q_size):]
    r_q = q_sp.unflatten(2, tuple(q_size))                           # (B, heads, *q_size, D)
    out = []
    for a, (table, qa, ka) in enumerate(zip(tables, q_size, k_size)):
        R = table[rel_pos_index(qa, ka, q_sp.device)]                # (q_a, k_a, D)
        out.append(torch.einsum(f"bn{axes}c,{axes[a]}kc->bn{axes}k", r_q, R))
    return out


def pool_attention_torch(q: Tensor, k: Tensor, v: Tensor, tables: Optional[tuple[Tensor, ...]],
                         q_size: tuple[int, ...], k_size: tuple[int, ...],
                         has_cls_token: bool, residual_pooling: bool, scale: float) -> Tensor:
    """The op in plain torch, in the inputs' dtype (inputs already checked); ``tables`` in
    grid-axis order, or None.

    Materialises the (B, heads, Nq, Nk) scores once and adds the rel terms in place, broadcast
    over the key grid (no (Nq, Nk) bias tensor). Returns (B, heads, Nq, D) as a view of a
    contiguous (B, Nq, heads, D) buffer, like the fused path.
    """
    B, H, Nq, D = q.shape
    sp = int(bool(has_cls_token))
    attn = torch.matmul(q * scale, k.transpose(-2, -1))             # (B, heads, Nq, Nk)
    if tables is not None:
        d = len(q_size)
        grid = attn[:, :, sp:, sp:].unflatten(3, tuple(k_size)).unflatten(2, tuple(q_size))  # (B, heads, *q, *k)
        for a, rel in enumerate(rel_terms(q[:, :, sp:], tables, q_size, k_size)):
            # rel (B, heads, *q_size, k_a), broadcast over the other key axes
            grid += rel.reshape(*rel.shape[:-1], *[k_size[a] if i == a else 1 for i in range(d)])
    attn = attn.softmax(dim=-1)
    out = torch.matmul(attn, v)                                       # (B, heads, Nq, D)
    result = out.new_empty(B, Nq, H, D).transpose(1, 2)              # the layout the output projection wants
    result.copy_(out)
    if residual_pooling:
        result[:, :, sp:] += q[:, :, sp:]
    return result


def window_partition(x: Tensor, size: tuple[int, int], window: tuple[int, int]) -> Tensor:
    """(B, heads, h*w, D) tokens of an (h, w) map -> (B * nh * nw, heads, wh * ww, D): the map
    zero-padded at the bottom and right to a multiple of the window (wh, ww), cut into its
    nh x nw windows (row-major), each flattened row-major."""
    B, H, _, D = x.shape
    (h, w), (wh, ww) = size, window
    nh, nw = -(-h // wh), -(-w // ww)
    grid = torch.nn.functional.pad(x.unflatten(2, (h, w)), (0, 0, 0, nw * ww - w, 0, nh * wh - h))
    grid = grid.reshape(B, H, nh, wh, nw, ww, D).permute(0, 2, 4, 1, 3, 5, 6)     # (B, nh, nw, heads, wh, ww, D)
    return grid.reshape(B * nh * nw, H, wh * ww, D)


def window_unpartition(x: Tensor, batch: int, size: tuple[int, int], window: tuple[int, int]) -> Tensor:
    """The inverse of ``window_partition``, the padding rows dropped: (B * nh * nw, heads, wh * ww,
    D) -> (B, heads, h * w, D)."""
    (h, w), (wh, ww) = size, window
    nh, nw = -(-h // wh), -(-w // ww)
    H, D = x.shape[1], x.shape[-1]
    grid = x.reshape(batch, nh, nw, H, wh, ww, D).permute(0, 3, 1, 4, 2, 5, 6)     # (B, heads, nh, wh, nw, ww, D)
    return grid.reshape(batch, H, nh * wh, nw * ww, D)[:, :, :h, :w].reshape(batch, H, h * w, D)


def pool_attention_window_torch(q: Tensor, k: Tensor, v: Tensor, tables: Optional[tuple[Tensor, ...]],
                                q_size: tuple[int, int], k_size: tuple[int, int], window: tuple[int, int, int, int],
                                residual_pooling: bool, scale: float) -> Tensor:
    """Window attention in plain torch, as detectron2 computes it (inputs already checked; no class
    token): q's (h, w) map cut into (wqh, wqw) windows and k's, v's into (wkh, wkw) ones, each map
    zero-padded to whole windows; every window attends to its own keys, the padded ones included
    (logit 0 + the rel bias, value 0); relative positions over the windows' sides; the padded query
    rows dropped; then the residual adds the un-windowed q. Returns (B, heads, Nq, D), a view of a
    contiguous (B, Nq, heads, D) buffer."""
    B, H, Nq, D = q.shape
    wq, wk = tuple(window[:2]), tuple(window[2:])
    out = pool_attention_torch(window_partition(q, q_size, wq), window_partition(k, k_size, wk),
                               window_partition(v, k_size, wk), tables, wq, wk, False, False, scale)
    result = q.new_empty(B, Nq, H, D).transpose(1, 2)
    result.copy_(window_unpartition(out, B, q_size, wq))
    if residual_pooling:
        result += q
    return result
