"""`norm_linear`'s compile cases for tools/gpu_compile.py: every launch config of the op."""
from __future__ import annotations

from typing import Callable, Iterable

import torch

EXPECTS_TENSOR_CORES = True   # tools/gpu_compile.py checks HMMA / HGMMA in every GEMM

# MViTv2 stage widths C (tiny ... huge); the norm feeds qkv (N = 3 C'), fc1 (N = 4 C) and the
# width-change shortcut proj (N = 2 C). Tokens and batch are runtime values.
_WIDTHS = (96, 144, 192, 288, 384, 576, 768, 1152)
_SAMPLE = {(96, 288, torch.bfloat16, False), (192, 768, torch.float16, True), (768, 2304, torch.float32, False)}


def cases(sample: bool = False) -> Iterable[tuple[str, Callable[[], None]]]:
    """(label, thunk) pairs: each thunk runs the autotuned forward and backward launchers with CPU
    tensors at one MViTv2 shape (B 8, 784 tokens, 49 for C >= 768), half dtypes with and without
    float32 parameters (autocast: float32 x and parameters, a half GEMM), and float32."""
    from .triton_impl import backward, forward

    def thunk(C, N, dtype, fp32_params):
        def run():
            B, T = 8, (49 if C >= 768 else 784)
            xdtype = torch.float32 if fp32_params else dtype
            x = torch.empty(B, T, C, dtype=xdtype)
            g, beta = torch.empty(C, dtype=xdtype), torch.empty(C, dtype=xdtype)
            w, b = torch.empty(N, C, dtype=xdtype), torch.empty(N, dtype=xdtype)
            y, mean, rstd = forward(x, g, beta, w, b, 1e-6, dtype)
            backward(torch.empty_like(y), x, g, beta, w, mean, rstd, True, b.dtype, 1e-6)
        return run

    for C in _WIDTHS:
        for N in (3 * C, 4 * C, 2 * C):
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                for fp32_params in ((False, True) if dtype != torch.float32 else (False,)):
                    if sample and (C, N, dtype, fp32_params) not in _SAMPLE:
                        continue
                    label = (f"norm_linear K{C} N{N} {str(dtype).removeprefix('torch.')}"
                             f"{' autocast (float32 x and parameters)' if fp32_params else ''}")
                    yield label, thunk(C, N, dtype, fp32_params)
