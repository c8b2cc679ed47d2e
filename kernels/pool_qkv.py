"""The pooling prologue of MViTv2's attention, fused: qkv projection output -> pooled, normed q, k, v.

    q, k, v, q_size, k_size = pool_qkv(qkv, (H, W), num_heads, (w_q, w_k, w_v), (g_q, g_k, g_v),
                                       (b_q, b_k, b_v), stride_q, stride_kv, has_cls_token=True)

What it computes (SPEC section 3), for t in q, k, v: split t per head out of the projection output,
take the class token off, pool the (H, W) grid with a depthwise conv (weight (D, 1, kh, kw) shared by
the heads, stride s_t, padding kernel // 2, no bias), put the token back in front, LayerNorm over the
head dim D (the class token is normalised too, eps 1e-6).

Two implementations, chosen by ``fastmvit.use_backend`` through ``resolve_backend(qkv.device)``:

- "torch": plain torch (conv2d + layer_norm), autograd by torch; the CPU path of the model.
- "triton": the custom op ``fastmvit::pool_qkv`` (fake implementation and autograd registered, the
  backward being the custom op ``fastmvit::pool_qkv_backward``), so ``torch.compile(fullgraph=True)``
  sees one op. Kernels in ``pool_qkv_triton.py``. CPU tensors need TRITON_INTERPRET=1; on the meta
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
``pool_qkv_triton.py``): rows (recompute the pooled rows, LayerNorm backward, weight and norm partial
sums per program, 8 rows per tile, up to ~1024 programs each walking TILES_PER_PROG tiles), then
input (the strided conv's input gradient as a gather over the outputs that read each input, fixed
order, no atomics), then a fixed-order ``sum`` of the per-program partials.

Compiled for sm_80 and sm_90 (``python -m fastmvit.kernels.gpu_compile fastmvit.kernels.pool_qkv
--arch 80``): no spills, no tensor cores (no matmul); registers per thread and shared memory are in
the table that command prints.

Memory traffic per call (E = element size of qkv; Nq, Nk = output rows; N = input rows; per
batch element and head, D channels each; halo re-reads are cache hits and not counted):

- fused forward: read q, k, v's slices of qkv once (3 N D E), write q, k, v once ((Nq + 2 Nk) D E).
- eager forward (official code, per t): the qkv permute/reshape is a view, but ``reshape`` of the
  permuted tensor and the class-token split copy it ((N D E) read + write, per t), conv2d reads the
  grid and writes the pooled grid, ``cat`` with the token copies it again (read + write), LayerNorm
  reads it and writes the output plus its mean/rstd: 3 to 4 launches per t against 1 for all three.
  Modeled by ``benchmarks/bench_pool_qkv.py`` (fastmvit.costmodel on meta tensors, MViTv2-S at 224,
  batch 8, bf16): forward 0.25x to 0.48x the eager bytes (stage 1: 19.0 against 39.9 MiB), 1 launch
  against 9 to 12.
- fused backward: reads the three output gradients and qkv once each in the rows kernel, writes the
  float32 pre-norm gradient of the grid rows (4 (Nq + 2 Nk) D bytes) which the input kernel reads
  back and gathers into d(qkv) (written once, 3 N D E), plus the partial sums: (KH KW + 2) D float32
  per program. Forward + backward modeled at 0.29x to 0.63x the eager bytes, 11 launches against
  29 to 32 (the float32 scratch dominates at strides 1/1: storing it in bf16 would halve it, at
  some accuracy; not done).

Saved for backward: ``qkv`` and the parameters only. The pooled rows and their mean / rstd are
recomputed in the backward (KH * KW cache-friendly tap loads per row, the row already in registers
for the statistics): saving the pooled rows would cost (Nq + 2 Nk) D floats of memory and traffic,
and the mean / rstd alone would not spare the recompute of the conv. The eager path saves the
permuted copy of the input, the conv outputs and the LayerNorm statistics.

Dtypes: qkv float32, float16 or bfloat16; outputs in qkv's dtype. The nine parameters share one
dtype, qkv's or float32 (the autocast case); their gradients come back in it. Arithmetic is float32.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from .args import check_3d, check_token_count, pooled_size, positive_pair
from .backend import require_triton_runnable, resolve_backend

__all__ = ["pool_qkv", "pool_qkv_torch", "pooled_size", "gpu_compile_cases"]

# No tl.dot in these kernels: the GPU-compile harness should find no tensor-core instructions.
GPU_COMPILE_EXPECTS_TENSOR_CORES = False



def _check(qkv, hw_shape, num_heads, pool_weights, norm_weights, norm_biases, stride_q, stride_kv,
           has_cls_token, eps):
    """Check the arguments; return (H, W), D, ((sqh, sqw), (skh, skw)), (kh, kw), sp."""
    check_3d(qkv, "qkv", "(B, N, 3 * num_heads * head_dim)", "pool_qkv")
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"pool_qkv: num_heads must be a positive int, got {num_heads!r}")
    B, N, C = qkv.shape
    if C % (3 * num_heads):
        raise ValueError(f"pool_qkv: the qkv width {C} is not divisible by 3 * num_heads = {3 * num_heads}")
    D = C // (3 * num_heads)
    if len(hw_shape) != 2 or not all(isinstance(n, int) and n >= 1 for n in hw_shape):
        raise ValueError(f"pool_qkv: hw_shape must be two positive ints (H, W), got {hw_shape!r}")
    H, W = hw_shape
    sp = 1 if has_cls_token else 0
    check_token_count(N, (H, W), sp, "qkv", "pool_qkv")
    params = {}
    for kind, group in (("pool_weights", pool_weights), ("norm_weights", norm_weights),
                        ("norm_biases", norm_biases)):
        if len(group) != 3:
            raise ValueError(f"pool_qkv: {kind} must hold 3 tensors (q, k, v), got {len(group)}")
        for name, p in zip("qkv", group):
            params[f"{kind}[{name}]"] = p
    kernel = tuple(pool_weights[0].shape[-2:])
    for name, w in zip("qkv", pool_weights):
        if w.dim() != 4 or tuple(w.shape[:2]) != (D, 1):
            raise ValueError(f"pool_qkv: pool_weights[{name}] must be (head_dim={D}, 1, kh, kw), "
                             f"got {tuple(w.shape)}")
        if tuple(w.shape[-2:]) != kernel:
            raise ValueError(f"pool_qkv: q, k and v must share one pooling kernel size, got "
                             f"{[tuple(x.shape[-2:]) for x in pool_weights]}")
    if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
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
    strides = (positive_pair(stride_q, "stride_q", "pool_qkv"),
               positive_pair(stride_kv, "stride_kv", "pool_qkv"))
    return (H, W), D, strides, kernel, sp



def check_and_geometry(qkv, hw_shape, num_heads, pool_weights, norm_weights, norm_biases, stride_q,
                       stride_kv, has_cls_token, eps):
    """Check pool_qkv's arguments (for the backend in force); return (H, W), the stride pairs
    ((sqh, sqw), (skh, skw)), q_size, k_size and sp (1 with a class token)."""
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
        hw_shape: the token grid (H, W).
        pool_weights: (w_q, w_k, w_v), each (D, 1, kh, kw), odd kernel, shared by the heads.
        norm_weights, norm_biases: 3-tuples of (D,) LayerNorm affine parameters.
        stride_q, stride_kv: int or (sh, sw).
    Returns:
        q (B, heads, Nq, D), k and v (B, heads, Nk, D), contiguous, in qkv's dtype; q_size (qh, qw)
        and k_size (kh, kw), the pooled grids (Nq = qh * qw (+ 1), Nk likewise).
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


def pool_qkv_torch(qkv, hw, num_heads, pool_weights, norm_weights, norm_biases, strides, sp, eps):
    """The plain torch path (conv2d + layer_norm per t), on checked arguments: the readable math."""
    B, N, C = qkv.shape
    H, W = hw
    D = C // (3 * num_heads)
    qkv = qkv.reshape(B, N, 3, num_heads, D).permute(2, 0, 3, 1, 4)      # (3, B, heads, N, D)
    outs = []
    for x, w, g, b, stride in zip(qkv, pool_weights, norm_weights, norm_biases, strides[:1] + strides[1:] * 2):
        cls, grid = x[:, :, :sp], x[:, :, sp:]
        grid = grid.reshape(B * num_heads, H, W, D).permute(0, 3, 1, 2)     # (B * heads, D, H, W)
        kh, kw = w.shape[-2:]
        grid = F.conv2d(grid, w.to(x.dtype), stride=stride, padding=(kh // 2, kw // 2), groups=D)
        grid = grid.flatten(2).transpose(1, 2).reshape(B, num_heads, -1, D)  # (B, heads, oh * ow, D)
        x = torch.cat([cls, grid], dim=2)
        outs.append(F.layer_norm(x, (D,), g.to(x.dtype), b.to(x.dtype), eps))
    return tuple(outs)


# --------------------------------------------------------------------------------------------
# The custom ops of the Triton path
# --------------------------------------------------------------------------------------------

def _geometry(qkv, hw, num_heads, w, strides):
    sq, skv = (strides[0], strides[1]), (strides[2], strides[3])
    kernel = tuple(w.shape[-2:])
    return (sq, skv), pooled_size(hw, kernel, sq), pooled_size(hw, kernel, skv)


@torch.library.custom_op("fastmvit::pool_qkv", mutates_args=())
def _pool_qkv_op(qkv: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
                 gq: torch.Tensor, gk: torch.Tensor, gv: torch.Tensor,
                 bq: torch.Tensor, bk: torch.Tensor, bv: torch.Tensor, hw: list[int], num_heads: int,
                 strides: list[int], has_cls_token: bool, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .pool_qkv_triton import launch_forward
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    ss, q_size, k_size = _geometry(qkv, hw, num_heads, wq, strides)
    c = [p.contiguous() for p in (wq, wk, wv, gq, gk, gv, bq, bk, bv)]
    return launch_forward(qkv, c[0:3], c[3:6], c[6:9], hw, num_heads, ss, q_size, k_size,
                          int(has_cls_token), eps)


@_pool_qkv_op.register_fake
def _(qkv, wq, wk, wv, gq, gk, gv, bq, bk, bv, hw, num_heads, strides, has_cls_token, eps):
    B, N, C = qkv.shape
    D = C // (3 * num_heads)
    _, q_size, k_size = _geometry(qkv, hw, num_heads, wq, strides)
    sp = int(has_cls_token)
    q = qkv.new_empty(B, num_heads, sp + q_size[0] * q_size[1], D)
    nk = sp + k_size[0] * k_size[1]
    return q, qkv.new_empty(B, num_heads, nk, D), qkv.new_empty(B, num_heads, nk, D)


@torch.library.custom_op("fastmvit::pool_qkv_backward", mutates_args=())
def _pool_qkv_backward_op(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, qkv: torch.Tensor,
                          wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
                          gq: torch.Tensor, gk: torch.Tensor, gv: torch.Tensor, hw: list[int],
                          num_heads: int, strides: list[int], has_cls_token: bool, eps: float
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(qkv) like qkv, contiguous; float32 (3, kh * kw + 2, D): d(conv weight) per tap, then
    d(norm weight), d(norm bias), for q, k, v)."""
    from .pool_qkv_triton import launch_backward
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    ss, q_size, k_size = _geometry(qkv, hw, num_heads, wq, strides)
    c = [p.contiguous() for p in (wq, wk, wv, gq, gk, gv)]
    grads = [g.contiguous() for g in (dq, dk, dv)]
    return launch_backward(grads, qkv, c[0:3], c[3:6], hw, num_heads, ss, q_size, k_size,
                           int(has_cls_token), eps)


