"""Checkpoint loading and export (fastmvit.checkpoint).

The checkpoints are built here from the key layouts of docs/checkpoints.md (the helpers below are
written from the SPEC, independently of fastmvit.checkpoint_formats), loaded, and checked against
the native weights they were made from: same parameters, same outputs. Shapes come from a
SPEC-derived builder that reproduces the SPEC's parameter counts to the last parameter.
"""
from __future__ import annotations

import math
import os
import re

import pytest
import torch

import fastmvit
from numerics import assert_matches_float64
from fastmvit.checkpoint import (CheckpointError, checkpoint_info, convert_state_dict, load_checkpoint,
                                 read_checkpoint, save_checkpoint)

# ------------------------------------------------------------------------------------------------
# State dicts from the SPEC
# ------------------------------------------------------------------------------------------------
# name: (C0, heads0, depths, dim change, class token, params in M at 1000 classes (SPEC table))
SPEC_ARCHS = {
    "tiny": (96, 1, (1, 2, 5, 2), "attention", False, 24.17),
    "small": (96, 1, (1, 2, 11, 2), "attention", False, 34.87),
    "base": (96, 1, (2, 3, 16, 3), "attention", False, 51.47),
    "large": (144, 2, (2, 6, 36, 4), "mlp", False, 217.99),
    "small_cls": (96, 1, (1, 2, 11, 2), "attention", True, None),
    "huge_cls": (192, 3, (4, 8, 60, 8), "attention", True, None),
}


