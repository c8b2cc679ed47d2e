"""Detection checkpoints: detectron2's MViTv2 backbone (fastmvit.reference.MViTv2Backbone).

The checkpoints are built here from SPEC section 6's key layout (a detector holds the backbone's
keys under ``backbone.bottom_up.`` inside {"model": ...}, beside its FPN, RPN and ROI heads) and
from the official ImageNet .pyth layout (SPEC section 4) that detectors start from, from real
models' state dicts, then loaded and compared tensor by tensor.
"""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

import fastmvit
from fastmvit.checkpoint import CheckpointError, checkpoint_info, convert_state_dict, load_checkpoint, save_checkpoint
from fastmvit.reference import (DETECTION_ARCH_SETTINGS, MViTv2, MViTv2Backbone, MViTv2Config, MViTv2Video,
                                MViTv2VideoConfig, resize_rel_pos)
from test_reference import _randomize
from test_reference_detection import PARAMS

PREFIX = "backbone.bottom_up."
# A tiny backbone and the image classifier with the same blocks: stages of 1, 2, 1, 1 blocks.
BACKBONE = dict(embed_dim=8, depth=5, num_heads=1, last_block_indexes=(0, 2, 3, 4), img_size=64,
                adaptive_window_size=16)
CLASSIFIER = MViTv2Config(embed_dims=8, num_heads=1, depths=(1, 2, 1, 1))
# What else a detector checkpoint holds (Mask R-CNN with an FPN, ViTDet's simple pyramid names).
DETECTOR_EXTRAS = {
    "backbone.fpn_lateral2.weight": (16, 8, 1, 1), "backbone.fpn_output2.bias": (16,),
    "backbone.simfp_2.0.weight": (8, 4, 2, 2), "proposal_generator.rpn_head.conv.weight": (16, 16, 3, 3),
    "roi_heads.box_predictor.cls_score.weight": (81, 32), "roi_heads.mask_head.predictor.bias": (80,),
    "pixel_mean": (3, 1, 1), "pixel_std": (3, 1, 1),
}


def backbone(seed=0, **kw) -> MViTv2Backbone:
    torch.manual_seed(seed)
    return _randomize(MViTv2Backbone(**{**BACKBONE, **kw}, rel_pos_zero_init=False))


def as_detector(backbone_sd, iteration=90000):
    """SPEC section 6: the backbone under backbone.bottom_up., the rest of the detector beside it."""
    model = {PREFIX + k: v for k, v in backbone_sd.items()}
    model.update({k: torch.randn(s) for k, s in DETECTOR_EXTRAS.items()})
    return {"model": model, "optimizer": {}, "scheduler": {}, "iteration": iteration}


def as_official(classifier_sd):
    """SPEC section 4: the official .pyth, {"model_state": ...} with the unused cls_token."""
    sd = dict(classifier_sd)
    sd["cls_token"] = torch.randn(1, 1, sd["patch_embed.proj.weight"].shape[0])
    return {"model_state": sd, "epoch": 300}


def assert_loaded(model, sd):
    got = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(got[k], v), k


# ------------------------------------------------------------------------------------------------
# detectron2 detector checkpoints
# ------------------------------------------------------------------------------------------------
def test_detector_checkpoint_file_round_trip(tmp_path):
    src = backbone(0)
    path = tmp_path / "model_final.pth"
    torch.save(as_detector(src.state_dict()), path)
    dst = backbone(1)
    result = load_checkpoint(dst, path)
    assert result.format == "detectron2"
    assert sorted(result.dropped_keys) == sorted(DETECTOR_EXTRAS)
    assert not result.missing_keys and not result.unexpected_keys and not result.resized_keys
    assert any("ignored 8 detector key(s)" in n and "roi_heads.*" in n and "backbone.simfp_2.*" in n
               and "pixel_mean" in n for n in result.notes), result.notes
    assert_loaded(dst, src.state_dict())
    images = torch.randn(1, 3, 70, 52)
    with torch.no_grad():
        a, b = src.eval()(images), dst.eval()(images)
    for name in a:
        assert torch.equal(a[name], b[name])


def test_model_zoo_pkl_of_numpy_arrays(tmp_path):
    """detectron2's model zoo files are plain pickles: {"model": {name: ndarray}, "__author__": ...}."""
    src = backbone(0)
    det = as_detector(src.state_dict())["model"]
    path = tmp_path / "model_final_1a1c30.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in det.items()}, "__author__": "Detectron2 Model Zoo",
                     "matching_heuristics": True}, f)
    dst = backbone(1)
    result = load_checkpoint(dst, path)
    assert result.format == "detectron2" and len(result.dropped_keys) == len(DETECTOR_EXTRAS)
    assert_loaded(dst, src.state_dict())
    assert checkpoint_info(path)["arch"] is None                         # a custom arch
    assert checkpoint_info(path)["num_params"] == sum(p.numel() for p in src.parameters())


