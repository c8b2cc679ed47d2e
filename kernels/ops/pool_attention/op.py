"""The torch custom ops around the Triton kernels: `fastmvit::pool_attention` (forward: out, lse)
and `fastmvit::pool_attention_backward`, with fake implementations (meta tensors, torch.compile)
and autograd. Registered on import; the kernels (triton) are imported on first call.

custom_op (not triton_op + wrap_triton): it works under torch.compile on CPU in the interpreter
(triton_op + wrap_triton did not: it reads the data pointer of a FakeTensor there), and the op stays one node in the graph (no graph break).
"""
from __future__ import annotations

from typing import Optional

import torch

from ...backend import autotune_on
from ...traffic import implementation


@torch.library.custom_op("fastmvit::pool_attention", mutates_args=())
@implementation("fastmvit::pool_attention")
def pool_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       rel_pos_h: Optional[torch.Tensor], rel_pos_w: Optional[torch.Tensor],
                       q_size: list[int], k_size: list[int], has_cls_token: bool,
                       residual_pooling: bool, scale: float, rel_pos_t: Optional[torch.Tensor] = None,
                       window: Optional[list[int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns out (B, H, Nq, D), a view of a (B, Nq, H, D) buffer, and lse (B, H, Nq) float32.
    window: None, or [wqh, wqw, wkh, wkw] (the maps' windows)."""
    from .triton_impl import forward
    return forward(q, k, v, rel_pos_h, rel_pos_w, tuple(q_size), tuple(k_size), int(has_cls_token),
                   residual_pooling, scale, autotune=autotune_on(q.device), rel_pos_t=rel_pos_t,
                   window=None if window is None else tuple(window))


@pool_attention_fwd.register_fake
def _(q, k, v, rel_pos_h, rel_pos_w, q_size, k_size, has_cls_token, residual_pooling, scale, rel_pos_t=None,
      window=None):
    B, H, Nq, D = q.shape
    out = q.new_empty(B, Nq, H, D).transpose(1, 2)
    return out, q.new_empty(B, H, Nq, dtype=torch.float32)


@torch.library.custom_op("fastmvit::pool_attention_backward", mutates_args=())
@implementation("fastmvit::pool_attention_backward")
def pool_attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       rel_pos_h: Optional[torch.Tensor], rel_pos_w: Optional[torch.Tensor],
                       lse: torch.Tensor, q_size: list[int], k_size: list[int],
                       has_cls_token: bool, residual_pooling: bool, scale: float,
                       rel_pos_t: Optional[torch.Tensor] = None,
                       window: Optional[list[int]] = None) -> list[torch.Tensor]:
    """Returns [dq, dk, dv] + [d_rel_pos_h, d_rel_pos_w] when there are tables (+ [d_rel_pos_t]
    with a time table)."""
    from .triton_impl import backward
    grads = backward(dout, q, k, v, rel_pos_h, rel_pos_w, lse, tuple(q_size), tuple(k_size),
                     int(has_cls_token), residual_pooling, scale, autotune=autotune_on(q.device), rel_pos_t=rel_pos_t,
                     window=None if window is None else tuple(window))
    return [g for g in grads if g is not None]


@pool_attention_bwd.register_fake
def _(dout, q, k, v, rel_pos_h, rel_pos_w, lse, q_size, k_size, has_cls_token, residual_pooling, scale,
      rel_pos_t=None, window=None):
    like = [q, k, v] + ([rel_pos_h, rel_pos_w] if rel_pos_h is not None else []) \
        + ([rel_pos_t] if rel_pos_t is not None else [])
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in like]


def _setup_context(ctx, inputs, output):
    q, k, v, rel_pos_h, rel_pos_w, q_size, k_size, has_cls_token, residual_pooling, scale, rel_pos_t, window = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, rel_pos_h, rel_pos_w, rel_pos_t, lse)   # not out: see the fwd kernel's BWD_PRE
    ctx.args = (q_size, k_size, has_cls_token, residual_pooling, scale)
    ctx.window = window
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, dlse):
    q, k, v, rel_pos_h, rel_pos_w, rel_pos_t, lse = ctx.saved_tensors
    grads = torch.ops.fastmvit.pool_attention_backward(dout, q, k, v, rel_pos_h, rel_pos_w, lse,
                                                       *ctx.args, rel_pos_t, ctx.window)
    d_th, d_tw = (grads[3], grads[4]) if rel_pos_h is not None else (None, None)
    d_tt = grads[5] if rel_pos_t is not None else None
    return grads[0], grads[1], grads[2], d_th, d_tw, None, None, None, None, None, d_tt, None


pool_attention_fwd.register_autograd(_backward, setup_context=_setup_context)
