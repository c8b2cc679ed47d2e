"""Shared numerics for the equivalence tests.

Every comparison is against float64 math on the same (random, never zero) inputs. A fused result
must be (1) close to float64 within the dtype's tolerance and (2) at most twice as far from float64
as the eager torch computation in the same dtype (the FlashAttention test convention).
"""
from __future__ import annotations

import torch

# Relative/absolute tolerances against float64, per dtype. float32 in the interpreter is IEEE;
# on a GPU, float32 tl.dot may use TF32 (use GPU_TF32_TOLERANCE there).
TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
}
GPU_TF32_TOLERANCE = dict(rtol=3e-4, atol=3e-4)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def max_error(x: torch.Tensor, exact: torch.Tensor) -> float:
    return (x.double() - exact.double()).abs().max().item()


def assert_matches_float64(fused: torch.Tensor, eager: torch.Tensor | None, exact: torch.Tensor,
                           name: str = "output", tolerance: dict | None = None) -> None:
    """Assert `fused` is close to the float64 `exact` result, and, when `eager` (the plain torch
    result in the fused result's dtype) is given, at most twice as far from it as `eager` is.

    Tolerances scale with the magnitude of `exact`: atol is taken relative to max(1, max|exact|)."""
    assert fused.shape == exact.shape, f"{name}: shape {tuple(fused.shape)} != {tuple(exact.shape)}"
    assert torch.isfinite(fused).all(), f"{name}: non-finite values"
    tol = tolerance or TOLERANCE[fused.dtype]
    scale = max(1.0, exact.abs().max().item())
    err = max_error(fused, exact)
    bound = tol["atol"] * scale
    rel = ((fused.double() - exact).abs() - tol["rtol"] * exact.abs()).max().item()
    assert rel <= bound, (
        f"{name} ({fused.dtype}): max|fused - float64| = {err:.3e} exceeds "
        f"rtol={tol['rtol']}, atol={tol['atol']} * {scale:.3g}")
    if eager is not None:
        eager_err = max_error(eager, exact)
        assert err <= 2 * eager_err + 1e-5 * scale, (
            f"{name} ({fused.dtype}): fused error {err:.3e} is more than twice the eager error "
            f"{eager_err:.3e} (both against float64)")


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill a tensor with NaN (or the dtype's max for integers) so unwritten outputs show up."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(torch.iinfo(t.dtype).max)
