"""The reference MViTv2 (fastmvit.reference) and count_macs.

Big models are built on the ``meta`` device (shapes only, no memory, no arithmetic). The maths is
checked against a float64 re-derivation of docs/design.md, sections 1-2 written here, with explicit loops for
the relative positions.
"""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmvit
from fastmvit.reference import (ARCH_SETTINGS, MultiScaleAttention, MultiScaleBlock, MViTv2, MViTv2Config,
                                block_specs, get_rel_pos, rel_pos_index, resize_rel_pos)
from numerics import assert_matches_float64


def _meta(arch, **kw) -> MViTv2:
    with torch.device("meta"):
        return MViTv2(arch, **kw)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# docs/design.md, "The image model": params (M, 1000 classes) and GMACs at 224x224.
SPEC_SIZES = {"tiny": (24.17, 4.70), "small": (34.87, 7.00), "base": (51.47, 10.16), "large": (217.99, 43.87)}

# A small custom config for the maths tests: 2 heads, hd 8, all four stages, odd grids.
SMALL = MViTv2Config(embed_dims=16, num_heads=2, depths=(1, 2, 1, 1), drop_path_rate=0.0)


# ------------------------------------------------------------------------------------------------
# Sizes: parameters, MACs, the block plan
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(SPEC_SIZES))
def test_param_count_matches_spec(arch):
    assert round(_num_params(_meta(arch)) / 1e6, 2) == SPEC_SIZES[arch][0]


@pytest.mark.parametrize("arch", list(SPEC_SIZES))
def test_count_macs_matches_spec(arch):
    macs = fastmvit.count_macs(_meta(arch), (1, 3, 224, 224))
    assert abs(macs / 1e9 / SPEC_SIZES[arch][1] - 1) < 0.01, macs / 1e9


def test_count_macs_convention_on_hand_counted_ops():
    """fvcore: depthwise conv = out elements x kernel area (x C_in / groups), linear = in x out per
    token, matmul and einsum = multiply-adds, LayerNorm = 5 per element, elementwise free."""
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6, bias=False)   # out 6x3x4
            self.conv = nn.Conv2d(6, 4, 1)                                             # 4x3x4
            self.fc = nn.Linear(4, 5)
            self.ln = nn.LayerNorm(5)

        def forward(self, x):                                   # (2, 6, 5, 7)
            y = self.conv(self.dw(x))                           # (2, 4, 3, 4)
            t = self.ln(self.fc(y.flatten(2).transpose(1, 2)))  # (2, 12, 5)
            a = t @ t.transpose(1, 2)                           # (2, 12, 12): 12 * 12 * 5 each
            b = torch.einsum("bnc,mc->bnm", t, torch.ones(3, 5))  # (2, 12, 3)
            return a.sum() + b.softmax(-1).sum()

    expected = 2 * (6 * 3 * 4 * 9 + 4 * 3 * 4 * 6 + 12 * 4 * 5 + 12 * 12 * 5 + 12 * 3 * 5) + 5 * 2 * 12 * 5
    assert fastmvit.count_macs(Toy(), (2, 6, 5, 7)) == expected


def test_count_macs_restores_training_mode():
    model = MViTv2(SMALL, img_size=32, num_classes=3).train()
    assert fastmvit.count_macs(model, (1, 3, 32, 32)) > 0
    assert model.training


def test_block_plan_small_at_224():
    """docs/design.md, "Pooling attention"'s per-block shapes of small: q tokens, k/v tokens, heads; table lengths."""
    specs = block_specs(ARCH_SETTINGS["small"], 224)
    shapes = [(math.prod(s.q_size), math.prod(s.kv_size), s.num_heads) for s in specs]
    assert shapes[0] == (3136, 196, 1)
    assert shapes[1] == (784, 784, 2) and shapes[2] == (784, 196, 2)
    assert shapes[3] == (196, 784, 4) and set(shapes[4:14]) == {(196, 196, 4)}
    assert shapes[14] == (49, 196, 8) and shapes[15] == (49, 49, 8)
    assert [s.rel_pos_len for s in specs if s.stride_q == (1, 1)] == \
        [(111, 111)] + [(55, 55)] + [(27, 27)] * 10 + [(13, 13)]
    assert {s.head_dim for s in specs} == {96}
    assert [s.index for s in specs if s.dim_change] == [1, 3, 14]
    assert {s.dim_change for s in specs if s.dim_change} == {"attention"}
    assert specs[0].drop_path == 0.0 and specs[-1].drop_path == pytest.approx(0.1)