def spec_shapes(embed_dim, heads0, depths, dim_change="attention", cls_token=False, num_classes=1000,
                img=224) -> dict[str, tuple]:
    """Native key -> shape, following the official construction (SPEC sections 1-4)."""
    img_h, img_w = (img, img) if isinstance(img, int) else img
    num_stages = len(depths)
    widths = [embed_dim * 2 ** s for s in range(num_stages)]
    hd = embed_dim // heads0
    shapes = {"patch_embed.proj.weight": (embed_dim, 3, 7, 7), "patch_embed.proj.bias": (embed_dim,)}
    if cls_token:
        shapes["cls_token"] = (1, 1, embed_dim)
    gh, gw, stride_kv, dim, i = img_h // 4, img_w // 4, 4, embed_dim, 0
    for s, depth in enumerate(depths):
        for j in range(depth):
            stride_q = 2 if s > 0 and j == 0 else 1
            stride_kv = max(stride_kv // stride_q, 1)
            if dim_change == "attention":
                att = dim_out = widths[s]
            else:
                att = dim
                dim_out = widths[s + 1] if j == depth - 1 and s < num_stages - 1 else dim
            p = f"blocks.{i}."
            shapes.update({p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
                           p + "attn.qkv.weight": (3 * att, dim), p + "attn.qkv.bias": (3 * att,),
                           p + "attn.proj.weight": (att, att), p + "attn.proj.bias": (att,)})
            for t in "qkv":
                shapes.update({p + f"attn.pool_{t}.weight": (hd, 1, 3, 3), p + f"attn.norm_{t}.weight": (hd,),
                               p + f"attn.norm_{t}.bias": (hd,)})
            shapes[p + "attn.rel_pos_h"] = (2 * max(gh // stride_q, gh // stride_kv) - 1, hd)
            shapes[p + "attn.rel_pos_w"] = (2 * max(gw // stride_q, gw // stride_kv) - 1, hd)
            shapes.update({p + "norm2.weight": (att,), p + "norm2.bias": (att,),
                           p + "mlp.fc1.weight": (4 * att, att), p + "mlp.fc1.bias": (4 * att,),
                           p + "mlp.fc2.weight": (dim_out, 4 * att), p + "mlp.fc2.bias": (dim_out,)})
            if dim_out != dim:
                shapes.update({p + "proj.weight": (dim_out, dim), p + "proj.bias": (dim_out,)})
            gh, gw, dim, i = gh // stride_q, gw // stride_q, dim_out, i + 1
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    if num_classes:
        shapes.update({"head.projection.weight": (num_classes, dim), "head.projection.bias": (num_classes,)})
    return shapes


def meta_state_dict(shapes):
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def random_state_dict(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


# Small odd configs for real tensors: attention and MLP dim change, 3 stages.
SMALL = dict(embed_dim=8, heads0=1, depths=(1, 2, 1), num_classes=10, img=64)
SMALL_MLP = dict(embed_dim=6, heads0=2, depths=(2, 1, 2), dim_change="mlp", num_classes=7, img=(48, 64))


# Other frameworks' layouts, written from docs/checkpoints.md.
def as_official(sd, wrap=True):
    sd = dict(sd)
    sd.setdefault("cls_token", torch.randn(1, 1, sd["patch_embed.proj.weight"].shape[0]))
    return {"model_state": sd, "epoch": 300, "cfg": "MVIT:\n  DEPTH: 10\n"} if wrap else sd


def as_mmpretrain(sd, num_stages, wrap=True):
    out = {}
    for k, v in sd.items():
        if k.startswith("head.projection."):
            out["head.fc." + k.split(".")[-1]] = v
        elif k.startswith("patch_embed.proj."):
            out["backbone.patch_embed.projection." + k.split(".")[-1]] = v
        elif k.startswith("norm."):
            out[f"backbone.norm{num_stages - 1}." + k.split(".")[-1]] = v
        else:
            out["backbone." + k] = v
    return {"state_dict": out, "meta": {"epoch": 300}} if wrap else out


def as_timm(sd, depths, dim_change):
    out = {}
    stage_of = [(s, j) for s, d in enumerate(depths) for j in range(d)]
    for k, v in sd.items():
        m = re.match(r"blocks\.(\d+)\.(.*)", k)
        if m:
            s, j = stage_of[int(m.group(1))]
            rest = m.group(2)
            if rest.startswith("proj."):
                rest = ("shortcut_proj_attn." if dim_change == "attention" else "shortcut_proj_mlp.") + rest[5:]
            out[f"stages.{s}.blocks.{j}.{rest}"] = v
        elif k.startswith("head.projection."):
            out["head.fc." + k.split(".")[-1]] = v
        else:
            out[k] = v
    return out


def in_format(sd, fmt, depths, dim_change="attention"):
    if fmt == "native":
        return dict(sd)
    if fmt == "official":
        return as_official(sd)
    if fmt == "mmpretrain":
        return as_mmpretrain(sd, len(depths))
    return as_timm(sd, depths, dim_change)


FORMATS = ("native", "official", "mmpretrain", "timm")


def assert_same_tensors(a, b):
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))[:8]
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------------
# Shapes only: detection, info, parameter counts (meta tensors, no memory)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SPEC_ARCHS)
def test_info_reads_arch_input_size_and_params(name):
    c0, heads0, depths, dim_change, cls, params = SPEC_ARCHS[name]
    shapes = spec_shapes(c0, heads0, depths, dim_change, cls)
    native = meta_state_dict(shapes)
    for fmt in (("native", "timm") if cls else FORMATS):
        info = checkpoint_info(in_format(native, fmt, depths, dim_change))
        assert info["format"] == fmt
        assert (info["embed_dim"], tuple(info["depths"]), info["heads"][0]) == (c0, depths, heads0)
        assert info["dim_change"] == dim_change and info["num_classes"] == 1000
        assert info["img_size"] == [224, 224]
        assert info["cls_token_used"] == cls
        assert info["num_params"] == sum(math.prod(s) for s in shapes.values())
        if params is not None:
            assert round(info["num_params"] / 1e6, 2) == params
        if info["arch"] is not None:  # the reference's config registry names the arch
            assert info["arch"] == name


@pytest.mark.parametrize("img", [320, (224, 320)])
def test_info_input_size_from_tables(img):
    native = meta_state_dict(spec_shapes(96, 1, (1, 2, 5, 2), img=img))
    want = [img, img] if isinstance(img, int) else list(img)
    assert checkpoint_info(as_mmpretrain(native, 4))["img_size"] == want


def test_detects_wrappers_and_ddp_prefix():
    native = meta_state_dict(spec_shapes(**SMALL))
    assert checkpoint_info({"model_state": native})["format"] == "official"
    assert checkpoint_info(as_official(native, wrap=False))["format"] == "native"  # same keys
    assert checkpoint_info(as_mmpretrain(native, 3, wrap=False))["format"] == "mmpretrain"
    timm = as_timm(native, SMALL["depths"], "attention")
    assert checkpoint_info({"state_dict": timm, "arch": "mvitv2_tiny"})["format"] == "timm"
    ddp = {"module." + k: v for k, v in native.items()}
    assert checkpoint_info({"model": ddp})["format"] == "native"


# ------------------------------------------------------------------------------------------------
# Conversions: exact round trips, export equals the SPEC layouts
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [SMALL, SMALL_MLP], ids=["attention", "mlp"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_matches_spec_layout_and_round_trips(cfg, fmt):
    native = random_state_dict(spec_shapes(**cfg))
    depths, mode = cfg["depths"], cfg.get("dim_change", "attention")
    exported = convert_state_dict(native, to=fmt)          # depths read from the heads
    expected = in_format(native, fmt, depths, mode)
    expected = expected.get("model_state", expected.get("state_dict", expected))
    if fmt == "official":
        expected = {k: v for k, v in expected.items() if k != "cls_token"}
    assert_same_tensors(exported, expected)
    assert convert_state_dict(native, to=fmt, depths=depths).keys() == exported.keys()
    back = convert_state_dict(exported, to="native")
    assert_same_tensors(back, native)
    for k in native:  # a pure renaming: no copies
        assert back[k] is native[k]


def test_export_needs_depths_that_fit():
    native = random_state_dict(spec_shapes(**SMALL))
    with pytest.raises(CheckpointError, match=r"depths \(2, 3\) do not fit .* 4 blocks"):
        convert_state_dict(native, to="timm", depths=(2, 3))
    with pytest.raises(CheckpointError, match=r"depths \(2, 2\) do not fit .* block 1 starts a stage"):
        convert_state_dict(native, to="mmpretrain", depths=(2, 2))


def test_mmpretrain_export_refuses_a_class_token():
    native = random_state_dict(spec_shapes(**SMALL, cls_token=True))
    with pytest.raises(CheckpointError, match="no class token"):
        convert_state_dict(native, to="mmpretrain")


def test_mmpretrain_per_stage_norms_are_refused_unless_not_strict():
    native = random_state_dict(spec_shapes(**SMALL))
    mm = as_mmpretrain(native, 3, wrap=False)
    mm["backbone.norm0.weight"] = torch.ones(8)
    mm["backbone.norm0.bias"] = torch.zeros(8)
    with pytest.raises(CheckpointError, match=r"per-stage norms \['norm0'\].*main path"):
        convert_state_dict(mm)
    assert_same_tensors(convert_state_dict(mm, strict=False), native)


# ------------------------------------------------------------------------------------------------
# Malformed input: clear errors, no code execution
# ------------------------------------------------------------------------------------------------
def test_unknown_and_foreign_formats():
    with pytest.raises(CheckpointError, match="unknown checkpoint format.*keys like encoder.layer.0.weight"):
        convert_state_dict({"encoder.layer.0.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="empty"):
        convert_state_dict({})
    with pytest.raises(CheckpointError, match="not tensors"):
        convert_state_dict({"patch_embed.proj.weight": [1, 2]})
    with pytest.raises(CheckpointError, match="detectron2 MViTv2 detection backbone .* cannot be converted to the timm"):
        convert_state_dict({"backbone.bottom_up.patch_embed.proj.weight": torch.zeros(1)}, to="timm")
    with pytest.raises(CheckpointError, match="absolute position embedding"):
        convert_state_dict({"conv_proj.weight": torch.zeros(1), "pos_encoding.spatial_pos": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unknown target format 'onnx'"):
        convert_state_dict({"patch_embed.proj.weight": torch.zeros(1)}, to="onnx")
    with pytest.raises(CheckpointError, match=r"stage 1 blocks are not numbered 0\.\.1: \[0, 2\]"):
        convert_state_dict({"stages.0.blocks.0.norm1.weight": torch.zeros(1),
                            "stages.1.blocks.0.norm1.weight": torch.zeros(1),
                            "stages.1.blocks.2.norm1.weight": torch.zeros(1)})


def test_truncated_and_corrupt_files_name_the_file(tmp_path):
    native = random_state_dict(spec_shapes(**SMALL))
    for suffix in (".pth", ".pyth", ".safetensors"):
        path = tmp_path / f"good{suffix}"
        save_checkpoint(native, path, "official" if suffix == ".pyth" else "native")
        data = path.read_bytes()
        bad = tmp_path / f"truncated{suffix}"
        bad.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=re.escape(str(bad)) + ".*(truncated|corrupt)"):
            read_checkpoint(bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="garbage.pth.*corrupt"):
        checkpoint_info(garbage)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        read_checkpoint(tmp_path / "nowhere.pth")


class _Payload:
    """Unpickling this would create a file: loading must refuse it, not run it."""
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"patch_embed.proj.weight": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pth.*never runs pickled code"):
        load_checkpoint(torch.nn.Linear(1, 1), path)
    assert not marker.exists()


def test_files_round_trip_in_every_format(tmp_path):
    native = random_state_dict(spec_shapes(**SMALL_MLP))
    for fmt in FORMATS:
        for suffix in (".pth", ".safetensors"):
            path = tmp_path / f"{fmt}{suffix}"
            save_checkpoint(native, path, fmt)
            info = checkpoint_info(path)
            # official files keep their wrapper in torch files; safetensors has no wrapper
            want = "native" if fmt == "official" and suffix == ".safetensors" else fmt
            assert info["format"] == want and info["img_size"] == [48, 64]
            assert_same_tensors(convert_state_dict(read_checkpoint(path)), native)
    renamed = tmp_path / "timm_model.bin"  # safetensors bytes under another name: found by content
    os.rename(tmp_path / "timm.safetensors", renamed)
    assert_same_tensors(convert_state_dict(renamed), native)


# ------------------------------------------------------------------------------------------------
# Into real models: same weights, same outputs
# ------------------------------------------------------------------------------------------------
def _model_classes():
    from fastmvit.reference import MViTv2 as Reference
    classes = [pytest.param(Reference, id="reference")]
    if hasattr(fastmvit, "MViTv2"):
        classes.append(pytest.param(fastmvit.MViTv2, id="fastmvit"))
    return classes


def _config(**kw):
    from fastmvit.reference.config import MViTv2Config
    return MViTv2Config(**kw)


# (config fields, img_size, num_classes): dim change in attention, in the MLP with 2 heads and a
# non-square input, and a class token.
MODEL_CASES = {
    "attention": (dict(embed_dims=8, num_heads=1, depths=(1, 2, 1)), 64, 10),
    "mlp": (dict(embed_dims=6, num_heads=2, depths=(2, 1, 2), dim_mul_in_attention=False), (48, 64), 7),
    "cls": (dict(embed_dims=8, num_heads=1, depths=(1, 2, 1), with_cls_token=True), 64, 10),
}


def randomize_(model, seed):
    """Fresh random values in every parameter (LayerNorm scales around 1), so nothing is zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            is_norm_scale = "norm" in name and name.endswith(".weight") and p.ndim == 1
            p.copy_(1 + 0.2 * noise if is_norm_scale else 0.3 * noise)
    return model.eval()


def _pair(img):
    return (img, img) if isinstance(img, int) else img


@pytest.mark.parametrize("model_cls", _model_classes())
@pytest.mark.parametrize("case", MODEL_CASES)
def test_every_format_loads_to_the_same_outputs(model_cls, case, tmp_path):
    fields, img, classes = MODEL_CASES[case]
    cfg = _config(**fields)
    source = randomize_(model_cls(cfg, img_size=img, num_classes=classes), seed=1)
    native = source.state_dict()
    x = torch.randn(2, 3, *_pair(img), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = source(x)
    assert torch.isfinite(want).all()
    formats = ("native", "official", "timm") if cfg.with_cls_token else FORMATS
    for fmt in formats:
        ckpt = in_format(native, fmt, cfg.depths, "attention" if cfg.dim_mul_in_attention else "mlp")
        if fmt == "official" and cfg.with_cls_token:
            ckpt["model_state"]["cls_token"] = native["cls_token"]  # a *_cls arch uses its token
        path = tmp_path / f"{fmt}.{'pyth' if fmt == 'official' else 'pth'}"
        torch.save(ckpt, path)
        target = randomize_(model_cls(cfg, img_size=img, num_classes=classes), seed=3)
        result = load_checkpoint(target, path)
        assert result.format == fmt and not result.resized_keys
        assert any("class-token row" in n for n in result.notes) == (fmt == "timm" and cfg.with_cls_token)
        assert result.dropped_keys == (["cls_token"] if fmt == "official" and not cfg.with_cls_token else [])
        assert_same_tensors(target.state_dict(), native)
        with torch.no_grad():
            assert torch.equal(target(x), want), fmt


def _materialized(build):
    """Build a model on the meta device and give it (uninitialised) CPU storage: no init cost."""
    with torch.device("meta"):
        model = build()
    return model.to_empty(device="cpu")


def test_tiny_from_every_format_in_memory():
    """The real tiny layout (depths 1-2-5-2) in every format lands on the right parameters (the
    custom configs above check the outputs; tiny is 24 M parameters, so here: the weights)."""
    from fastmvit.reference import MViTv2
    source = randomize_(_materialized(lambda: MViTv2("tiny", img_size=64, num_classes=10)), seed=4)
    native = source.state_dict()
    target = _materialized(lambda: MViTv2("tiny", img_size=64, num_classes=10))
    for fmt in FORMATS:
        with torch.no_grad():
            for p in target.parameters():
                p.fill_(float("nan"))  # poison: every parameter must be written by the load
        load_checkpoint(target, in_format(native, fmt, (1, 2, 5, 2)))
        assert_same_tensors(target.state_dict(), native)
    info = checkpoint_info(as_mmpretrain(native, 4))
    assert (info["arch"], info["img_size"], info["num_classes"]) == ("tiny", [64, 64], 10)
    assert info["num_params"] == sum(p.numel() for p in source.parameters())


def linear_resize_float64(table, length):
    """1-D linear interpolation along the first axis, align_corners=False, written out in float64."""
    L = table.shape[0]
    t = table.double()
    out = torch.empty(length, t.shape[1], dtype=torch.float64)
    for i in range(length):
        src = max((i + 0.5) * L / length - 0.5, 0.0)
        i0 = min(int(math.floor(src)), L - 1)
        i1 = min(i0 + 1, L - 1)
        w = src - i0
        out[i] = (1 - w) * t[i0] + w * t[i1]
    return out


@pytest.mark.parametrize("model_cls", _model_classes())
def test_224_checkpoint_loads_into_a_320_model(model_cls, tmp_path):
    cfg = _config(embed_dims=8, num_heads=1, depths=(1, 2, 1, 1))
    source = randomize_(model_cls(cfg, img_size=224, num_classes=5), seed=6)
    native = source.state_dict()
    path = tmp_path / "at224.safetensors"
    save_checkpoint(native, path, "timm")
    target = model_cls(cfg, img_size=320, num_classes=5).eval()
    result = load_checkpoint(target, path)
    loaded = target.state_dict()
    tables = [k for k in native if k.endswith(("rel_pos_h", "rel_pos_w"))]
    assert sorted(result.resized_keys) == sorted(k for k in tables if loaded[k].shape != native[k].shape)
    assert loaded["blocks.0.attn.rel_pos_h"].shape[0] == 2 * 80 - 1 and native["blocks.0.attn.rel_pos_h"].shape[0] == 111
    for k in native:
        if k in result.resized_keys:
            exact = linear_resize_float64(native[k], loaded[k].shape[0])
            # float32 interpolation (source coordinates rounded in float32) against float64 math
            assert_matches_float64(loaded[k], None, exact, name=k)
        else:
            assert torch.equal(loaded[k], native[k]), k
    # The 224 model run on 320 images resizes its tables at run time (mmpretrain, detectron2): the
    # 320 model loaded from its checkpoint computes the same thing.
    x = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=1e-5, atol=1e-5)


def test_mismatched_arch_names_the_keys_and_shapes():
    from fastmvit.reference import MViTv2
    cfg = _config(embed_dims=8, num_heads=1, depths=(1, 2, 1))
    native = MViTv2(cfg, img_size=64, num_classes=10).state_dict()
    deeper = MViTv2(cfg.replace(depths=(1, 3, 1)), img_size=64, num_classes=10)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(deeper, as_mmpretrain(native, 3))
    msg = str(e.value)
    assert "mmpretrain layout" in msg and "does not match the model" in msg
    assert "key(s) missing from the checkpoint: ['blocks.4." in msg   # the model has 5 blocks
    assert "blocks.3.attn.qkv.weight: checkpoint (96, 16) vs model (48, 16)" in msg
    assert "depths 1-2-1" in msg and "depths 1-3-1" in msg
    wider = MViTv2(cfg.replace(embed_dims=12), img_size=64, num_classes=10)
    with pytest.raises(CheckpointError, match=r"patch_embed.proj.weight: checkpoint \(8, 3, 7, 7\) vs model \(12, 3, 7, 7\)"):
        load_checkpoint(wider, native)
    other_head = MViTv2(cfg, img_size=64, num_classes=3)
    with pytest.raises(CheckpointError, match=r"head.projection.weight: checkpoint \(10, 32\) vs model \(3, 32\)(.|\n)*fine-tune"):
        load_checkpoint(other_head, native)
    headless = {k: v for k, v in native.items() if not k.startswith("head.")}
    with pytest.raises(CheckpointError, match=r"2 key\(s\) missing from the checkpoint: \['head.projection.bias'"):
        load_checkpoint(other_head, headless)
    result = load_checkpoint(other_head, headless, strict=False)
    assert result.missing_keys == ["head.projection.bias", "head.projection.weight"]
    with pytest.raises(CheckpointError, match="expected the timm layout but the keys are in the native layout"):
        load_checkpoint(other_head, headless, format="timm")


@pytest.mark.parametrize("name", SPEC_ARCHS)
def test_reference_state_dict_is_the_spec_layout(name):
    """The models' native keys and shapes are docs/checkpoints.md's (checked on the meta device)."""
    from fastmvit.reference import MViTv2
    c0, heads0, depths, dim_change, cls, _ = SPEC_ARCHS[name]
    with torch.device("meta"):
        model = MViTv2(name, img_size=(224, 320), num_classes=1000)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = spec_shapes(c0, heads0, depths, dim_change, cls, img=(224, 320))
    assert got == want, sorted(set(got.items()) ^ set(want.items()))[:8]


def test_half_precision_tables_are_resized_in_float32():
    """A bf16 checkpoint into a float32 model: the tables are interpolated from the bf16 values in
    float32 and rounded once, to the model's dtype (no detour through bf16)."""
    from fastmvit.reference import MViTv2
    cfg = _config(embed_dims=8, num_heads=1, depths=(1, 2, 1))
    native = {k: v.to(torch.bfloat16) for k, v in randomize_(MViTv2(cfg, img_size=64, num_classes=4), 8)
              .state_dict().items()}
    target = MViTv2(cfg, img_size=96, num_classes=4)
    result = load_checkpoint(target, as_official(native))
    assert result.resized_keys and result.dropped_keys == ["cls_token"]
    loaded = target.state_dict()
    for k in result.resized_keys:
        assert loaded[k].dtype == torch.float32
        assert_matches_float64(loaded[k], None, linear_resize_float64(native[k], loaded[k].shape[0]), name=k)
