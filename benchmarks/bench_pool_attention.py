"""Speed and memory of the fused pooling attention (fastmvit.kernels.pool_attention) against eager
torch, SDPA with an additive bias and compiled FlexAttention, at the MViTv2 shapes (docs/design.md, "Pooling attention").

    .venv/bin/python -m pytest benchmarks/bench_pool_attention.py --benchmark-json out.json

Uses the suite fixtures of benchmarks/conftest.py (`attention_shape`, `bench_dtype`, `measure`,
`record`; the modeled counts from `common.modeled_passes`). On CUDA: forward and forward+backward times of every contender. Without
CUDA the timings are skipped (a Triton-interpreter run is never timed) and what is recorded is the
modeled memory traffic per call, both counted by fastmvit.costmodel on meta tensors: the fused op
(every kernel launch by its launcher's traffic statement, the backward's passes and scratch
included) against eager torch (every dispatched aten op's inputs read and outputs written).
"""
from __future__ import annotations

import pytest
import torch

from benchmarks import common

from fastmvit.kernels import use_backend
from fastmvit.kernels import pool_attention

BATCH = 8


def _inputs(shape, dtype, device, batch=BATCH, requires_grad=False):
    B, H, D = batch, shape.heads, shape.head_dim
    g = dict(dtype=dtype, device=device)
    q = torch.randn(B, H, shape.nq, D, **g)
    k = torch.randn(B, H, shape.nk, D, **g)
    v = torch.randn(B, H, shape.nk, D, **g)
    th = torch.randn(shape.rel_len[0], D, **g) * 0.1
    tw = torch.randn(shape.rel_len[1], D, **g) * 0.1
    return [t.requires_grad_(requires_grad) for t in (q, k, v, th, tw)]


def _eager(q, k, v, th, tw, shape):
    with use_backend("torch"):
        return pool_attention(q, k, v, th, tw, shape.q_grid, shape.kv_grid, has_cls_token=shape.cls)


def _fused(q, k, v, th, tw, shape):
    with use_backend("triton"):
        return pool_attention(q, k, v, th, tw, shape.q_grid, shape.kv_grid, has_cls_token=shape.cls)


def _sdpa(q, k, v, th, tw, shape):
    """SDPA with the rel-pos bias materialised as an (B, H, Nq, Nk) additive mask."""
    from fastmvit.kernels.ops.pool_attention.torch_impl import rel_terms
    B, H, Nq, D = q.shape
    sp = int(shape.cls)
    (qh, qw), (kh, kw) = shape.q_grid, shape.kv_grid
    rel_h, rel_w = rel_terms(q[:, :, sp:], (th, tw), shape.q_grid, shape.kv_grid)
    bias = q.new_zeros(B, H, Nq, k.shape[2])
    bias[:, :, sp:, sp:] = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, H, qh * qw, kh * kw)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return torch.cat([out[:, :, :sp], out[:, :, sp:] + q[:, :, sp:]], dim=2)


def _flex_fn(shape):
    """Compiled FlexAttention with a score_mod reading precomputed rel_h / rel_w (None if absent)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    from fastmvit.kernels.ops.pool_attention.torch_impl import rel_terms
    flex = torch.compile(flex_attention)
    sp = int(shape.cls)
    (qh, qw), (kh, kw) = shape.q_grid, shape.kv_grid

    def run(q, k, v, th, tw, shape):
        B, H = q.shape[:2]
        rel_h, rel_w = rel_terms(q[:, :, sp:], (th, tw), shape.q_grid, shape.kv_grid)
        rel_h = rel_h.reshape(B, H, qh * qw, kh)
        rel_w = rel_w.reshape(B, H, qh * qw, kw)

        def score_mod(score, b, h, m, n):
            spatial = (m >= sp) & (n >= sp)
            mq = torch.clamp(m - sp, min=0)
            nk = torch.clamp(n - sp, min=0)
            bias = rel_h[b, h, mq, nk // kw] + rel_w[b, h, mq, nk % kw]
            return score + torch.where(spatial, bias, torch.zeros_like(bias))

        out = flex(q, k, v, score_mod=score_mod)
        return torch.cat([out[:, :, :sp], out[:, :, sp:] + q[:, :, sp:]], dim=2)
    return run


def test_modeled_traffic(attention_shape, record):
    """Bytes read + written per call, fused vs eager, forward and forward+backward (any device)."""
    shape = attention_shape
    dtype = torch.bfloat16
    impls = {name: (lambda *xs, impl=impl: impl(*xs, shape)) for name, impl in (("eager", _eager), ("fastmvit", _fused))}
    for pass_, counts in common.modeled_passes(impls, lambda: _inputs(shape, dtype, "cpu", requires_grad=True)).items():
        for name, traffic in counts.items():
            record.modeled(suite="op", case=shape.label, impl=name, pass_=pass_, dtype=dtype, traffic=traffic)
        assert counts["fastmvit"].bytes < counts["eager"].bytes, (pass_, counts)


CONTENDERS = ("eager", "fastmvit", "sdpa", "flex")


@pytest.mark.parametrize("impl", CONTENDERS)
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_speed(attention_shape, bench_dtype, impl, pass_, measure, device):
    if device != "cuda":
        pytest.skip("GPU timings need CUDA (the Triton kernels are never timed in the interpreter)")
    shape = attention_shape
    fn = {"eager": _eager, "fastmvit": _fused, "sdpa": _sdpa, "flex": _flex_fn(shape)}[impl]
    if fn is None:
        pytest.skip("FlexAttention is not available in this torch")
    inputs = _inputs(shape, bench_dtype, device, requires_grad=pass_ == "fwd+bwd")
    dout = None if pass_ == "fwd" else \
        torch.randn(BATCH, shape.heads, shape.nq, shape.head_dim, dtype=bench_dtype, device=device)
    measure(common.op_call(lambda: fn(*inputs, shape), inputs, dout), suite="op", case=shape.label, impl=impl, pass_=pass_, dtype=bench_dtype)
