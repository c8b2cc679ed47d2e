"""The fused pooling prologue (fastmvit.kernels.pool_qkv) against eager torch, at the MViTv2 shapes.

    .venv/bin/python -m pytest benchmarks/bench_pool_qkv.py --benchmark-json out.json

Two things per shape (the distinct pooling shapes of MViTv2-S at 224, from
``fastmvit.reference.block_specs``; batch 8, bf16):

- modeled memory traffic per call, everywhere (no GPU needed): bytes read + written and kernel
  launches of eager torch (the official per-t split / conv / cat / LayerNorm, every dispatched aten
  op counted by fastmvit.costmodel on meta tensors) against the fused op (every kernel launch by
  its launcher's traffic statement: the scratch and partial sums inside the op included; see
  fastmvit.costmodel). Recorded as MODELED through the suites' ``record`` fixture (never as a
  timing).
- on CUDA only: forward and forward+backward times of both (pytest-benchmark). Without CUDA these
  are skipped: a Triton-interpreter run is never timed.
"""
from __future__ import annotations

import pytest
import torch

from fastmvit.costmodel import count_traffic
from fastmvit.kernels import pool_qkv, use_backend
from fastmvit.reference import block_specs, get_config

BATCH = 8
DTYPE = torch.bfloat16
ARCH, IMG = "small", 224


def pooling_shapes(arch: str = ARCH, img: int = IMG) -> list[tuple]:
    """(name, grid side, stride_q, stride_kv, heads) of every distinct pooling of `arch`'s blocks
    at `img` x `img`, in block order (square grids and strides in every MViTv2 image model)."""
    shapes = {}
    for b in block_specs(get_config(arch), img):
        key = (b.input_size[0], b.stride_q[0], b.stride_kv[0], b.num_heads)
        first = " first" if b.stride_q[0] > 1 else ""
        shapes.setdefault(key, (f"s{b.stage + 1}{first} {key[0]}x{key[0]} q{key[1]} kv{key[2]} h{key[3]}", *key))
    return list(shapes.values())


SHAPES = pooling_shapes()
HEAD_DIM = get_config(ARCH).embed_dims // get_config(ARCH).num_heads


def inputs(side, heads, device, dtype=DTYPE, batch=BATCH, cls=True, requires_grad=False):
    D = HEAD_DIM
    g = dict(device=device, dtype=dtype)
    qkv = torch.randn(batch, int(cls) + side * side, 3 * heads * D, **g)
    params = [torch.randn(D, 1, 3, 3, **g) * 0.3 for _ in range(3)]
    params += [torch.ones(D, **g) for _ in range(3)] + [torch.zeros(D, **g) for _ in range(3)]
    return [t.requires_grad_(requires_grad) for t in [qkv] + params]


def call(leaves, side, heads, sq, skv):
    qkv, p = leaves[0], leaves[1:]
    return pool_qkv(qkv, (side, side), heads, p[0:3], p[3:6], p[6:9], sq, skv, has_cls_token=True)[:3]


def modeled(side, sq, skv, heads, backend, backward):
    """Traffic of one call on meta tensors: (bytes read + written, launches)."""
    leaves = inputs(side, heads, "meta", requires_grad=backward)

    def run():
        outs = call(leaves, side, heads, sq, skv)
        if backward:
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    with use_backend(backend):
        traffic = count_traffic(run)
    return traffic.bytes, traffic.launches


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_modeled_bytes(shape, pass_, record):
    """Modeled bytes moved per call, fused against eager (recorded as MODELED; the fused path must
    move less)."""
    name, side, sq, skv, heads = shape
    backward = pass_ == "fwd+bwd"
    eager_bytes, eager_launches = modeled(side, sq, skv, heads, "torch", backward)
    fused_bytes, fused_launches = modeled(side, sq, skv, heads, "triton", backward)
    labels = dict(suite="op", op="pool_qkv", case=name, pass_=pass_, dtype=DTYPE, batch=BATCH, arch=ARCH,
                  img=IMG, device="meta")
    record.modeled(impl="eager", bytes=eager_bytes, launches=eager_launches, **labels)
    record.modeled(impl="fastmvit", bytes=fused_bytes, launches=fused_launches,
                   bytes_ratio=fused_bytes / eager_bytes, **labels)
    print(f"\n{name} {pass_}: eager {eager_bytes / 2**20:.1f} MiB in {eager_launches} launches, "
          f"fused {fused_bytes / 2**20:.1f} MiB in {fused_launches} ({fused_bytes / eager_bytes:.2f}x)")
    assert fused_bytes < eager_bytes and fused_launches < eager_launches


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA timings need a GPU (interpreter runs are never timed)")
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("backend", ["torch", "triton"], ids=["eager", "fused"])
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_cuda_time(shape, backend, pass_, benchmark):
    name, side, sq, skv, heads = shape
    backward = pass_ == "fwd+bwd"
    leaves = inputs(side, heads, "cuda", requires_grad=backward)
    grads = None

    def run():
        with use_backend(backend):
            outs = call(leaves, side, heads, sq, skv)
            if backward:
                torch.autograd.backward(outs, grads or [torch.ones_like(o) for o in outs])
        torch.cuda.synchronize()

    run()
    benchmark.extra_info.update(case=name, impl="fused" if backend == "triton" else "eager",
                                pass_=pass_, dtype=str(DTYPE).removeprefix("torch."), batch=BATCH)
    benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=3)
