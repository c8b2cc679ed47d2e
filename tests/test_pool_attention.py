"""fastmvit.kernels.pool_attention: the fused Triton op (in the interpreter on CPU) and the torch
path, forward and every gradient, against float64 math written here (docs/design.md, "Pooling attention").

Each case: fresh random inputs at the model's magnitudes (q, k, v LayerNorm'ed: unit scale; tables
0.02-1), float64 output and gradients from `reference_float64`, the eager torch path in the tested
dtype, then the fused op with every buffer it writes poisoned (NaN) first. The fused result must
match float64 within the dtype's tolerance and be at most twice as far from it as eager torch.
"""
from __future__ import annotations

import math

import pytest
import torch

from fastmvit.kernels import use_backend
from fastmvit.kernels import pool_attention
from numerics import DTYPES, assert_matches_float64

tk = pytest.importorskip("fastmvit.kernels.ops.pool_attention.triton_impl")
# Every buffer the Triton launchers allocate starts as NaN: unwritten elements show up.
pytestmark = pytest.mark.usefixtures("poisoned_buffers")


# ------------------------------------------------------------------------------------------------
# float64 reference, written from the math (docs/design.md), independent of kernels/
# ------------------------------------------------------------------------------------------------
def table_index(q_side: int, k_side: int) -> torch.Tensor:
    """Official dist formula (float32 arithmetic, truncated): (q_side, k_side) table rows."""
    q_ratio = max(k_side / q_side, 1.0)
    k_ratio = max(q_side / k_side, 1.0)
    dist = (torch.arange(q_side, dtype=torch.float32)[:, None] * q_ratio
            - torch.arange(k_side, dtype=torch.float32)[None, :] * k_ratio + (k_side - 1) * k_ratio)
    return dist.long()


def reference_float64(q, k, v, th, tw, q_size, k_size, sp, residual, scale):
    """The op in float64 with an explicit (Nq, Nk) bias matrix."""
    q, k, v = q.double(), k.double(), v.double()
    (qh, qw), (kh, kw) = q_size, k_size
    attn = scale * q @ k.transpose(-2, -1)
    if th is not None:
        Rh = th.double()[table_index(qh, kh).to(th.device)]                    # (qh, kh, D)
        Rw = tw.double()[table_index(qw, kw).to(tw.device)]                    # (qw, kw, D)
        ar = lambda n: torch.arange(n, device=q.device)
        ys, xs = torch.meshgrid(ar(qh), ar(qw), indexing="ij")
        js, ls = torch.meshgrid(ar(kh), ar(kw), indexing="ij")
        ys, xs, js, ls = ys.reshape(-1), xs.reshape(-1), js.reshape(-1), ls.reshape(-1)
        qs = q[:, :, sp:]                                                       # (B, H, qh*qw, D)
        # bias[n, m] = q[n] . Rh[y_n, j_m] + q[n] . Rw[x_n, l_m]
        bias = (torch.einsum("bhnc,nmc->bhnm", qs, Rh[ys][:, js])
                + torch.einsum("bhnc,nmc->bhnm", qs, Rw[xs][:, ls]))
        attn = attn.clone()
        attn[:, :, sp:, sp:] = attn[:, :, sp:, sp:] + bias
    out = attn.softmax(-1) @ v
    if residual:
        out = torch.cat([out[:, :, :sp], out[:, :, sp:] + q[:, :, sp:]], dim=2)
    return out


