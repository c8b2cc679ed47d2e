"""The custom ops of `pool_qkv`'s Triton path: ``fastmvit::pool_qkv`` and
``fastmvit::pool_qkv_backward``, their fake implementations and the autograd that ties them.
Registered on import; the kernels (triton) are imported on first call."""
from __future__ import annotations

import torch

from ...args import pooled_size


def _geometry(qkv, hw, num_heads, w, strides):
    sq, skv = (strides[0], strides[1]), (strides[2], strides[3])
    kernel = tuple(w.shape[-2:])
    return (sq, skv), pooled_size(hw, kernel, sq), pooled_size(hw, kernel, skv)


@torch.library.custom_op("fastmvit::pool_qkv", mutates_args=())
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
    q = qkv.new_empty(B, num_heads, sp + q_size[0] * q_size[1], D)
    nk = sp + k_size[0] * k_size[1]
    return q, qkv.new_empty(B, num_heads, nk, D), qkv.new_empty(B, num_heads, nk, D)


@torch.library.custom_op("fastmvit::pool_qkv_backward", mutates_args=())
def _pool_qkv_backward_op(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, qkv: torch.Tensor,
                          wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
                          gq: torch.Tensor, gk: torch.Tensor, gv: torch.Tensor, hw: list[int],
                          num_heads: int, strides: list[int], has_cls_token: bool, eps: float
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(qkv) like qkv, contiguous; float32 (3, kh * kw + 2, D): d(conv weight) per tap, then
    d(norm weight), d(norm bias), for q, k, v)."""
    from .triton_impl import backward
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    ss, q_size, k_size = _geometry(qkv, hw, num_heads, wq, strides)
    c = [p.contiguous() for p in (wq, wk, wv, gq, gk, gv)]
    grads = [g.contiguous() for g in (dq, dk, dv)]
    return backward(grads, qkv, c[0:3], c[3:6], hw, num_heads, ss, q_size, k_size,
                           int(has_cls_token), eps)


@_pool_qkv_backward_op.register_fake
def _(dq, dk, dv, qkv, wq, wk, wv, gq, gk, gv, hw, num_heads, strides, has_cls_token, eps):
    D = wq.shape[0]
    taps = wq.shape[-2] * wq.shape[-1]
    return (torch.empty(qkv.shape, device=qkv.device, dtype=qkv.dtype),
            qkv.new_empty(3, taps + 2, D, dtype=torch.float32))


def param_grads(sums: torch.Tensor, wq: torch.Tensor, gq: torch.Tensor):
    """The parameter gradients out of ``pool_qkv_backward``'s float32 sums (3, kh * kw + 2, D):
    conv weights (3, D, 1, kh, kw) in wq's dtype, norm weights and biases (3, D) in gq's."""
    taps = wq.shape[-2] * wq.shape[-1]
    dw = sums[:, :taps].transpose(1, 2).reshape(3, *wq.shape).to(wq.dtype)
    return dw, sums[:, taps].to(gq.dtype), sums[:, taps + 1].to(gq.dtype)


def _setup_context(ctx, inputs, output):
    qkv, wq, wk, wv, gq, gk, gv, bq, bk, bv, hw, num_heads, strides, has_cls_token, eps = inputs
    ctx.save_for_backward(qkv, wq, wk, wv, gq, gk, gv)
    ctx.args = (hw, num_heads, strides, has_cls_token, eps)


def _backward(ctx, dq, dk, dv):
    qkv, wq, wk, wv, gq, gk, gv = ctx.saved_tensors
    dqkv, sums = _pool_qkv_backward_op(dq, dk, dv, qkv, wq, wk, wv, gq, gk, gv, *ctx.args)
    dw, dg, db = param_grads(sums, wq, gq)
    return (dqkv, dw[0], dw[1], dw[2], dg[0], dg[1], dg[2], db[0], db[1], db[2],
            None, None, None, None, None)


_pool_qkv_op.register_autograd(_backward, setup_context=_setup_context)
