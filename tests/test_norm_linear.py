"""fastmvit.kernels.norm_linear (LayerNorm folded into the next Linear) against float64 math.

The reference is written out here in float64 (mean, biased variance, affine, matmul, bias). The
Triton kernels run in the interpreter (tests/conftest.py); every buffer the launchers allocate is
poisoned with NaN first. Shapes are small and odd: 37 and 197 tokens, K = 40 / 136 (not multiples
of the blocks: the statistics cross BLOCK_K steps and end ragged), N = 56 / 24. Inputs have a
non-zero mean per row, so the statistics' centring matters.
"""
from __future__ import annotations

import pytest
import torch

import fastmvit
from fastmvit.kernels import norm_linear
from fastmvit.kernels.ops.gelu_linear import triton_impl as glt
from fastmvit.kernels.ops.norm_linear import triton_impl as nlt
from numerics import DTYPES, TOLERANCE, assert_matches_float64

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("poisoned_buffers")]


def reference(x, g, beta, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = ((x - mean) / torch.sqrt(var + eps) * g + beta) @ w.transpose(0, 1)
    return y if b is None else y + b


def make_inputs(B, T, K, N, dtype, bias=True, param_dtype=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    p = param_dtype or dtype
    x = (2 * rand(B, T, K) + rand(B, T, 1)).to(dtype)            # a mean of its own per row
    g, beta = (1 + 0.3 * rand(K)).to(p), (0.2 * rand(K)).to(p)
    w = (rand(N, K) / K ** 0.5).to(p)
    b = (0.5 * rand(N)).to(p) if bias else None
    return [x, g, beta, w, b]


def run(values, backend, dy, autocast_dtype=None):
    leaves = [None if v is None else v.clone().requires_grad_() for v in values]
    kind = values[0].device.type
    with fastmvit.use_backend(backend), torch.autocast(kind, dtype=autocast_dtype or torch.bfloat16,
                                                       enabled=autocast_dtype is not None):
        y = norm_linear(*leaves, eps=1e-6)
    diff = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, diff, dy.to(y.dtype)))
    return y, [None if t is None else next(grads) for t in leaves]