def test_pkl_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"backbone.bottom_up.patch_embed.proj.weight": Evil()}}, f)
    with pytest.raises(CheckpointError, match="evil.pkl: .*(posix|os|nt)\\.system.*never runs pickled code"):
        load_checkpoint(backbone(), path)
    assert not marker.exists()
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="truncated.pkl"):
        load_checkpoint(backbone(), truncated)


def test_bare_backbone_state_dict_and_subclasses():
    class Fused(MViTv2Backbone):         # what the fused backbone will be: a subclass
        pass

    src = backbone(0)
    torch.manual_seed(1)
    dst = Fused(**BACKBONE)
    result = load_checkpoint(dst, src.state_dict())
    assert result.format == "detectron2" and not result.dropped_keys
    assert_loaded(dst, src.state_dict())
    assert load_checkpoint(dst, src.state_dict(), format="native").format == "detectron2"
    info = checkpoint_info(src.state_dict())
    assert (info["format"], info["wrapper"], info["model"]) == ("detectron2", None, "detection backbone")


def test_export_to_detectron2_and_back(tmp_path):
    sd = backbone(0).state_dict()
    det = convert_state_dict(sd, to="detectron2")
    assert det.keys() == {PREFIX + k for k in sd}
    back = convert_state_dict(det)
    assert back.keys() == sd.keys() and all(back[k] is sd[k] for k in sd)
    path = tmp_path / "backbone.pth"
    save_checkpoint(sd, path, "detectron2")
    obj = torch.load(path, weights_only=True)
    assert set(obj) == {"model", "__author__"} and set(obj["model"]) == set(det)
    dst = backbone(1)
    assert load_checkpoint(dst, path).format == "detectron2"
    assert_loaded(dst, sd)
    st = tmp_path / "backbone.safetensors"
    save_checkpoint(det, st, "detectron2")
    assert checkpoint_info(st)["format"] == "detectron2"


# ------------------------------------------------------------------------------------------------
# The official ImageNet .pyth files detectors start from
# ------------------------------------------------------------------------------------------------
def test_official_tiny_pyth_into_the_tiny_backbone():
    """MViTv2-T's .pyth (from the reference classifier) into MViTv2Backbone("tiny"): every block
    key maps, the tables already fit at 224, the classifier's parts are reported unused and the
    scale norms missing."""
    torch.manual_seed(0)
    classifier = MViTv2("tiny")
    ckpt = as_official(classifier.state_dict())
    model = MViTv2Backbone("tiny")
    result = load_checkpoint(model, ckpt)
    assert result.format == "official"
    assert sorted(result.dropped_keys) == ["cls_token", "head.projection.bias", "head.projection.weight",
                                           "norm.bias", "norm.weight"]
    assert result.missing_keys == sorted(f"scale{s}_norm.{p}" for s in (2, 3, 4, 5) for p in ("weight", "bias"))
    assert not result.resized_keys and not result.unexpected_keys
    assert any("scale2_norm, scale3_norm, scale4_norm, scale5_norm not in the checkpoint" in n for n in result.notes)
    blocks = {k: v for k, v in classifier.state_dict().items() if k.startswith(("blocks.", "patch_embed."))}
    assert len(blocks) == len(model.state_dict()) - 8
    assert_loaded(model, blocks)
    assert torch.equal(model.scale2_norm.weight, torch.ones(96))


def test_official_pyth_file_resizes_tables(tmp_path):
    """A classifier's tables differ from the backbone's where detectron2 doubles the kv stride
    (block 3 here): resized on load, like every table of a backbone built for another img_size."""
    torch.manual_seed(0)
    classifier = _randomize(MViTv2(CLASSIFIER, img_size=64, num_classes=10))
    path = tmp_path / "MViTv2_custom_in1k.pyth"
    torch.save(as_official(classifier.state_dict()), path)
    model = MViTv2Backbone(**BACKBONE)
    result = load_checkpoint(model, path)
    assert result.resized_keys == ["blocks.3.attn.rel_pos_h", "blocks.3.attn.rel_pos_w"]
    sd = classifier.state_dict()
    for k in result.resized_keys:
        assert torch.equal(model.state_dict()[k], resize_rel_pos(sd[k], model.state_dict()[k].shape[0]))
    assert_loaded(model, {k: v for k, v in sd.items() if k.startswith("blocks.") and k not in result.resized_keys})
    bigger = MViTv2Backbone(**{**BACKBONE, "img_size": 96})
    assert len(load_checkpoint(bigger, path).resized_keys) == 2 * 5


@pytest.mark.parametrize("arch, image_arch", [("large", "large_cls"), ("huge", "huge_cls")])
def test_in21k_class_token_archs_map_onto_large_and_huge(arch, image_arch):
    """detectron2's large and huge start from the in21k files: class-token archs with the dim
    change in attention (shapes only, on the meta device)."""
    with torch.device("meta"):
        ckpt = as_official(MViTv2(image_arch, num_classes=19168 if arch == "huge" else 1000).state_dict())
        model = MViTv2Backbone(arch)
    result = load_checkpoint(model, ckpt)
    assert "cls_token" in result.dropped_keys and len(result.missing_keys) == 8
    info = checkpoint_info(ckpt)
    assert info["arch"] == image_arch and info["cls_token_used"]


