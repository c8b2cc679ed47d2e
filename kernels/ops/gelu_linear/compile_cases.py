"""`gelu_linear`'s compile cases for tools/gpu_compile.py: every launch config of the op."""
from __future__ import annotations

from typing import Callable, Iterable

import torch

EXPECTS_TENSOR_CORES = True   # tools/gpu_compile.py checks HMMA / HGMMA in every GEMM

# MViTv2 stage widths C (tiny ... huge); the MLP tail has K = 4 C and N = C. Tokens and batch are
# runtime values (not specialised), so M only picks a grid: one per case.
_WIDTHS = (96, 144, 192, 288, 384, 576, 768, 1152)


# sample: (C, dtype, residual + sample_scale, weight in float32) - every kernel and config, fp16 and
# bf16, K 384 (dW over row splits + the sum kernel) and 3072 (49 tokens: one split, dW written
# directly), with and without the epilogue extras, the autocast case, and float32's configs.
_SAMPLE = {(96, torch.float16, True, False), (96, torch.bfloat16, True, True),
           (768, torch.bfloat16, False, False), (96, torch.float32, True, False)}
_SAMPLE_NO_GELU = {(192, torch.bfloat16, True, False), (768, torch.float16, True, True)}


def cases(sample: bool = False) -> Iterable[tuple[str, Callable[[], None]]]:
    """(label, thunk) pairs for tools/gpu_compile.py: each thunk calls the autotuned launchers
    (forward, then backward) with CPU tensors at one MViTv2 MLP shape (B 8, 784 tokens, or 49 for
    C >= 768; K = 4 C, N = C), so a stand-in driver compiles every config the op can launch.

    sample: the representative subset the test suite compiles (_SAMPLE).

    float32 has its own small configs (exact IEEE tl.dot: FMAs, no tensor cores); its h is already
    float32, so there is no separate autocast case for it."""
    from .triton_impl import backward, forward

    def thunk(C, dtype, extras, fp32_weight, gelu=True):
        def run():
            # the stage-4 widths at their 49 tokens: few rows, so dW is one split written directly
            B, T = 8, (49 if C >= 768 else 784)
            K = 4 * C if gelu else C                 # the MLP tail, or the attention projection
            h = torch.empty(B, T, K, dtype=dtype)
            pdtype = torch.float32 if fp32_weight else dtype
            w = torch.empty(C, K, dtype=pdtype)
            b = torch.empty(C, dtype=pdtype)
            # the autocast case: float32 master weights and a float32 residual stream (y float32)
            res = torch.empty(B, T, C, dtype=pdtype) if extras else None
            scale = torch.empty(B, dtype=torch.float32) if extras else None
            y = forward(h, w, b, res, scale, gelu=gelu)
            backward(torch.empty_like(y), h, w, True, pdtype, scale, gelu=gelu)
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
    # the attention projection (gelu=False): K = N = C, always with the residual
    for C in _WIDTHS:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            for fp32_weight in ((False, True) if dtype != torch.float32 else (False,)):
                if sample and (C, dtype, True, fp32_weight) not in _SAMPLE_NO_GELU:
                    continue
                label = (f"linear (gelu off) K{C} N{C} {str(dtype).removeprefix('torch.')} +residual+scale"
                         f"{' fp32-weight fp32-residual' if fp32_weight else ''}")
                yield label, thunk(C, dtype, True, fp32_weight, gelu=False)
