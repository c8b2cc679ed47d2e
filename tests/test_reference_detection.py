"""The reference detection backbone (fastmvit.reference.MViTv2Backbone, detectron2's MViT).

The block plan, the parameters and the attention shapes are checked against SPEC section 6,
re-derived here from its prose (``spec_plan``), the big archs on the ``meta`` device. The maths is
checked against float64 written here in detectron2's (B, H, W, C) map layout, with the window
attention computed window by window with explicit zero padding.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

import fastmvit.reference.detection as detection_module
import fastmvit.reference.layers as layers_module
from fastmvit.reference import (DETECTION_ARCH_SETTINGS, BackboneBlock, MViTv2Backbone, ShapeSpec,
                                WindowedMultiScaleAttention, backbone_block_specs, pooling_attention,
                                window_attention)
from numerics import assert_matches_float64
from test_reference import _layer_norm, _randomize

TIGHT = dict(rtol=1e-10, atol=1e-10)

# A small backbone with windows in every stage, odd grids at 100 x 72, two heads (hd 4):
# stages of 2 blocks each; windows 8, 8 (q 8 / kv 2), 8 (first of stage 3: q 4 / kv 4), 4, 2.
SMALL = dict(embed_dim=8, depth=8, num_heads=2, last_block_indexes=(1, 3, 5, 7), img_size=64,
             adaptive_window_size=8)


# ------------------------------------------------------------------------------------------------
# SPEC section 6, re-derived
# ------------------------------------------------------------------------------------------------
def spec_plan(c0, depth, heads0, lbi, img=224, kv0=4, window0=56):
    """Per block, from SPEC section 6's prose: stage (0-based), widths, heads, strides, window and
    the q / kv window sides, the table length (one int: square tables)."""
    stage_of = [sum(i > last for last in lbi) for i in range(depth)]
    first = [last + 1 for last in lbi[:-1]]                  # first blocks of stages 3, 4, 5 (q strided)
    rows = []
    for i in range(depth):
        s = stage_of[i]
        halvings = sum(f < i for f in first)                 # the window halves after each stage's first block
        sq = 2 if i in first else 1
        kv = max(kv0 // 2 ** s, 1) * (2 if i in (lbi[1], lbi[2]) else 1)
        window = 0 if i in lbi[1:] else window0 // 2 ** halvings
        side = (img // 4) // 2 ** halvings
        rows.append(dict(index=i, stage=s, dim=c0 * 2 ** (stage_of[i - 1] if i else 0), dim_out=c0 * 2 ** s,
                         heads=heads0 * 2 ** s, stride_q=sq, stride_kv=kv, window=window,
                         q_window=window // sq, kv_window=window // kv if window else 0,
                         table=2 * max(side // sq, side // kv) - 1))
    return rows


# tiny, written out by hand from SPEC section 6: (stride_q, stride_kv, window, q window, kv window, table)
TINY_BY_HAND = [(1, 4, 56, 56, 14, 111), (2, 2, 56, 28, 28, 55), (1, 4, 0, 0, 0, 55), (2, 1, 28, 14, 28, 55),
                (1, 1, 14, 14, 14, 27), (1, 1, 14, 14, 14, 27), (1, 1, 14, 14, 14, 27), (1, 2, 0, 0, 0, 27),
                (2, 1, 14, 7, 14, 27), (1, 1, 0, 0, 0, 13)]


def spec_shapes(c0, depth, heads0, lbi, img=224, use_abs_pos=False, pretrain_img=224, cls=True):
    """detectron2's state-dict keys and shapes (SPEC section 6's key list), from ``spec_plan``."""
    shapes = {"patch_embed.proj.weight": (c0, 3, 7, 7), "patch_embed.proj.bias": (c0,)}
    if use_abs_pos:
        shapes["pos_embed"] = (1, (pretrain_img // 4) ** 2 + int(cls), c0)
    for r in spec_plan(c0, depth, heads0, lbi, img):
        p, d, do, hd = f"blocks.{r['index']}.", r["dim"], r["dim_out"], r["dim_out"] // r["heads"]
        shapes.update({p + "norm1.weight": (d,), p + "norm1.bias": (d,),
                       p + "attn.qkv.weight": (3 * do, d), p + "attn.qkv.bias": (3 * do,),
                       p + "attn.proj.weight": (do, do), p + "attn.proj.bias": (do,)})
        for t in "qkv":
            shapes.update({p + f"attn.pool_{t}.weight": (hd, 1, 3, 3), p + f"attn.norm_{t}.weight": (hd,),
                           p + f"attn.norm_{t}.bias": (hd,)})
        shapes.update({p + "attn.rel_pos_h": (r["table"], hd), p + "attn.rel_pos_w": (r["table"], hd),
                       p + "norm2.weight": (do,), p + "norm2.bias": (do,),
                       p + "mlp.fc1.weight": (4 * do, do), p + "mlp.fc1.bias": (4 * do,),
                       p + "mlp.fc2.weight": (do, 4 * do), p + "mlp.fc2.bias": (do,)})
        if d != do:
            shapes.update({p + "proj.weight": (do, d), p + "proj.bias": (do,)})
    for s in range(len(lbi)):
        shapes.update({f"scale{s + 2}_norm.weight": (c0 * 2 ** s,), f"scale{s + 2}_norm.bias": (c0 * 2 ** s,)})
    return shapes


# Parameters per arch (from spec_shapes; see test_param_counts), kept to catch regressions.
PARAMS = {"tiny": 23_405_664, "small": 34_102_560, "base": 50_705_088, "large": 212_484_384, "huge": 665_345_408}


def _meta(arch, **kw) -> MViTv2Backbone:
    with torch.device("meta"):
        return MViTv2Backbone(arch, **kw)


@pytest.mark.parametrize("arch", list(DETECTION_ARCH_SETTINGS))
def test_block_plan_matches_spec(arch):
    c0, depth, heads0, lbi = DETECTION_ARCH_SETTINGS[arch]
    specs = backbone_block_specs(c0, depth, heads0, lbi, img_size=224)
    assert len(specs) == depth
    for spec, r in zip(specs, spec_plan(c0, depth, heads0, lbi)):
        got = dict(index=spec.index, stage=spec.stage, dim=spec.dim, dim_out=spec.dim_out, heads=spec.num_heads,
                   stride_q=spec.stride_q[0], stride_kv=spec.stride_kv[0], window=spec.window,
                   q_window=spec.q_window, kv_window=spec.kv_window, table=spec.rel_pos_len[0])
        assert got == r, (arch, spec.index)
        assert spec.stride_q[0] == spec.stride_q[1] and spec.stride_kv[0] == spec.stride_kv[1]
        assert spec.rel_pos_len[0] == spec.rel_pos_len[1]
        assert spec.dim_att == spec.dim_out and spec.head_dim == c0 // heads0
        assert spec.mlp_hidden == 4 * spec.dim_out
        assert spec.dim_change == ("attention" if spec.dim != spec.dim_out else None)
        assert spec.out_name == (f"scale{spec.stage + 2}" if spec.index in lbi else None)
    global_blocks = [s.index for s in specs if s.window == 0]
    assert global_blocks == list(lbi[1:])
    if arch == "tiny":
        assert [(s.stride_q[0], s.stride_kv[0], s.window, s.q_window, s.kv_window, s.rel_pos_len[0])
                for s in specs] == TINY_BY_HAND


def test_drop_path_is_detectron2_linspace():
    specs = backbone_block_specs(*DETECTION_ARCH_SETTINGS["base"], drop_path_rate=0.4)
    assert [s.drop_path for s in specs] == torch.linspace(0, 0.4, 24).tolist()


@pytest.mark.parametrize("arch", list(DETECTION_ARCH_SETTINGS))
def test_param_counts_and_state_dict_keys(arch):
    """Keys and shapes exactly SPEC section 6's layout; the count from that layout's arithmetic."""
    c0, depth, heads0, lbi = DETECTION_ARCH_SETTINGS[arch]
    model = _meta(arch)
    want = spec_shapes(c0, depth, heads0, lbi)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == [k for k in got if k in want] and got.keys() == want.keys(), sorted(set(got) ^ set(want))[:8]
    assert got == want
    count = sum(math.prod(s) for s in want.values())
    print(f"\nMViTv2Backbone({arch!r}): {count:,} parameters ({count / 1e6:.2f} M)")
    assert sum(p.numel() for p in model.parameters()) == count == PARAMS[arch]


def test_abs_pos_key_and_out_feature_subset():
    model = _meta("tiny", use_abs_pos=True, out_features=("scale3", "scale5"))
    sd = model.state_dict()
    assert sd["pos_embed"].shape == (1, 56 * 56 + 1, 96)
    assert [k for k in sd if k.startswith("scale")] == ["scale3_norm.weight", "scale3_norm.bias",
                                                        "scale5_norm.weight", "scale5_norm.bias"]
    assert _meta("tiny", use_abs_pos=True, pretrain_use_cls_token=False,
                 pretrain_img_size=192).state_dict()["pos_embed"].shape == (1, 48 * 48, 96)
    assert model.no_weight_decay() >= {"pos_embed", "blocks.0.attn.rel_pos_h"}


def test_attention_shapes_at_1024(monkeypatch):
    """SPEC section 6's attention shapes at 1024 x 1024 (Nq / Nk per window or map, heads, windows),
    recorded from a meta-device forward of tiny, small and base."""
    calls = []
    real = pooling_attention

    def record(q, k, v, q_shape, k_shape, *args, **kwargs):
        calls.append((q.shape[0], q.shape[1], q.shape[2], k.shape[2]))    # (windows, heads, Nq, Nk)
        return real(q, k, v, q_shape, k_shape, *args, **kwargs)

    monkeypatch.setattr(layers_module, "pooling_attention", record)      # window_attention's windows
    monkeypatch.setattr(detection_module, "pooling_attention", record)   # the global blocks
    for arch in ("tiny", "small", "base"):
        calls.clear()
        model = _meta(arch)
        with torch.device("meta"):
            out = model(torch.empty(1, 3, 1024, 1024))
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "scale2": (1, 96, 256, 256), "scale3": (1, 192, 128, 128), "scale4": (1, 384, 64, 64),
            "scale5": (1, 768, 32, 32)}
        specs, lbi = model.specs, model.last_block_indexes
        first = [last + 1 for last in lbi[:-1]]
        by_kind = {}
        for spec, call in zip(specs, calls):
            kind = ("global" if spec.window == 0 else "first" if spec.index in first else "window", spec.stage + 2)
            by_kind.setdefault(kind, set()).add(call)
        assert by_kind[("window", 2)] == {(25, 1, 3136, 196)}              # 25 windows per image
        assert by_kind[("first", 3)] == {(25, 2, 784, 784)}
        assert by_kind[("global", 3)] == {(1, 2, 16384, 1024)}
        assert by_kind[("window", 4)] == {(25, 4, 196, 196)}
        assert by_kind[("global", 4)] == {(1, 4, 4096, 1024)}
        assert by_kind[("global", 5)] == {(1, 8, 1024, 1024)}
        # Not in the SPEC list: the first blocks of stages 4 and 5 (q-strided, kv window twice q's).
        assert by_kind[("first", 4)] == {(25, 4, 196, 784)}
        assert by_kind[("first", 5)] == {(25, 8, 49, 196)}
        # SPEC's "stage 5 windows 49 / 49" exists only where stage 5 has a block that is neither its
        # first nor its last: base (tiny and small have 2 blocks in stage 5).
        assert by_kind.get(("window", 5)) == ({(25, 8, 49, 49)} if arch == "base" else None)


# ------------------------------------------------------------------------------------------------
# window_attention against float64, window by window
# ------------------------------------------------------------------------------------------------
def _index(q, k):
    """SPEC section 3's relative-position index over one axis."""
    qr, kr = max(k / q, 1.0), max(q / k, 1.0)
    return torch.tensor([[int(i * qr - j * kr + (k - 1) * kr) for j in range(k)] for i in range(q)])


