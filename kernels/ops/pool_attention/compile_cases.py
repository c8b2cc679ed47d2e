"""`pool_attention`'s compile cases for tools/gpu_compile.py: every launch config of the op."""
from __future__ import annotations

from typing import Callable, Iterable

import torch

EXPECTS_TENSOR_CORES = True   # tools/gpu_compile.py checks HMMA / HGMMA in every kernel

_SAMPLE = {(96, torch.float16, 0, (56, 56), (14, 14)), (96, torch.bfloat16, 1, (28, 28), (28, 28)),
           (72, torch.float16, 1, (14, 14), (28, 28)), (72, torch.bfloat16, 0, (7, 7), (7, 7))}


def cases(sample: bool = False) -> Iterable[tuple[str, Callable[[], None]]]:
    """(label, thunk) pairs for tools/gpu_compile.py: each thunk calls the autotuned launchers
    (forward, then the three backward kernels) at one MViTv2 attention shape with CPU tensors, so
    a stand-in driver compiles every config the op can launch. B = 1, the real heads / N / D.

    sample: the representative subset the test suite compiles: each (D, dtype) once, class token
    or not alternating, over four grids whose padded sides cover 8 to 64."""
    from .triton_impl import backward, forward
    # MViTv2-T/S at 224 (docs/design.md, "Pooling attention"): (q grid, k grid, heads); head dim 96 (and 72 for large).
    shapes = [((56, 56), (14, 14), 1), ((28, 28), (28, 28), 2), ((28, 28), (14, 14), 2),
              ((14, 14), (28, 28), 4), ((14, 14), (14, 14), 4), ((7, 7), (14, 14), 8), ((7, 7), (7, 7), 8)]
    for D in (96, 72):
        for dtype in (torch.float16, torch.bfloat16):
            for sp in (0, 1):
                for (qh, qw), (kh, kw), heads in shapes:
                    Nq, Nk = qh * qw + sp, kh * kw + sp
                    label = (f"pool_attention D{D} {str(dtype).split('.')[-1]} {'cls' if sp else 'nocls'} "
                             f"q{qh}x{qw} k{kh}x{kw} h{heads}")

                    def thunk(qs=(qh, qw), ks=(kh, kw), heads=heads, Nq=Nq, Nk=Nk, D=D, dtype=dtype, sp=sp):
                        q = torch.empty(1, heads, Nq, D, dtype=dtype)
                        k = torch.empty(1, heads, Nk, D, dtype=dtype)
                        v = torch.empty(1, heads, Nk, D, dtype=dtype)
                        th = torch.empty(2 * max(qs[0], ks[0]) - 1, D, dtype=dtype)
                        tw = torch.empty(2 * max(qs[1], ks[1]) - 1, D, dtype=dtype)
                        scale = D ** -0.5
                        out, lse = forward(q, k, v, th, tw, qs, ks, sp, True, scale)
                        backward(torch.empty_like(out), q, k, v, th, tw, lse, qs, ks, sp, True, scale)

                    if not sample or (D, dtype, sp, (qh, qw), (kh, kw)) in _SAMPLE:
                        yield label, thunk
