"""fastmvit.kernels.pool_attention with windows (detectron2's backbone): the fused Triton op in the
interpreter and the torch path, forward and all five gradients, against float64 math written here
window by window with explicit zero padding (docs/design.md, "The detection backbone").

Same protocol as tests/test_pool_attention.py: fresh random inputs, every buffer the launchers
allocate poisoned (NaN), the fused result within the dtype's tolerance of float64 and at most twice
as far from it as eager torch in the same dtype. The shapes leave padding on both axes of the q
maps and of the k maps, use q and kv windows of different (and non-square) sizes, and windows of
more rows than one tile.
"""
from __future__ import annotations

import pytest
import torch

from fastmvit.kernels import pool_attention, use_backend
from numerics import DTYPES, assert_matches_float64
from test_pool_attention import table_index

tk = pytest.importorskip("fastmvit.kernels.ops.pool_attention.triton_impl")
pytestmark = pytest.mark.usefixtures("poisoned_buffers")

GRAD_NAMES = ("dq", "dk", "dv", "d_rel_pos_h", "d_rel_pos_w")


def cdiv(a, b):
    return -(-a // b)


def reference_float64(q, k, v, th, tw, q_size, k_size, wq, wk, residual, scale):
    """Window by window: gather the window's rows of the maps (zeros where the window hangs over
    the map's bottom or right edge), attend over all of the window's keys, padded ones included,
    with window-local relative positions, and scatter the rows that lie in the map back."""
    q, k, v = q.double(), k.double(), v.double()
    qh, qw = q_size
    Rh = th.double()[table_index(wq[0], wk[0])]                     # (wqh, wkh, D)
    Rw = tw.double()[table_index(wq[1], wk[1])]                     # (wqw, wkw, D)
    out = torch.zeros_like(q)
    for wy in range(cdiv(qh, wq[0])):
        for wx in range(cdiv(qw, wq[1])):
            def gather(t, size, win):
                """The window's rows of t, a zero row where the window leaves the map, and per
                window cell (ly, lx, its map row or None)."""
                cells = []
                for ly in range(win[0]):
                    for lx in range(win[1]):
                        y, x = wy * win[0] + ly, wx * win[1] + lx
                        cells.append((ly, lx, y * size[1] + x if y < size[0] and x < size[1] else None))
                padded = torch.cat([t, torch.zeros_like(t[:, :, :1])], 2)            # row N: zeros
                index = torch.tensor([t.shape[2] if c[2] is None else c[2] for c in cells], device=t.device)
                return padded[:, :, index], cells
            qw_, q_cells = gather(q, q_size, wq)
            kw_, k_cells = gather(k, k_size, wk)
            vw_, _ = gather(v, k_size, wk)
            rows = torch.stack([Rh[ly][[c[0] for c in k_cells]] + Rw[lx][[c[1] for c in k_cells]]
                                for ly, lx, _ in q_cells])          # (wq_n, wk_n, D)
            attn = scale * qw_ @ kw_.transpose(-2, -1) + torch.einsum("bhnc,nmc->bhnm", qw_, rows)
            o = attn.softmax(-1) @ vw_
            kept = [n for n, c in enumerate(q_cells) if c[2] is not None]            # padded q rows dropped
            out = out.index_copy(2, torch.tensor([q_cells[n][2] for n in kept], device=q.device),
                                 o[:, :, torch.tensor(kept, device=q.device)])
    return out + q if residual else out


def make_inputs(B, H, q_size, k_size, wq, wk, D, seed=0, table_scale=0.5):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, q_size[0] * q_size[1], D, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, k_size[0] * k_size[1], D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, k_size[0] * k_size[1], D, generator=g, dtype=torch.float64)
    tables = [torch.randn(2 * max(a, b) - 1, D, generator=g, dtype=torch.float64) * table_scale
              for a, b in zip(wq, wk)]
    return q, k, v, *tables


def run_op(backend, inputs, q_size, k_size, wq, wk, residual, dout):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    q, k, v, th, tw = leaves
    with use_backend(backend):
        out = pool_attention(q, k, v, th, tw, q_size, k_size, residual_pooling=residual, window=(wq, wk))
    return out, torch.autograd.grad(out, leaves, dout)


