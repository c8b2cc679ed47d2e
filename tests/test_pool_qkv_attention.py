"""fastmvit.kernels.pool_qkv_attention: pool_qkv -> pool_attention keeping only qkv for backward.

The two ops are tested against float64 math on their own (test_pool_qkv.py, test_pool_attention.py).
What is new here is the autograd: the backward rebuilds q, k, v with the pool_qkv kernel. It runs the
same deterministic kernels on the same inputs, so values and every gradient must equal the
two-op composition bit for bit; on top of that the float64 check of the whole chain, what is saved,
errors, and torch.compile.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastmvit
from fastmvit.kernels import pool_attention, pool_qkv, pool_qkv_attention
from numerics import DTYPES, assert_matches_float64

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

HEADS, D = 2, 24


def make_leaves(B, hw, sp, dtype, seed=0):
    """qkv, 3 conv weights, 3 norm weights, 3 norm biases, 2 tables (for the pooled grids below),
    random and never zero, as leaves requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    leaves = [rand(B, sp + math.prod(hw), 3 * HEADS * D)]
    leaves += [0.5 * rand(D, 1, *(3,) * len(hw)) for _ in range(3)]
    leaves += [1 + 0.5 * rand(D) for _ in range(3)] + [0.5 * rand(D) for _ in range(3)]
    return [t.to(dtype).requires_grad_() for t in leaves]


def tables(q_size, k_size, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(0.5 * torch.randn(2 * max(q, k) - 1, D, generator=gen, dtype=torch.float64)).to(dtype)
            .requires_grad_() for q, k in zip(q_size, k_size)]


def run_fused(leaves, rel, hw, strides, sp):
    """rel: the tables in grid-axis order ((h, w) or (t, h, w))."""
    qkv, p = leaves[0], leaves[1:]
    tt = rel[0] if len(rel) == 3 else None
    out, q_size = pool_qkv_attention(qkv, hw, HEADS, p[0:3], p[3:6], p[6:9], strides[0], strides[1],
                                     rel[-2], rel[-1], rel_pos_t=tt, has_cls_token=bool(sp))
    return out


def run_two_ops(leaves, rel, hw, strides, sp):
    qkv, p = leaves[0], leaves[1:]
    q, k, v, q_size, k_size = pool_qkv(qkv, hw, HEADS, p[0:3], p[3:6], p[6:9], strides[0],
                                       strides[1], has_cls_token=bool(sp))
    tt = rel[0] if len(rel) == 3 else None
    return pool_attention(q, k, v, rel[-2], rel[-1], q_size, k_size, rel_pos_t=tt, has_cls_token=bool(sp))


def grads_of(out, inputs, seed=2):
    gen = torch.Generator().manual_seed(seed)
    dout = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, inputs, dout)


CASES = [((7, 5), ((1, 1), (2, 2)), 1), ((6, 6), ((2, 2), (2, 2)), 0), ((5, 9), ((2, 1), (1, 3)), 1),
         ((3, 3, 4), ((2, 1, 2), (1, 2, 1)), 1)]     # video: (T, H, W), strided on t too


@pytest.mark.parametrize("hw,strides,sp,dtype", [case + (dtype,) for case, dtype in zip(CASES, DTYPES + DTYPES[:1])])
def test_same_as_two_ops_bit_for_bit(hw, strides, sp, dtype):
    leaves = make_leaves(2, hw, sp, dtype)
    with fastmvit.use_backend("triton"):
        q_size = pool_qkv(leaves[0].detach(), hw, HEADS, leaves[1:4], leaves[4:7], leaves[7:10],
                          strides[0], strides[1], has_cls_token=bool(sp))[3:]
        rel = tables(*q_size, dtype)
        fused = run_fused(leaves, rel, hw, strides, sp)
        two = run_two_ops(leaves, rel, hw, strides, sp)
        assert torch.equal(fused, two)
        for a, b in zip(grads_of(fused, leaves + rel), grads_of(two, leaves + rel)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16])   # float32: bit for bit with the two ops above
