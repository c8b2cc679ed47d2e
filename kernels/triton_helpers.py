"""What the ops' Triton code shares: @triton.jit helpers, the triton version, the one allocator.

Imports triton: only the ops' ``triton_impl`` modules import this (importing ``fastmvit.kernels``
does not need triton).
"""
import torch
import triton
import triton.language as tl

# (major, minor) of the triton in use. Its compiler decides what spills, so a launch config that is
# clean under one version may spill under another: the ops prune per version (see gelu_linear_triton).
TRITON_VERSION = tuple(int(part) for part in triton.__version__.split(".")[:2])


@triton.jit
def mma(a, b, acc, FP32: tl.constexpr):
    """acc + a @ b, float32 accumulation. float32 operands: exact IEEE products (no TF32, which a
    float32 tl.dot uses by default on a GPU); half operands: tensor cores."""
    if FP32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


def empty(*shape, dtype, device) -> torch.Tensor:
    """Every buffer a launcher allocates, outputs and scratch alike, comes from here (the launchers
    call it as ``helpers.empty``), so a test can poison them all with one patch."""
    return torch.empty(*shape, dtype=dtype, device=device)
