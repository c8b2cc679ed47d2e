"""Speed and memory of the fused pooling attention (fastmvit.kernels.pool_attention) against eager
torch, SDPA with an additive bias and compiled FlexAttention, at the MViTv2 shapes (docs/design.md, "Pooling attention").

    .venv/bin/python -m pytest benchmarks/bench_pool_attention.py --benchmark-json out.json

Uses the suite fixtures of benchmarks/conftest.py (`attention_shape`, `bench_dtype`, `measure`,
`record`, `on_meta`). On CUDA: forward and forward+backward times of every contender. Without
CUDA the timings are skipped (a Triton-interpreter run is never timed) and what is recorded is the
modeled memory traffic per call: the fused op (analytic: q, k, v and the tables read once, out and
lse written once; backward: its four passes) against eager torch (every dispatched aten op's inputs
read and outputs written, counted by fastmvit.costmodel on meta tensors).
"""
from __future__ import annotations

import pytest
import torch

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


def fused_bytes(shape, dtype, batch=BATCH, backward=False) -> dict:
    """Analytic HBM traffic of the fused op (K/V re-reads across query tiles hit L2, not counted).

    Forward: read q, k, v, tables; write out and lse (float32). Backward: pass 1 reads q, k, v,
    dout, writes delta and rel terms (float32, Nq * (KH_PAD + KW_PAD)); dK/dV reads q, k, v, dout,
    lse, delta, rel and writes dk, dv; dQ (two launches with rel-pos) reads the same twice plus its
    float32 partial dq, and writes that, dq and drel; the table gradients read drel and q (a
    float32 copy in torch) and write the tables' gradients."""
    e = torch.finfo(dtype).bits // 8
    B, H, D, Nq, Nk = batch, shape.heads, shape.head_dim, shape.nq, shape.nk
    pad = lambda n: max(16, 1 << (n - 1).bit_length())
    rel = (pad(shape.kv_grid[0]) + pad(shape.kv_grid[1])) * 4
    tables = (shape.rel_len[0] + shape.rel_len[1]) * D * e
    qb, kb, lse = B * H * Nq * D * e, B * H * Nk * D * e, B * H * Nq * 4
    read = qb + 2 * kb + tables
    written = qb + lse
    if backward:
        relb = B * H * Nq * rel
        read += qb + 2 * kb + qb + tables                                    # pass 1 (dout in q's place)
        written += lse + relb
        read += 2 * qb + 2 * kb + 2 * lse + relb                             # dK/dV
        written += 2 * kb
        dq32 = B * H * Nq * D * 4
        read += 2 * (2 * qb + 2 * kb + 2 * lse + relb) + dq32 + tables       # dQ, two launches
        written += dq32 + qb + relb                                          # dq32, dq, drel
        read += relb + qb                                                    # table gradients
        written += tables
    return dict(bytes_read=read, bytes_written=written, bytes=read + written)


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
    rel_h, rel_w = rel_terms(q[:, :, sp:], th, tw, shape.q_grid, shape.kv_grid)
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
        rel_h, rel_w = rel_terms(q[:, :, sp:], th, tw, shape.q_grid, shape.kv_grid)
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


def test_modeled_traffic(attention_shape, record, on_meta):
    """Bytes read + written per call, fused vs eager, forward and forward+backward (any device)."""
    from fastmvit.costmodel import count_traffic
    shape = attention_shape
    dtype = torch.bfloat16
    case = shape.label
    inputs = on_meta(*_inputs(shape, dtype, "cpu", requires_grad=True))

    def eager_fwd_bwd(*xs):
        out = _eager(*xs, shape)
        out.backward(torch.ones_like(out))

    for pass_, fn, backward in (("fwd", lambda *xs: _eager(*xs, shape), False), ("fwd+bwd", eager_fwd_bwd, True)):
        eager = count_traffic(fn, *inputs)
        fused = fused_bytes(shape, dtype, backward=backward)
        record.modeled(suite="op", case=case, impl="eager", pass_=pass_, dtype=dtype, traffic=eager)
        record.modeled(suite="op", case=case, impl="fastmvit", pass_=pass_, dtype=dtype, **fused)
        assert fused["bytes"] < eager.bytes, (pass_, fused["bytes"], eager.bytes)


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

    if pass_ == "fwd":
        def call():
            with torch.no_grad():
                fn(*inputs, shape)
    else:
        dout = torch.randn(BATCH, shape.heads, shape.nq, shape.head_dim, dtype=bench_dtype, device=device)

        def call():
            torch.autograd.grad(fn(*inputs, shape), inputs, dout)
    measure(call, suite="op", case=shape.label, impl=impl, pass_=pass_, dtype=bench_dtype)
