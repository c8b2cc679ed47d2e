"""The reference video MViTv2 (fastmvit.reference.MViTv2Video): sizes, plan, maths, run-time sizes.

The attention is checked against a float64 re-derivation of docs/design.md ("The video model")
written here with explicit loops over the three relative-position axes.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmvit.reference import (MultiScaleAttention, MViTv2Video, MViTv2VideoConfig, block_specs, get_video_config,
                                mvit_v2_s, resize_rel_pos)
from numerics import assert_matches_float64
from test_reference import _layer_norm, _randomize

# Two stages, 2 heads, hd 8: every video feature at clip sizes the CPU runs in milliseconds.
TOY = MViTv2VideoConfig(embed_dims=16, num_heads=2, depths=(1, 2), adaptive_kv_stride=2, drop_path_rate=0.0)


def test_mvit_v2_s_has_torchvisions_parameter_count():
    with torch.device("meta"):
        model = mvit_v2_s()
    assert sum(p.numel() for p in model.parameters()) == 34_537_744
    assert model.input_size == (16, 224, 224) and model.num_classes == 400
    assert isinstance(model.head.dropout, nn.Dropout) and model.head.dropout.p == 0.5


def test_block_plan_of_mvit_v2_s():
    """Attention shapes (Nq, Nk with the class token, heads) and table lengths at 16 x 224 x 224
    (docs/design.md, "The video model"; the key/value stride follows the official halving rule)."""
    specs = block_specs(get_video_config("mvit_v2_s"), (16, 224, 224))
    shapes = [(1 + s.q_size[0] * s.q_size[1] * s.q_size[2], 1 + s.kv_size[0] * s.kv_size[1] * s.kv_size[2],
               s.num_heads) for s in specs]
    assert shapes == ([(25089, 393, 1), (6273, 1569, 2), (6273, 393, 2), (1569, 1569, 4)] + [(1569, 393, 4)] * 10
                      + [(393, 1569, 8), (393, 393, 8)])
    assert [s.rel_pos_len for s in specs[:4]] == [(15, 111, 111), (15, 55, 55), (15, 55, 55), (15, 27, 27)]
    assert specs[-1].rel_pos_len == (15, 13, 13)
    assert {s.head_dim for s in specs} == {96}
    assert specs[1].stride_q == (1, 2, 2) and specs[0].stride_kv == (1, 8, 8) and specs[-1].stride_kv == (1, 1, 1)


def test_state_dict_has_the_official_video_keys():
    model = MViTv2Video(TOY, num_frames=4, img_size=32, num_classes=3)
    keys = set(model.state_dict())
    for k in ("patch_embed.proj.weight", "cls_token", "blocks.0.attn.rel_pos_t", "blocks.0.attn.rel_pos_h",
              "blocks.1.attn.pool_q.weight", "blocks.1.attn.norm_q.weight", "blocks.1.proj.weight",
              "norm.weight", "head.projection.weight"):
        assert k in keys, k
    assert model.state_dict()["blocks.0.attn.pool_q.weight"].shape == (8, 1, 3, 3, 3)
    assert model.patch_embed.proj.weight.shape == (16, 3, 3, 7, 7)
    assert "blocks.0.attn.rel_pos_t" in model.no_weight_decay()


# ------------------------------------------------------------------------------------------------
# Float64 re-derivation of one video attention
# ------------------------------------------------------------------------------------------------
def _pool3d(t, weight, stride, thw, sp, ln):
    B, n, _, hd = t.shape
    grid = t[:, :, sp:].reshape(B * n, *thw, hd).permute(0, 4, 1, 2, 3)
    grid = F.conv3d(grid, weight, stride=stride, padding=1, groups=hd)
    shape = tuple(grid.shape[-3:])
    grid = grid.reshape(B, n, hd, -1).transpose(2, 3)
    return _layer_norm(torch.cat([t[:, :, :sp], grid], 2), ln.weight, ln.bias), shape


def _index(i, j, qn, kn):   # SPEC: i * q_ratio - j * k_ratio + (kn - 1) * k_ratio, truncated
    q_ratio, k_ratio = max(kn / qn, 1.0), max(qn / kn, 1.0)
    return int(i * q_ratio - j * k_ratio + (kn - 1) * k_ratio)


def _video_attention_float64(attn: MultiScaleAttention, x, thw, sp):
    B, N, _ = x.shape
    n, hd = attn.num_heads, attn.head_dim
    qkv = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(B, N, 3, n, hd).permute(2, 0, 3, 1, 4)
    q, qs = _pool3d(qkv[0], attn.pool_q.weight, attn.stride_q, thw, sp, attn.norm_q)
    k, ks = _pool3d(qkv[1], attn.pool_k.weight, attn.stride_kv, thw, sp, attn.norm_k)
    v, _ = _pool3d(qkv[2], attn.pool_v.weight, attn.stride_kv, thw, sp, attn.norm_v)
    logits = (q * hd ** -0.5) @ k.transpose(-1, -2)
    tables = (attn.rel_pos_t, attn.rel_pos_h, attn.rel_pos_w)
    for p, qpos in enumerate(itertools.product(*map(range, qs))):
        qv = q[:, :, sp + p]                                                  # (B, n, hd), unscaled
        for r, kpos in enumerate(itertools.product(*map(range, ks))):
            row = sum(tab[_index(a, b, qa, ka)] for tab, a, b, qa, ka in zip(tables, qpos, kpos, qs, ks))
            logits[:, :, sp + p, sp + r] += (qv * row).sum(-1)
    out = torch.softmax(logits, -1) @ v
    out[:, :, sp:] += q[:, :, sp:]
    out = out.transpose(1, 2).reshape(B, -1, n * hd)
    return out @ attn.proj.weight.T + attn.proj.bias, qs


@pytest.mark.parametrize("sp", [0, 1], ids=["no_cls", "cls"])
@pytest.mark.parametrize("strides", [((1, 2, 2), (1, 1, 1)), ((1, 1, 1), (2, 2, 1)), ((2, 2, 2), (1, 2, 2))],
                         ids=["q122", "kv221", "q222kv122"])
def test_video_attention_matches_float64_rederivation(sp, strides):
    stride_q, stride_kv = strides
    thw = (3, 5, 4)                                                  # odd, non-cubic
    qs = [(s + 2 - 3) // st + 1 for s, st in zip(thw, stride_q)]
    ks = [(s + 2 - 3) // st + 1 for s, st in zip(thw, stride_kv)]
    rel = tuple(2 * max(a, b) - 1 for a, b in zip(qs, ks))
    attn = MultiScaleAttention(12, 16, 2, pool_kernel=(3, 3, 3), stride_q=stride_q, stride_kv=stride_kv,
                               rel_pos_len=rel, has_cls_token=bool(sp)).double()
    _randomize(attn)
    x = torch.randn(2, sp + 60, 12, dtype=torch.float64)
    out, shape = attn(x, thw)
    expected, expected_shape = _video_attention_float64(attn, x, thw, sp)
    assert tuple(shape) == tuple(expected_shape)
    assert_matches_float64(out, None, expected, "video attention", dict(rtol=1e-10, atol=1e-10))


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------
def test_forward_intermediates_and_shapes():
    model = _randomize(MViTv2Video(TOY, num_frames=4, img_size=32, num_classes=3)).double().eval()
    x = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    feats, maps = model.forward_intermediates(x)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 2, 8, 8), (2, 32, 2, 4, 4)]
    torch.testing.assert_close(feats, model.forward_features(x), rtol=0, atol=0)
    assert feats.shape == (2, 1 + 2 * 4 * 4, 32)
    assert model(x).shape == (2, 3)
    torch.testing.assert_close(model.forward_head(feats), model(x), rtol=0, atol=0)
    assert model(torch.randn(1, 3, 5, 40, 24, dtype=torch.float64)).shape == (1, 3)   # any T, H, W


@pytest.mark.parametrize("clip", [(6, 32, 32), (4, 40, 40)], ids=["more_frames", "other_hw"])
def test_tables_resize_at_run_time_each_axis_on_its_own(clip):
    """A model built for 4 x 32 x 32 run on another clip equals one built for that clip holding
    the tables resized (t alone, or h and w alone) by ``resize_rel_pos``. (Square frames: for
    non-square ones torchvision sizes both spatial tables from the larger side, so a model built
    for them holds a w table of another length than the grid's, resized once more at run time.)"""
    a = _randomize(MViTv2Video(TOY, num_frames=4, img_size=32, num_classes=3)).double().eval()
    b = MViTv2Video(TOY, num_frames=clip[0], img_size=clip[1:], num_classes=3).double().eval()
    state = a.state_dict()
    resized = set()
    for k, v in b.state_dict().items():
        if v.shape != state[k].shape:
            resized.add(k.rsplit(".", 1)[1])
            state[k] = resize_rel_pos(state[k], v.shape[0])
    assert resized == ({"rel_pos_t"} if clip[0] != 4 else {"rel_pos_h", "rel_pos_w"})
    b.load_state_dict(state)
    x = torch.randn(1, 3, *clip, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x), rtol=1e-12, atol=1e-12)


def test_gradients_reach_every_parameter():
    model = _randomize(MViTv2Video(TOY, num_frames=4, img_size=32, num_classes=3))
    # On every token: through the class token alone, the last block's q pooling and tables get none.
    feats = model.forward_features(torch.randn(2, 3, 4, 32, 32))
    (feats.square().sum() + model.forward_head(feats).sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_clear_errors_for_bad_video_input():
    model = MViTv2Video(TOY, num_frames=4, img_size=32, num_classes=3)
    with pytest.raises(ValueError, match="expected a 5-D video batch"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="smaller than the patch stride"):
        model(torch.randn(1, 3, 1, 32, 32))
    with pytest.raises(ValueError, match="unknown MViTv2 arch"):
        MViTv2Video("tiny")
    with pytest.raises(TypeError, match="expected a video config"):
        from fastmvit.reference import MViTv2Config
        MViTv2Video(MViTv2Config())
    with pytest.raises(ValueError, match="3 odd positive sizes|3 ints"):
        MViTv2Video(TOY, pool_kernel=(3, 3))
