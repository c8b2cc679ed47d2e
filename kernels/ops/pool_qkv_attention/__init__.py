"""Pooling prologue + pooling attention, with q, k, v recomputed in the backward.

    out, q_size = pool_qkv_attention(qkv, hw_shape, num_heads, pool_weights, norm_weights,
                                     norm_biases, stride_q, stride_kv, rel_pos_h, rel_pos_w,
                                     has_cls_token=..., residual_pooling=..., scale=..., eps=...)

The same result as ``pool_qkv`` followed by ``pool_attention`` (see those modules for what they
compute); ``out`` is (B, heads, Nq, D) in qkv's dtype, a view of a (B, Nq, heads, D) buffer.

Why a third entry point: memory. Run one after the other, the two custom ops each keep what their
own backward needs: ``pool_qkv`` keeps its input ``qkv`` (B, N, 3 C), ``pool_attention`` keeps the
pooled ``q, k, v`` (B, heads, Nq + 2 Nk, D). Here one ``torch.autograd.Function`` keeps only
``qkv`` (plus the parameters and the float32 log-sum-exp), and its backward runs the ``pool_qkv``
kernel again to rebuild q, k, v before the attention backward. The trade, per block (E = element
size): saved activations - (Nq + 2 Nk) D E per head, traffic + one ``pool_qkv`` forward (read the
3 N C qkv once, write q, k, v once), with no extra kernel beyond that one launch. The modeled
saved bytes and traffic of the whole model: ``scripts/model_costs.py``. FlashAttention makes the same trade for the scores, one level down.

The ops stay the registered custom ops (``fastmvit::pool_qkv``, ``fastmvit::pool_attention``,
their ``_backward`` ops): the Function only chooses what to save, so torch.compile sees the same
ops and the cost model counts each launch. On the "torch" backend, or when no gradient is
needed, this is exactly ``pool_qkv`` then ``pool_attention``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ...backend import resolve_backend
from ..pool_attention import check_tables, check_window, pool_attention, require_triton_attention
from ..pool_qkv import check_and_geometry, pool_qkv
from .op import PoolQKVAttention

__all__ = ["pool_qkv_attention"]


def _split_tables(tables) -> tuple:
    """(rel_pos_h, rel_pos_w, rel_pos_t) from tables in grid-axis order ((h, w) or (t, h, w)),
    None for the missing ones."""
    tables = tuple(tables or ())
    if len(tables) == 3:
        return tables[1], tables[2], tables[0]
    if len(tables) == 2:
        return tables[0], tables[1], None
    if not tables or all(t is None for t in tables):
        return None, None, None
    raise ValueError(f"pool_qkv_attention: rel_pos_tables gave {len(tables)} tables; expected (h, w) or (t, h, w)")


def pool_qkv_attention(qkv: torch.Tensor, hw_shape: Sequence[int], num_heads: int,
                       pool_weights: Sequence[torch.Tensor], norm_weights: Sequence[torch.Tensor],
                       norm_biases: Sequence[torch.Tensor], stride_q, stride_kv,
                       rel_pos_h: Optional[torch.Tensor], rel_pos_w: Optional[torch.Tensor], *,
                       has_cls_token: bool, residual_pooling: bool = True,
                       scale: Optional[float] = None, eps: float = 1e-6,
                       rel_pos_tables=None, rel_pos_t: Optional[torch.Tensor] = None, window=None
                       ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``pool_qkv`` then ``pool_attention``, keeping only qkv for the backward (module docstring).

    Args are those of ``pool_qkv`` and ``pool_attention`` (a (T, H, W) grid with its rel_pos_t for
    video); the tables may instead come from ``rel_pos_tables(q_size, k_size, dtype)``, which
    returns them in grid-axis order ((h, w) or (t, h, w); () for none), when their length depends
    on the pooled grids (then pass None for the tables). ``window`` = (q_window, kv_window): attention
    within windows of the pooled maps (``pool_attention``'s window); ``rel_pos_tables`` then gets the
    windows' sides, the grids the positions are measured on. Returns out (B, heads, Nq, D) and q_size."""
    if rel_pos_tables is None:
        def rel_pos_tables(q_size, k_size, dtype):
            return (rel_pos_h, rel_pos_w) if rel_pos_t is None else (rel_pos_t, rel_pos_h, rel_pos_w)

    def unfused():
        q, k, v, q_size, k_size = pool_qkv(qkv, hw_shape, num_heads, pool_weights, norm_weights,
                                           norm_biases, stride_q, stride_kv,
                                           has_cls_token=has_cls_token, eps=eps)
        win = check_window(window, q_size, k_size, has_cls_token)
        th, tw, tt = _split_tables(rel_pos_tables(*_rel_grids(q_size, k_size, win), q.dtype))
        return pool_attention(q, k, v, th, tw, q_size, k_size, rel_pos_t=tt, has_cls_token=has_cls_token,
                              residual_pooling=residual_pooling, scale=scale, window=window), q_size

    params = (*pool_weights, *norm_weights, *norm_biases)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (qkv, *params))
    if not needs_grad or resolve_backend(qkv.device) == "torch":
        return unfused()
    hw, strides, q_size, k_size, sp = check_and_geometry(qkv, hw_shape, num_heads, pool_weights,
                                                         norm_weights, norm_biases, stride_q,
                                                         stride_kv, has_cls_token, eps)
    win = check_window(window, q_size, k_size, sp)
    rel_q, rel_k = _rel_grids(q_size, k_size, win)
    th, tw, tt = _split_tables(rel_pos_tables(rel_q, rel_k, qkv.dtype))
    D = qkv.shape[-1] // (3 * num_heads)
    check_tables(th, tw, rel_q, rel_k, D, qkv.dtype, qkv.device, tt)
    require_triton_attention(qkv.dtype, D, qkv.device)
    scale = float(D ** -0.5 if scale is None else scale)
    qkv_args = (list(hw), num_heads, [*strides[0], *strides[1]], bool(sp), float(eps))
    attn_args = (list(q_size), list(k_size), bool(sp), bool(residual_pooling), scale)
    out = PoolQKVAttention.apply(qkv, *params, th, tw, tt, qkv_args, attn_args, None if win is None else list(win))
    return out, q_size


def _rel_grids(q_size, k_size, window):
    """The grids relative positions are measured on: the maps, or the windows' sides."""
    return (tuple(q_size), tuple(k_size)) if window is None else (window[:2], window[2:])