def _resize(table, length):
    """SPEC: 1-D linear interpolation along the rows, align_corners False."""
    if table.shape[0] == length:
        return table
    return F.interpolate(table.t()[None], size=length, mode="linear", align_corners=False)[0].t()


def windows_float64(q, k, v, q_shape, k_shape, wq, wk, th, tw, residual, mask_padding=False):
    """Window by window in float64: each window built with explicit zeros where it hangs over the
    map, every key of the window in the softmax (padded ones: logit 0 + bias, value 0), window-local
    relative positions, the rows inside the map scattered back, then + q."""
    q, k, v, th, tw = (t.double() for t in (q, k, v, th, tw))
    B, n, _, hd = q.shape
    (qh, qw), (kh, kw) = q_shape, k_shape
    Rh = _resize(th, 2 * max(wq[0], wk[0]) - 1)[_index(wq[0], wk[0])]   # (wq_h, wk_h, hd)
    Rw = _resize(tw, 2 * max(wq[1], wk[1]) - 1)[_index(wq[1], wk[1])]
    qm, km, vm = q.reshape(B, n, qh, qw, hd), k.reshape(B, n, kh, kw, hd), v.reshape(B, n, kh, kw, hd)
    out = torch.zeros(B, n, qh, qw, hd, dtype=torch.float64)
    for a in range(-(-qh // wq[0])):
        for b in range(-(-qw // wq[1])):
            def cut(m, size, win):
                w = torch.zeros(B, n, win[0], win[1], hd, dtype=torch.float64)
                inside = torch.zeros(win[0], win[1], dtype=torch.bool)
                for y in range(win[0]):
                    for x in range(win[1]):
                        Y, X = a * win[0] + y, b * win[1] + x
                        if Y < size[0] and X < size[1]:
                            w[:, :, y, x] = m[:, :, Y, X]
                            inside[y, x] = True
                return w, inside
            qwin, _ = cut(qm, q_shape, wq)
            kwin, k_in = cut(km, k_shape, wk)
            vwin, _ = cut(vm, k_shape, wk)
            logits = torch.einsum("bnyxc,bnjlc->bnyxjl", qwin * hd ** -0.5, kwin)
            logits = logits + torch.einsum("bnyxc,yjc->bnyxj", qwin, Rh)[..., None]
            logits = logits + torch.einsum("bnyxc,xlc->bnyxl", qwin, Rw)[..., None, :]
            logits = logits.reshape(B, n, wq[0], wq[1], -1)
            if mask_padding:
                logits = logits.masked_fill(~k_in.reshape(-1), float("-inf"))
            o = torch.einsum("bnyxm,bnmc->bnyxc", logits.softmax(-1), vwin.reshape(B, n, -1, hd))
            for y in range(wq[0]):
                for x in range(wq[1]):
                    Y, X = a * wq[0] + y, b * wq[1] + x
                    if Y < qh and X < qw:
                        out[:, :, Y, X] = o[:, :, y, x]
    out = out.reshape(B, n, qh * qw, hd)
    return out + q if residual else out


# (q map, k map, q window, kv window): padding on both axes of both maps, q and kv windows of
# different sizes, non-square maps and windows, 2 x 2 windows each.
WINDOW_CASES = [((7, 5), (3, 5), (4, 3), (2, 3)), ((5, 3), (4, 7), (3, 2), (3, 4)), ((6, 9), (3, 5), 3, 2)]


@pytest.mark.parametrize("case", WINDOW_CASES, ids=["q_taller", "kv_wider", "square_windows"])
@pytest.mark.parametrize("residual", [True, False])
def test_window_attention_matches_float64(case, residual):
    q_shape, k_shape, wq, wk = case
    pair = (lambda w: (w, w) if isinstance(w, int) else w)
    torch.manual_seed(0)
    B, n, hd = 2, 3, 4
    q = torch.randn(B, n, math.prod(q_shape), hd, dtype=torch.float64)
    k = torch.randn(B, n, math.prod(k_shape), hd, dtype=torch.float64)
    v = torch.randn(B, n, math.prod(k_shape), hd, dtype=torch.float64)
    lh, lw = (2 * max(a, b) - 1 for a, b in zip(pair(wq), pair(wk)))
    th, tw = torch.randn(lh, hd, dtype=torch.float64), torch.randn(lw, hd, dtype=torch.float64)
    out = window_attention(q, k, v, q_shape, k_shape, wq, wk, th, tw, residual)
    exact = windows_float64(q, k, v, q_shape, k_shape, pair(wq), pair(wk), th, tw, residual)
    assert_matches_float64(out, None, exact, "window_attention", TIGHT)
    # The padded keys are in the softmax: masking them gives another answer.
    masked = windows_float64(q, k, v, q_shape, k_shape, pair(wq), pair(wk), th, tw, residual, mask_padding=True)
    assert (masked - exact).abs().max() > 1e-3
    # Tables of another length are resized to the window sides' 2 * max - 1.
    th5, tw5 = torch.randn(5, hd, dtype=torch.float64), torch.randn(9, hd, dtype=torch.float64)
    out = window_attention(q, k, v, q_shape, k_shape, wq, wk, th5, tw5, residual)
    exact = windows_float64(q, k, v, q_shape, k_shape, pair(wq), pair(wk), th5, tw5, residual)
    assert_matches_float64(out, None, exact, "window_attention, resized tables", TIGHT)


def test_one_window_over_the_whole_map_is_global_attention():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 2, 24, 4), torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 4)
    th, tw = torch.randn(7, 4), torch.randn(11, 4)
    out = window_attention(q, k, v, (4, 6), (2, 3), (4, 6), (2, 3), th, tw, True)
    ref = pooling_attention(q, k, v, (4, 6), (2, 3), th, tw, has_cls_token=False, residual_pooling=True)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_window_attention_refuses_unpaired_windows():
    q, k = torch.zeros(1, 1, 16 * 16, 4), torch.zeros(1, 1, 16 * 16, 4)
    with pytest.raises(ValueError, match="4x4 windows but the k map 16x16 in 3x3 windows gives 6x6"):
        window_attention(q, k, k, (16, 16), (16, 16), 4, 3, None, None, True)


# ------------------------------------------------------------------------------------------------
# The backbone against float64 in detectron2's map layout
# ------------------------------------------------------------------------------------------------
def backbone_float64(model: MViTv2Backbone, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """SPEC section 6 on (B, H, W, C) maps, in float64, from the model's weights and
    ``spec_plan`` (not the model's plan)."""
    P = {k: v.double() for k, v in model.state_dict().items()}
    plan = spec_plan(model.embed_dim, model.depth, model.num_heads, model.last_block_indexes,
                     img=model.img_size[0], window0=model.specs[0].window)
    x = F.conv2d(images.double(), P["patch_embed.proj.weight"], P["patch_embed.proj.bias"], stride=4, padding=3)
    x = x.permute(0, 2, 3, 1)                                                         # (B, H, W, C)
    if "pos_embed" in P:
        pos = P["pos_embed"][:, 1:] if model.pretrain_use_cls_token else P["pos_embed"]
        side = math.isqrt(pos.shape[1])
        pos = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        x = x + F.interpolate(pos, size=x.shape[1:3], mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    outs = {}
    for r in plan:
        p = f"blocks.{r['index']}."
        B, H, W, _ = x.shape
        n, hd = r["heads"], r["dim_out"] // r["heads"]
        xn = _layer_norm(x, P[p + "norm1.weight"], P[p + "norm1.bias"])
        qkv = (xn @ P[p + "attn.qkv.weight"].T + P[p + "attn.qkv.bias"]).reshape(B, H, W, 3, n, hd)
        pooled = []
        for t, name, stride in ((0, "q", r["stride_q"]), (1, "k", r["stride_kv"]), (2, "v", r["stride_kv"])):
            m = qkv[:, :, :, t].permute(0, 3, 4, 1, 2).reshape(B * n, hd, H, W)
            m = F.conv2d(m, P[p + f"attn.pool_{name}.weight"], stride=stride, padding=1, groups=hd)
            m = m.reshape(B, n, hd, *m.shape[2:]).permute(0, 1, 3, 4, 2)            # (B, n, h, w, hd)
            pooled.append((_layer_norm(m, P[p + f"attn.norm_{name}.weight"], P[p + f"attn.norm_{name}.bias"]),
                           m.shape[2:4]))
        (q, qs), (k, ks), (v, _) = pooled
        wq, wk = ((r["q_window"],) * 2, (r["kv_window"],) * 2) if r["window"] else (tuple(qs), tuple(ks))
        a = windows_float64(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3), qs, ks, wq, wk,
                            P[p + "attn.rel_pos_h"], P[p + "attn.rel_pos_w"], model.residual_pooling)
        a = a.reshape(B, n, *qs, hd).permute(0, 2, 3, 1, 4).reshape(B, *qs, n * hd)
        a = a @ P[p + "attn.proj.weight"].T + P[p + "attn.proj.bias"]
        sc = xn @ P[p + "proj.weight"].T + P[p + "proj.bias"] if r["dim"] != r["dim_out"] else x
        if r["stride_q"] == 2:
            sc = F.max_pool2d(sc.permute(0, 3, 1, 2), 3, 2, 1).permute(0, 2, 3, 1)
        x = sc + a
        h = _layer_norm(x, P[p + "norm2.weight"], P[p + "norm2.bias"])
        h = h @ P[p + "mlp.fc1.weight"].T + P[p + "mlp.fc1.bias"]
        x = x + F.gelu(h) @ P[p + "mlp.fc2.weight"].T + P[p + "mlp.fc2.bias"]
        name = f"scale{r['stage'] + 2}"
        if r["index"] in model.last_block_indexes and name in model._out_features:
            outs[name] = _layer_norm(x, P[name + "_norm.weight"], P[name + "_norm.bias"]).permute(0, 3, 1, 2)
    return outs


@pytest.mark.parametrize("options", [dict(), dict(use_abs_pos=True, pretrain_img_size=48, residual_pooling=False)],
                         ids=["default", "abs_pos_no_residual"])
def test_backbone_matches_float64_on_odd_sizes(options):
    """100 x 72 images: 25 x 18 tokens, every map padded in some window, every table resized."""
    torch.manual_seed(0)
    model = _randomize(MViTv2Backbone(**SMALL, rel_pos_zero_init=False, **options).double())
    images = torch.randn(2, 3, 100, 72, dtype=torch.float64)
    out = model(images)
    exact = backbone_float64(model, images)
    assert list(out) == ["scale2", "scale3", "scale4", "scale5"] == list(exact)
    for name in out:
        assert_matches_float64(out[name], None, exact[name], name, TIGHT)


def test_forward_shapes_and_output_shape():
    model = MViTv2Backbone("tiny").eval()
    assert isinstance(model.blocks[0], BackboneBlock) and isinstance(model.blocks[0].attn, WindowedMultiScaleAttention)
    assert (model.blocks[0].attn.q_window, model.blocks[0].attn.kv_window) == (56, 14)
    assert (model.blocks[2].attn.q_window, model.blocks[2].attn.kv_window) == (0, 0)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 100, 72))
    grids = {"scale2": (25, 18), "scale3": (13, 9), "scale4": (7, 5), "scale5": (4, 3)}
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        k: (1, c, *grids[k]) for k, c in zip(grids, (96, 192, 384, 768))}
    assert model.output_shape() == {f"scale{s}": ShapeSpec(channels=96 * 2 ** (s - 2), stride=2 ** s)
                                    for s in (2, 3, 4, 5)}
    assert ShapeSpec._fields == ("channels", "height", "width", "stride")
    assert model.size_divisibility == 0 and model.padding_constraints == {}
    assert model._out_feature_strides == {"scale2": 4, "scale3": 8, "scale4": 16, "scale5": 32}
    assert model._out_feature_channels == {"scale2": 96, "scale3": 192, "scale4": 384, "scale5": 768}
    assert model._out_features == ("scale2", "scale3", "scale4", "scale5")


