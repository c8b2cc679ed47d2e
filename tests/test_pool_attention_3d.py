"""fastmvit.kernels.pool_attention over (t, h, w) grids (the video model): the fused Triton op in
the interpreter and the torch path, forward and all six gradients, against float64 math written
here with an explicit (Nq, Nk) bias of three decomposed terms (docs/design.md, "The video model").

Same protocol as tests/test_pool_attention.py: fresh random inputs, every buffer the launchers
allocate poisoned (NaN), the fused result within the dtype's tolerance of float64 and at most twice
as far from it as eager torch in the same dtype.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from fastmvit.kernels import pool_attention, use_backend
from numerics import DTYPES, assert_matches_float64
from test_pool_attention import table_index

tk = pytest.importorskip("fastmvit.kernels.ops.pool_attention.triton_impl")
pytestmark = pytest.mark.usefixtures("poisoned_buffers")

GRAD_NAMES = ("dq", "dk", "dv", "d_rel_pos_t", "d_rel_pos_h", "d_rel_pos_w")


def reference_float64(q, k, v, tt, th, tw, q_size, k_size, sp, residual, scale):
    """The op in float64: bias[(t, y, x), (i, j, l)] = q . Rt[t, i] + q . Rh[y, j] + q . Rw[x, l]."""
    q, k, v = q.double(), k.double(), v.double()
    attn = scale * q @ k.transpose(-2, -1)
    R = [tab.double()[table_index(a, b)] for tab, a, b in zip((tt, th, tw), q_size, k_size)]   # (q_a, k_a, D)
    qpos = list(itertools.product(*map(range, q_size)))
    kpos = list(itertools.product(*map(range, k_size)))
    # per axis: the (Nq_sp, Nk_sp, D) table rows each (query, key) pair reads
    rows = sum(R[a][[p[a] for p in qpos]][:, [r[a] for r in kpos]] for a in range(3))
    bias = torch.einsum("bhnc,nmc->bhnm", q[:, :, sp:], rows)
    attn = torch.cat([attn[:, :, :sp], torch.cat([attn[:, :, sp:, :sp], attn[:, :, sp:, sp:] + bias], 3)], 2)
    out = attn.softmax(-1) @ v
    if residual:
        out = torch.cat([out[:, :, :sp], out[:, :, sp:] + q[:, :, sp:]], dim=2)
    return out


def make_inputs(B, H, q_size, k_size, D, sp, seed=0, table_scale=0.5):
    g = torch.Generator().manual_seed(seed)
    Nq, Nk = sp + q_size[0] * q_size[1] * q_size[2], sp + k_size[0] * k_size[1] * k_size[2]
    q = torch.randn(B, H, Nq, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, Nk, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, Nk, D, generator=g, dtype=torch.float64)
    tables = [torch.randn(2 * max(a, b) - 1, D, generator=g, dtype=torch.float64) * table_scale
              for a, b in zip(q_size, k_size)]
    return q, k, v, *tables                                                      # ..., t, h, w


def run_op(backend, inputs, q_size, k_size, sp, residual, dout):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    q, k, v, tt, th, tw = leaves
    with use_backend(backend):
        out = pool_attention(q, k, v, th, tw, q_size, k_size, rel_pos_t=tt, has_cls_token=bool(sp),
                             residual_pooling=residual)
    return out, torch.autograd.grad(out, leaves, dout)


def check_case(B, H, q_size, k_size, D, sp, dtype, residual=True, seed=0, device="cpu"):
    """Forward and all six gradients on `device` (tests/test_cuda.py passes "cuda") against float64."""
    inputs = [t.to(dtype).to(device) for t in make_inputs(B, H, q_size, k_size, D, sp, seed)]
    exact_leaves = [t.double().requires_grad_(True) for t in inputs]
    exact = reference_float64(*exact_leaves, q_size, k_size, sp, residual, D ** -0.5)
    dout = torch.randn(exact.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(device)
    exact_grads = torch.autograd.grad(exact, exact_leaves, dout)
    eager, eager_grads = run_op("torch", inputs, q_size, k_size, sp, residual, dout.to(dtype))
    fused, fused_grads = run_op("triton", inputs, q_size, k_size, sp, residual, dout.to(dtype))
    assert fused.dtype == dtype and fused.transpose(1, 2).is_contiguous()
    assert_matches_float64(fused, eager, exact, name="out")
    for name, f, e, x in zip(GRAD_NAMES, fused_grads, eager_grads, exact_grads):
        assert f.dtype == dtype
        assert_matches_float64(f, e, x, name=name)


# (B, heads, q grid, k grid, D, class token): qt != kt both ways, non-square frames, fractional
# ratios on every axis, the t table longer than the others.
SHAPES = [
    pytest.param(1, 2, (3, 4, 5), (2, 3, 3), 40, 1, id="qt>kt-cls-D40"),
    pytest.param(1, 1, (2, 5, 3), (4, 5, 3), 72, 0, id="qt<kt-nonsquare-D72"),
    pytest.param(2, 1, (5, 2, 3), (5, 1, 2), 32, 1, id="long-t-B2-D32"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,H,q_size,k_size,D,sp", SHAPES)
def test_matches_float64(B, H, q_size, k_size, D, sp, dtype):
    check_case(B, H, q_size, k_size, D, sp, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_many_keys(dtype):
    """Nk above 1024 (3 x 19 x 19 + 1): many online-softmax steps and one-hot tiles over frames."""
    check_case(1, 1, (2, 3, 3), (3, 19, 19), 24, 1, dtype)


def test_without_residual():
    check_case(1, 2, (2, 3, 2), (2, 2, 2), 16, 1, torch.float16, residual=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_launch_dq(monkeypatch, dtype):
    """The REL_PART path (DQ_ONE_PASS = False) with the third term."""
    monkeypatch.setattr(tk, "DQ_ONE_PASS", False)
    check_case(1, 2, (3, 3, 4), (2, 2, 3), 24, 1, dtype)


def test_tiles_crossing_frames(monkeypatch):
    """BLOCK_M != BLOCK_N, tiles spanning frame boundaries and the class token."""
    monkeypatch.setattr(tk, "INTERPRETER_CONFIGS", {k: {"BLOCK_M": 16, "BLOCK_N": 64} for k in ("fwd", "dkdv", "dq", "dq_video")})
    check_case(1, 1, (3, 5, 3), (4, 4, 5), 32, 1, torch.float32)


def test_one_frame_equals_the_2d_op():
    """A (1, h, w) grid with a one-row t table and no class token: the t term is q . Rt[0], the
    same for every key of a row, which the softmax cancels, so the values equal the 2-D op's.
    (With a class token it would not cancel: the class-token column gets no bias.)"""
    q, k, v, tt, th, tw = [t.float() for t in make_inputs(1, 2, (1, 4, 3), (1, 2, 3), 16, 0)]
    with use_backend("triton"):
        out3 = pool_attention(q, k, v, th, tw, (1, 4, 3), (1, 2, 3), rel_pos_t=tt)
        out2 = pool_attention(q, k, v, th, tw, (4, 3), (2, 3))
    torch.testing.assert_close(out3, out2, rtol=1e-5, atol=1e-5)


def test_video_errors_name_the_table():
    q, k, v, tt, th, tw = [t.float() for t in make_inputs(1, 1, (3, 2, 2), (2, 2, 2), 8, 1)]
    for backend in ("torch", "triton"):
        with use_backend(backend):
            with pytest.raises(ValueError, match="needs rel_pos_t"):
                pool_attention(q, k, v, th, tw, (3, 2, 2), (2, 2, 2), has_cls_token=True)
            with pytest.raises(ValueError, match="rel_pos_t has 4 rows but grids q 3 / k 2 need exactly"):
                pool_attention(q, k, v, th, tw, (3, 2, 2), (2, 2, 2), rel_pos_t=tt[:4], has_cls_token=True)
            with pytest.raises(ValueError, match="rel_pos_t given for a 2-D grid"):
                pool_attention(q[:, :, :5], k[:, :, :5], v[:, :, :5], th[:3], tw[:3], (2, 2), (2, 2),
                               rel_pos_t=tt, has_cls_token=True)
            with pytest.raises(ValueError, match="different numbers of axes"):
                pool_attention(q, k, v, th, tw, (3, 2, 2), (4, 2), rel_pos_t=tt, has_cls_token=True)
            with pytest.raises(ValueError, match="q has 13 tokens but q_size"):
                pool_attention(q, k, v, th, tw, (3, 2, 3), (2, 2, 2), rel_pos_t=tt, has_cls_token=True)


def test_backward_is_repeatable_in_the_interpreter():
    """Two backward runs give the same bits (the GPU check is in tests/test_cuda.py)."""
    inputs = [t.float() for t in make_inputs(1, 2, (2, 3, 3), (2, 2, 2), 16, 1)]
    dout = torch.randn(1, 2, 19, 16)
    first = run_op("triton", inputs, (2, 3, 3), (2, 2, 2), 1, True, dout)[1]
    second = run_op("triton", inputs, (2, 3, 3), (2, 2, 2), 1, True, dout)[1]
    for a, b in zip(first, second):
        assert torch.equal(a, b)
