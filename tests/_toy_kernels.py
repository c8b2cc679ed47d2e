"""Toy Triton kernels that prove the GPU-compile harness (kernels/gpu_compile.py) finds what it should.

Not part of the library. It follows the `cases()` contract of the ops' compile_cases modules:

- `_toy_matmul_kernel`: C = A @ B with `tl.dot`, autotuned over five configs:
  * two sound tiles (SOUND_CONFIGS);
  * ``BLOCK_M=256, BLOCK_N=128, BLOCK_K=128, num_stages=4`` (OVER_SHARED_CONFIG) pipelines
    (256 + 128) x 128 fp16 values per stage, 96 KiB, so three or four stages need 288-384 KiB of
    shared memory: more than sm_80 (166912 B) or sm_90 (232448 B) allow. A real launch fails with
    OutOfResources and the autotuner skips it silently; the harness must report it;
  * ``BLOCK_K=8`` (FAILING_CONFIG) trips the kernel's static_assert: the autotuner swallows the
    CompileTimeAssertionFailure, the harness must report it;
  * ``BLOCK_M=32`` (PRUNED_CONFIG) is removed by `early_config_prune`, so it is never compiled
    (the harness keeps the module's pruning).
- `_toy_scale_add_kernel`: y = a * x + b, elementwise, no autotune, no matmul: sound.
- `_toy_normalize_kernel`: y = x / sum(x) over one block of 16384 float32 values with a single
  warp: 512 values per thread stay live across the reduction, over the 255-register cap, so ptxas
  spills them to the stack (a spill the harness must report). A matmul tile that spills takes
  20+ s to compile; this takes well under one.

The module says it expects tensor cores (EXPECTS_TENSOR_CORES), so the harness checks
HMMA / HGMMA in the dot kernel and nothing in the elementwise one.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

EXPECTS_TENSOR_CORES = True

SOUND_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=2),
]
OVER_SHARED_CONFIG = triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128}, num_warps=8, num_stages=4)
FAILING_CONFIG = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 8}, num_warps=4, num_stages=2)
PRUNED_CONFIG = triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=2)
SPILL_BLOCK = 16384


def _prune(configs, named_args, **kwargs):
    """Drop tiles shorter than 64 rows (the module's own pruning, kept by the harness)."""
    return [c for c in configs if c.kwargs["BLOCK_M"] >= 64]


@triton.autotune(configs=SOUND_CONFIGS + [OVER_SHARED_CONFIG, FAILING_CONFIG, PRUNED_CONFIG],
                 key=["M", "N", "K"], prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _toy_matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                       stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """a: (M, K), b: (K, N) fp16/bf16; c: (M, N) float32. One program per (BLOCK_M, BLOCK_N) tile."""
    tl.static_assert(BLOCK_K >= 16, "tl.dot needs BLOCK_K >= 16")
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + ks[None, :] * stride_ak,
                    mask=(offs_m[:, None] < M) & (ks[None, :] < K), other=0.0)
        b = tl.load(b_ptr + ks[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=(ks[:, None] < K) & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn, acc,
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _toy_scale_add_kernel(x_ptr, y_ptr, n, scale, shift, BLOCK: tl.constexpr):
    """y = scale * x + shift over n elements (any float dtype); one program per BLOCK."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n).to(tl.float32)
    tl.store(y_ptr + offs, (scale * x + shift).to(y_ptr.dtype.element_ty), mask=offs < n)


@triton.jit
def _toy_normalize_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """y = x / sum(x) over n <= BLOCK float32 values, one program."""
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(y_ptr + offs, x / tl.sum(x, axis=0), mask=offs < n)


def toy_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(M, K) @ (K, N) -> (M, N) float32."""
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty(M, N, dtype=torch.float32, device=a.device)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))
    _toy_matmul_kernel[grid](a, b, c, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                             c.stride(0), c.stride(1))
    return c


def toy_scale_add(x: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    y = torch.empty_like(x)
    BLOCK = 1024
    _toy_scale_add_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, y, x.numel(), scale, shift, BLOCK=BLOCK)
    return y


def toy_normalize(x: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(x)
    assert x.numel() <= SPILL_BLOCK
    _toy_normalize_kernel[(1,)](x, y, x.numel(), BLOCK=SPILL_BLOCK, num_warps=1)
    return y


def cases():
    """(label, thunk) pairs for the harness: odd sizes, CPU tensors (never read or written)."""
    a = torch.empty(200, 96, dtype=torch.float16)
    b = torch.empty(96, 136, dtype=torch.float16)
    yield "matmul fp16 200x96x136", lambda: toy_matmul(a, b)
    x = torch.empty(1000, dtype=torch.bfloat16)
    yield "scale_add bf16 1000", lambda: toy_scale_add(x, 2.0, 0.5)
    z = torch.empty(15000, dtype=torch.float32)
    yield "normalize fp32 15000", lambda: toy_normalize(z)
