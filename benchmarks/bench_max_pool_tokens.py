"""The fused residual max-pool (fastmvit.kernels.max_pool_tokens) against eager torch, at MViTv2-T's
pooled shortcuts.

    .venv/bin/python -m pytest benchmarks/bench_max_pool_tokens.py --benchmark-json out.json

y = the (H, W) token grid of x (B, cls + H * W, C) max-pooled (kernel 3, stride 2, padding 1 in
MViTv2), the class token passed through. Eager is the op's torch path (``max_pool_tokens_torch``):
``F.max_pool2d`` on the channels-last view of the grid, then ``torch.cat`` for the class token.
Shapes: the three blocks of MViTv2-T at 224 whose q is strided (56x56 C 192, 28x28 C 384, 14x14
C 768: the shortcut is pooled after the block's projection to the new width), each with and
without a class token; batch 8, bf16.

Uses the suite fixtures of benchmarks/conftest.py (`record`, `measure`, `device`).

- MODELED, any device (test_modeled): fastmvit.costmodel on meta tensors, the fused op counted by
  its kernels' traffic statements under ``use_backend("triton")``, eager under ``use_backend("torch")``:
  bytes read + written and launches of an inference call ("fwd", no_grad: the fused op writes no
  argmax) and of a training call ("fwd+bwd": forward with grad, then ``torch.autograd.grad`` of x
  with a given dy), and the activation bytes saved for backward (the uint8 argmax against eager's
  x and int64 indices). One kernel each way (overlapping windows' halo re-reads are cache hits,
  not counted, on either side).
- MEASURED, CUDA only (test_speed): forward (no_grad) and forward+backward times of both, warm-up
  outside the timed region, peak memory (the `measure` fixture). Skipped without CUDA: a
  Triton-interpreter run is never timed.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks import common
from fastmvit.kernels import max_pool_tokens, use_backend

OP = "max_pool_tokens"
BATCH = 8
IMG = 224
DTYPE = torch.bfloat16
SHAPES = common.shortcut_pool_shapes("tiny", IMG)
IMPLS = {"eager": "torch", "fastmvit": "triton"}       # impl label -> backend


def make_input(shape, device, batch=BATCH, dtype=DTYPE, requires_grad=False):
    (H, W), C = shape.grid, shape.channels
    x = torch.randn(batch, int(shape.cls) + H * W, C, device=device, dtype=dtype)
    return x.requires_grad_(requires_grad)


def out_tokens(shape) -> int:
    return int(shape.cls) + shape.out_grid[0] * shape.out_grid[1]


def call(impl, x, shape):
    with use_backend(IMPLS[impl]):
        return max_pool_tokens(x, shape.grid, shape.kernel, shape.stride, has_cls_token=shape.cls)


@pytest.mark.parametrize("shape", SHAPES, ids=[s.label.replace(" ", "-").replace(">", "") for s in SHAPES])
def test_modeled(shape, record):
    """Bytes, launches (fwd, fwd+bwd) and saved activation bytes per call, fused against eager."""
    entries = {}
    for impl in IMPLS:
        x = make_input(shape, "meta", requires_grad=True)
        dy = torch.empty(BATCH, out_tokens(shape), shape.channels, device="meta", dtype=DTYPE)
        costs = common.op_costs(lambda: call(impl, x, shape), (x,), dy)
        labels = dict(suite="op", op=OP, case=shape.label, impl=impl, dtype=DTYPE, batch=BATCH, img=IMG,
                      arch=shape.arch, grid=list(shape.grid), channels=shape.channels, cls=shape.cls,
                      kernel=list(shape.kernel), stride=list(shape.stride), device="meta")
        entries[impl, "fwd"] = record.modeled(pass_="fwd", traffic=costs["fwd"], **labels)
        entries[impl, "fwd+bwd"] = record.modeled(
            pass_="fwd+bwd", traffic=costs["fwd+bwd"], **labels,
            forward_bytes=costs["forward"].bytes, forward_launches=costs["forward"].launches,
            backward_bytes=costs["backward"].bytes, backward_launches=costs["backward"].launches,
            saved_bytes=costs["saved_bytes"])
    line = f"\n{shape.label} (fused / eager):"
    for pass_ in ("fwd", "fwd+bwd"):
        f, e = entries["fastmvit", pass_], entries["eager", pass_]
        for key in ("bytes", "launches", "saved_bytes"):
            if key in f:
                f[f"{key}_ratio"] = f[key] / e[key]
        line += (f" {pass_} {f['bytes'] / 1e6:.2f}/{e['bytes'] / 1e6:.2f} MB ({f['bytes_ratio']:.2f}x), "
                 f"{f['launches']}/{e['launches']} launches;")
        # without a class token eager is one max_pool2d too (no cat): as many launches, more bytes
        assert f["bytes"] < e["bytes"] and f["launches"] <= e["launches"], (pass_, f["bytes"], e["bytes"])
    f, e = entries["fastmvit", "fwd+bwd"], entries["eager", "fwd+bwd"]
    print(line + f" saved {f['saved_bytes'] / 1e6:.2f}/{e['saved_bytes'] / 1e6:.2f} MB "
          f"({f['saved_bytes_ratio']:.2f}x)")
    assert f["saved_bytes"] < e["saved_bytes"]


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.label.replace(" ", "-").replace(">", "") for s in SHAPES])
def test_speed(shape, pass_, impl, measure, device):
    if device != "cuda":
        pytest.skip("GPU timings need CUDA (the Triton kernels are never timed in the interpreter)")
    backward = pass_ == "fwd+bwd"
    x = make_input(shape, device, requires_grad=backward)
    dy = torch.randn(BATCH, out_tokens(shape), shape.channels, device=device, dtype=DTYPE) if backward else None
    measure(common.op_call(lambda: call(impl, x, shape), (x,), dy), suite="op", op=OP, case=shape.label, impl=impl, pass_=pass_, dtype=DTYPE, batch=BATCH,
            channels=shape.channels, cls=shape.cls)