def test_arch_and_explicit_values():
    assert (_meta(None).depth, _meta(None).last_block_indexes) == (16, (0, 2, 11, 15))   # detectron2's defaults
    m = _meta("tiny", depth=12, last_block_indexes=(0, 2, 9, 11))
    assert (m.embed_dim, m.num_heads, m.depth) == (96, 1, 12)
    m = _meta(None, embed_dim=64, num_heads=2)
    assert (m.embed_dim, m.num_heads, m.depth, m.last_block_indexes) == (64, 2, 16, (0, 2, 11, 15))
    assert _meta("mvitv2_huge").embed_dim == 192


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = _randomize(MViTv2Backbone(**SMALL, drop_path_rate=0.3, use_act_checkpoint=ckpt)).train()
        torch.manual_seed(1)
        images = torch.randn(2, 3, 52, 44, requires_grad=True)
        out = model(images)
        sum((o * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in out.values()).backward()
        grads.append({"images": images.grad, **{k: p.grad for k, p in model.named_parameters()}})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-6, atol=1e-7, msg=name)


def test_clear_errors():
    model = MViTv2Backbone(**SMALL)
    with pytest.raises(ValueError, match="4-D image batch"):
        model(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="square token grid"):
        MViTv2Backbone(**{**SMALL, "img_size": (64, 96)})
    assert MViTv2Backbone(**{**SMALL, "img_size": (64, 96)}, use_rel_pos=False).specs[0].input_size == (16, 24)
    with pytest.raises(ValueError, match="out_features \\['scale6'\\] do not exist"):
        MViTv2Backbone(**SMALL, out_features=("scale2", "scale6"))
    with pytest.raises(ValueError, match="unknown MViTv2 detection arch 'gigantic'"):
        MViTv2Backbone("gigantic")
    with pytest.raises(ValueError, match="must end at the last block"):
        MViTv2Backbone(**{**SMALL, "last_block_indexes": (1, 3, 5, 6)})
    with pytest.raises(ValueError, match="window 2 is smaller than its strides"):
        backbone_block_specs(8, 4, 1, (0, 1, 2, 3), adaptive_window_size=2)
    with pytest.raises(ValueError, match="q_window and kv_window must both be positive"):
        WindowedMultiScaleAttention(8, 8, 2, q_window=4, kv_window=0)