def test_block_plan_large_changes_width_in_the_mlp():
    specs = block_specs(ARCH_SETTINGS["large"], 224)
    assert [s.index for s in specs if s.dim_change == "mlp"] == [1, 7, 43]   # last block of stages 1-3
    assert [s.index for s in specs if s.stride_q == (2, 2)] == [2, 8, 44]
    assert [(s.dim, s.dim_out, s.dim_att, s.num_heads) for s in specs[1:3]] == [(144, 288, 144, 2), (288, 288, 288, 4)]
    assert {s.head_dim for s in specs} == {72}
    assert [s.stride_kv for s in specs[:3]] == [(4, 4), (4, 4), (2, 2)]


# ------------------------------------------------------------------------------------------------
# Relative positions: index and table resize
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q_size, k_size, expected", [
    (3, 3, [[2, 1, 0], [3, 2, 1], [4, 3, 2]]),                      # equal grids: i - j + 2
    (4, 2, [[2, 0], [3, 1], [4, 2], [5, 3]]),                        # q larger: i - 2 j + 2
    (2, 4, [[3, 2, 1, 0], [5, 4, 3, 2]]),                            # q smaller: 2 i - j + 3
    (3, 2, [[1, 0], [2, 1], [3, 2]]),                                # ratio 1.5: trunc(i - 1.5 j + 1.5)
    (2, 3, [[2, 1, 0], [3, 2, 1]]),                                  # trunc(1.5 i - j + 2)
    (7, 4, [[5, 3, 1, 0], [6, 4, 2, 1], [7, 5, 3, 2], [8, 6, 4, 3],  # trunc(i - 1.75 j + 5.25)
            [9, 7, 5, 4], [10, 8, 6, 5], [11, 9, 7, 6]]),
    (1, 1, [[0]]),
])
def test_rel_pos_index_hand_worked(q_size, k_size, expected):
    idx = rel_pos_index(q_size, k_size)
    assert idx.dtype == torch.int64
    assert idx.tolist() == expected
    assert idx.min() >= 0 and idx.max() <= 2 * max(q_size, k_size) - 2


def test_rel_pos_index_follows_the_official_float32_truncation():
    """The official cal_rel_pos_spatial computes the index in float32 (int64 arange times a Python
    float), and float32 rounding sometimes lands just below an exact integer, which truncation then
    drops by one. The reference keeps that (checkpoints were trained with it). It happens on real
    grids: a 156x156 image gives q 39 x k 10 in stage 1, where exact arithmetic differs; kernels
    that compute the index in integer or float64 arithmetic must not."""
    def official(qn, kn):                                     # transcribed, default dtype float32
        q_ratio, k_ratio = max(kn / qn, 1.0), max(qn / kn, 1.0)
        dist = torch.arange(qn)[:, None] * q_ratio - torch.arange(kn)[None, :] * k_ratio
        dist += (kn - 1) * k_ratio
        return dist.long()

    for qn in range(1, 41):
        for kn in range(1, 41):
            assert torch.equal(rel_pos_index(qn, kn), official(qn, kn)), (qn, kn)
    exact = torch.tensor([[math.floor(Fraction(i) - Fraction(j * 39, 10) + Fraction(9 * 39, 10)) for j in range(10)]
                          for i in range(39)])
    assert not torch.equal(rel_pos_index(39, 10), exact)
    assert torch.equal(rel_pos_index(39, 10), official(39, 10))


