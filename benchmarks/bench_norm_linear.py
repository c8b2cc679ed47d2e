"""LayerNorm folded into the next GEMM (fastmvit.kernels.norm_linear) against eager LayerNorm + Linear,
at MViTv2-T's norm -> GEMM pairs.

    .venv/bin/python -m pytest benchmarks/bench_norm_linear.py --benchmark-json out.json

y = LayerNorm(x) @ W^T + b: x (B, T, C) the residual stream, the GEMM qkv (N = 3 C, or 3 * 2 C at
a stage's first block), fc1 (N = 4 C) or the width-change shortcut proj (N = 2 C). Eager is the
op's torch path, i.e. the eager model's ``F.linear(F.layer_norm(x), W, b)``. Batch 8, bf16.

Uses the suite fixtures of benchmarks/conftest.py (`record`, `measure`, `device`).

- MODELED, any device (test_modeled): fastmvit.costmodel on meta tensors, the fused op counted by
  its kernels' traffic statements under ``use_backend("triton")``, eager under
  ``use_backend("torch")``: bytes and launches of an inference call and of a training call, and the
  activation bytes saved for backward (the fused op keeps x and two floats a row, eager also the
  normed x).
- MEASURED, CUDA only (test_speed): forward (no_grad) and forward+backward times of both.
  Skipped without CUDA: a Triton-interpreter run is never timed.
"""
from __future__ import annotations

import collections

import pytest
import torch

from benchmarks import common
from fastmvit.kernels import norm_linear, use_backend

OP = "norm_linear"
BATCH = 8
IMG = 224
DTYPE = torch.bfloat16
IMPLS = {"eager": "torch", "fastmvit": "triton"}       # impl label -> backend

Shape = collections.namedtuple("Shape", "label tokens k n")
# MViTv2-T at 224: stage 1 (56x56, C 96), the stage-2 first block (qkv and shortcut proj to 192 on
# the 56x56 input), then the fc1 of stages 2-4
SHAPES = [Shape("s1 qkv", 3136, 96, 288), Shape("s1 fc1", 3136, 96, 384),
          Shape("s2-first qkv", 3136, 96, 576), Shape("s2-first proj", 3136, 96, 192),
          Shape("s2 fc1", 784, 192, 768), Shape("s3 fc1", 196, 384, 1536), Shape("s4 fc1", 49, 768, 3072)]


def make_inputs(shape, device, requires_grad=False):
    g = dict(device=device, dtype=DTYPE)
    x = torch.randn(BATCH, shape.tokens, shape.k, **g)
    params = [torch.ones(shape.k, **g), torch.zeros(shape.k, **g),
              torch.randn(shape.n, shape.k, **g) * shape.k ** -0.5, torch.zeros(shape.n, **g)]
    return [t.requires_grad_(requires_grad) for t in [x] + params]


def call(impl, leaves):
    with use_backend(IMPLS[impl]):
        return norm_linear(*leaves)


@pytest.mark.parametrize("shape", SHAPES, ids=[s.label.replace(" ", "-") for s in SHAPES])
def test_modeled(shape, record):
    """Bytes, launches (fwd, fwd+bwd) and saved activation bytes per call, fused against eager."""
    entries = {}
    for impl in IMPLS:
        leaves = make_inputs(shape, "meta", requires_grad=True)
        dy = torch.empty(BATCH, shape.tokens, shape.n, device="meta", dtype=DTYPE)
        costs = common.op_costs(lambda: call(impl, leaves), leaves, dy, params=leaves[1:])
        labels = dict(suite="op", op=OP, case=shape.label, impl=impl, dtype=DTYPE, batch=BATCH, img=IMG,
                      tokens=shape.tokens, k=shape.k, n=shape.n, device="meta")
        entries[impl, "fwd"] = record.modeled(pass_="fwd", traffic=costs["fwd"], **labels)
        entries[impl, "fwd+bwd"] = record.modeled(
            pass_="fwd+bwd", traffic=costs["fwd+bwd"], **labels, saved_bytes=costs["saved_bytes"])
    for pass_ in ("fwd", "fwd+bwd"):
        f, e = entries["fastmvit", pass_], entries["eager", pass_]
        f["bytes_ratio"] = f["bytes"] / e["bytes"]
        assert f["bytes"] < e["bytes"], (pass_, f["bytes"], e["bytes"])
    assert entries["fastmvit", "fwd+bwd"]["saved_bytes"] < entries["eager", "fwd+bwd"]["saved_bytes"]


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.label.replace(" ", "-") for s in SHAPES])
def test_speed(shape, pass_, impl, measure, device):
    if device != "cuda":
        pytest.skip("GPU timings need CUDA (the Triton kernels are never timed in the interpreter)")
    backward = pass_ == "fwd+bwd"
    leaves = make_inputs(shape, device, requires_grad=backward)
    dy = torch.randn(BATCH, shape.tokens, shape.n, device=device, dtype=DTYPE) if backward else None
    measure(common.op_call(lambda: call(impl, leaves), leaves, dy), suite="op", op=OP, case=shape.label, impl=impl, pass_=pass_, dtype=DTYPE, batch=BATCH,
            tokens=shape.tokens, k=shape.k, n=shape.n)
