"""The custom ops of `pool_qkv`'s Triton path: ``fastmvit::pool_qkv`` and
``fastmvit::pool_qkv_backward``, their fake implementations and the autograd that ties them.
Registered on import; the kernels (triton) are imported on first call."""
from __future__ import annotations

import math

import torch

from ...args import pooled_size
from ...traffic import implementation


def _geometry(qkv, hw, num_heads, w, strides):
    """(q's and k / v's strides, q_size, k_size) for a grid hw of 2 or 3 axes; strides is q's then
    k / v's, one int per axis each."""
    n = len(hw)
    sq, skv = tuple(strides[:n]), tuple(strides[n:])
    kernel = tuple(w.shape[2:])
    return (sq, skv), pooled_size(hw, kernel, sq), pooled_size(hw, kernel, skv)


@torch.library.custom_op("fastmvit::pool_qkv", mutates_args=())
@implementation("fastmvit::pool_qkv")
def _pool_qkv_op(qkv: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
                 gq: torch.Tensor, gk: torch.Tensor, gv: torch.Tensor,
                 bq: torch.Tensor, bk: torch.Tensor, bv: torch.Tensor, hw: list[int], num_heads: int,
                 strides: list[int], has_cls_token: bool, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton_impl import forward
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    ss, q_size, k_size = _geometry(qkv, hw, num_heads, wq, strides)
    c = [p.contiguous() for p in (wq, wk, wv, gq, gk, gv, bq, bk, bv)]
    return forward(qkv, c[0:3], c[3:6], c[6:9], hw, num_heads, ss, q_size, k_size,
                          int(has_cls_token), eps)


@_pool_qkv_op.register_fake
def _(qkv, wq, wk, wv, gq, gk, gv, bq, bk, bv, hw, num_heads, strides, has_cls_token, eps):
    B, N, C = qkv.shape
    D = C // (3 * num_heads)
    _, q_size, k_size = _geometry(qkv, hw, num_heads, wq, strides)
    sp = int(has_cls_token)
    q = qkv.new_empty(B, num_heads, sp + math.prod(q_size), D)
    nk = sp + math.prod(k_size)
    return q, qkv.new_empty(B, num_heads, nk, D), qkv.new_empty(B, num_heads, nk, D)


@torch.library.custom_op("fastmvit::pool_qkv_backward", mutates_args=())
@implementation("fastmvit::pool_qkv_backward")
def _pool_qkv_backward_op(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, qkv: torch.Tensor,
                          wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
                          gq: torch.Tensor, gk: torch.Tensor, gv: torch.Tensor, hw: list[int],
                          num_heads: int, strides: list[int], has_cls_token: bool, eps: float
                          ) -> list[torch.Tensor]:
    """[d(qkv) like qkv, contiguous; then the nine parameter gradients: d wq, d wk, d wv (like the
    conv weights), d gq, d gk, d gv, d bq, d bk, d bv (like the norm weights)]."""
    from .triton_impl import backward
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    ss, q_size, k_size = _geometry(qkv, hw, num_heads, wq, strides)
    c = [p.contiguous() for p in (wq, wk, wv, gq, gk, gv)]
    grads = [g.contiguous() for g in (dq, dk, dv)]
    dqkv, params = backward(grads, qkv, c[0:3], c[3:6], hw, num_heads, ss, q_size, k_size,
                            int(has_cls_token), eps)
    return [dqkv, *params]


@_pool_qkv_backward_op.register_fake
def _(dq, dk, dv, qkv, wq, wk, wv, gq, gk, gv, hw, num_heads, strides, has_cls_token, eps):
    return ([torch.empty(qkv.shape, device=qkv.device, dtype=qkv.dtype)]
            + [torch.empty(wq.shape, device=wq.device, dtype=wq.dtype) for _ in range(3)]
            + [torch.empty(gq.shape, device=gq.device, dtype=gq.dtype) for _ in range(6)])


def _setup_context(ctx, inputs, output):
    qkv, wq, wk, wv, gq, gk, gv, bq, bk, bv, hw, num_heads, strides, has_cls_token, eps = inputs
    ctx.save_for_backward(qkv, wq, wk, wv, gq, gk, gv)
    ctx.args = (hw, num_heads, strides, has_cls_token, eps)


def _backward(ctx, dq, dk, dv):
    qkv, wq, wk, wv, gq, gk, gv = ctx.saved_tensors
    grads = _pool_qkv_backward_op(dq, dk, dv, qkv, wq, wk, wv, gq, gk, gv, *ctx.args)
    return (*grads, None, None, None, None, None)


_pool_qkv_op.register_autograd(_backward, setup_context=_setup_context)