def test_chain_against_float64(dtype):
    hw, strides, sp = (7, 5), ((1, 1), (2, 2)), 1
    leaves = make_leaves(2, hw, sp, dtype)
    rel = tables((7, 5), (4, 3), dtype)
    exact_leaves = [t.detach().double().requires_grad_() for t in leaves + rel]
    with fastmvit.use_backend("torch"):
        exact = run_two_ops(exact_leaves[:10], exact_leaves[10:], hw, strides, sp)
        eager = run_two_ops(leaves, rel, hw, strides, sp)
        exact_grads, eager_grads = grads_of(exact, exact_leaves), grads_of(eager, leaves + rel)
    with fastmvit.use_backend("triton"):
        fused = run_fused(leaves, rel, hw, strides, sp)
        fused_grads = grads_of(fused, leaves + rel)
    eager_ref = eager if dtype != torch.float32 else None
    assert_matches_float64(fused, eager_ref, exact, "out")
    for i, (f, e, x) in enumerate(zip(fused_grads, eager_grads, exact_grads)):
        if i == 8 and dtype != torch.float32:
            # norm_k's bias: adding a constant to every key adds a per-query constant to the
            # scores, which softmax ignores, so its exact gradient is 0 and any half-precision
            # result is rounding noise (checked bit for bit against the two ops above).
            continue
        assert_matches_float64(f, e if dtype != torch.float32 else None, x, f"grad {i}")


def test_keeps_qkv_not_q_k_v():
    """Saved for backward: qkv, the parameters, the tables and the float32 lse; nothing the size
    of q, k or v in the input dtype."""
    hw, strides, sp = (7, 5), ((1, 1), (2, 2)), 1
    leaves = make_leaves(2, hw, sp, torch.float32)
    rel = tables((7, 5), (4, 3), torch.float32)
    saved = []
    with fastmvit.use_backend("triton"), torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t) or t, lambda t: t):
        run_fused(leaves, rel, hw, strides, sp)
    known = {t.data_ptr() for t in leaves + rel}
    others = [t for t in saved if t.data_ptr() not in known]
    assert len(others) == 1 and others[0].dtype == torch.float32 and others[0].shape == (2, HEADS, 36)


def test_torch_backend_and_no_grad_are_the_two_ops():
    hw, strides, sp = (6, 6), ((2, 2), (2, 2)), 0
    leaves = make_leaves(1, hw, sp, torch.float64)
    rel = tables((3, 3), (3, 3), torch.float64)
    with fastmvit.use_backend("torch"):
        assert torch.equal(run_fused(leaves, rel, hw, strides, sp), run_two_ops(leaves, rel, hw, strides, sp))
    with fastmvit.use_backend("triton"), torch.no_grad():
        leaves32 = [t.float() for t in leaves]
        rel32 = [t.float() for t in rel]
        assert torch.equal(run_fused(leaves32, rel32, hw, strides, sp),
                           run_two_ops(leaves32, rel32, hw, strides, sp))


def test_rejects_a_table_of_the_wrong_length():
    hw, strides, sp = (6, 6), ((2, 2), (2, 2)), 0
    leaves = make_leaves(1, hw, sp, torch.float32)
    rel = tables((4, 4), (4, 4), torch.float32)    # the pooled grids are 3x3: 5 rows needed, not 7
    with fastmvit.use_backend("triton"), pytest.raises(ValueError, match="rel_pos_h has 7 rows"):
        run_fused(leaves, rel, hw, strides, sp)


def test_torch_compile_fullgraph_forward_backward():
    hw, strides, sp = (5, 9), ((2, 1), (1, 3)), 1
    leaves = make_leaves(1, hw, sp, torch.float32)
    rel = tables((3, 9), (5, 3), torch.float32)

    def f(*args):
        return run_fused(list(args[:10]), list(args[10:]), hw, strides, sp)

    with fastmvit.use_backend("triton"):
        expected = f(*leaves, *rel)
        expected_grads = grads_of(expected, leaves + rel)
        torch._dynamo.reset()
        out = torch.compile(f, backend="aot_eager", fullgraph=True)(*leaves, *rel)
        got_grads = grads_of(out, leaves + rel)
    assert torch.equal(out, expected)
    for a, b in zip(got_grads, expected_grads):
        assert torch.equal(a, b)