def check_case(B, H, q_size, k_size, wq, wk, D, dtype, residual=True, seed=0, device="cpu"):
    """Forward and all five gradients on `device` (tests/test_cuda.py passes "cuda") against float64."""
    inputs = [t.to(dtype).to(device) for t in make_inputs(B, H, q_size, k_size, wq, wk, D, seed)]
    exact_leaves = [t.double().requires_grad_(True) for t in inputs]
    exact = reference_float64(*exact_leaves, q_size, k_size, wq, wk, residual, D ** -0.5)
    dout = torch.randn(exact.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(device)
    exact_grads = torch.autograd.grad(exact, exact_leaves, dout)
    eager, eager_grads = run_op("torch", inputs, q_size, k_size, wq, wk, residual, dout.to(dtype))
    fused, fused_grads = run_op("triton", inputs, q_size, k_size, wq, wk, residual, dout.to(dtype))
    assert fused.dtype == dtype and fused.transpose(1, 2).is_contiguous()
    assert_matches_float64(fused, eager, exact, name="out")
    for name, f, e, x in zip(GRAD_NAMES, fused_grads, eager_grads, exact_grads):
        assert f.dtype == dtype
        assert_matches_float64(f, e, x, name=name)


# (B, heads, q map, k map, q window, kv window, D)
SHAPES = [
    # detectron2's stage-2 pattern (kv stride 2 here): both maps padded on h, the q map on w too
    pytest.param(1, 2, (9, 11), (5, 6), (4, 4), (2, 2), 24, id="q-4x4-kv-2x2-padded"),
    # non-square windows of different sizes, non-square maps, padding on both axes of both maps
    pytest.param(2, 1, (5, 10), (3, 5), (3, 4), (2, 2), 16, id="q-3x4-kv-2x2-B2"),
    # more keys than queries per window (a strided q block), windows of 2 key tiles
    pytest.param(1, 1, (4, 6), (7, 11), (2, 3), (4, 6), 40, id="kv-window-larger"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,H,q_size,k_size,wq,wk,D", SHAPES)
def test_matches_float64(B, H, q_size, k_size, wq, wk, D, dtype):
    check_case(B, H, q_size, k_size, wq, wk, D, dtype)


def test_windows_of_several_tiles():
    """42 queries and 42 keys per window: two query tiles and two key tiles per window, padding
    rows in the last tile of the edge windows."""
    check_case(1, 1, (13, 9), (13, 9), (7, 6), (7, 6), 16, torch.float32)


def test_without_residual_two_launch_dq(monkeypatch):
    monkeypatch.setattr(tk, "DQ_ONE_PASS", False)
    check_case(1, 2, (5, 7), (5, 7), (3, 3), (3, 3), 16, torch.bfloat16, residual=False)


def test_one_window_equals_global_attention():
    """A window covering the whole map without padding is the global op."""
    q, k, v, th, tw = [t.float() for t in make_inputs(1, 2, (4, 6), (2, 3), (4, 6), (2, 3), 16)]
    for backend in ("torch", "triton"):
        with use_backend(backend):
            windowed = pool_attention(q, k, v, th, tw, (4, 6), (2, 3), window=((4, 6), (2, 3)))
            plain = pool_attention(q, k, v, th, tw, (4, 6), (2, 3))
        torch.testing.assert_close(windowed, plain, rtol=1e-5, atol=1e-5)


def test_padded_keys_stay_in_the_softmax():
    """Masking the padded keys instead (a common mistake) gives another result."""
    q, k, v, th, tw = [t.float() for t in make_inputs(1, 1, (3, 3), (3, 3), (2, 2), (2, 2), 16)]
    with use_backend("triton"):
        out = pool_attention(q, k, v, th, tw, (3, 3), (3, 3), window=(2, 2))
    # the last window holds map cell (2, 2) alone: its one query sees 1 real key and 3 padded ones
    qr, kr, vr = q[0, 0, 8].double(), k[0, 0, 8].double(), v[0, 0, 8].double()
    Rh, Rw = th.double()[table_index(2, 2)], tw.double()[table_index(2, 2)]
    logits = torch.stack([16 ** -0.5 * qr @ kr if (j, l) == (0, 0) else torch.tensor(0.0, dtype=torch.float64)
                          for j in range(2) for l in range(2)])
    logits = logits + torch.stack([qr @ (Rh[0, j] + Rw[0, l]) for j in range(2) for l in range(2)])
    expected = torch.softmax(logits, 0)[0] * vr + qr
    torch.testing.assert_close(out[0, 0, 8].double(), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[0, 0, 8].double(), vr + qr, rtol=1e-3, atol=1e-3)


def test_window_errors_name_the_problem():
    q, k, v, th, tw = [t.float() for t in make_inputs(1, 1, (4, 4), (2, 2), (2, 2), (1, 1), 8)]
    for backend in ("torch", "triton"):
        with use_backend(backend):
            with pytest.raises(ValueError, match=r"in \(2, 2\) windows gives 2x2 windows but the k map"):
                pool_attention(q, k, v, None, None, (4, 4), (2, 2), window=(2, 2))
            with pytest.raises(ValueError, match="rel_pos_h has 5 rows but grids q 2 / k 1 need exactly"):
                pool_attention(q, k, v, torch.randn(5, 8), tw, (4, 4), (2, 2), window=(2, 1))
            with pytest.raises(ValueError, match="window must be"):
                pool_attention(q, k, v, th, tw, (4, 4), (2, 2), window=2)
            with pytest.raises(ValueError, match="kv window must be a positive int"):
                pool_attention(q, k, v, th, tw, (4, 4), (2, 2), window=(2, 0))
            with pytest.raises(ValueError, match="no class token"):
                pool_attention(q[:, :, :5], q[:, :, :5], q[:, :, :5], th, tw, (2, 2), (2, 2),
                               has_cls_token=True, window=(1, 1))


def test_backward_is_repeatable_in_the_interpreter():
    inputs = [t.float() for t in make_inputs(1, 2, (5, 7), (3, 5), (2, 3), (1, 2), 16, 1)]
    dout = torch.randn(1, 2, 35, 16)
    first = run_op("triton", inputs, (5, 7), (3, 5), (2, 3), (1, 2), True, dout)[1]
    second = run_op("triton", inputs, (5, 7), (3, 5), (2, 3), (1, 2), True, dout)[1]
    for a, b in zip(first, second):
        assert torch.equal(a, b)
