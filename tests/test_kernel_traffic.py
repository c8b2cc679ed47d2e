"""Every launcher's traffic statements against the loads and stores its kernels really execute.

Each launcher (forward and backward of every op) runs twice on small odd shapes: in Triton's
interpreter, where ``tools.interpreter_traffic`` counts the distinct bytes every launch loads and
stores (masked-off lanes excluded), and on meta copies of the same arguments inside
``stating_launches()``, where each launch only states its traffic. The two lists must name the
same kernels in the same order, agree within 2% per launch on bytes read and on bytes written,
and run the same torch ops between launches. The cost model (``fastmvit.costmodel``) counts the
fused ops by these statements, so this is what keeps its figures honest.
"""
import math

import pytest
import torch

from fastmvit.kernels.ops.gelu_linear import triton_impl as gelu_impl
from fastmvit.kernels.ops.max_pool_tokens import triton_impl as maxpool_impl
from fastmvit.kernels.ops.norm_linear import triton_impl as norm_impl
from fastmvit.kernels.ops.pool_attention import triton_impl as attn_impl
from fastmvit.kernels.ops.pool_qkv import triton_impl as qkv_impl
from fastmvit.kernels.args import pooled_size
from fastmvit.reference.config import rel_pos_length
from tools.interpreter_traffic import compare_with_statements

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _agree(fn, *args, **kwargs):
    problems, counted, stated = compare_with_statements(fn, *args, **kwargs)
    assert not problems, "\n".join(problems)
    assert counted, "no launch was counted"
    return counted


# ------------------------------------------------------------------------------------------------
# pool_attention
# ------------------------------------------------------------------------------------------------
ATTN_CASES = [
    # (q grid, k grid, class token, rel-pos, dtype)
    ((5, 7), (3, 4), 1, True, torch.bfloat16),
    ((6, 5), (6, 5), 0, True, torch.float32),
    ((4, 3), (2, 3), 1, False, torch.float16),
    ((3, 4, 3), (2, 2, 3), 1, True, torch.bfloat16),         # video: (t, h, w), qt != kt
    ((2, 3, 5), (4, 3, 5), 0, True, torch.float32),
]


def _attention_inputs(q_size, k_size, sp, rel, dtype, B=2, H=2, D=24):
    """q, k, v and the tables in grid-axis order ((h, w) or (t, h, w); empty without rel-pos)."""
    torch.manual_seed(0)
    nq, nk = sp + math.prod(q_size), sp + math.prod(k_size)
    q, k, v = (torch.randn(B, H, n, D, dtype=dtype) for n in (nq, nk, nk))
    tables = [torch.randn(rel_pos_length(a, b), D, dtype=dtype) for a, b in zip(q_size, k_size)] if rel else []
    return q, k, v, tables


@pytest.mark.parametrize("one_pass", [True, False], ids=["one_pass_dq", "two_launch_dq"])
@pytest.mark.parametrize("q_size,k_size,sp,rel,dtype", ATTN_CASES)
def test_pool_attention_statements(q_size, k_size, sp, rel, dtype, one_pass, monkeypatch):
    monkeypatch.setattr(attn_impl, "DQ_ONE_PASS", one_pass)
    q, k, v, tables = _attention_inputs(q_size, k_size, sp, rel, dtype)
    th, tw = tables[-2:] if rel else (None, None)
    tt = tables[0] if len(tables) == 3 else None
    scale = q.shape[-1] ** -0.5
    _agree(attn_impl.forward, q, k, v, th, tw, q_size, k_size, sp, True, scale, autotune=False, rel_pos_t=tt)
    out, lse = attn_impl.forward(q, k, v, th, tw, q_size, k_size, sp, True, scale, autotune=False, rel_pos_t=tt)
    dout = torch.randn_like(out)
    launches = _agree(attn_impl.backward, dout, q, k, v, th, tw, lse, q_size, k_size, sp, True, scale,
                      autotune=False, rel_pos_t=tt)
    assert len(launches) == (3 if not rel else 4 if one_pass else 5)


WINDOW_CASES = [
    # (q map, k map, q window, kv window, dtype): non-square windows of two sizes, padding on both
    # axes of both maps
    ((5, 10), (3, 5), (3, 4), (2, 2), torch.bfloat16),
]


@pytest.mark.parametrize("q_size,k_size,wq,wk,dtype", WINDOW_CASES)
def test_pool_attention_window_statements(q_size, k_size, wq, wk, dtype):
    """Windows: each map row is read once per launch, the padding never (detection backbone)."""
    q, k, v, _ = _attention_inputs(q_size, k_size, 0, False, dtype)
    th, tw = (torch.randn(rel_pos_length(a, b), q.shape[-1], dtype=dtype) for a, b in zip(wq, wk))
    scale = q.shape[-1] ** -0.5
    window = (*wq, *wk)
    _agree(attn_impl.forward, q, k, v, th, tw, q_size, k_size, 0, True, scale, autotune=False, window=window)
    out, lse = attn_impl.forward(q, k, v, th, tw, q_size, k_size, 0, True, scale, autotune=False, window=window)
    launches = _agree(attn_impl.backward, torch.randn_like(out), q, k, v, th, tw, lse, q_size, k_size, 0, True,
                      scale, autotune=False, window=window)
    assert len(launches) == 4