@_pool_qkv_backward_op.register_fake
def _(dq, dk, dv, qkv, wq, wk, wv, gq, gk, gv, hw, num_heads, strides, has_cls_token, eps):
    D = wq.shape[0]
    taps = wq.shape[-2] * wq.shape[-1]
    return (torch.empty(qkv.shape, device=qkv.device, dtype=qkv.dtype),
            qkv.new_empty(3, taps + 2, D, dtype=torch.float32))


def param_grads(sums: torch.Tensor, wq: torch.Tensor, gq: torch.Tensor):
    """The parameter gradients out of ``pool_qkv_backward``'s float32 sums (3, kh * kw + 2, D):
    conv weights (3, D, 1, kh, kw) in wq's dtype, norm weights and biases (3, D) in gq's."""
    taps = wq.shape[-2] * wq.shape[-1]
    dw = sums[:, :taps].transpose(1, 2).reshape(3, *wq.shape).to(wq.dtype)
    return dw, sums[:, taps].to(gq.dtype), sums[:, taps + 1].to(gq.dtype)


def _setup_context(ctx, inputs, output):
    qkv, wq, wk, wv, gq, gk, gv, bq, bk, bv, hw, num_heads, strides, has_cls_token, eps = inputs
    ctx.save_for_backward(qkv, wq, wk, wv, gq, gk, gv)
    ctx.args = (hw, num_heads, strides, has_cls_token, eps)


