"""The pooling prologue of MViTv2's attention, fused: qkv projection output -> pooled, normed q, k, v.

    q, k, v, q_size, k_size = pool_qkv(qkv, (H, W), num_heads, (w_q, w_k, w_v), (g_q, g_k, g_v),
                                       (b_q, b_k, b_v), stride_q, stride_kv, has_cls_token=True)

What it computes (docs/design.md, "Pooling attention" step 2), for t in q, k, v: split t per head out of the projection output,
take the class token off, pool the (H, W) grid with a depthwise conv (weight (D, 1, kh, kw) shared by
the heads, stride s_t, padding kernel // 2, no bias), put the token back in front, LayerNorm over the
head dim D (the class token is normalised too, eps 1e-6).

Two implementations, chosen by ``fastmvit.use_backend`` through ``resolve_backend(qkv.device)``:

- "torch": plain torch (conv2d + layer_norm), autograd by torch; the CPU path of the model.
- "triton": the custom op ``fastmvit::pool_qkv`` (fake implementation and autograd registered, the
  backward being the custom op ``fastmvit::pool_qkv_backward``), so ``torch.compile(fullgraph=True)``
  sees one op. Kernels in ``triton_impl.py``. CPU tensors need TRITON_INTERPRET=1; on the meta
  device the fake implementations run (the cost model counts the op that way).

Design (the Triton path)
------------------------
Tiling. Rows are flat: row i of t is (b, head, r) with i = (b * heads + head) * N_t + r, which is
also its row in the contiguous (B, heads, N_t, D) output, so tiles never sit half-empty at the end
of a small head (49 rows at stage 4). Forward: one launch, grid (row tiles, 3 for q/k/v). A program
owns BLOCK_M rows x the whole head dim (BLOCK_D = next power of two >= D: LayerNorm needs whole
rows): it reads the KH * KW taps of each row straight out of ``qkv`` (strided, masked at the padding;
the class-token row reads its token), multiplies by the depthwise weight, normalises, stores once.
BLOCK_M * BLOCK_D = 2048 (16 rows at D 96 or 72, 4 warps). Backward: two launches (see
``triton_impl.py``): rows (recompute the pooled rows, LayerNorm backward, weight and norm partial
sums per program, 8 rows per tile, up to ~256 programs each walking TILES_PER_PROG tiles), then
input (the strided conv's input gradient as a gather over the outputs that read each input, fixed
order, no atomics), then params (the per-program partials summed in a fixed order into the nine
parameter gradients, in their dtype and layout: no cast or copy after).

Compiled for sm_80 and sm_90 by ``tools/gpu_compile.py`` (``scripts/kernel_table.py`` prints the
table): no spills, no tensor cores (no matmul).

Memory traffic per call (E = element size of qkv; Nq, Nk = output rows; N = input rows; per
batch element and head, D channels each; halo re-reads are cache hits and not counted):

- fused forward: read q, k, v's slices of qkv once (3 N D E), write q, k, v once ((Nq + 2 Nk) D E).
- eager forward (official code, per t): the qkv permute/reshape is a view, but ``reshape`` of the
  permuted tensor and the class-token split copy it ((N D E) read + write, per t), conv2d reads the
  grid and writes the pooled grid, ``cat`` with the token copies it again (read + write), LayerNorm
  reads it and writes the output plus its mean/rstd: 3 to 4 launches per t against 1 for all three.
  The modeled bytes and launches, fused against eager, at the MViTv2 shapes:
  ``benchmarks/bench_pool_qkv.py``.
- fused backward: reads the three output gradients and qkv once each in the rows kernel, writes the
  pre-norm gradient of the grid rows in qkv's dtype ((Nq + 2 Nk) D E bytes: rounded once, as eager
  LayerNorm's backward rounds its output) which the input kernel reads back and gathers into
  d(qkv) (written once, 3 N D E), plus the partial sums: (KH KW + 2) D float32 per program. The
  bytes of every launch, as stated to the cost model: ``triton_impl``'s ``_*_states``.

Saved for backward: ``qkv`` and the parameters only. The pooled rows and their mean / rstd are
recomputed in the backward (KH * KW cache-friendly tap loads per row, the row already in registers
for the statistics): saving the pooled rows would cost (Nq + 2 Nk) D floats of memory and traffic,
and the mean / rstd alone would not spare the recompute of the conv. The eager path saves the
permuted copy of the input, the conv outputs and the LayerNorm statistics.

Dtypes: qkv float32, float16 or bfloat16; outputs in qkv's dtype. The nine parameters share one
dtype, qkv's or float32 (the autocast case); their gradients come back in it. Arithmetic is float32.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ...args import check_3d, check_token_count, pooled_size, positive_ints
from ...backend import require_triton_runnable, resolve_backend
from . import op as _op  # noqa: F401  (registers the custom ops)
from .torch_impl import pool_qkv_torch

__all__ = ["check_and_geometry", "pool_qkv", "pool_qkv_torch"]


def _check(qkv, hw_shape, num_heads, pool_weights, norm_weights, norm_biases, stride_q, stride_kv,
           has_cls_token, eps):
    """Check the arguments; return the grid ((H, W) or (T, H, W)), D, (q's strides, k / v's), the
    kernel and sp."""
    check_3d(qkv, "qkv", "(B, N, 3 * num_heads * head_dim)", "pool_qkv")
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"pool_qkv: num_heads must be a positive int, got {num_heads!r}")
    B, N, C = qkv.shape
    if C % (3 * num_heads):
        raise ValueError(f"pool_qkv: the qkv width {C} is not divisible by 3 * num_heads = {3 * num_heads}")
    D = C // (3 * num_heads)
    if len(hw_shape) not in (2, 3) or not all(isinstance(n, int) and n >= 1 for n in hw_shape):
        raise ValueError(f"pool_qkv: hw_shape must be two positive ints (H, W) or three (T, H, W), got {hw_shape!r}")
    grid = tuple(hw_shape)
    n = len(grid)
    sp = 1 if has_cls_token else 0
    check_token_count(N, grid, sp, "qkv", "pool_qkv")
    params = {}
    for kind, group in (("pool_weights", pool_weights), ("norm_weights", norm_weights),
                        ("norm_biases", norm_biases)):
        if len(group) != 3:
            raise ValueError(f"pool_qkv: {kind} must hold 3 tensors (q, k, v), got {len(group)}")
        for name, p in zip("qkv", group):
            params[f"{kind}[{name}]"] = p
    kernel = tuple(pool_weights[0].shape[2:])
    layout = "(head_dim, 1, kh, kw)" if n == 2 else "(head_dim, 1, kt, kh, kw)"
    for name, w in zip("qkv", pool_weights):
        if w.dim() != n + 2 or tuple(w.shape[:2]) != (D, 1):
            raise ValueError(f"pool_qkv: pool_weights[{name}] must be {layout.replace('head_dim', f'head_dim={D}')} "
                             f"for a {n}-axis grid, got {tuple(w.shape)}")
        if tuple(w.shape[2:]) != kernel:
            raise ValueError(f"pool_qkv: q, k and v must share one pooling kernel size, got "
                             f"{[tuple(x.shape[2:]) for x in pool_weights]}")
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"pool_qkv: the pooling kernel must be odd (padding kernel // 2), got {kernel}")
    for kind, group in (("norm_weights", norm_weights), ("norm_biases", norm_biases)):
        for name, p in zip("qkv", group):
            if tuple(p.shape) != (D,):
                raise ValueError(f"pool_qkv: {kind}[{name}] must be (head_dim={D},), got {tuple(p.shape)}")
    for name, p in params.items():
        if p.device != qkv.device:
            raise ValueError(f"pool_qkv: {name} is on {p.device} but qkv is on {qkv.device}")
    pdtypes = {p.dtype for p in params.values()}
    if len(pdtypes) != 1 or next(iter(pdtypes)) not in (qkv.dtype, torch.float32):
        raise TypeError(f"pool_qkv: the pooling and norm parameters must share one dtype, qkv's "
                        f"({qkv.dtype}) or float32; got {sorted(str(d) for d in pdtypes)}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"pool_qkv: eps must be a positive float, got {eps!r}")
    strides = (positive_ints(stride_q, n, "stride_q", "pool_qkv"),
               positive_ints(stride_kv, n, "stride_kv", "pool_qkv"))
    return grid, D, strides, kernel, sp


def check_and_geometry(qkv, hw_shape, num_heads, pool_weights, norm_weights, norm_biases, stride_q,
                       stride_kv, has_cls_token, eps):
    """Check pool_qkv's arguments (for the backend in force); return the grid ((H, W) or (T, H, W)),
    the strides (q's, k / v's; one int per axis each), q_size, k_size and sp (1 with a class token)."""
    hw, D, strides, kernel, sp = _check(qkv, hw_shape, num_heads, pool_weights, norm_weights,
                                        norm_biases, stride_q, stride_kv, has_cls_token, eps)
    if resolve_backend(qkv.device) != "torch":
        require_triton_runnable(qkv.device, "pool_qkv", qkv.dtype)
    return hw, strides, pooled_size(hw, kernel, strides[0]), pooled_size(hw, kernel, strides[1]), sp


def pool_qkv(qkv: torch.Tensor, hw_shape: Sequence[int], num_heads: int,
             pool_weights: Sequence[torch.Tensor], norm_weights: Sequence[torch.Tensor],
             norm_biases: Sequence[torch.Tensor], stride_q, stride_kv, *, has_cls_token: bool,
             eps: float = 1e-6):
    """Pooled and normalised q, k, v from the qkv projection output.

    Args:
        qkv: (B, N, 3 * num_heads * D), channels [3][heads][D], N = H * W (+ 1 with a class token,
            row 0); strided is fine, the last dim contiguous (else it is copied). float32/16, bf16.
        hw_shape: the token grid (H, W), or (T, H, W) for video (N = T * H * W (+ 1)).
        pool_weights: (w_q, w_k, w_v), each (D, 1, kh, kw) (video: (D, 1, kt, kh, kw)), odd
            kernel, shared by the heads.
        norm_weights, norm_biases: 3-tuples of (D,) LayerNorm affine parameters.
        stride_q, stride_kv: int or one int per grid axis.
    Returns:
        q (B, heads, Nq, D), k and v (B, heads, Nk, D), contiguous, in qkv's dtype; q_size (qh, qw)
        and k_size (kh, kw) (video: (qt, qh, qw), (kt, kh, kw)), the pooled grids
        (Nq = prod(q_size) (+ 1), Nk likewise).
    """
    hw, strides, q_size, k_size, sp = check_and_geometry(
        qkv, hw_shape, num_heads, pool_weights, norm_weights, norm_biases, stride_q, stride_kv,
        has_cls_token, eps)
    if resolve_backend(qkv.device) == "torch":
        q, k, v = pool_qkv_torch(qkv, hw, num_heads, pool_weights, norm_weights, norm_biases,
                                 strides, sp, eps)
    else:
        q, k, v = torch.ops.fastmvit.pool_qkv(
            qkv, *pool_weights, *norm_weights, *norm_biases, list(hw), num_heads,
            [*strides[0], *strides[1]], bool(sp), float(eps))
    return q, k, v, q_size, k_size
