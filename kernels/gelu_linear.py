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
  ``torch.compile(fullgraph=True)`` sees one op each way. Kernels in ``gelu_linear_triton.py``. CPU
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
little as 96 x 384): the rows are split into S chunks so that N tiles x K tiles x S ~ 264 programs
(2 waves of 132 SMs), each writing a float32 partial, summed over S in a fixed order by a tiny
kernel (no atomics: bitwise repeatable); when the tiles alone fill the GPU (few rows, e.g. 49 tokens
at stage 4) S is 1 and the kernel writes dW itself, no partials. db = sum of g over rows comes out of the same kernel (its
first K tile's programs). gelu(h) is recomputed from h in the dW kernel. d residual is dy itself.

Memory traffic per call (E = element size of h; M = B * T; weight and bias are small and omitted).
Modeled by fastmvit.costmodel on meta tensors for MViTv2-T stage 1 (B 8, T 3136, K 384, N 96, bf16,
bias, residual and sample_scale; residual a leaf, so both sides pay one AccumulateGrad copy of dy):

- fused forward: read h (M K E) and the residual (M N E), write y (M N E): 1 launch, 29.0 MB.
- eager forward: gelu reads h and writes gelu(h) (2 M K E), addmm reads gelu(h) and writes its
  output, addcmul reads it and the residual and writes y (plus a cast of sample_scale): 4 launches,
  77.1 MB. Fused / eager 0.38x (bias only, no residual: 24.2 against 62.7 MB, 1 launch against 2).
- fused backward: one op: reads dy and h, writes dh and dW, db: 43.5 MB (+ 9.6 MB for the leaf
  copy: 53.1 MB, 2 launches). Eager: mul (g), mm (d gelu(h)), mm (dW), sum (db), gelu_backward
  (reads d gelu(h) and h, writes dh): 130.2 MB, 7 launches; 0.41x.
  Real traffic inside the op is larger than the model's "one read of each input": the dh and dW
  GEMMs each read dy and h (the second read may hit L2), and the dW partials are written and read
  back once (S = 22 splits here: 22 x 96 x 384 x 4 B = 3.2 MB each way): about 74 MB at this
  shape, still 0.57x eager's modeled bytes (which count no L2 hits either).

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

from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

from .args import check_3d, shape_of
from .backend import autotune_on, require_triton_runnable, resolve_backend

__all__ = ["gelu_linear", "gelu_linear_torch", "gpu_compile_cases"]

GPU_COMPILE_EXPECTS_TENSOR_CORES = True   # kernels/gpu_compile.py checks HMMA / HGMMA in every GEMM



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
                sample_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """residual + sample_scale[b] * (gelu(h) @ weight^T + bias), gelu the exact erf GELU.

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
        return gelu_linear_torch(h, weight, bias, residual, sample_scale)
    require_triton_runnable(h.device, "gelu_linear", h.dtype)
    return torch.ops.fastmvit.gelu_linear(h, weight, bias, residual, sample_scale)


def gelu_linear_torch(h, weight, bias=None, residual=None, sample_scale=None) -> torch.Tensor:
    """The plain torch path (the eager model's ops), on checked arguments: the readable math."""
    out = F.linear(F.gelu(h), weight.to(h.dtype), None if bias is None else bias.to(h.dtype))
    if residual is None:
        return out
    if sample_scale is None:
        return residual + out
    if sample_scale.dtype == out.dtype:
        return torch.addcmul(residual, out, sample_scale.view(-1, 1, 1))
    # A float32 scale with half h: multiply in float32, round once (1 / 0.9 is not a bf16 number,
    # so casting the scale first would bias every kept sample by up to 0.4%).
    return residual + (out * sample_scale.view(-1, 1, 1)).to(out.dtype)


# --------------------------------------------------------------------------------------------
# The custom ops of the Triton path
# --------------------------------------------------------------------------------------------

def _scale(sample_scale):
    return None if sample_scale is None else sample_scale.contiguous()


@torch.library.custom_op("fastmvit::gelu_linear", mutates_args=())
def _gelu_linear_op(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    residual: Optional[torch.Tensor], sample_scale: Optional[torch.Tensor]) -> torch.Tensor:
    """y (B, T, N) contiguous, in the residual's dtype, else h's."""
    from .gelu_linear_triton import forward
    return forward(h, weight, bias, residual, _scale(sample_scale), autotune=autotune_on(h.device))


@_gelu_linear_op.register_fake
def _(h, weight, bias, residual, sample_scale):
    B, T, _ = h.shape
    return h.new_empty(B, T, weight.shape[0], dtype=h.dtype if residual is None else residual.dtype)


@torch.library.custom_op("fastmvit::gelu_linear_backward", mutates_args=())
def _gelu_linear_backward_op(dy: torch.Tensor, h: torch.Tensor, weight: torch.Tensor,
                             bias: Optional[torch.Tensor], sample_scale: Optional[torch.Tensor]
                             ) -> list[torch.Tensor]:
    """[dh (B, T, K) contiguous in h's dtype, dW (N, K) in weight's dtype] + [db (N,) in bias's
    dtype] when there is a bias (bias is passed for its presence and dtype only)."""
    from .gelu_linear_triton import backward
    dh, dw, db = backward(dy, h, weight, bias is not None,
                          None if bias is None else bias.dtype, _scale(sample_scale),
                          autotune=autotune_on(h.device))
    return [dh, dw] if db is None else [dh, dw, db]


@_gelu_linear_backward_op.register_fake
def _(dy, h, weight, bias, sample_scale):
    grads = [h.new_empty(h.shape), weight.new_empty(weight.shape)]
    if bias is not None:
        grads.append(bias.new_empty(bias.shape))
    return grads


def _setup_context(ctx, inputs, output):
    h, weight, bias, residual, sample_scale = inputs
    ctx.save_for_backward(h, weight, bias, sample_scale)   # not gelu(h), not y; bias for its dtype
    ctx.has_residual = residual is not None


def _backward(ctx, dy):
    h, weight, bias, sample_scale = ctx.saved_tensors
    grads = _gelu_linear_backward_op(dy, h, weight, bias, sample_scale)
    db = grads[2] if bias is not None else None
    return grads[0], grads[1], db, (dy if ctx.has_residual else None), None


_gelu_linear_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# GPU-compile harness contract (kernels/gpu_compile.py): every launch config of the op
# --------------------------------------------------------------------------------------------

# MViTv2 stage widths C (tiny ... huge); the MLP tail has K = 4 C and N = C. Tokens and batch are
# runtime values (not specialised), so M only picks a grid: one per case.
_WIDTHS = (96, 144, 192, 288, 384, 576, 768, 1152)
# sample: (C, dtype, residual + sample_scale, weight in float32) - every kernel and config, fp16 and
# bf16, K 384 (dW over row splits + the sum kernel) and 3072 (49 tokens: one split, dW written
# directly), with and without the epilogue extras, the autocast case, and float32's configs.
_SAMPLE = {(96, torch.float16, True, False), (96, torch.bfloat16, True, True),
           (768, torch.bfloat16, False, False), (96, torch.float32, True, False)}


def gpu_compile_cases(sample: bool = False) -> Iterable[tuple[str, Callable[[], None]]]:
    """(label, thunk) pairs for kernels/gpu_compile.py: each thunk calls the autotuned launchers
    (forward, then backward) with CPU tensors at one MViTv2 MLP shape (B 8, 784 tokens, or 49 for
    C >= 768; K = 4 C, N = C), so a stand-in driver compiles every config the op can launch.

    sample: the representative subset the test suite compiles (_SAMPLE).

    float32 has its own small configs (exact IEEE tl.dot: FMAs, no tensor cores); its h is already
    float32, so there is no separate autocast case for it."""
    from .gelu_linear_triton import backward, forward

    def thunk(C, dtype, extras, fp32_weight):
        def run():
            # the stage-4 widths at their 49 tokens: few rows, so dW is one split written directly
            B, T = 8, (49 if C >= 768 else 784)
            h = torch.empty(B, T, 4 * C, dtype=dtype)
            pdtype = torch.float32 if fp32_weight else dtype
            w = torch.empty(C, 4 * C, dtype=pdtype)
            b = torch.empty(C, dtype=pdtype)
            # the autocast case: float32 master weights and a float32 residual stream (y float32)
            res = torch.empty(B, T, C, dtype=pdtype) if extras else None
            scale = torch.empty(B, dtype=torch.float32) if extras else None
            y = forward(h, w, b, res, scale)
            backward(torch.empty_like(y), h, w, True, pdtype, scale)
        return run

    for C in _WIDTHS:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            for extras in (False, True):
                for fp32_weight in ((False, True) if dtype != torch.float32 else (False,)):
                    if sample and (C, dtype, extras, fp32_weight) not in _SAMPLE:
                        continue
                    label = (f"gelu_linear K{4 * C} N{C} {str(dtype).removeprefix('torch.')}"
                             f"{' +residual+scale' if extras else ''}{' fp32-weight' if fp32_weight else ''}{' fp32-residual' if fp32_weight and extras else ''}")
                    yield label, thunk(C, dtype, extras, fp32_weight)
