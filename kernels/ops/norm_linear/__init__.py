"""A LayerNorm folded into the Linear that reads it: MViTv2's norm1 -> qkv (and the width-change
shortcut proj) and norm2 -> fc1.

    y = norm_linear(x, norm_weight, norm_bias, weight, bias=None, eps=1e-6)
    # y = F.linear(F.layer_norm(x, (K,), norm_weight, norm_bias, eps), weight, bias)

Two implementations, chosen by ``fastmvit.use_backend`` through ``resolve_backend(x.device)``:

- "torch": exactly that eager code (autocast applies to it as to the two ops); float64 too.
- "triton": the custom op ``fastmvit::norm_linear`` and its backward ``fastmvit::norm_linear_backward``
  (fake implementations and autograd registered: one op each way under ``torch.compile``).

Design (the Triton path)
------------------------
Forward: one GEMM launch. A program computes its rows' mean and variance from x (a first pass
over K), stores them (first column tile only), then runs the GEMM with the normalisation as the
prologue of every x tile, rounded to the GEMM dtype where eager rounds the LayerNorm's output. The
normed x never reaches memory: eager writes it and reads it back (2 M K E bytes) in a separate
LayerNorm launch.

Backward: d(normed x) = dy @ W (gelu_linear's dh kernel), then torch's LayerNorm backward from x,
mean and rstd (dx, d norm_weight, d norm_bias), then dW = dy^T @ LayerNorm(x) and db = sum dy in
one reduction (gelu_linear's dW kernel with the LayerNorm prologue: the normed x recomputed in
registers; db comes free with dW, where eager reads dy once more for it).

Saved for backward: x, mean and rstd (x is the norm's input, which eager keeps too), not the
normed x (M K E bytes per call less). The bytes of every launch, as stated to the cost model:
``triton_impl``'s ``_fwd_states`` and gelu_linear's ``_dh_states`` / ``_dw_states``.

Dtypes: x float32, float16 or bfloat16; the norm's and the Linear's parameters in x's dtype or
float32. y comes out in the GEMM dtype: the autocast dtype inside an autocast region (as eager's
Linear there), x's otherwise. mean and rstd are float32.
"""
from __future__ import annotations

from typing import Optional

import torch

from ...args import check_3d, shape_of
from ...backend import require_triton_runnable, resolve_backend
from .op import NormLinearKeepInput  # (importing op registers the custom ops)
from .torch_impl import norm_linear_torch

__all__ = ["norm_linear", "norm_linear_torch"]


def _check(x, norm_weight, norm_bias, weight, bias) -> None:
    """Raise ValueError / TypeError naming the problem."""
    check_3d(x, "x", "a 3-D tensor (B, T, K)", "norm_linear")
    K = x.shape[-1]
    for name, t in (("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (K,):
            raise ValueError(f"norm_linear: {name} must be (K,) = ({K},), got {shape_of(t)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != K:
        raise ValueError(f"norm_linear: weight must be (N, K) with K = {K}, got {shape_of(weight)}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],)):
        raise ValueError(f"norm_linear: bias must be (N,) = ({weight.shape[0]},), got {shape_of(bias)}")
    for name, t in (("norm_weight", norm_weight), ("norm_bias", norm_bias), ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f"norm_linear: {name} is on {t.device} but x is on {x.device}")
        if t.dtype not in (x.dtype, torch.float32):
            raise TypeError(f"norm_linear: {name} dtype {t.dtype} must be x's ({x.dtype}) or float32")


def _gemm_dtype(x: torch.Tensor) -> torch.dtype:
    """The autocast dtype inside an autocast region for x's device, else x's dtype."""
    kind = x.device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


def norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor] = None, eps: float = 1e-6, *, keep_input: bool = False):
    """``F.linear(F.layer_norm(x, (K,), norm_weight, norm_bias, eps), weight, bias)``.

    Args:
        x: (B, T, K) float32 / float16 / bfloat16 (float64 on the torch backend), any strides.
        norm_weight, norm_bias: (K,); weight: (N, K); bias: (N,) or None; in x's dtype or float32.
        keep_input: also return x, to use in its place downstream (the residual stream): the
            gradient coming back through it is added to dx inside the backward's norm kernel (no
            separate add). Any other use of x must go through the returned tensor too.
    Returns:
        y (B, T, N), contiguous, in the GEMM dtype (module docstring); with keep_input (y, x).
        Differentiable in x and every parameter.
    """
    _check(x, norm_weight, norm_bias, weight, bias)
    if resolve_backend(x.device) == "torch":
        y = norm_linear_torch(x, norm_weight, norm_bias, weight, bias, eps)
        return (y, x) if keep_input else y
    require_triton_runnable(x.device, "norm_linear", x.dtype)
    if keep_input:
        return NormLinearKeepInput.apply(x, norm_weight, norm_bias, weight, bias, float(eps), _gemm_dtype(x))
    y, _, _ = torch.ops.fastmvit.norm_linear(x, norm_weight, norm_bias, weight, bias, float(eps), _gemm_dtype(x))
    return y
