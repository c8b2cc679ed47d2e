"""The custom ops of `norm_linear`'s Triton path: ``fastmvit::norm_linear`` (y, mean, rstd) and
``fastmvit::norm_linear_backward``, their fake implementations and the autograd that ties them.
Registered on import; the kernels (triton) are imported on first call."""
from __future__ import annotations

from typing import Optional

import torch

from ...backend import autotune_on
from ...traffic import implementation


@torch.library.custom_op("fastmvit::norm_linear", mutates_args=())
@implementation("fastmvit::norm_linear")
def _norm_linear_op(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor], eps: float, out_dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y (B, T, N) contiguous in out_dtype, mean (B, T) and rstd (B, T) float32)."""
    from .triton_impl import forward
    return forward(x, norm_weight, norm_bias, weight, bias, eps, out_dtype, autotune=autotune_on(x.device))


@_norm_linear_op.register_fake
def _(x, norm_weight, norm_bias, weight, bias, eps, out_dtype):
    B, T, _ = x.shape
    return (x.new_empty(B, T, weight.shape[0], dtype=out_dtype), x.new_empty(B, T, dtype=torch.float32),
            x.new_empty(B, T, dtype=torch.float32))


@torch.library.custom_op("fastmvit::norm_linear_backward", mutates_args=())
@implementation("fastmvit::norm_linear_backward")
def _norm_linear_backward_op(dy: torch.Tensor, x: torch.Tensor, norm_weight: torch.Tensor,
                             norm_bias: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                             mean: torch.Tensor, rstd: torch.Tensor, eps: float,
                             dres: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
    """[dx like x (+ dres, x's gradient from its other use), d norm_weight, d norm_bias, dW like
    weight] + [db like bias] with a bias."""
    from .triton_impl import backward
    dx, dg, dbeta, dw, db = backward(dy, x, norm_weight, norm_bias, weight, mean, rstd, bias is not None,
                                     None if bias is None else bias.dtype, eps, autotune=autotune_on(x.device),
                                     dres=None if dres is None else dres.contiguous())
    return [dx, dg, dbeta, dw] if db is None else [dx, dg, dbeta, dw, db]


@_norm_linear_backward_op.register_fake
def _(dy, x, norm_weight, norm_bias, weight, bias, mean, rstd, eps, dres=None):
    grads = [torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(norm_weight),
             torch.empty_like(norm_bias), torch.empty_like(weight)]
    return grads + ([torch.empty_like(bias)] if bias is not None else [])


def _save(ctx, x, norm_weight, norm_bias, weight, bias, eps, mean, rstd) -> None:
    """What both autograd wirings keep: x and the parameters, mean and rstd; not the normed x."""
    ctx.save_for_backward(x, norm_weight, norm_bias, weight, bias, mean, rstd)
    ctx.eps = eps
    ctx.set_materialize_grads(False)    # no zero-filled gradients for unused outputs


def _input_grads(ctx, dy, dres=None) -> tuple:
    """(dx, d norm_weight, d norm_bias, dW, db, None, None) from the saved tensors; dres, x's
    gradient from its other use, is added into dx by the backward kernels."""
    x, norm_weight, norm_bias, weight, bias, mean, rstd = ctx.saved_tensors
    grads = _norm_linear_backward_op(dy, x, norm_weight, norm_bias, weight, bias, mean, rstd, ctx.eps, dres)
    db = grads[4] if bias is not None else None
    return grads[0], grads[1], grads[2], grads[3], db, None, None


def _setup_context(ctx, inputs, output):
    x, norm_weight, norm_bias, weight, bias, eps, out_dtype = inputs
    _, mean, rstd = output
    _save(ctx, x, norm_weight, norm_bias, weight, bias, eps, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, dmean, drstd):
    if dy is None:                      # y unused (grads are not materialized)
        return None, None, None, None, None, None, None
    return _input_grads(ctx, dy)


_norm_linear_op.register_autograd(_backward, setup_context=_setup_context)


class NormLinearKeepInput(torch.autograd.Function):
    """``fastmvit::norm_linear`` that also hands x back, for its second use (the block's residual
    stream): the backward then adds that use's gradient into dx inside the norm kernel, where
    autograd would otherwise add the two gradients of x with a separate kernel (read 2, write 1).

    forward(x, norm_weight, norm_bias, weight, bias, eps, out_dtype) -> (y, x as a view)."""

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, weight, bias, eps, out_dtype):
        y, mean, rstd = torch.ops.fastmvit.norm_linear(x, norm_weight, norm_bias, weight, bias, eps, out_dtype)
        _save(ctx, x, norm_weight, norm_bias, weight, bias, eps, mean, rstd)
        return y, x.view_as(x)

    @staticmethod
    def backward(ctx, dy, dres):
        if dy is None:
            return dres, None, None, None, None, None, None
        return _input_grads(ctx, dy, dres)