def test_pos_embed_is_resized_bicubically():
    """use_abs_pos: the same as adding, after the patch embedding, the (1, 12 * 12 + 1, C)
    embedding without its class row, bicubic-resized to the 25 x 18 grid."""
    torch.manual_seed(0)
    with_pos = _randomize(MViTv2Backbone(**SMALL, use_abs_pos=True, pretrain_img_size=48))
    plain = MViTv2Backbone(**SMALL)
    sd = with_pos.state_dict()
    pos = sd.pop("pos_embed")
    plain.load_state_dict(sd)
    grid = F.interpolate(pos[:, 1:].reshape(1, 12, 12, -1).permute(0, 3, 1, 2), size=(25, 18), mode="bicubic",
                         align_corners=False).flatten(2).transpose(1, 2)        # (1, 25 * 18, C)
    plain.patch_embed.register_forward_hook(lambda mod, inp, out: (out[0] + grid, out[1]))
    images = torch.randn(1, 3, 100, 72)
    with torch.no_grad():
        a, b = with_pos(images), plain(images)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-5)


def test_the_reference_imports_no_fastmvit():
    import pathlib
    src = (pathlib.Path(detection_module.__file__)).read_text()
    assert not re.search(r"^\s*(from|import)\s+(fastmvit|kernels)", src, re.M)