def _backward(ctx, dq, dk, dv):
    qkv, wq, wk, wv, gq, gk, gv = ctx.saved_tensors
    dqkv, sums = _pool_qkv_backward_op(dq, dk, dv, qkv, wq, wk, wv, gq, gk, gv, *ctx.args)
    dw, dg, db = param_grads(sums, wq, gq)
    return (dqkv, dw[0], dw[1], dw[2], dg[0], dg[1], dg[2], db[0], db[1], db[2],
            None, None, None, None, None)


_pool_qkv_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# GPU-compile harness contract (kernels/gpu_compile.py): every launch config of the op
# --------------------------------------------------------------------------------------------

# One representative launch per distinct compiled variant (a cold compile takes seconds). What is
# specialised: dtype, head dim D (a constexpr), class token (SP), the qkv row stride's divisibility
# by 16 (3 * heads * D: always with D 96; with D 72 for heads >= 2, which MViTv2-L always has) and,
# in the backward rows kernel, TILES_PER_PROG (1 up to batch x rows ~ 8k, then powers of two: a
# training batch at 56x56 needs 16 to 32). Grid sizes, strides and batch are runtime values.
# (label, batch, grid side, stride_q, stride_kv, heads, D, class token)
_COMPILE_SHAPES = (
    ("MViTv2-T/S/B stage 1", 1, 56, 1, 4, 1, 96, 1),
    ("MViTv2-L stage 1", 1, 56, 1, 4, 2, 72, 0),
    ("MViTv2-T stage 1, training batch 64", 64, 56, 1, 4, 1, 96, 1),
)


