"""The tail of MViTv2's MLP, fused: GELU, fc2 and the residual add in one GEMM.

    y = gelu_linear(h, weight, bias=None, residual=None, sample_scale=None)
    # y = residual + sample_scale[b] * (gelu(h) @ weight^T + bias)

What it computes: h (B, T, K) is the fc1 output (K = 4 C in MViTv2), gelu the exact erf GELU
(``F.gelu``'s default), weight (N, K) and bias (N,) fc2's parameters, residual (B, T, N) the block's
shortcut and sample_scale (B,) the per-sample stochastic-depth multiplier (the keep mask divided by
the keep probability; 0 drops a sample). The math is eager's ``F.linear(F.gelu(h), weight, bias)``
then ``residual + out`` or ``residual + out * sample_scale.view(B, 1, 1)`` (the product in the
scale's dtype, float32 under autocast, rounded once).

Two implementations, chosen by ``fastmvit.use_backend`` through ``resolve_backend(h.device)``:

- "torch": exactly that eager code, autograd by torch; the CPU path of the model, float64 too.
- "triton": the custom op ``fastmvit::gelu_linear`` (fake implementation and autograd registered,
  the backward being the custom op ``fastmvit::gelu_linear_backward``), so
  ``torch.compile(fullgraph=True)`` sees one op each way. Kernels in ``triton_impl.py``. CPU
  tensors need TRITON_INTERPRET=1; on the meta device the fake implementations run (the cost model
  counts the op that way).

Design (the Triton path)
------------------------
Forward: one GEMM launch, tile BLOCK_M rows x BLOCK_N output columns, looping over K in BLOCK_K
steps. The GELU is the GEMM's prologue: each h tile is upcast to float32, put through gelu and
rounded to h's dtype in registers, just where eager rounds gelu's output, then fed to tl.dot (tensor
cores for fp16 / bf16, exact IEEE float32 otherwise) with float32 accumulation. The weight is cast to
h's dtype in registers after loading (float32 master weights under autocast: no cast kernel). The
epilogue adds the bias, multiplies by the row's sample scale, adds the residual, stores y once.

Backward: dh = ((dy @ W) * s[b]) * gelu'(h), gelu'(x) = Phi(x) + x phi(x) in float32: one GEMM over
N with the gelu' in its epilogue (it reads h; dy @ W is never written). dW = g^T @ gelu(h) with
g = dy * s[b] is a reduction over the M = B * T rows (up to ~200k) into a small (N, K) matrix (as
little as 96 x 384): the rows are split into S chunks so that N tiles x K tiles x S ~ 132 programs
(one wave of 132 SMs), each writing a float32 partial, summed over S in a fixed order by a tiny
kernel, db's partials in the same launch (no atomics: bitwise repeatable); when the tiles alone
fill the GPU (few rows, e.g. 49 tokens at stage 4) S is 1 and the kernel writes dW itself, no
partials. db = sum of g over rows comes out of the same kernel (its first K tile's programs).
gelu(h) is recomputed from h in the dW kernel. d residual is dy itself.

``gelu=False`` runs the same three kernels without the GELU (the attention projection: dh is
then dy @ W, h not read). The kernels' PROLOGUE constexpr also has a LayerNorm prologue, which
``norm_linear`` uses: one GEMM, three prologues, written once.

Memory traffic (E = element size of h; M = B * T): the fused forward reads h and the residual and
writes y once (1 launch) where eager also writes and re-reads gelu(h) and the Linear's output; the
backward reads dy and h in the dh GEMM and again in the dW GEMM (the second read may hit L2), and
with S > 1 writes the float32 dW partials once and reads them back once. Each launch's bytes, as
stated to the cost model: ``triton_impl``'s ``_*_states``; fused against eager at the MViTv2-T/S
MLP shapes: ``benchmarks/bench_gelu_linear.py``.

Saved for backward: h, weight and sample_scale only (not gelu(h), not y). Eager saves gelu(h) as
well (the addmm input) and h (for gelu_backward): M K E more activation memory per block.

Dtypes: h float32, float16 or bfloat16 (float64 on the torch backend). weight and bias in h's dtype
or float32 (cast in registers); their gradients come back in their own dtypes. residual in h's dtype
or float32 (the residual stream under autocast stays float32, as eager's ``x + out`` promotes); y,
contiguous, in the residual's dtype (h's without one), and dy is read in that dtype (rounded to h's
in registers before the GEMMs, as eager's add backward casts it). sample_scale any floating dtype, non-differentiable, only with a
residual (stochastic depth drops the residual branch, never the shortcut).
"""

