"""The custom ops of `max_pool_tokens`' Triton path: ``fastmvit::max_pool_tokens`` and
``fastmvit::max_pool_tokens_backward``, their fake implementations and the autograd that ties them.
Registered on import; the kernels (triton) are imported on first call."""
from __future__ import annotations

import math

import torch

from ...args import pooled_size
from ...traffic import implementation


@torch.library.custom_op("fastmvit::max_pool_tokens", mutates_args=())
@implementation("fastmvit::max_pool_tokens")
def _max_pool_tokens_op(x: torch.Tensor, hw: list[int], kernel: list[int], stride: list[int],
                        has_cls_token: bool, need_argmax: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(y (B, sp + H' * W', C) contiguous in x's dtype; argmax uint8 (B, H' * W', C) contiguous, or
    an empty (0,) uint8 tensor when not `need_argmax`). hw (H, W) or (T, H, W)."""
    from .triton_impl import forward
    if x.stride(-1) != 1:
        x = x.contiguous()
    out_hw = pooled_size(hw, kernel, stride)
    return forward(x, tuple(hw), out_hw, tuple(kernel), tuple(stride), int(has_cls_token),
                          need_argmax)


@_max_pool_tokens_op.register_fake
def _(x, hw, kernel, stride, has_cls_token, need_argmax):
    B, N, C = x.shape
    n_out = math.prod(pooled_size(hw, kernel, stride))
    y = x.new_empty(B, int(has_cls_token) + n_out, C)
    arg = x.new_empty(*((B, n_out, C) if need_argmax else (0,)), dtype=torch.uint8)
    return y, arg


@torch.library.custom_op("fastmvit::max_pool_tokens_backward", mutates_args=())
@implementation("fastmvit::max_pool_tokens_backward")
def _max_pool_tokens_backward_op(dy: torch.Tensor, argmax: torch.Tensor, hw: list[int],
                                 kernel: list[int], stride: list[int],
                                 has_cls_token: bool) -> torch.Tensor:
    """dx (B, sp + H * W, C) contiguous in dy's dtype."""
    from .triton_impl import backward
    if dy.stride(-1) != 1:
        dy = dy.contiguous()
    out_hw = pooled_size(hw, kernel, stride)
    return backward(dy, argmax.contiguous(), tuple(hw), out_hw, tuple(kernel), tuple(stride),
                           int(has_cls_token))


@_max_pool_tokens_backward_op.register_fake
def _(dy, argmax, hw, kernel, stride, has_cls_token):
    B, _, C = dy.shape
    return dy.new_empty(B, int(has_cls_token) + math.prod(hw), C)


def _setup_context(ctx, inputs, output):
    x, hw, kernel, stride, has_cls_token, need_argmax = inputs
    _, argmax = output
    ctx.mark_non_differentiable(argmax)
    ctx.set_materialize_grads(False)               # no zero-filled gradient for the argmax
    ctx.save_for_backward(argmax)                  # never x: the argmax is all the backward needs
    ctx.args = (hw, kernel, stride, has_cls_token)
    ctx.had_argmax = need_argmax


def _backward(ctx, dy, _dargmax):
    if not ctx.had_argmax:
        raise RuntimeError("max_pool_tokens: backward through a call made without the argmax "
                           "(need_argmax=False: x did not require grad, or grad mode was off)")
    if dy is None:
        return None, None, None, None, None, None
    (argmax,) = ctx.saved_tensors
    dx = torch.ops.fastmvit.max_pool_tokens_backward(dy, argmax, *ctx.args)
    return dx, None, None, None, None, None


_max_pool_tokens_op.register_autograd(_backward, setup_context=_setup_context)