def make_inputs(B, H, q_size, k_size, D, sp, rel=True, table_scale=0.5, qk_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    (qh, qw), (kh, kw) = q_size, k_size
    Nq, Nk = qh * qw + sp, kh * kw + sp
    q = torch.randn(B, H, Nq, D, generator=g, dtype=torch.float64) * qk_scale
    k = torch.randn(B, H, Nk, D, generator=g, dtype=torch.float64) * qk_scale
    v = torch.randn(B, H, Nk, D, generator=g, dtype=torch.float64)
    if not rel:
        return q, k, v, None, None
    th = torch.randn(2 * max(qh, kh) - 1, D, generator=g, dtype=torch.float64) * table_scale
    tw = torch.randn(2 * max(qw, kw) - 1, D, generator=g, dtype=torch.float64) * table_scale
    return q, k, v, th, tw


def run_op(backend, inputs, q_size, k_size, sp, residual, dout, scale=None):
    """Output and gradients (q, k, v, tables) of pool_attention on `backend`."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    with use_backend(backend):
        out = pool_attention(*leaves, q_size, k_size, has_cls_token=bool(sp),
                             residual_pooling=residual, scale=scale)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], dout)
    return out, grads


GRAD_NAMES = ("dq", "dk", "dv", "d_rel_pos_h", "d_rel_pos_w")


def check_case(B, H, q_size, k_size, D, sp, dtype, rel=True, residual=True, scale=None, seed=0,
               device="cpu", **kw):
    """Forward and every gradient on `device` (tests/test_cuda.py passes "cuda") against float64."""
    inputs64 = make_inputs(B, H, q_size, k_size, D, sp, rel=rel, seed=seed, **kw)
    scale_val = D ** -0.5 if scale is None else scale
    # Exact: float64 math on the inputs rounded to the tested dtype (the rounding is not an error).
    inputs = [t.to(dtype).to(device) if t is not None else None for t in inputs64]
    exact_leaves = [t.double().requires_grad_(True) if t is not None else None for t in inputs]
    exact = reference_float64(*exact_leaves, q_size, k_size, sp, residual, scale_val)
    dout = torch.randn(exact.shape, generator=torch.Generator().manual_seed(seed + 1),
                       dtype=torch.float64).to(device)
    exact_grads = torch.autograd.grad(exact, [t for t in exact_leaves if t is not None], dout)

    eager, eager_grads = run_op("torch", inputs, q_size, k_size, sp, residual, dout.to(dtype), scale)
    fused, fused_grads = run_op("triton", inputs, q_size, k_size, sp, residual, dout.to(dtype), scale)
    assert fused.dtype == dtype and fused.shape == exact.shape
    assert fused.transpose(1, 2).is_contiguous(), "output must view a (B, Nq, heads, D) buffer"
    assert_matches_float64(fused, eager, exact, name="out")
    for name, f, e, x in zip(GRAD_NAMES, fused_grads, eager_grads, exact_grads):
        assert f.dtype == dtype
        assert_matches_float64(f, e, x, name=name)


# ------------------------------------------------------------------------------------------------
# Equivalence
# ------------------------------------------------------------------------------------------------
# (B, heads, q grid, k grid, D, class token): square and not, q grid larger and smaller than the k
# grid, fractional grid ratios, Nk of 1, 49, 196 (+1).
SHAPES = [
    pytest.param(1, 3, (3, 5), (7, 6), 72, 1, id="q<k-nonsquare-cls-D72"),
    pytest.param(1, 2, (7, 7), (7, 7), 96, 0, id="Nk49-D96"),
    pytest.param(1, 1, (6, 5), (14, 14), 128, 1, id="Nk197-cls-D128"),
    pytest.param(1, 2, (5, 7), (3, 4), 40, 0, id="fractional-ratios-D40"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,H,q_size,k_size,D,sp", SHAPES)
def test_matches_float64(B, H, q_size, k_size, D, sp, dtype):
    check_case(B, H, q_size, k_size, D, sp, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_head_dim_16(dtype):
    """D = 16, q grid larger than the k grid, class token, B = 2. Not in bfloat16: with 16-term
    sums both the fused and the eager errors are one or two bf16 roundings of the result, and their
    ratio is noise around 1 (0.6 to 2.0 over seeds for dk); bf16 is covered at D >= 40."""
    check_case(2, 2, (5, 3), (4, 3), 16, 1, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_single_key(dtype):
    """Nk = 1 (a 1x1 key grid, no class token): the softmax is exactly 1, so out = v + q, and dk and
    the table gradients are identically zero. Eager torch gets exact zeros (g - g); the fused
    backward's ds = p * (dp - delta) takes dp (a matmul) and delta (a row sum) in different orders,
    so it leaves float32 rounding noise: bound it by eps32 * (terms summed) * (their size)."""
    B, H, q_size, D = 2, 1, (3, 4), 32
    inputs = [t.to(dtype) for t in make_inputs(B, H, q_size, (1, 1), D, 0)]
    exact_leaves = [t.double().requires_grad_(True) for t in inputs]
    exact = reference_float64(*exact_leaves, q_size, (1, 1), 0, True, D ** -0.5)
    dout = torch.randn(exact.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact_grads = torch.autograd.grad(exact, exact_leaves, dout)
    eager, eager_grads = run_op("torch", inputs, q_size, (1, 1), 0, True, dout.to(dtype))
    fused, fused_grads = run_op("triton", inputs, q_size, (1, 1), 0, True, dout.to(dtype))
    assert_matches_float64(fused, eager, exact, name="out")
    q, _, v, _, _ = exact_leaves
    size = dout.abs().max() * v.abs().max() * D ** 0.5 * q.abs().max()       # |dp| * |q| per term
    zero_bound = 2.0 ** -22 * (B * H * q_size[0] * q_size[1]) * size.item()
    for name, f, e, x in zip(GRAD_NAMES, fused_grads, eager_grads, exact_grads):
        if name in ("dq", "dv"):
            assert_matches_float64(f, e, x, name=name)
        else:
            assert x.abs().max() < 1e-12 and torch.isfinite(f).all()
            assert f.abs().max().item() <= zero_bound, f"{name}: {f.abs().max().item():.2e} > {zero_bound:.2e}"


def test_many_keys_float32():
    """Nk above 1024 (a large detection-style key grid): many online-softmax steps, few queries."""
    check_case(1, 1, (2, 3), (34, 31), 24, 1, torch.float32)


def test_head_dim_256_bfloat16():
    check_case(1, 1, (3, 2), (2, 5), 256, 1, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_no_rel_pos_no_residual(dtype):
    check_case(1, 2, (4, 5), (3, 3), 48, 1, dtype, rel=False, residual=False)


def test_rel_pos_without_residual_custom_scale():
    check_case(1, 1, (4, 3), (6, 2), 24, 0, torch.float16, residual=False, scale=0.3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_large_logits_are_stable(dtype):
    """Logits in the hundreds (q, k at 6x scale, tables at 2x): the online softmax must not overflow,
    and half precision must still match float64 (eager half torch is far off here)."""
    check_case(1, 1, (5, 4), (6, 6), 32, 1, dtype, qk_scale=6.0, table_scale=2.0)


def test_large_logits_float32_forward():
    """The same in float32, forward only. (The float32 gradients at logits ~150 differ from float64
    by ~|logit| * eps32 relative, because the backward recomputes P = exp2(s - lse) and an ulp of
    s near 150 is 1.5e-5: inherent to not storing P, and above the unit-logit 1e-5 tolerance.)"""
    inputs = [t.float() for t in make_inputs(1, 1, (5, 4), (6, 6), 32, 1, qk_scale=6.0, table_scale=2.0)]
    exact = reference_float64(*inputs, (5, 4), (6, 6), 1, True, 32 ** -0.5)
    with use_backend("torch"):
        eager = pool_attention(*inputs, (5, 4), (6, 6), has_cls_token=True)
    with use_backend("triton"):
        fused = pool_attention(*inputs, (5, 4), (6, 6), has_cls_token=True)
    assert_matches_float64(fused, eager, exact, name="out")


def test_other_interpreter_tilings(monkeypatch):
    """A tiling with BLOCK_M != BLOCK_N and tiles crossing grid rows and the class token."""
    monkeypatch.setattr(tk, "INTERPRETER_CONFIGS", {k: {"BLOCK_M": 16, "BLOCK_N": 64} for k in ("fwd", "dkdv", "dq")})
    check_case(1, 1, (5, 7), (9, 8), 32, 1, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_launch_dq(monkeypatch, dtype):
    """dQ in two launches (REL_PART: a float32 partial dq, then drel and the table rows), the
    path DQ_ONE_PASS = False keeps: values and every gradient against float64."""
    monkeypatch.setattr(tk, "DQ_ONE_PASS", False)
    check_case(2, 2, (5, 7), (3, 4), 24, 1, dtype)


def test_strided_inputs():
    """q, k, v as they come out of a (B, N, 3, heads, D) qkv buffer (no copies), a table that is a
    column slice, and a head dim that is not contiguous (handled by strides)."""
    B, H, D, sp = 1, 2, 24, 1
    q_size, k_size = (4, 3), (4, 3)
    N = 4 * 3 + sp
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(B, N, 3, H, D, generator=g).permute(2, 0, 3, 1, 4)      # each (B, H, N, D), strided
    q, k, v = qkv[0], qkv[1], qkv[2]
    th = torch.randn(7, 2 * D, generator=g)[:, ::2]                             # stride (2D, 2)
    tw = torch.randn(5, D, D + 3, generator=g)[:, :, 1]                         # stride (D*(D+3), D+3)
    assert not q.is_contiguous() and th.stride(1) == 2
    dout = torch.randn(B, H, N, D, generator=g)
    exact_leaves = [t.double().requires_grad_(True) for t in (q, k, v, th, tw)]
    exact = reference_float64(*exact_leaves, q_size, k_size, sp, True, D ** -0.5)
    exact_grads = torch.autograd.grad(exact, exact_leaves, dout.double())
    fused, grads = run_op("triton", (q, k, v, th, tw), q_size, k_size, sp, True, dout)
    assert_matches_float64(fused, None, exact, name="out")
    for name, f, x in zip(GRAD_NAMES, grads, exact_grads):
        assert_matches_float64(f, None, x, name=name)
    # A head dim that is not the contiguous one (stride N along D) also works.
    qt = q.detach().transpose(-1, -2).contiguous().transpose(-1, -2)
    with use_backend("triton"):
        out_t = pool_attention(qt, k, v, th, tw, q_size, k_size, has_cls_token=True)
    assert_matches_float64(out_t, None, exact.detach(), name="out (transposed D)")


# ------------------------------------------------------------------------------------------------
# The torch path itself, log-sum-exp, determinism
# ------------------------------------------------------------------------------------------------
def test_torch_path_float64_is_exact():
    inputs = make_inputs(2, 2, (4, 5), (3, 2), 16, 1)
    exact = reference_float64(*inputs, (4, 5), (3, 2), 1, True, 0.25)
    with use_backend("torch"):
        out = pool_attention(*inputs, (4, 5), (3, 2), has_cls_token=True, scale=0.25)
    assert out.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(out, exact, rtol=1e-12, atol=1e-12)


def test_lse_is_the_row_logsumexp():
    q, k, v, th, tw = [t.float() for t in make_inputs(1, 2, (3, 4), (5, 2), 16, 1)]
    out, lse = torch.ops.fastmvit.pool_attention(q, k, v, th, tw, [3, 4], [5, 2], True, True, 0.25)
    # Scores in float64 without the softmax: the reference on a value matrix of one-hots would be
    # roundabout; rebuild the logits directly.
    qd, kd = q.double(), k.double()
    Rh, Rw = th.double()[table_index(3, 5)], tw.double()[table_index(4, 2)]
    rel_h = torch.einsum("bhyxc,yjc->bhyxj", qd[:, :, 1:].reshape(1, 2, 3, 4, 16), Rh)
    rel_w = torch.einsum("bhyxc,xlc->bhyxl", qd[:, :, 1:].reshape(1, 2, 3, 4, 16), Rw)
    s = 0.25 * qd @ kd.transpose(-1, -2)
    s[:, :, 1:, 1:] += (rel_h[..., :, None] + rel_w[..., None, :]).reshape(1, 2, 12, 10)
    # lse is kept in base 2 (log2 sum exp s = logsumexp(s) * log2(e))
    torch.testing.assert_close(lse.double() * math.log(2), torch.logsumexp(s, -1), rtol=1e-5, atol=1e-5)


def test_backward_is_deterministic():
    inputs = [t.to(torch.bfloat16) for t in make_inputs(1, 2, (5, 3), (4, 3), 16, 1)]
    dout = torch.randn(1, 2, 16, 16).to(torch.bfloat16)
    _, g1 = run_op("triton", inputs, (5, 3), (4, 3), 1, True, dout)
    _, g2 = run_op("triton", inputs, (5, 3), (4, 3), 1, True, dout)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# Custom op: meta tensors, torch.compile
# ------------------------------------------------------------------------------------------------
def test_meta_tensors_go_through_the_custom_op():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    q, k, v, th, tw = [t.to("meta", torch.bfloat16).requires_grad_(True)
                       for t in make_inputs(2, 4, (14, 14), (7, 7), 96, 1)]
    with use_backend("triton"), Ops() as ops:
        out = pool_attention(q, k, v, th, tw, (14, 14), (7, 7), has_cls_token=True)
        out.sum().backward()
    assert out.device.type == "meta" and out.shape == (2, 4, 197, 96)
    assert out.transpose(1, 2).is_contiguous()
    assert "fastmvit.pool_attention" in ops.names
    assert "fastmvit.pool_attention_backward" in ops.names
    assert not any(n.startswith("aten.bmm") or n.startswith("aten._softmax") for n in ops.names)
    assert q.grad.shape == q.shape and th.grad.shape == th.shape


def test_torch_compile_fullgraph_aot_eager():
    torch._dynamo.reset()
    inputs = [t.float() for t in make_inputs(1, 2, (4, 3), (3, 3), 16, 1)]
    dout = torch.randn(1, 2, 13, 16)

    def f(q, k, v, th, tw):
        return pool_attention(q, k, v, th, tw, (4, 3), (3, 3), has_cls_token=True)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    with use_backend("triton"):
        out = compiled(*leaves)
        grads = torch.autograd.grad(out, leaves, dout)
        ref_out, ref_grads = run_op("triton", inputs, (4, 3), (3, 3), 1, True, dout)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
def _good(dtype=torch.float32):
    return [t.to(dtype) for t in make_inputs(1, 2, (4, 3), (2, 3), 16, 1)]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.__setitem__(0, a[0][0]), "rank 4"),
    (lambda a: a.__setitem__(1, a[1][:, :1]), "batch/heads"),
    (lambda a: a.__setitem__(2, a[2][..., :8]), "head dim"),
    (lambda a: a.__setitem__(0, a[0][:, :, :-1]), "q has 12 tokens"),
    (lambda a: (a.__setitem__(1, a[1][:, :, :-1]), a.__setitem__(2, a[2][:, :, :-1])), "k/v have 6 tokens"),
    (lambda a: a.__setitem__(3, a[3][:-1]), "rel_pos_h has 6 rows"),
    (lambda a: a.__setitem__(4, torch.cat([a[4], a[4][:1]])), "rel_pos_w has 6 rows"),
    (lambda a: a.__setitem__(4, None), "both rel_pos_h and rel_pos_w"),
    (lambda a: a.__setitem__(1, a[1].half()), "mixed dtypes"),
    (lambda a: a.__setitem__(3, a[3].half()), "rel_pos_h has dtype"),
    (lambda a: a.__setitem__(2, a[2].to("meta")), "mixed devices"),
    (lambda a: a.__setitem__(0, a[0].int()), "dtype torch.int32"),
], ids=["rank", "heads", "head-dim", "nq", "nk", "table-h", "table-w", "one-table", "dtype", "table-dtype",
        "device", "int"])
def test_bad_input_raises(backend, mutate, match):
    args = _good()
    mutate(args)
    error = TypeError if "dtype" in match else ValueError     # a dtype fault is a TypeError in every op
    with use_backend(backend), pytest.raises(error, match=match):
        pool_attention(*args, (4, 3), (2, 3), has_cls_token=True)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="q_size"):
        pool_attention(*_good(), (4,), (2, 3), has_cls_token=True)
    with pytest.raises(ValueError, match="k_size must be positive"):
        pool_attention(*_good(), (4, 3), (0, 3), has_cls_token=True)


def test_triton_limits_raise(monkeypatch):
    with use_backend("triton"):
        with pytest.raises(TypeError, match="float64"):
            pool_attention(*_good(torch.float64), (4, 3), (2, 3), has_cls_token=True)
        big = [t.repeat_interleave(17, -1) for t in _good()]                      # D = 272
        with pytest.raises(ValueError, match="head dims up to 256"):
            pool_attention(*big, (4, 3), (2, 3), has_cls_token=True)
        monkeypatch.setenv("TRITON_INTERPRET", "0")   # read when the op is called
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            pool_attention(*_good(), (4, 3), (2, 3), has_cls_token=True)