def test_resize_rel_pos_identity_and_hand_computation():
    t = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(resize_rel_pos(t, 3), t)
    up = resize_rel_pos(t, 5)     # source x = (i + 0.5) * 3 / 5 - 0.5, clamped to [0, 2]
    expected = torch.stack([t[0], 0.6 * t[0] + 0.4 * t[1], t[1], 0.4 * t[1] + 0.6 * t[2], t[2]])
    torch.testing.assert_close(up, expected, rtol=1e-12, atol=1e-12)
    s = torch.randn(5, 2, dtype=torch.float64)
    down = resize_rel_pos(s, 3)   # x = (i + 0.5) * 5 / 3 - 0.5 = 1/3, 2, 11/3
    expected = torch.stack([2 / 3 * s[0] + 1 / 3 * s[1], s[2], 1 / 3 * s[3] + 2 / 3 * s[4]])
    torch.testing.assert_close(down, expected, rtol=1e-12, atol=1e-12)
    half = torch.randn(7, 4).bfloat16()                 # low precision: interpolated in float32, rounded once
    assert torch.equal(resize_rel_pos(half, 13), resize_rel_pos(half.float(), 13).bfloat16())
    with pytest.raises(ValueError, match="table"):
        resize_rel_pos(torch.randn(2, 3, 4), 5)


def test_get_rel_pos_resizes_only_when_the_grid_needs_it():
    table = torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(get_rel_pos(table, 4, 2), table[rel_pos_index(4, 2)])
    torch.testing.assert_close(get_rel_pos(table, 5, 5), resize_rel_pos(table, 9)[rel_pos_index(5, 5)])


@pytest.mark.parametrize("q_shape,k_shape,cls", [((3, 4, 5), (3, 2, 3), True), ((2, 3, 3), (1, 3, 2), False)])
def test_decomposed_rel_pos_over_three_axes(q_shape, k_shape, cls):
    """The (t, h, w) bias (the video model's) against the formula written out element by element:
    bias[(t, y, x), (i, j, l)] = q . Rt[t, i] + q . Rh[y, j] + q . Rw[x, l], nothing on the class
    token's row and column; tables of the lengths the grids need, and one to be resized."""
    from fastmvit.reference.layers import add_decomposed_rel_pos_nd
    torch.manual_seed(0)
    B, n, hd, sp = 2, 2, 5, int(cls)
    Nq, Nk = sp + math.prod(q_shape), sp + math.prod(k_shape)
    q = torch.randn(B, n, Nq, hd, dtype=torch.float64)
    attn = torch.randn(B, n, Nq, Nk, dtype=torch.float64)
    tables = [torch.randn(2 * max(a, b) - 1 + (3 if i == 0 else 0), hd, dtype=torch.float64)   # t's resized
              for i, (a, b) in enumerate(zip(q_shape, k_shape))]
    got = add_decomposed_rel_pos_nd(attn, q, tables, q_shape, k_shape, cls)
    R = [get_rel_pos(t, a, b) for t, a, b in zip(tables, q_shape, k_shape)]
    want = attn.clone()
    for p, (t, y, x) in enumerate(itertools.product(*map(range, q_shape))):
        for r, (i, j, l) in enumerate(itertools.product(*map(range, k_shape))):
            qq = q[:, :, sp + p]
            want[:, :, sp + p, sp + r] += qq @ R[0][t, i] + qq @ R[1][y, j] + qq @ R[2][x, l]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="2 tables for a 3-axis q grid"):
        add_decomposed_rel_pos_nd(attn, q, tables[1:], q_shape, k_shape, cls)