def test_a_planted_wrong_statement_fails(monkeypatch):
    """A statement 3% high on one launch's reads is caught, and named."""
    q, k, v, (th, tw) = _attention_inputs((5, 7), (3, 4), 1, True, torch.bfloat16)
    scale = q.shape[-1] ** -0.5
    out, lse = attn_impl.forward(q, k, v, th, tw, (5, 7), (3, 4), 1, True, scale, autotune=False)
    honest = attn_impl._dkdv_states

    def planted(named):
        read, written = honest(named)
        return int(read * 1.03), written

    monkeypatch.setattr(attn_impl, "_dkdv_states", planted)
    problems, _, _ = compare_with_statements(attn_impl.backward, torch.randn_like(out), q, k, v, th, tw, lse,
                                             (5, 7), (3, 4), 1, True, scale, autotune=False)
    assert len(problems) == 1 and "pool_attention_bwd_dkdv_kernel: read" in problems[0], problems


# ------------------------------------------------------------------------------------------------
# pool_qkv
# ------------------------------------------------------------------------------------------------
QKV_CASES = [
    # (grid, stride q, stride kv, class token): kv stride 4 with a 3x3 kernel skips grid positions
    ((9, 7), (1, 1), (4, 4), 1),
    ((7, 6), (2, 2), (2, 1), 0),
    ((2, 7, 5), (1, 2, 2), (1, 4, 4), 1),           # video: (T, H, W), 3x3x3
    ((3, 4, 5), (2, 1, 1), (1, 2, 2), 0),
]


@pytest.mark.parametrize("hw,sq,skv,sp", QKV_CASES)
def test_pool_qkv_statements(hw, sq, skv, sp):
    torch.manual_seed(0)
    B, heads, D, dtype = 2, 2, 12, torch.bfloat16
    kq = (3,) * len(hw)
    N = sp + math.prod(hw)
    qkv = torch.randn(B, N, 3 * heads * D, dtype=dtype)
    weights = [torch.randn(D, 1, *kq, dtype=dtype) for _ in range(3)]
    norm_w = [torch.randn(D, dtype=dtype) for _ in range(3)]
    norm_b = [torch.randn(D, dtype=dtype) for _ in range(3)]
    q_size, k_size = pooled_size(hw, kq, sq), pooled_size(hw, kq, skv)
    args = (hw, heads, (sq, skv), q_size, k_size, sp, 1e-6)
    _agree(qkv_impl.forward, qkv, weights, norm_w, norm_b, *args)
    q, k, v = qkv_impl.forward(qkv, weights, norm_w, norm_b, *args)
    grads = [torch.randn_like(t) for t in (q, k, v)]
    _agree(qkv_impl.backward, grads, qkv, weights, norm_w, *args)


# ------------------------------------------------------------------------------------------------
# max_pool_tokens
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw,kernel,stride,sp", [((9, 7), (3, 3), (2, 2), 1), ((9, 10), (3, 3), (4, 4), 0),
                                                 ((3, 7, 5), (1, 3, 3), (1, 2, 2), 1),      # video shortcut
                                                 ((4, 5, 6), (3, 3, 3), (2, 4, 2), 0)])
def test_max_pool_tokens_statements(hw, kernel, stride, sp):
    torch.manual_seed(0)
    B, C = 2, 40
    x = torch.randn(B, sp + math.prod(hw), C, dtype=torch.bfloat16)
    out_hw = pooled_size(hw, kernel, stride)
    _agree(maxpool_impl.forward, x, hw, out_hw, kernel, stride, sp, True)
    y, arg = maxpool_impl.forward(x, hw, out_hw, kernel, stride, sp, True)
    _agree(maxpool_impl.backward, torch.randn_like(y), arg, hw, out_hw, kernel, stride, sp)


# ------------------------------------------------------------------------------------------------
# gelu_linear
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B,T,scaled,gelu", [(2, 21, True, True), (3, 200, False, True),   # 600 rows: dW in splits
                                             (2, 21, True, False)])
def test_gelu_linear_statements(B, T, scaled, gelu):
    torch.manual_seed(0)
    K, N, dtype = 40, 24, torch.bfloat16
    h = torch.randn(B, T, K, dtype=dtype)
    w, b = torch.randn(N, K, dtype=dtype), torch.randn(N, dtype=dtype)
    res = torch.randn(B, T, N, dtype=dtype)
    scale = torch.rand(B) + 0.5 if scaled else None
    _agree(gelu_impl.forward, h, w, b, res, scale, autotune=False, gelu=gelu)
    launches = _agree(gelu_impl.backward, torch.randn(B, T, N, dtype=dtype), h, w, True, dtype, scale,
                      autotune=False, gelu=gelu)
    assert len(launches) == (2 if B * T < 2 * gelu_impl.DW_MIN_ROWS else 3)   # dh, dW (+ one sum of dW and db)


# ------------------------------------------------------------------------------------------------
# norm_linear
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B,T,dtype", [(2, 37, torch.bfloat16), (3, 200, torch.float32)])   # 600 rows: dW in splits
def test_norm_linear_statements(B, T, dtype):
    torch.manual_seed(0)
    K, N = 40, 56
    x = torch.randn(B, T, K, dtype=dtype)
    g, beta = torch.randn(K, dtype=dtype), torch.randn(K, dtype=dtype)
    w, b = torch.randn(N, K, dtype=dtype), torch.randn(N, dtype=dtype)
    _agree(norm_impl.forward, x, g, beta, w, b, 1e-6, dtype, autotune=False)
    y, mean, rstd = norm_impl.forward(x, g, beta, w, b, 1e-6, dtype, autotune=False)
    launches = _agree(norm_impl.backward, torch.randn_like(y), x, g, beta, w, mean, rstd, True, dtype, 1e-6,
                      autotune=False, dres=torch.randn_like(x))
    # d normed x, the norm backward and its sum, dW (and its split sum)
    assert [l.kernel for l in launches][:3] == ["gelu_linear_bwd_dh_kernel", "norm_linear_bwd_norm_kernel",
                                                "gelu_linear_sum_splits_kernel"]
