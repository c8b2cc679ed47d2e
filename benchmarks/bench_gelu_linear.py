"""The fused MLP tail (fastmvit.kernels.gelu_linear) against eager torch, at the MViTv2-T/S MLP shapes.

    .venv/bin/python -m pytest benchmarks/bench_gelu_linear.py --benchmark-json out.json

y = residual + sample_scale[b] * (gelu(h) @ weight^T + bias): h (B, T, K = 4 C) is fc1's output,
weight / bias fc2's, residual the block's shortcut. Eager is the op's torch path, i.e. the eager
model's ops: ``residual + F.linear(F.gelu(h), weight, bias)``, and with stochastic depth
``torch.addcmul(residual, F.linear(...), sample_scale.view(B, 1, 1))`` (the scale in bf16 like
everything else, so eager takes its single-op addcmul path). Shapes: the MLP of every block of
MViTv2-T and -S at 224 (they share four: tokens 3136/784/196/49, C = 96/192/384/768), batch 8,
bf16; each without ("residual") and with ("residual+droppath") the per-sample scale.

Uses the suite fixtures of benchmarks/conftest.py (`record`, `measure`, `device`).

- MODELED, any device (test_modeled): fastmvit.costmodel on meta tensors, the fused op through its
  fake implementations under ``use_backend("triton")``, eager under ``use_backend("torch")``:
  bytes read + written and launches of an inference call ("fwd", no_grad) and of a training call
  ("fwd+bwd": forward with grad, then ``torch.autograd.grad`` of h, weight, bias and residual with a
  given dy), and the activation bytes saved for backward (weight and bias excluded, as parameters).
  The fused ops are counted launch by launch through their kernels' traffic statements (the dh
  GEMM, the dW GEMM re-reading dy and h and writing float32 partials over its row splits, the
  split sum reading them back), so the ratios compare kernels with kernels. Eager's cuBLAS
  internals are not modeled (one launch per aten op, as everywhere in the cost model).
- MEASURED, CUDA only (test_speed): forward (no_grad) and forward+backward times of both, warm-up
  outside the timed region, peak memory (the `measure` fixture). Skipped without CUDA: a
  Triton-interpreter run is never timed.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks import common
from fastmvit.kernels import gelu_linear, use_backend

OP = "gelu_linear"
BATCH = 8
IMG = 224
DTYPE = torch.bfloat16
SHAPES = common.mlp_shapes(("tiny", "small"), IMG)
VARIANTS = ("residual", "residual+droppath")
IMPLS = {"eager": "torch", "fastmvit": "triton"}       # impl label -> backend


def make_inputs(shape, variant, device, batch=BATCH, dtype=DTYPE, requires_grad=False):
    """h, weight, bias, residual, sample_scale (None without stochastic depth). weight and bias are
    nn.Parameters (fc2's); h and residual require grad when asked (they are activations)."""
    B, T, K, N = batch, shape.tokens, shape.k, shape.n
    g = dict(device=device, dtype=dtype)
    h = torch.randn(B, T, K, **g)
    weight = torch.nn.Parameter(torch.randn(N, K, **g) * K ** -0.5, requires_grad=requires_grad)
    bias = torch.nn.Parameter(torch.randn(N, **g) * 0.02, requires_grad=requires_grad)
    residual = torch.randn(B, T, N, **g)
    scale = None
    if variant == "residual+droppath":   # keep mask / keep probability (0.9), half the samples dropped
        keep = torch.arange(B, device=device) % 2 == 0
        scale = (keep.to(torch.float32) / 0.9).to(dtype)
    h.requires_grad_(requires_grad)
    residual.requires_grad_(requires_grad)
    return h, weight, bias, residual, scale


def call(impl, h, weight, bias, residual, scale):
    with use_backend(IMPLS[impl]):
        return gelu_linear(h, weight, bias, residual, scale)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES, ids=[s.label.replace(" ", "-") for s in SHAPES])
def test_modeled(shape, variant, record):
    """Bytes, launches (fwd, fwd+bwd) and saved activation bytes per call, fused against eager."""
    entries = {}
    for impl in IMPLS:
        h, w, b, r, s = make_inputs(shape, variant, "meta", requires_grad=True)
        dy = torch.empty(BATCH, shape.tokens, shape.n, device="meta", dtype=DTYPE)
        costs = common.op_costs(lambda: call(impl, h, w, b, r, s), (h, w, b, r), dy, params=(w, b))
        labels = dict(suite="op", op=OP, case=f"{shape.label} {variant}", impl=impl, dtype=DTYPE,
                      batch=BATCH, img=IMG, tokens=shape.tokens, k=shape.k, n=shape.n,
                      blocks=dict(shape.blocks), variant=variant, device="meta")
        entries[impl, "fwd"] = record.modeled(pass_="fwd", traffic=costs["fwd"], **labels)
        entries[impl, "fwd+bwd"] = record.modeled(
            pass_="fwd+bwd", traffic=costs["fwd+bwd"], **labels,
            forward_bytes=costs["forward"].bytes, forward_launches=costs["forward"].launches,
            backward_bytes=costs["backward"].bytes, backward_launches=costs["backward"].launches,
            saved_bytes=costs["saved_bytes"])
    line = f"\n{shape.label} {variant} (fused / eager):"
    for pass_ in ("fwd", "fwd+bwd"):
        f, e = entries["fastmvit", pass_], entries["eager", pass_]
        for key in ("bytes", "launches", "saved_bytes"):
            if key in f:
                f[f"{key}_ratio"] = f[key] / e[key]
        line += (f" {pass_} {f['bytes'] / 1e6:.1f}/{e['bytes'] / 1e6:.1f} MB ({f['bytes_ratio']:.2f}x), "
                 f"{f['launches']}/{e['launches']} launches;")
        # the design's claims: fewer launches and fewer bytes, the kernels' hidden traffic included
        assert f["launches"] < e["launches"], (pass_, f["launches"], e["launches"])
        assert f["bytes"] < e["bytes"], (pass_, f["bytes"], e["bytes"])
    f, e = entries["fastmvit", "fwd+bwd"], entries["eager", "fwd+bwd"]
    print(line + f" saved {f['saved_bytes'] / 1e6:.2f}/{e['saved_bytes'] / 1e6:.2f} MB "
          f"({f['saved_bytes_ratio']:.2f}x)")
    assert f["saved_bytes"] < e["saved_bytes"]
    assert entries["fastmvit", "fwd"]["bytes"] < entries["eager", "fwd"]["bytes"]


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES, ids=[s.label.replace(" ", "-") for s in SHAPES])
def test_speed(shape, variant, pass_, impl, measure, device):
    if device != "cuda":
        pytest.skip("GPU timings need CUDA (the Triton kernels are never timed in the interpreter)")
    backward = pass_ == "fwd+bwd"
    h, w, b, r, s = make_inputs(shape, variant, device, requires_grad=backward)
    dy = torch.randn(BATCH, shape.tokens, shape.n, device=device, dtype=DTYPE) if backward else None
    measure(common.op_call(lambda: call(impl, h, w, b, r, s), (h, w, b, r), dy), suite="op", op=OP, case=f"{shape.label} {variant}", impl=impl, pass_=pass_, dtype=DTYPE,
            batch=BATCH, tokens=shape.tokens, k=shape.k, n=shape.n)
