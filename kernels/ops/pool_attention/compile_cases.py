"""`pool_attention`'s compile cases for tools/gpu_compile.py: every launch config of the op."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

EXPECTS_TENSOR_CORES = True   # tools/gpu_compile.py checks HMMA / HGMMA in every kernel

_SAMPLE = {(96, torch.float16, 0, (56, 56), (14, 14)), (96, torch.bfloat16, 1, (28, 28), (28, 28)),
           (72, torch.float16, 1, (14, 14), (28, 28)), (72, torch.bfloat16, 0, (7, 7), (7, 7)),
           (96, torch.bfloat16, 1, (8, 56, 56), (8, 7, 7)), (96, torch.float16, 1, (8, 7, 7), (8, 14, 14)),
           (72, torch.float16, 0, (64, 64), (128, 128), (14, 14, 28, 28))}   # the widest window tables (KH_PAD 32)

# MViTv2-T/S at 224 (docs/design.md, "Pooling attention"): (q grid, k grid, heads); head dim 96 (and 72 for large).
IMAGE_SHAPES = [((56, 56), (14, 14), 1), ((28, 28), (28, 28), 2), ((28, 28), (14, 14), 2),
                ((14, 14), (28, 28), 4), ((14, 14), (14, 14), 4), ((7, 7), (14, 14), 8), ((7, 7), (7, 7), 8)]
# mvit_v2_s at 16 x 224 x 224 (docs/design.md, "The video model"; tests/test_reference_video.py).
VIDEO_SHAPES = [((8, 56, 56), (8, 7, 7), 1), ((8, 28, 28), (8, 14, 14), 2), ((8, 28, 28), (8, 7, 7), 2),
                ((8, 14, 14), (8, 14, 14), 4), ((8, 14, 14), (8, 7, 7), 4), ((8, 7, 7), (8, 14, 14), 8),
                ((8, 7, 7), (8, 7, 7), 8)]

# The detection backbone (tiny / small / base) at 1024 x 1024 (SPEC section 6; tests/test_reference_detection.py):
# window blocks (q map, k map, (q window, kv window) sides, heads) and the global blocks (q map, k map, heads).
# No class token in detection.
DETECTION_WINDOWS = [((256, 256), (64, 64), (56, 56, 14, 14), 1), ((128, 128), (128, 128), (28, 28, 28, 28), 2),
                     ((128, 128), (64, 64), (28, 28, 14, 14), 2), ((64, 64), (128, 128), (14, 14, 28, 28), 4),
                     ((64, 64), (64, 64), (14, 14, 14, 14), 4), ((32, 32), (64, 64), (7, 7, 14, 14), 8),
                     ((32, 32), (32, 32), (7, 7, 7, 7), 8)]
DETECTION_GLOBAL = [((128, 128), (32, 32), 2), ((64, 64), (32, 32), 4), ((32, 32), (32, 32), 8)]


def cases(sample: bool = False) -> Iterable[tuple[str, Callable[[], None]]]:
    """(label, thunk) pairs for tools/gpu_compile.py: each thunk calls the autotuned launchers
    (forward, then the three backward kernels) at one MViTv2 attention shape with CPU tensors, so
    a stand-in driver compiles every config the op can launch. B = 1, the real heads / N / D.
    The image shapes, with the third rel term the video ones, and the detection backbone's window
    and global blocks at 1024 x 1024.

    sample: the representative subset the test suite compiles: each (D, dtype) once, class token
    or not alternating, over four image grids whose padded sides cover 8 to 64, two video grids
    and one detection window."""
    from .triton_impl import backward, forward
    shapes = [(sp, qs, ks, None, heads) for sp in (0, 1) for qs, ks, heads in IMAGE_SHAPES + VIDEO_SHAPES]
    shapes += [(0, qs, ks, None, heads) for qs, ks, heads in DETECTION_GLOBAL]
    shapes += [(0, qs, ks, win, heads) for qs, ks, win, heads in DETECTION_WINDOWS]
    for D in (96, 72):
        for dtype in (torch.float16, torch.bfloat16):
            for sp, qs, ks, win, heads in shapes:
                Nq, Nk = math.prod(qs) + sp, math.prod(ks) + sp
                label = (f"pool_attention D{D} {str(dtype).split('.')[-1]} {'cls' if sp else 'nocls'} "
                         f"q{'x'.join(map(str, qs))} k{'x'.join(map(str, ks))} h{heads}"
                         + (f" window {win[0]}x{win[1]}/{win[2]}x{win[3]}" if win else ""))

                def thunk(qs=qs, ks=ks, win=win, heads=heads, Nq=Nq, Nk=Nk, D=D, dtype=dtype, sp=sp):
                    q = torch.empty(1, heads, Nq, D, dtype=dtype)
                    k = torch.empty(1, heads, Nk, D, dtype=dtype)
                    v = torch.empty(1, heads, Nk, D, dtype=dtype)
                    rel_q, rel_k = (qs, ks) if win is None else (win[:2], win[2:])    # windows: window-local
                    tables = [torch.empty(2 * max(a, b) - 1, D, dtype=dtype) for a, b in zip(rel_q, rel_k)]
                    tt = tables[0] if len(qs) == 3 else None
                    th, tw = tables[-2:]
                    scale = D ** -0.5
                    out, lse = forward(q, k, v, th, tw, qs, ks, sp, True, scale, rel_pos_t=tt, window=win)
                    backward(torch.empty_like(out), q, k, v, th, tw, lse, qs, ks, sp, True, scale, rel_pos_t=tt,
                             window=win)

                key = (D, dtype, sp, qs, ks) if win is None else (D, dtype, sp, qs, ks, win)
                if not sample or key in _SAMPLE:
                    yield label, thunk