def test_model_resizes_tables_at_run_time():
    """A model built for 64x64 run on 96x128 equals one built for 96x128 holding the resized tables."""
    torch.manual_seed(0)
    a = MViTv2(SMALL, img_size=64, num_classes=5).double().eval()
    b = MViTv2(SMALL, img_size=(96, 128), num_classes=5).double().eval()
    state = a.state_dict()
    resized = 0
    for k, v in b.state_dict().items():
        if v.shape != state[k].shape:
            assert k.endswith(("rel_pos_h", "rel_pos_w")), k
            state[k] = resize_rel_pos(state[k], v.shape[0])
            resized += 1
    assert resized >= 8
    b.load_state_dict(state)
    x = torch.randn(2, 3, 96, 128, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Float64 re-derivation of one attention and one block (docs/design.md, sections 1-2)
# ------------------------------------------------------------------------------------------------
def _layer_norm(x, w, b, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def _pool(t, weight, stride, hw, sp, ln):
    """t: (B, n, N, hd) -> conv-pooled grid with the class token put back, then LayerNorm."""
    B, n, _, hd = t.shape
    H, W = hw
    grid = t[:, :, sp:].reshape(B * n, H, W, hd).permute(0, 3, 1, 2)
    grid = F.conv2d(grid, weight, stride=stride, padding=1, groups=hd)
    h, w = grid.shape[-2:]
    grid = grid.reshape(B, n, hd, h * w).transpose(2, 3)
    return _layer_norm(torch.cat([t[:, :, :sp], grid], 2), ln.weight, ln.bias), (h, w)


def _attention_float64(attn: MultiScaleAttention, x, hw, sp):
    B, N, _ = x.shape
    n, hd = attn.num_heads, attn.head_dim
    qkv = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(B, N, 3, n, hd).permute(2, 0, 3, 1, 4)
    q, qs = _pool(qkv[0], attn.pool_q.weight, attn.stride_q, hw, sp, attn.norm_q)
    k, ks = _pool(qkv[1], attn.pool_k.weight, attn.stride_kv, hw, sp, attn.norm_k)
    v, _ = _pool(qkv[2], attn.pool_v.weight, attn.stride_kv, hw, sp, attn.norm_v)
    logits = (q * hd ** -0.5) @ k.transpose(-1, -2)
    (qh, qw), (kh, kw) = qs, ks

    def index(i, j, qn, kn):  # SPEC: i * q_ratio - j * k_ratio + (kn - 1) * k_ratio, truncated
        q_ratio, k_ratio = max(kn / qn, 1.0), max(qn / kn, 1.0)
        return int(i * q_ratio - j * k_ratio + (kn - 1) * k_ratio)

    bias = torch.zeros_like(logits)
    for y in range(qh):
        for xx in range(qw):
            qv = q[:, :, sp + y * qw + xx]                                   # (B, n, hd), unscaled
            for j in range(kh):
                for l in range(kw):
                    r = attn.rel_pos_h[index(y, j, qh, kh)] + attn.rel_pos_w[index(xx, l, qw, kw)]
                    bias[:, :, sp + y * qw + xx, sp + j * kw + l] = (qv * r).sum(-1)
    out = torch.softmax(logits + bias, -1) @ v
    out[:, :, sp:] += q[:, :, sp:]                                            # no residual on the class token
    out = out.transpose(1, 2).reshape(B, -1, n * hd)
    return out @ attn.proj.weight.T + attn.proj.bias, qs


def _randomize(module: nn.Module):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.ndim > 1 else 0.2) + (1.0 if p.ndim == 1 and p.shape[0] > 0 else 0))
    return module