def check_against_float64(B, T, K, N, dtype, bias=True, param_dtype=None, autocast_dtype=None, device="cpu"):
    """Values and every gradient; the eager torch path in the same dtypes sets how far the fused
    one may be (at most twice its error). device: "cuda" in tests/test_cuda.py."""
    values = [None if v is None else v.to(device) for v in make_inputs(B, T, K, N, dtype, bias, param_dtype)]
    exact_leaves = [None if v is None else v.double().requires_grad_() for v in values]
    exact = reference(*exact_leaves, 1e-6)
    dy = torch.randn(exact.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    diff = [t for t in exact_leaves if t is not None]
    grads = iter(torch.autograd.grad(exact, diff, dy))
    exact_grads = [None if t is None else next(grads) for t in exact_leaves]
    y, fused = run(values, "triton", dy, autocast_dtype)
    y_eager, eager = run(values, "torch", dy, autocast_dtype)
    gemm_dtype = autocast_dtype or dtype
    assert y.dtype == y_eager.dtype == gemm_dtype and y.shape == (B, T, N) and y.is_contiguous()
    assert_matches_float64(y, y_eager, exact.detach(), name="y", tolerance=TOLERANCE[gemm_dtype])
    for name, g, e, ref, v in zip(("d_x", "d_norm_weight", "d_norm_bias", "d_weight", "d_bias"),
                                  fused, eager, exact_grads, values):
        if v is None:
            assert g is None, name
            continue
        assert g.dtype == v.dtype and g.shape == v.shape, name
        assert_matches_float64(g, e, ref, name=name, tolerance=TOLERANCE[gemm_dtype])


@pytest.mark.parametrize("shape", [(2, 37, 40, 56), (1, 197, 136, 24)], ids=["37x40x56", "197x136x24"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_matches_float64(shape, dtype):
    check_against_float64(*shape, dtype)


def test_without_bias():
    check_against_float64(2, 37, 40, 56, torch.bfloat16, bias=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_autocast(dtype):
    """The model under autocast: float32 x and parameters, the GEMMs in the autocast dtype (the norm
    in float32, as eager's autocast runs layer_norm); y comes out in the autocast dtype."""
    check_against_float64(2, 37, 40, 56, torch.float32, autocast_dtype=dtype)


def test_weight_grads_over_row_splits(monkeypatch):
    """dW and db summed over several row splits (the last one ragged), with the LayerNorm prologue."""
    monkeypatch.setattr(glt, "DW_MIN_ROWS", 32)
    check_against_float64(3, 70, 40, 24, torch.bfloat16)


def test_norm_backward_over_several_programs(monkeypatch):
    """The norm's d weight / d bias partials of several programs, each walking several row steps."""
    monkeypatch.setattr(nlt, "NORM_TARGET_PROGRAMS", 3)
    monkeypatch.setattr(nlt, "NORM_TILE_ELEMS", 256)
    check_against_float64(2, 37, 40, 56, torch.float32)


def test_backward_is_deterministic():
    values = make_inputs(2, 37, 40, 56, torch.bfloat16)
    dy = torch.randn(2, 37, 56, dtype=torch.float64)
    first = run(values, "triton", dy)[1]
    second = run(values, "triton", dy)[1]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_meta_device_fake_impls():
    x = torch.empty(2, 37, 40, device="meta", dtype=torch.bfloat16, requires_grad=True)
    params = [torch.empty(*s, device="meta", dtype=torch.bfloat16, requires_grad=True)
              for s in ((40,), (40,), (56, 40), (56,))]
    with fastmvit.use_backend("triton"):
        y = norm_linear(x, *params)
    assert y.shape == (2, 37, 56) and y.dtype == torch.bfloat16
    y.sum().backward()
    assert x.grad.shape == x.shape and all(p.grad.shape == p.shape for p in params)


@pytest.mark.parametrize("args, error, words", [
    (lambda t: (t(2, 5), t(5), t(5), t(3, 5)), ValueError, "x"),
    (lambda t: (t(2, 3, 5), t(4), t(5), t(3, 5)), ValueError, "norm_weight"),
    (lambda t: (t(2, 3, 5), t(5), t(5), t(3, 4)), ValueError, "weight"),
    (lambda t: (t(2, 3, 5), t(5), t(5), t(3, 5), t(2)), ValueError, "bias"),
    (lambda t: (t(2, 3, 5), t(5, dtype=torch.float16), t(5), t(3, 5)), TypeError, "norm_weight dtype"),
])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_errors(args, error, words, backend):
    def t(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape).to(dtype)
    with fastmvit.use_backend(backend), pytest.raises(error, match=words):
        norm_linear(*args(t))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_keep_input_adds_the_other_gradient(dtype):
    """keep_input: y and x come back; x's gradient through the returned x (its residual use) is
    added inside the norm kernel. Against float64 autograd of y and x used twice."""
    values = make_inputs(2, 37, 40, 56, dtype)
    exact_leaves = [v.double().requires_grad_() for v in values]
    y = reference(*exact_leaves, 1e-6)
    gen = torch.Generator().manual_seed(1)
    dy, dres = torch.randn(y.shape, generator=gen, dtype=torch.float64), torch.randn(values[0].shape, generator=gen,
                                                                                    dtype=torch.float64)
    exact = torch.autograd.grad((y, exact_leaves[0] * 1), exact_leaves, (dy, dres))
    results = {}
    for backend in ("triton", "torch"):
        leaves = [v.clone().requires_grad_() for v in values]
        with fastmvit.use_backend(backend):
            out, x_again = norm_linear(*leaves, eps=1e-6, keep_input=True)
        assert torch.equal(x_again, values[0])
        results[backend] = torch.autograd.grad((out, x_again), leaves, (dy.to(dtype), dres.to(dtype)))
    for i, name in enumerate(("d_x", "d_norm_weight", "d_norm_bias", "d_weight", "d_bias")):
        assert_matches_float64(results["triton"][i], results["torch"][i], exact[i], name=name,
                               tolerance=TOLERANCE[dtype])
