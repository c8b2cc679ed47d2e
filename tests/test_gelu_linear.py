"""fastmvit.kernels.gelu_linear (GELU + fc2 + residual, fused) against float64 math.

The reference is written out here in float64 (erf GELU, matmul, bias, per-sample scale, residual),
independent of the op's own torch path. The Triton kernels run in the interpreter on CPU
(tests/conftest.py sets TRITON_INTERPRET=1). Every buffer the launchers allocate is poisoned with NaN
first, so an unwritten value fails the test. Shapes are small and odd: T = 50 and 197 tokens (not a
multiple of any block), K = 40 / 96 / 136, N = 24 / 72.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastmvit
from fastmvit.kernels import gelu_linear
from fastmvit.kernels.ops.gelu_linear import triton_impl as glt
from numerics import DTYPES, TOLERANCE, assert_matches_float64

# Every buffer the launchers allocate (outputs and dW partials) starts as NaN.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("poisoned_buffers")]


def reference(h, w, b, r, s, gelu=True):
    """residual + s[b] * (gelu(h) @ w^T + bias), in the arguments' dtype (float64 here); h
    itself for gelu(h) when not gelu."""
    a = 0.5 * h * (1 + torch.erf(h / math.sqrt(2.0))) if gelu else h
    y = a @ w.transpose(0, 1)
    if b is not None:
        y = y + b
    if s is not None:
        y = y * s.view(-1, 1, 1)
    return y if r is None else r + y


def make_inputs(B, T, K, N, bias, residual, scale, dtype, param_dtype=None, residual_dtype=None, seed=0):
    """[h, weight, bias, residual, sample_scale] (None where absent), random and never zero, in their
    dtypes; sample_scale has a dropped sample (0) when B > 1."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    param_dtype = param_dtype or dtype
    h = (1.5 * rand(B, T, K)).to(dtype)
    w = (rand(N, K) / math.sqrt(K)).to(param_dtype)
    b = (0.5 * rand(N)).to(param_dtype) if bias else None
    r = rand(B, T, N).to(residual_dtype or dtype) if residual else None
    s = None
    if scale:
        s = (1 / 0.8) * (torch.arange(B) % 3 != 1).to(torch.float32)   # keep, drop, keep, ...
    return [h, w, b, r, s]


def run(values, backend, dy, gelu=True):
    """y and the gradients of h, weight, bias, residual (None where absent or not differentiable)."""
    leaves = [None if v is None else v.clone().requires_grad_(i < 4) for i, v in enumerate(values)]
    with fastmvit.use_backend(backend):
        y = gelu_linear(*leaves, gelu=gelu)
    diff = [t for t in leaves[:4] if t is not None]
    grads = iter(torch.autograd.grad(y, diff, dy))
    return y, [None if t is None else next(grads) for t in leaves[:4]]


def check_against_float64(B, T, K, N, dtype, *, bias=True, residual=True, scale=True, param_dtype=None,
                          residual_dtype=None, device="cpu", gelu=True):
    """Forward values and every gradient of the Triton path against float64; the eager torch path in
    the same dtype sets how far the fused path may be (at most twice its error). The float64
    reference starts from the same (rounded) values."""
    values = make_inputs(B, T, K, N, bias, residual, scale, dtype, param_dtype, residual_dtype)
    values = [None if v is None else v.to(device) for v in values]   # tests/test_cuda.py: "cuda"
    y_dtype = residual_dtype if residual and residual_dtype else dtype
    exact_leaves = [None if v is None else v.double().requires_grad_(i < 4) for i, v in enumerate(values)]
    exact = reference(*exact_leaves, gelu=gelu)
    gen = torch.Generator().manual_seed(1)
    dy = torch.randn(exact.shape, generator=gen, dtype=torch.float64).to(y_dtype).to(device)
    diff = [t for t in exact_leaves[:4] if t is not None]
    grads = iter(torch.autograd.grad(exact, diff, dy.double()))
    exact_grads = [None if t is None else next(grads) for t in exact_leaves[:4]]

    y, fused = run(values, "triton", dy, gelu)
    y_eager, eager = run(values, "torch", dy, gelu)
    assert y.dtype == y_dtype and y.shape == (B, T, N) and y.is_contiguous()
    assert_matches_float64(y, y_eager, exact.detach(), name="y", tolerance=TOLERANCE[dtype])
    for name, g, e, ref, v in zip(("d_h", "d_weight", "d_bias", "d_residual"), fused, eager,
                                  exact_grads, values):
        if v is None:
            assert g is None, name
            continue
        assert g.dtype == v.dtype and g.shape == v.shape, name
        # float32 parameters of a half computation: the computation's dtype sets the tolerance
        assert_matches_float64(g, e, ref, name=name, tolerance=TOLERANCE[dtype])
    if residual:
        assert torch.equal(fused[3], dy)            # d residual is dy itself