from __future__ import annotations

from typing import Optional

import torch

from ...args import check_3d, shape_of
from ...backend import require_triton_runnable, resolve_backend
from . import op as _op  # noqa: F401  (registers the custom ops)
from .torch_impl import gelu_linear_torch

__all__ = ["gelu_linear", "gelu_linear_torch"]


def _check(h, weight, bias, residual, sample_scale) -> None:
    """Raise ValueError / TypeError naming the problem."""
    check_3d(h, "h", "a 3-D tensor (B, T, K)", "gelu_linear")
    B, T, K = h.shape
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"gelu_linear: weight must be a 2-D tensor (N, K), got {shape_of(weight)}")
    N = weight.shape[0]
    if weight.shape[1] != K:
        raise ValueError(f"gelu_linear: weight is {tuple(weight.shape)} = (N, K) but h has K = {K} "
                         f"features (h is {tuple(h.shape)})")
    named = {"weight": weight}
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (N,):
            raise ValueError(f"gelu_linear: bias must be (N,) = ({N},), got {shape_of(bias)}")
        named["bias"] = bias
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or tuple(residual.shape) != (B, T, N):
            raise ValueError(f"gelu_linear: residual must be (B, T, N) = {(B, T, N)}, got {shape_of(residual)}")
        named["residual"] = residual
    if sample_scale is not None:
        if residual is None:
            raise ValueError("gelu_linear: sample_scale needs a residual (stochastic depth scales the "
                             "branch added to the shortcut)")
        if not isinstance(sample_scale, torch.Tensor) or tuple(sample_scale.shape) != (B,):
            raise ValueError(f"gelu_linear: sample_scale must be (B,) = ({B},), got {shape_of(sample_scale)}")
        if not sample_scale.is_floating_point():
            raise TypeError(f"gelu_linear: sample_scale must be floating point, got {sample_scale.dtype}")
        named["sample_scale"] = sample_scale
    for name, t in named.items():
        if t.device != h.device:
            raise ValueError(f"gelu_linear: {name} is on {t.device} but h is on {h.device}")
    for name in ("weight", "bias"):
        if name in named and named[name].dtype not in (h.dtype, torch.float32):
            raise TypeError(f"gelu_linear: {name} dtype {named[name].dtype} must be h's ({h.dtype}) "
                            f"or float32")
    if residual is not None and residual.dtype not in (h.dtype, torch.float32):
        raise TypeError(f"gelu_linear: residual dtype {residual.dtype} must be h's ({h.dtype}) or "
                        f"float32")


def gelu_linear(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                residual: Optional[torch.Tensor] = None,
                sample_scale: Optional[torch.Tensor] = None, *, gelu: bool = True) -> torch.Tensor:
    """residual + sample_scale[b] * (gelu(h) @ weight^T + bias), gelu the exact erf GELU.

    ``gelu=False`` drops the GELU: a Linear with the bias, stochastic depth and the residual add
    in its epilogue (the model's attention projection, ``x + drop_path(proj(a))``).

    Args:
        h: (B, T, K) float32 / float16 / bfloat16 (float64 on the torch backend), any strides.
        weight: (N, K) in h's dtype or float32. bias: (N,) likewise, or None.
        residual: (B, T, N) in h's dtype or float32, or None.
        sample_scale: (B,) floating, or None; only with residual; gets no gradient.
    Returns:
        y (B, T, N), contiguous, in the residual's dtype (h's without one). Differentiable in h, weight, bias and residual.
    """
    _check(h, weight, bias, residual, sample_scale)
    if resolve_backend(h.device) == "torch":
        return gelu_linear_torch(h, weight, bias, residual, sample_scale, gelu)
    require_triton_runnable(h.device, "gelu_linear", h.dtype)
    return torch.ops.fastmvit.gelu_linear(h, weight, bias, residual, sample_scale, bool(gelu))
