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
  The fused backward is one custom op at the op boundary, but inside it launches the dh GEMM, the dW
  GEMM (reading dy and h a second time, writing float32 partials over S row splits) and one or two
  split-sum kernels (reading the partials back; with S = 1 the dW GEMM writes dW itself and there
  are none): those hidden bytes and launches are added to the
  fused figures (``hidden_bytes``, ``hidden_launches``; S from the kernels' own ``dw_splits`` at the
  GPU block sizes), so the ratios compare kernels with kernels. Eager's cuBLAS internals are not
  modeled (one launch per aten op, as everywhere in the cost model).
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


def hidden_backward(shape, batch=BATCH, dtype=DTYPE, has_bias=True) -> tuple[int, int, int]:
    """(bytes read, bytes written, launches) the fused backward adds inside its one custom op to
    "read each input, write each output once": the dW kernel reads dy and h again (a launch apart
    from dh's), and writes the float32 dW (and db) partials of its S row splits, which the split-sum
    kernels read back. S is what the launcher computes at the autotuned (GPU) block sizes."""
    from fastmvit.kernels.ops.gelu_linear.triton_impl import (DW_BLOCK_K, DW_BLOCK_N, DW_CONFIGS,
                                                     DW_FP32_CONFIGS, dw_splits)
    e = torch.finfo(dtype).bits // 8
    M, K, N = batch * shape.tokens, shape.k, shape.n
    row_align = max(c.kwargs["BLOCK_M"] for c in DW_CONFIGS + DW_FP32_CONFIGS)
    S, _ = dw_splits(M, N, K, DW_BLOCK_N, DW_BLOCK_K, row_align)
    if S == 1:   # one split: the dW kernel writes dW and db itself (counted as the op's outputs)
        return M * N * e + M * K * e + batch * e, 0, 1
    partials = 4 * S * (N * K + (N if has_bias else 0))        # float32, written once, read once
    read = M * N * e + M * K * e + batch * e + partials         # dy, h, the scale again; partials
    launches = 1 + 1 + int(has_bias)                            # dW kernel, sum for dW, sum for db
    return read, partials, launches


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES, ids=[s.label.replace(" ", "-") for s in SHAPES])
def test_modeled(shape, variant, record):
    """Bytes, launches (fwd, fwd+bwd) and saved activation bytes per call, fused against eager."""
    entries = {}
    for impl in IMPLS:
        h, w, b, r, s = make_inputs(shape, variant, "meta", requires_grad=True)
        dy = torch.empty(BATCH, shape.tokens, shape.n, device="meta", dtype=DTYPE)
        costs = common.op_costs(lambda: call(impl, h, w, b, r, s), (h, w, b, r), dy, params=(w, b))
        hid_r, hid_w, hid_l = hidden_backward(shape) if impl == "fastmvit" else (0, 0, 0)
        labels = dict(suite="op", op=OP, case=f"{shape.label} {variant}", impl=impl, dtype=DTYPE,
                      batch=BATCH, img=IMG, tokens=shape.tokens, k=shape.k, n=shape.n,
                      blocks=dict(shape.blocks), variant=variant, device="meta")
        total = costs["fwd+bwd"]
        entries[impl, "fwd"] = record.modeled(pass_="fwd", traffic=costs["fwd"], **labels)
        entries[impl, "fwd+bwd"] = record.modeled(
            pass_="fwd+bwd", traffic=total, **labels,
            bytes_read=total.bytes_read + hid_r, bytes_written=total.bytes_written + hid_w,
            bytes=total.bytes + hid_r + hid_w, launches=total.launches + hid_l,
            op_boundary_bytes=total.bytes, op_boundary_launches=total.launches,
            hidden_bytes=hid_r + hid_w, hidden_launches=hid_l,
            forward_bytes=costs["forward"].bytes, forward_launches=costs["forward"].launches,
            backward_bytes=costs["backward"].bytes + hid_r + hid_w,
            backward_launches=costs["backward"].launches + hid_l, saved_bytes=costs["saved_bytes"])
    line = f"\n{shape.label} {variant} (fused / eager):"
    for pass_ in ("fwd", "fwd+bwd"):
        f, e = entries["fastmvit", pass_], entries["eager", pass_]
        for key in ("bytes", "launches", "op_boundary_bytes", "saved_bytes"):
            if key in f:
                f[f"{key}_ratio"] = f[key] / e.get(key, e["bytes"])
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
    if backward:
        dy = torch.randn(BATCH, shape.tokens, shape.n, device=device, dtype=DTYPE)

        def fn():
            torch.autograd.grad(call(impl, h, w, b, r, s), (h, w, b, r), dy)
    else:
        def fn():
            with torch.no_grad():
                call(impl, h, w, b, r, s)
    measure(fn, suite="op", op=OP, case=f"{shape.label} {variant}", impl=impl, pass_=pass_, dtype=DTYPE,
            batch=BATCH, tokens=shape.tokens, k=shape.k, n=shape.n)