# (B, T, K, N): odd token counts, K and N not multiples of the blocks
SHAPES = [(2, 50, 40, 24), (1, 197, 136, 72), (2, 50, 96, 24)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_all_extras(shape, dtype):
    check_against_float64(*shape, dtype)


@pytest.mark.parametrize("extras", [dict(bias=False, residual=False, scale=False),
                                    dict(bias=True, residual=False, scale=False),
                                    dict(bias=False, residual=True, scale=False),
                                    dict(bias=False, residual=True, scale=True)],
                         ids=["plain", "bias", "residual", "residual+scale"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_without_extras(extras, dtype):
    check_against_float64(2, 50, 40, 24, dtype, **extras)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_without_gelu(dtype):
    """gelu=False: the Linear with bias, sample scale and residual (the attention projection)."""
    check_against_float64(2, 50, 40, 24, dtype, gelu=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_float32_parameters(dtype):
    """The autocast case: float32 weight and bias, half h; their gradients come back in float32."""
    check_against_float64(2, 50, 40, 24, dtype, param_dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_autocast_float32_residual(dtype):
    """The model under autocast: half h, float32 parameters and a float32 residual stream; y and
    its gradient dy are float32 (as eager's ``x + out`` promotes), d residual is dy."""
    check_against_float64(2, 50, 40, 24, dtype, param_dtype=torch.float32, residual_dtype=torch.float32)


def test_dw_split_over_rows(monkeypatch):
    """dW and db summed over several row splits (the last one ragged) in the fixed-order kernel."""
    monkeypatch.setattr(glt, "DW_MIN_ROWS", 32)
    assert glt.dw_splits(2 * 197, 24, 40, glt.INTERPRETER_CONFIGS["dw"]["BLOCK_N"], glt.INTERPRETER_CONFIGS["dw"]["BLOCK_K"], 32) == (7, 64)   # last: 10 rows
    check_against_float64(2, 197, 40, 24, torch.float32)
    check_against_float64(2, 197, 40, 24, torch.bfloat16)


def test_other_tiling(monkeypatch):
    """Blocks wider than the dims (64 > N = 24 and K = 40) and a 16-wide reduction step."""
    monkeypatch.setattr(glt, "INTERPRETER_CONFIGS", {"fwd": {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16},
                                                     "dh": {"BLOCK_M": 16, "BLOCK_K": 64, "BLOCK_N": 16},
                                                     "dw": {"BLOCK_N": 16, "BLOCK_K": 64, "BLOCK_M": 16}})
    check_against_float64(2, 50, 40, 24, torch.float32)


def test_strided_inputs_and_expanded_grad():
    """h and residual as transposed views, dy an expanded (stride 0) gradient from y.sum()."""
    gen = torch.Generator().manual_seed(3)
    h64 = torch.randn(50, 2, 40, generator=gen, dtype=torch.float64).transpose(0, 1)   # (2, 50, 40)
    r64 = torch.randn(50, 2, 24, generator=gen, dtype=torch.float64).transpose(0, 1)
    w64 = torch.randn(24, 40, generator=gen, dtype=torch.float64) / math.sqrt(40)
    b64 = torch.randn(24, generator=gen, dtype=torch.float64)
    s = torch.tensor([1.25, 0.0])
    exact = [t.clone().requires_grad_() for t in (h64, w64, b64, r64)]
    reference(*exact, s).sum().backward()
    leaves = [t.float().requires_grad_() for t in (h64, w64, b64, r64)]
    assert not leaves[0].is_contiguous()
    with fastmvit.use_backend("triton"):
        y = gelu_linear(*leaves, s)
    y.sum().backward()
    assert_matches_float64(y, None, reference(h64, w64, b64, r64, s), name="y")
    for name, t, e in zip(("d_h", "d_weight", "d_bias", "d_residual"), leaves, exact):
        assert_matches_float64(t.grad, None, e.grad, name=name)


def test_backward_is_deterministic():
    values = make_inputs(2, 50, 40, 24, True, True, True, torch.bfloat16)
    dy = torch.randn(2, 50, 24).to(torch.bfloat16)
    _, first = run(values, "triton", dy)
    _, second = run(values, "triton", dy)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_no_rows():
    """B * T = 0: an empty y, zero dW and db, nothing launched."""
    h = torch.randn(0, 5, 8, requires_grad=True)
    w = torch.randn(4, 8, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    with fastmvit.use_backend("triton"):
        y = gelu_linear(h, w, b)
    assert y.shape == (0, 5, 4)
    dh, dw, db = torch.autograd.grad(y, (h, w, b), torch.empty_like(y))
    assert dh.shape == h.shape and torch.equal(dw, torch.zeros_like(w)) and torch.equal(db, torch.zeros_like(b))


def test_torch_backend_float64():
    values = make_inputs(2, 50, 40, 24, True, True, True, torch.float64)
    values[4] = values[4].double()
    with fastmvit.use_backend("torch"):
        y = gelu_linear(*values)
    torch.testing.assert_close(y, reference(*values), rtol=1e-12, atol=1e-12)
    with fastmvit.use_backend("triton"), pytest.raises(TypeError, match="float64"):
        gelu_linear(*values)


def test_auto_backend_on_cpu_is_torch(monkeypatch):
    """'auto' runs plain torch on CPU tensors: the launchers are never called."""
    monkeypatch.setattr(glt, "forward", lambda *a, **k: pytest.fail("triton path taken"))
    values = make_inputs(1, 5, 8, 4, True, False, False, torch.float32)
    with fastmvit.use_backend("auto"):
        y = gelu_linear(*values)
    exact = reference(*[None if v is None else v.double() for v in values])
    torch.testing.assert_close(y, exact.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_meta_device_fake_impls(param_dtype):
    """On meta tensors the fake implementations give what the kernels return (shapes, dtypes)."""
    B, T, K, N = 8, 197, 384, 96
    h = torch.empty(B, T, K, device="meta", dtype=torch.bfloat16, requires_grad=True)
    w = torch.empty(N, K, device="meta", dtype=param_dtype, requires_grad=True)
    b = torch.empty(N, device="meta", dtype=param_dtype, requires_grad=True)
    r = torch.empty(B, T, N, device="meta", dtype=torch.bfloat16, requires_grad=True)
    s = torch.empty(B, device="meta")
    with fastmvit.use_backend("triton"):
        y = gelu_linear(h, w, b, r, s)
    assert (y.shape, y.dtype, y.device.type) == ((B, T, N), torch.bfloat16, "meta") and y.is_contiguous()
    dh, dw, db, dr = torch.autograd.grad(y, (h, w, b, r), torch.empty_like(y))
    assert (dh.shape, dh.dtype) == ((B, T, K), torch.bfloat16)
    assert (dw.shape, dw.dtype) == ((N, K), param_dtype)
    assert (db.shape, db.dtype) == ((N,), param_dtype)
    assert (dr.shape, dr.dtype) == ((B, T, N), torch.bfloat16)
    grads = torch.ops.fastmvit.gelu_linear_backward(torch.empty_like(y), h, w, None, s)
    assert len(grads) == 2                                # no bias: no db


def test_one_op_each_way_under_compile():
    """torch.compile(fullgraph=True, aot_eager): the op traces (no graph break), forward and backward
    match the eager triton path."""
    torch._dynamo.reset()
    values = make_inputs(2, 50, 40, 24, True, True, True, torch.float32)
    dy = torch.randn(2, 50, 24)

    def mlp_tail(h, w, b, r, s):
        return gelu_linear(h, w, b, r, s) * 1.0

    results = []
    for fn in (mlp_tail, torch.compile(mlp_tail, fullgraph=True, backend="aot_eager")):
        leaves = [v.clone().requires_grad_(i < 4) for i, v in enumerate(values)]
        with fastmvit.use_backend("triton"):
            y = fn(*leaves)
        results.append([y] + list(torch.autograd.grad(y, leaves[:4], dy)))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    torch._dynamo.reset()


def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


@pytest.mark.parametrize("args, error, words", [
    ((_t(6, 8), _t(4, 8)), ValueError, "3-D"),
    ((_t(2, 3, 8), _t(4, 8, 1)), ValueError, "weight must be a 2-D"),
    ((_t(2, 3, 8), _t(4, 7)), ValueError, "K = 8"),
    ((_t(2, 3, 8), _t(4, 8), _t(5)), ValueError, "bias must be"),
    ((_t(2, 3, 8), _t(4, 8), None, _t(2, 3, 5)), ValueError, "residual must be"),
    ((_t(2, 3, 8), _t(4, 8), None, _t(2, 3, 4), _t(3)), ValueError, "sample_scale must be"),
    ((_t(2, 3, 8), _t(4, 8), None, None, _t(2)), ValueError, "needs a residual"),
    ((_t(2, 3, 8), _t(4, 8), None, _t(2, 3, 4), torch.ones(2, dtype=torch.int64)), TypeError, "floating"),
    ((_t(2, 3, 8), _t(4, 8, device="meta")), ValueError, "weight is on meta"),
    ((_t(2, 3, 8), _t(4, 8), None, _t(2, 3, 4, device="meta")), ValueError, "residual is on meta"),
    ((_t(2, 3, 8, dtype=torch.bfloat16), _t(4, 8, dtype=torch.float16)), TypeError, "weight dtype"),
    ((_t(2, 3, 8, dtype=torch.bfloat16), _t(4, 8), _t(4, dtype=torch.float16)), TypeError, "bias dtype"),
    ((_t(2, 3, 8, dtype=torch.bfloat16), _t(4, 8), None, _t(2, 3, 4, dtype=torch.float16)), TypeError, "residual dtype"),
    ((torch.ones(2, 3, 8, dtype=torch.int32), _t(4, 8)), TypeError, "not supported"),
])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_errors(args, error, words, backend):
    with fastmvit.use_backend(backend), pytest.raises(error, match=words):
        gelu_linear(*args)