def gpu_compile_cases() -> Iterable[tuple[str, Callable[[], None]]]:
    """(label, thunk) pairs; each thunk calls the Triton launchers (forward and backward) directly
    with CPU tensors at one MViTv2 shape (head dims 96 and 72, fp16 and bf16, with and without a
    class token, batch 1 and a training batch), so that under the stand-in driver of
    ``kernels/gpu_compile.py`` every kernel variant the op launches for MViTv2 gets compiled."""
    from .pool_qkv_triton import launch_backward, launch_forward

    def thunk(B, side, sq, skv, heads, D, dtype, sp):
        def run():
            hw = (side, side)
            strides = ((sq, sq), (skv, skv))
            q_size, k_size = pooled_size(hw, (3, 3), strides[0]), pooled_size(hw, (3, 3), strides[1])
            qkv = torch.empty(B, sp + side * side, 3 * heads * D, dtype=dtype)
            w = [torch.empty(D, 1, 3, 3, dtype=dtype) for _ in range(3)]
            g = [torch.empty(D, dtype=dtype) for _ in range(3)]
            b = [torch.empty(D, dtype=dtype) for _ in range(3)]
            q, k, v = launch_forward(qkv, w, g, b, hw, heads, strides, q_size, k_size, sp, 1e-6)
            launch_backward([torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)], qkv, w,
                            g, hw, heads, strides, q_size, k_size, sp, 1e-6)
        return run

    for label, B, side, sq, skv, heads, D, sp in _COMPILE_SHAPES:
        for dtype in (torch.float16, torch.bfloat16):
            yield (f"pool_qkv {label}: B{B} {side}x{side} sq{sq} skv{skv} heads{heads} D{D} "
                   f"{str(dtype).removeprefix('torch.')} cls{sp}",
                   thunk(B, side, sq, skv, heads, D, dtype, sp))
