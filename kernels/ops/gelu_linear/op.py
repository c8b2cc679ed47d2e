"""The custom ops of `gelu_linear`'s Triton path: ``fastmvit::gelu_linear`` and
``fastmvit::gelu_linear_backward``, their fake implementations (meta tensors, torch.compile) and the
autograd that ties them. Registered on import; the kernels (triton) are imported on first call."""
from __future__ import annotations

from typing import Optional

import torch

from ...backend import autotune_on
from ...traffic import implementation


def _scale(sample_scale):
    return None if sample_scale is None else sample_scale.contiguous()


@torch.library.custom_op("fastmvit::gelu_linear", mutates_args=())
@implementation("fastmvit::gelu_linear")
def _gelu_linear_op(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    residual: Optional[torch.Tensor], sample_scale: Optional[torch.Tensor],
                    gelu: bool = True) -> torch.Tensor:
    """y (B, T, N) contiguous, in the residual's dtype, else h's."""
    from .triton_impl import forward
    return forward(h, weight, bias, residual, _scale(sample_scale), autotune=autotune_on(h.device), gelu=gelu)


@_gelu_linear_op.register_fake
def _(h, weight, bias, residual, sample_scale, gelu=True):
    B, T, _ = h.shape
    return h.new_empty(B, T, weight.shape[0], dtype=h.dtype if residual is None else residual.dtype)


@torch.library.custom_op("fastmvit::gelu_linear_backward", mutates_args=())
@implementation("fastmvit::gelu_linear_backward")
def _gelu_linear_backward_op(dy: torch.Tensor, h: torch.Tensor, weight: torch.Tensor,
                             bias: Optional[torch.Tensor], sample_scale: Optional[torch.Tensor],
                             gelu: bool = True) -> list[torch.Tensor]:
    """[dh (B, T, K) contiguous in h's dtype, dW (N, K) in weight's dtype] + [db (N,) in bias's
    dtype] when there is a bias (bias is passed for its presence and dtype only)."""
    from .triton_impl import backward
    dh, dw, db = backward(dy, h, weight, bias is not None,
                          None if bias is None else bias.dtype, _scale(sample_scale),
                          autotune=autotune_on(h.device), gelu=gelu)
    return [dh, dw] if db is None else [dh, dw, db]


@_gelu_linear_backward_op.register_fake
def _(dy, h, weight, bias, sample_scale, gelu=True):
    grads = [h.new_empty(h.shape), weight.new_empty(weight.shape)]
    if bias is not None:
        grads.append(bias.new_empty(bias.shape))
    return grads


def _setup_context(ctx, inputs, output):
    h, weight, bias, residual, sample_scale, gelu = inputs
    ctx.save_for_backward(h, weight, bias, sample_scale)   # not gelu(h), not y; bias for its dtype
    ctx.has_residual = residual is not None
    ctx.gelu = gelu


def _backward(ctx, dy):
    h, weight, bias, sample_scale = ctx.saved_tensors
    grads = _gelu_linear_backward_op(dy, h, weight, bias, sample_scale, ctx.gelu)
    db = grads[2] if bias is not None else None
    return grads[0], grads[1], db, (dy if ctx.has_residual else None), None, None


_gelu_linear_op.register_autograd(_backward, setup_context=_setup_context)
