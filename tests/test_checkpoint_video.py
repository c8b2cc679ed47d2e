"""Video checkpoints: torchvision's mvit_v2_s and SlowFast's official .pyth layouts, both ways.

The torchvision keys are written here from SPEC section 5's list (independently of
fastmvit.checkpoint_formats' renaming tables), from a real model's native state dict, so a round
trip checks the renaming against the contract and the tensors against the model.
"""
from __future__ import annotations

import re

import pytest
import torch

import fastmvit
from fastmvit.checkpoint import CheckpointError, checkpoint_info, convert_state_dict, load_checkpoint, save_checkpoint
from fastmvit.reference import MViTv2Video, MViTv2VideoConfig

TOY = MViTv2VideoConfig(embed_dims=16, num_heads=2, depths=(1, 2), adaptive_kv_stride=2)


def torchvision_keys_from_spec(native: dict) -> dict:
    """SPEC section 5: conv_proj, pos_encoding.class_token (C0,), blocks.{i}.norm1 / norm2 /
    attn.qkv / attn.project.0 / attn.pool_{q,k,v}.pool.weight / attn.pool_{q,k,v}.norm_act.0 /
    attn.rel_pos_{h,w,t} / mlp.0 / mlp.3 / project, then norm and head.1."""
    out = {}
    for k, v in native.items():
        if k == "cls_token":
            out["pos_encoding.class_token"] = v.reshape(-1)
            continue
        k = re.sub(r"^patch_embed\.proj\.", "conv_proj.", k)
        k = re.sub(r"^head\.projection\.", "head.1.", k)
        k = re.sub(r"\.attn\.proj\.", ".attn.project.0.", k)
        k = re.sub(r"\.attn\.pool_([qkv])\.weight$", r".attn.pool_\1.pool.weight", k)
        k = re.sub(r"\.attn\.norm_([qkv])\.", r".attn.pool_\1.norm_act.0.", k)
        k = re.sub(r"\.mlp\.fc1\.", ".mlp.0.", k)
        k = re.sub(r"\.mlp\.fc2\.", ".mlp.3.", k)
        k = re.sub(r"^(blocks\.\d+)\.proj\.", r"\1.project.", k)
        out[k] = v
    return out


def toy_model(seed=0):
    torch.manual_seed(seed)
    model = MViTv2Video(TOY, num_frames=4, img_size=32, num_classes=5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def test_torchvision_round_trip_through_the_spec_layout():
    model = toy_model()
    native = model.state_dict()
    tv = torchvision_keys_from_spec(native)
    assert tv["pos_encoding.class_token"].shape == (16,) and "blocks.1.project.weight" in tv
    converted = convert_state_dict(native, to="torchvision")
    assert converted.keys() == tv.keys()
    for k in tv:
        assert torch.equal(converted[k], tv[k]), k
    other = MViTv2Video(TOY, num_frames=4, img_size=32, num_classes=5)
    result = load_checkpoint(other, tv)
    assert result.format == "torchvision" and not result.missing_keys
    for k, v in native.items():
        assert torch.equal(other.state_dict()[k], v), k
    back = convert_state_dict(tv)                                       # -> native
    assert back.keys() == native.keys()


def test_slowfast_official_file_and_info(tmp_path):
    native = toy_model().state_dict()
    path = tmp_path / "MViTv2_toy.pyth"
    save_checkpoint(native, path, "official")
    assert set(torch.load(path, weights_only=True)) == {"model_state"}
    info = checkpoint_info(path)
    assert (info["format"], info["model"], info["num_frames"], info["img_size"]) == ("official", "video", 4, [32, 32])
    fused = fastmvit.MViTv2Video(TOY, num_frames=4, img_size=32, num_classes=5)
    assert load_checkpoint(fused, path).format == "official"
    for k, v in native.items():
        assert torch.equal(fused.state_dict()[k], v), k


def test_mvit_v2_s_info_names_the_arch():
    with torch.device("meta"):
        sd = fastmvit.reference.mvit_v2_s().state_dict()
    info = checkpoint_info(convert_state_dict(sd, to="torchvision"))
    assert info["format"] == "torchvision" and info["arch"] == "small (mvit_v2_s)"
    assert (info["num_frames"], info["img_size"], info["num_params"]) == (16, [224, 224], 34_537_744)
    assert info["num_classes"] == 400 and info["depths"] == [1, 2, 11, 2]


def test_other_clip_size_resizes_every_table_axis():
    """Tables made for 4 x 32 x 32 loaded into a model for 8 x 48 x 48: t, h and w resized."""
    tv = convert_state_dict(toy_model().state_dict(), to="torchvision")
    model = MViTv2Video(TOY, num_frames=8, img_size=48, num_classes=5)
    result = load_checkpoint(model, tv)
    assert {k.rsplit(".", 1)[1] for k in result.resized_keys} == {"rel_pos_t", "rel_pos_h", "rel_pos_w"}


def test_image_and_video_checkpoints_do_not_cross():
    video_sd = toy_model().state_dict()
    image = fastmvit.reference.MViTv2(fastmvit.reference.MViTv2Config(embed_dims=16, num_heads=2, depths=(1, 2)),
                                      img_size=32, num_classes=5)
    with pytest.raises(CheckpointError, match="a video .* checkpoint but the model is an image .*MViTv2Video"):
        load_checkpoint(image, video_sd)
    with pytest.raises(CheckpointError, match="an image \\(2-D\\) checkpoint but the model is a video .*MViTv2\\b"):
        load_checkpoint(MViTv2Video(TOY, num_frames=4, img_size=32, num_classes=5), image.state_dict())
    with pytest.raises(CheckpointError, match="torchvision's MViT is the video model"):
        convert_state_dict(image.state_dict(), to="torchvision")
    with pytest.raises(CheckpointError, match="image models only"):
        convert_state_dict(video_sd, to="timm")


def test_cli_info_names_format_and_arch(tmp_path, capsys):
    from fastmvit.cli import main
    with torch.device("meta"):
        sd = fastmvit.reference.mvit_v2_s().state_dict()
    path = tmp_path / "mvit_v2_s.pth"
    torch.save({k: torch.zeros(v.shape) for k, v in convert_state_dict(sd, to="torchvision").items()}, path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "torchvision" in out and "small (mvit_v2_s)" in out and "video, 16 frames" in out