@pytest.mark.parametrize("sp", [0, 1], ids=["no_cls", "cls"])
@pytest.mark.parametrize("strides", [((2, 2), (1, 1)), ((1, 1), (2, 2)), ((2, 2), (2, 2))], ids=["q2kv1", "q1kv2", "q2kv2"])
def test_attention_matches_float64_rederivation(sp, strides):
    stride_q, stride_kv = strides
    hw = (5, 7)                                                       # odd, non-square
    q_hw = [(s + 2 - 3) // st + 1 for s, st in zip(hw, stride_q)]
    kv_hw = [(s + 2 - 3) // st + 1 for s, st in zip(hw, stride_kv)]
    rel = tuple(2 * max(a, b) - 1 for a, b in zip(q_hw, kv_hw))
    attn = MultiScaleAttention(12, 16, 2, stride_q=stride_q, stride_kv=stride_kv, rel_pos_len=rel,
                               has_cls_token=bool(sp)).double()
    _randomize(attn)
    x = torch.randn(3, sp + 35, 12, dtype=torch.float64)
    out, shape = attn(x, hw)
    expected, expected_shape = _attention_float64(attn, x, hw, sp)
    assert tuple(shape) == tuple(expected_shape)
    assert_matches_float64(out, None, expected, "attention", dict(rtol=1e-10, atol=1e-10))


@pytest.mark.parametrize("dim_mul_in_attention", [True, False], ids=["dim_in_attention", "dim_in_mlp"])
@pytest.mark.parametrize("sp", [0, 1], ids=["no_cls", "cls"])
def test_block_matches_float64_rederivation(dim_mul_in_attention, sp):
    """A stride-2 block with a width change: shortcut max pool (class token bypasses it), proj on
    the normed input (attention) or on norm2's output (MLP), GELU erf, LayerNorm eps 1e-6."""
    cfg = SMALL.replace(dim_mul_in_attention=dim_mul_in_attention, with_cls_token=bool(sp))
    specs = block_specs(cfg, (40, 24))                                # grid 10x6
    spec = next(s for s in specs if s.stride_q == (2, 2)) if dim_mul_in_attention else \
        next(s for s in specs if s.dim_change == "mlp")
    block = _randomize(MultiScaleBlock(spec, has_cls_token=bool(sp)).double())
    H, W = spec.input_size
    x = torch.randn(2, sp + H * W, spec.dim, dtype=torch.float64)
    out, hw = block(x, spec.input_size)

    xn = _layer_norm(x, block.norm1.weight, block.norm1.bias)
    a, qs = _attention_float64(block.attn, xn, (H, W), sp)
    shortcut = xn @ block.proj.weight.T + block.proj.bias if spec.dim_change == "attention" else x
    if spec.stride_q != (1, 1):
        grid = shortcut[:, sp:].reshape(2, H, W, -1).permute(0, 3, 1, 2)
        grid = F.max_pool2d(grid, 3, 2, 1).flatten(2).transpose(1, 2)
        shortcut = torch.cat([shortcut[:, :sp], grid], 1)
    y = shortcut + a
    yn = _layer_norm(y, block.norm2.weight, block.norm2.bias)
    h = yn @ block.mlp.fc1.weight.T + block.mlp.fc1.bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    mlp = h @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    base = yn @ block.proj.weight.T + block.proj.bias if spec.dim_change == "mlp" else y
    assert tuple(hw) == tuple(qs) == tuple(spec.q_size)
    assert_matches_float64(out, None, base + mlp, "block", dict(rtol=1e-10, atol=1e-10))


# ------------------------------------------------------------------------------------------------
# The whole model: shapes, intermediates, gradients, keys, errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_output_shapes_every_arch(arch):
    """On meta (shapes only), with one block per stage but the last-but-one stage of 2 (the
    shapes depend on the stage layout, not on the depth): square and non-square inputs, not all
    multiples of 32. The full depths are covered by the parameter and MAC counts."""
    cfg = ARCH_SETTINGS[arch].replace(depths=(1, 1, 2, 1))
    model = _meta(cfg, num_classes=11).eval()
    sp = int(cfg.with_cls_token)
    for H, W in [(64, 64), (96, 160), (100, 70)]:
        feats = model.forward_features(torch.randn(2, 3, H, W, device="meta"))
        h, w = -(-H // 32), -(-W // 32)
        assert feats.shape == (2, sp + h * w, cfg.embed_dims * 8)
        assert model.forward_head(feats).shape == (2, 11)


@pytest.mark.parametrize("arch", ["tiny", "small_cls"])
def test_real_forward_and_intermediates(arch):
    torch.manual_seed(0)
    model = MViTv2(arch, img_size=(96, 160), num_classes=0).eval()
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        feats = model.forward_features(x)
        final, maps = model.forward_intermediates(x)
        pooled = model(x)
    assert torch.isfinite(feats).all()
    assert torch.equal(final, feats)                                   # intermediates change nothing
    assert [tuple(m.shape) for m in maps] == [(1, 96, 24, 40), (1, 192, 12, 20), (1, 384, 6, 10), (1, 768, 3, 5)]
    sp = int(model.config.with_cls_token)
    assert torch.equal(pooled, feats[:, 0] if sp else feats.mean(1))  # num_classes 0: pooled features
    # The last map is the last block's output before the final norm.
    torch.testing.assert_close(model.norm(maps[-1].flatten(2).transpose(1, 2)), feats[:, sp:])
    with torch.no_grad():
        _, two = model.forward_intermediates(x, out_scales=(1, -1))
    assert [m.shape[1] for m in two] == [192, 768]


@pytest.mark.parametrize("cls", [False, True], ids=["no_cls", "cls"])
def test_gradients_reach_every_parameter(cls):
    torch.manual_seed(0)
    model = MViTv2(SMALL.replace(with_cls_token=cls, drop_path_rate=0.2), img_size=(48, 40), num_classes=4)
    feats = model.forward_features(torch.randn(2, 3, 48, 40))
    # The logits alone would leave the last block's rel-pos tables and pool_q without gradient
    # with a class token (the head reads the class-token row, which gets no rel-pos bias and is
    # not conv-pooled): a loss on every token reaches them.
    loss = model.forward_head(feats).square().sum() + (feats * torch.randn_like(feats)).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_large_on_meta_builds_and_counts_without_memory():
    model = _meta("large")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.blocks[1].proj.weight.shape == (288, 144)         # dim change in the MLP


def _official_keys(depths, change_blocks, cls):
    """The official state-dict keys (docs/checkpoints.md), written out independently."""
    keys = ["patch_embed.proj.weight", "patch_embed.proj.bias"] + (["cls_token"] if cls else [])
    for i in range(sum(depths)):
        p = f"blocks.{i}."
        keys += [p + "norm1.weight", p + "norm1.bias", p + "attn.qkv.weight", p + "attn.qkv.bias",
                 p + "attn.proj.weight", p + "attn.proj.bias", p + "attn.rel_pos_h", p + "attn.rel_pos_w"]
        keys += [p + f"attn.pool_{t}.weight" for t in "qkv"]
        keys += [p + f"attn.norm_{t}.{w}" for t in "qkv" for w in ("weight", "bias")]
        keys += [p + "norm2.weight", p + "norm2.bias"] + [p + f"mlp.fc{j}.{w}" for j in (1, 2) for w in ("weight", "bias")]
        if i in change_blocks:
            keys += [p + "proj.weight", p + "proj.bias"]
    return set(keys + ["norm.weight", "norm.bias", "head.projection.weight", "head.projection.bias"])


@pytest.mark.parametrize("arch, change_blocks", [("tiny", (1, 3, 8)), ("large", (1, 7, 43)), ("base_cls", (2, 5, 21))])
def test_state_dict_has_the_official_keys(arch, change_blocks):
    model = _meta(arch)
    sd = model.state_dict()
    cfg = model.config
    assert set(sd) == _official_keys(cfg.depths, change_blocks, cfg.with_cls_token)
    hd = cfg.embed_dims // cfg.num_heads
    assert sd["blocks.0.attn.pool_q.weight"].shape == (hd, 1, 3, 3)
    assert sd["blocks.0.attn.rel_pos_h"].shape == (111, hd)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * cfg.embed_dims, cfg.embed_dims)
    assert sd["head.projection.weight"].shape == (1000, cfg.embed_dims * 8)
    assert model.no_weight_decay() == {k for k in sd if k.endswith(("rel_pos_h", "rel_pos_w")) or k == "cls_token"}


def test_clear_errors_for_bad_input():
    model = MViTv2(SMALL, img_size=32, num_classes=2)
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="smaller than the patch stride"):
        model(torch.randn(1, 3, 3, 32))
    with pytest.raises(ValueError, match="float64"):
        model(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="meta"):
        model(torch.randn(1, 3, 32, 32, device="meta"))
    with pytest.raises(ValueError, match="unknown MViTv2 arch"):
        MViTv2("gigantic")
    with pytest.raises(ValueError, match="heads do not divide"):
        MViTv2(MViTv2Config(embed_dims=20, num_heads=3, depths=(1, 1)))
    with pytest.raises(ValueError, match="smaller than the patch stride"):
        MViTv2(SMALL, img_size=2)
    with pytest.raises(ValueError, match="out_scales"):
        MViTv2(SMALL, out_scales=(4,))
    block = model.blocks[0]
    with pytest.raises(ValueError, match="do not fit the grid"):
        block(torch.randn(1, 17, 16), (4, 5))
    with pytest.raises(ValueError, match="expects tokens"):
        block.attn(torch.randn(1, 20, 15), (4, 5))


def test_tiny_images_survive_the_pooling():
    """A 4x4 image is one token: every stride-2 pool of a 1x1 grid gives 1x1."""
    model = MViTv2(SMALL, img_size=32, num_classes=2).eval()
    assert model(torch.randn(1, 3, 4, 5)).shape == (1, 2)


def test_blocks_are_built_through_the_hooks():
    class MyAttention(MultiScaleAttention):
        pass

    class MyBlock(MultiScaleBlock):
        attention_cls = MyAttention

    class MyModel(MViTv2):
        block_cls = MyBlock

    model = MyModel(SMALL, img_size=32, num_classes=0)
    assert all(type(b) is MyBlock and type(b.attn) is MyAttention for b in model.blocks)
    assert set(model.state_dict()) == set(MViTv2(SMALL, img_size=32, num_classes=0).state_dict())