def test_in1k_large_does_not_fit_the_large_backbone():
    """MViTv2-L in1k widens in the MLP (SPEC section 1); detectron2's blocks widen in the attention."""
    with torch.device("meta"):
        ckpt = as_official(MViTv2("large").state_dict())
        model = MViTv2Backbone("large")
    with pytest.raises(CheckpointError, match="shape mismatch.*blocks.1.mlp.fc2.weight: checkpoint \\(288, 576\\) "
                                              "vs model \\(144, 576\\)"):
        load_checkpoint(model, ckpt)


# ------------------------------------------------------------------------------------------------
# info, the command line, errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(DETECTION_ARCH_SETTINGS))
def test_info_names_the_detection_arch(arch):
    with torch.device("meta"):
        sd = MViTv2Backbone(arch).state_dict()
    det = {"model": {**{PREFIX + k: v for k, v in sd.items()}, "roi_heads.box_head.fc1.weight": torch.empty(1)}}
    info = checkpoint_info(det)
    assert (info["format"], info["wrapper"], info["model"], info["arch"]) == ("detectron2", "model",
                                                                             "detection backbone", arch)
    assert info["num_params"] == PARAMS[arch] and info["num_classes"] is None
    assert info["out_features"] == ["scale2", "scale3", "scale4", "scale5"] and info["img_size"] == [224, 224]
    assert info["ignored_keys"] == ["roi_heads.box_head.fc1.weight"] and not info["extra_keys"]
    assert info["depth"] == DETECTION_ARCH_SETTINGS[arch][1]


def test_cli_info_and_convert(tmp_path, capsys):
    from fastmvit.cli import main
    with torch.device("meta"):
        sd = MViTv2Backbone("tiny").state_dict()
    path = tmp_path / "model_final.pth"
    torch.save(as_detector({k: torch.zeros(v.shape) for k, v in sd.items()}), path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "detectron2 (wrapped in 'model')" in out and "detection backbone" in out
    assert "arch           tiny" in out and "outputs        scale2, scale3, scale4, scale5" in out
    assert "ignored keys   8" in out and "23,405,664" in out
    bare = tmp_path / "tiny_backbone.safetensors"
    assert main(["convert", str(path), str(bare), "--to", "native"]) == 0
    capsys.readouterr()
    assert main(["info", str(bare), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "detectron2" and info["arch"] == "tiny" and not info["ignored_keys"]
    back = tmp_path / "det.pth"
    assert main(["convert", str(bare), str(back), "--to", "detectron2"]) == 0
    assert set(torch.load(back, weights_only=True)["model"]) == {PREFIX + k for k in sd}
    assert main(["convert", str(path), str(tmp_path / "x.pth"), "--to", "timm"]) == 2
    assert "cannot be converted to the timm layout" in capsys.readouterr().err


def test_clear_errors():
    det = as_detector(backbone(0).state_dict())
    with pytest.raises(CheckpointError, match="detectron2 MViTv2 detection backbone checkpoint .* build a "
                                              "fastmvit.reference.MViTv2Backbone"):
        load_checkpoint(MViTv2(CLASSIFIER, img_size=64, num_classes=10), det)
    result = load_checkpoint(MViTv2(CLASSIFIER, img_size=64, num_classes=10), det, strict=False)
    assert "norm.weight" in result.missing_keys and "scale2_norm.weight" in result.unexpected_keys
    video = MViTv2Video(MViTv2VideoConfig(embed_dims=8, num_heads=1, depths=(1, 2, 1, 1)), num_frames=4,
                        img_size=32, num_classes=5)
    with pytest.raises(CheckpointError, match="a video .* checkpoint but the model is an image"):
        load_checkpoint(backbone(), video.state_dict())
    with pytest.raises(CheckpointError, match="video state dict cannot be exported to the detectron2 layout"):
        convert_state_dict(video.state_dict(), to="detectron2")
    with pytest.raises(CheckpointError, match="classifier keys .*head.projection.*MViTv2Backbone"):
        convert_state_dict(MViTv2(CLASSIFIER, img_size=64, num_classes=10).state_dict(), to="detectron2")
    with pytest.raises(CheckpointError, match="backbone checkpoint cannot be converted to the official layout"):
        convert_state_dict(backbone().state_dict(), to="official")
    with pytest.raises(CheckpointError, match="unexpected key.*pos_embed"):
        load_checkpoint(backbone(), backbone(use_abs_pos=True, pretrain_img_size=32).state_dict())
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(backbone(), as_detector(backbone(embed_dim=16, num_heads=2).state_dict()))
    with pytest.raises(CheckpointError, match="expected the timm layout but the keys are in the detectron2 layout"):
        load_checkpoint(backbone(), det, format="timm")


def test_fastmvit_load_checkpoint_is_the_same_function():
    assert fastmvit.load_checkpoint is load_checkpoint
