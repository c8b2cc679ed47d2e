"""Key layouts of the public MViTv2 (image) checkpoints, and conversion to and from the native one.

This module works on state dicts only (``{key: tensor}``); file handling and loading into a model
live in ``fastmvit.checkpoint``. Nothing here looks at tensor values, only at keys and shapes, so
every function also works on tensors of the ``meta`` device.

The native layout is the official one (docs/checkpoints.md), flat over the blocks::

    patch_embed.proj.{weight,bias}                    Conv2d(3, C0, 7, stride 4, padding 3)
    cls_token                                         (1, 1, C0), class-token archs only
    blocks.{i}.norm1 / norm2                          LayerNorm(dim_in) / LayerNorm(dim_att)
    blocks.{i}.attn.qkv                               Linear(dim_in, 3 * dim_att)
    blocks.{i}.attn.proj                              Linear(dim_att, dim_att)
    blocks.{i}.attn.pool_{q,k,v}.weight               (hd, 1, 3, 3), depthwise, no bias
    blocks.{i}.attn.norm_{q,k,v}                      LayerNorm(hd)
    blocks.{i}.attn.rel_pos_{h,w}                     (2 * max(q_side, kv_side) - 1, hd)
    blocks.{i}.mlp.fc1 / fc2                          Linear(dim_att, 4 dim_att) / (4 dim_att, dim_out)
    blocks.{i}.proj                                   Linear(dim_in, dim_out), dim-change blocks only
    norm                                              LayerNorm(C_last)
    head.projection                                   Linear(C_last, num_classes)

The other layouts, as checked against the public code (November 2026 copies):

- official (facebookresearch/mvit, ``mvit/models/mvit_model.py``, ``attention.py``,
  ``utils/checkpoint.py``): the native keys, saved as ``{"model_state": sd, "optimizer_state": ...,
  "epoch": ..., "cfg": <yaml string>}``. The released in1k files carry a ``cls_token`` that the
  model never uses (CLS_EMBED_ON is False; facebookresearch/mvit issue #7): ``load_checkpoint``
  drops it when the model has no class token. ``head.projection`` is followed by a softmax in
  eval mode in the official model (not a parameter; fastmvit returns logits).
- mmpretrain / mmcls (``mmpretrain/models/backbones/mvit.py``, ``tools/model_converters/
  mvitv2_to_mmcls.py``, ``configs/_base_/models/mvit/*.py``): the converter prefixes every key but
  the head with ``backbone.``, renames ``patch_embed.proj`` to ``patch_embed.projection``, the
  final ``norm`` to ``norm3`` (``norm{num_stages - 1}``) and ``head.projection`` to ``head.fc``
  (LinearClsHead). It keeps every other key, so the zoo files may carry ``backbone.cls_token``
  too (mmpretrain's MViT has no class token and loads non-strictly). The backbone builds
  ``norm{s}`` for every ``s`` in ``out_scales``; a checkpoint with ``norm0..norm2`` comes from a
  multi-scale backbone in which those norms were applied ON the main path (a quirk), i.e. a
  different network: refused under ``strict=True``, dropped otherwise. Files saved by mmengine
  are wrapped as ``{"state_dict": sd, "meta": ...}``.
- timm (``timm/models/mvitv2.py``, ``checkpoint_filter_fn``): blocks nested as
  ``stages.{s}.blocks.{j}``, the block's ``proj`` renamed ``shortcut_proj_attn`` (dim change in
  attention, ``expand_attn=True``: first block of stages 2-4) or ``shortcut_proj_mlp`` (large:
  last block of stages 1-3), ``head.projection`` renamed ``head.fc``; every other key as
  official. timm keeps ``cls_token`` only for its ``*_cls`` archs. timm's training checkpoints
  are wrapped as ``{"state_dict": sd, "state_dict_ema": ..., "arch": ...}``. A timm model built
  for another ``img_size`` stores tables of that size: nothing here assumes 224, and
  ``load_checkpoint`` resizes any table length to the model's.

Video checkpoints (``fastmvit.MViTv2Video``; docs/checkpoints.md, "Video"):

- official (SlowFast, ``slowfast/models/video_model_builder.py`` ``MViT``): the native keys with
  5-D ``patch_embed.proj`` / ``attn.pool_*`` weights and a third table ``attn.rel_pos_t``,
  wrapped as ``{"model_state": ...}``; so the same layout name, told apart by shapes.
- torchvision (``torchvision/models/video/mvit.py``, ``mvit_v2_s``): ``conv_proj``,
  ``pos_encoding.class_token`` (shape (C0,), not (1, 1, C0)), ``attn.project.0``,
  ``attn.pool_{q,k,v}.pool`` / ``.norm_act.0``, ``mlp.0`` / ``mlp.3``, the block's ``project``,
  ``head.1``; tables and norms under the native names. A plain state dict.

Detection backbone checkpoints (``fastmvit.reference.MViTv2Backbone``; docs/checkpoints.md,
"Detection"):

- detectron2 (``detectron2/modeling/backbone/mvit.py`` ``MViT``, ``projects/MViTv2``): the
  backbone's keys are the native block keys plus ``scale{2..5}_norm`` (one LayerNorm per output)
  and ``pos_embed`` (``use_abs_pos`` only), no ``cls_token``, ``norm`` or ``head``. In a detector
  checkpoint they sit under ``backbone.bottom_up.`` beside the FPN (``backbone.fpn_*``), the RPN
  (``proposal_generator.*``), the ROI heads (``roi_heads.*``) and ``pixel_mean`` / ``pixel_std``,
  wrapped as ``{"model": sd, ...}`` (torch files written by its Checkpointer, or the model zoo's
  ``.pkl`` pickles of numpy arrays). Reading keeps the ``backbone.bottom_up.`` keys (renamed to the
  native ones) and reports every other key as ignored. A bare backbone state dict (its
  ``scale*_norm`` keys tell it) is the same layout without the prefix. Exported (``to=
  "detectron2"``) as the detector layout: every key under ``backbone.bottom_up.``.

Where a reading of the key lists might mislead: one might list mmpretrain's final norm as ``norm3`` only; it is
``norm{num_stages - 1}`` and other ``norm{s}`` may be present (see above). Its statement that the
in1k ``.pyth`` files carry an unused ``cls_token`` is confirmed by facebookresearch/mvit#7.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

FORMATS = ("native", "official", "mmpretrain", "timm", "torchvision", "detectron2")
# Layouts of the image classifier; a detection backbone converts to "native" and "detectron2" only.
CLASSIFIER_FORMATS = ("official", "mmpretrain", "timm", "torchvision")
DETECTRON2_PREFIX = "backbone.bottom_up."

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_TIMM_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$")
_MM_NORM = re.compile(r"^norm(\d+)\.(weight|bias)$")
_REL_POS = re.compile(r"^blocks\.\d+\.attn\.rel_pos_[hwt]$")
_SCALE_NORM = re.compile(r"^scale(\d+)_norm\.(weight|bias)$")
# torchvision's mvit_v2_s names, block-relative (the rest of a block's keys are the native ones).
_TORCHVISION_BLOCK = (("attn.project.0.", "attn.proj."), ("mlp.0.", "mlp.fc1."), ("mlp.3.", "mlp.fc2."),
                      ("project.", "proj."),
                      *((f"attn.pool_{t}.pool.", f"attn.pool_{t}.") for t in "qkv"),
                      *((f"attn.pool_{t}.norm_act.0.", f"attn.norm_{t}.") for t in "qkv"))
_TORCHVISION_TOP = (("conv_proj.", "patch_embed.proj."), ("head.1.", "head.projection."))


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, recognised, converted or loaded; the message says why."""


def _rename_prefix(key: str, old: str, new: str) -> str:
    return new + key[len(old):] if key.startswith(old) else key


def _sample(keys, n: int = 6) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# ------------------------------------------------------------------------------------------------
# Detection
# ------------------------------------------------------------------------------------------------
def detect_format(state_dict: Mapping[str, torch.Tensor], wrapper: str | None = None) -> str:
    """Name the key layout of an unwrapped state dict: one of ``FORMATS``.

    ``wrapper`` is the key the state dict was found under (``"model_state"`` marks the official
    files, whose keys are otherwise the native ones). Raises ``CheckpointError`` for layouts that
    are not an MViTv2 image classifier, naming what was found.
    """
    keys = list(state_dict)
    if not keys:
        raise CheckpointError("unknown checkpoint format: the state dict is empty")
    if any(k.startswith(DETECTRON2_PREFIX) for k in keys):
        return "detectron2"                              # a detector: the backbone under backbone.bottom_up.
    if is_detection_backbone(state_dict) and any(_BLOCK.match(k) for k in keys):
        return "detectron2"                              # a bare detectron2 backbone state dict
    if "conv_proj.weight" in state_dict or any(k.startswith("pos_encoding.") for k in keys):
        return "torchvision"
    if any(_TIMM_BLOCK.match(k) for k in keys):
        return "timm"
    if any(k.startswith("backbone.") for k in keys) or "patch_embed.projection.weight" in state_dict:
        return "mmpretrain"
    if "patch_embed.proj.weight" in state_dict or any(_BLOCK.match(k) for k in keys):
        return "official" if wrapper == "model_state" else "native"
    raise CheckpointError(
        f"unknown checkpoint format: no MViTv2 key layout (official, mmpretrain, timm, torchvision, detectron2) "
        f"matches keys like {_sample(keys)}")


def is_detection_backbone(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a (native) state dict of the detection backbone: it has ``scale{s}_norm`` layers."""
    return any(_SCALE_NORM.match(k) for k in state_dict)


def is_scale_norm_key(key: str) -> bool:
    """True for the detection backbone's per-output norms ``scale{s}_norm.{weight,bias}``."""
    return bool(_SCALE_NORM.match(key))


def scale_norm_names(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The outputs (``"scale2"`` ...) whose ``scale{s}_norm`` a native backbone state dict holds."""
    found = {int(m.group(1)) for k in state_dict if (m := _SCALE_NORM.match(k))}
    return [f"scale{s}" for s in sorted(found)]


# ------------------------------------------------------------------------------------------------
# Architecture, read from the native keys' shapes
# ------------------------------------------------------------------------------------------------
@dataclass
class BlockInfo:
    """What one block's weights say about it."""
    dim_in: int
    dim_att: int          # width of the attention (= dim_out when the dim changes in attention)
    dim_out: int
    head_dim: int
    heads: int
    has_proj: bool
    proj_in_attention: bool   # the block's `proj` sits on the attention branch (else the MLP's)
    rel_pos: tuple[int, int] | None   # table lengths (h, w)


@dataclass
class ArchInfo:
    """The architecture a native state dict describes (shapes only)."""
    embed_dim: int
    blocks: list[BlockInfo]
    depths: tuple[int, ...]
    heads: tuple[int, ...]            # per stage
    dim_change: str                   # "attention", "mlp" or "none"
    cls_token: bool
    num_classes: int | None
    grid: tuple[int, int] | None      # first block's token grid (h, w), from its table lengths
    num_params: int
    extra_keys: list[str] = field(default_factory=list)
    video: bool = False               # a (T, H, W) model: 5-D patch-embedding and pooling weights
    token_frames: int | None = None   # video: the first block's temporal grid, from rel_pos_t's length

    @property
    def num_frames(self) -> int | None:
        """Video: the clip length the tables were made for (2 frames a token: temporal stride 2)."""
        return None if self.token_frames is None else 2 * self.token_frames

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def img_size(self) -> tuple[int, int] | None:
        """Input size the tables were made for: 4 pixels a token (patch stride 4)."""
        return None if self.grid is None else (4 * self.grid[0], 4 * self.grid[1])


def _block_indices(state_dict: Mapping[str, torch.Tensor]) -> list[int]:
    idx = sorted({int(m.group(1)) for k in state_dict if (m := _BLOCK.match(k))})
    if idx != list(range(len(idx))):
        missing = sorted(set(range(idx[-1] + 1)) - set(idx)) if idx else []
        raise CheckpointError(f"blocks are not numbered 0..{len(idx) - 1}: missing block(s) {missing[:8]}")
    return idx


def inspect_native(state_dict: Mapping[str, torch.Tensor]) -> ArchInfo:
    """Read the architecture from a native state dict's shapes.

    Stage boundaries are where the head count changes (heads double at every stage in all public
    archs) or where the attention widens (dim change in attention). The input size comes from the
    first block's tables: length L = 2 * max(q_side, kv_side) - 1 with stride_q 1, so
    q_side = (L + 1) / 2 tokens, and 4 pixels a token.
    """
    def shape(key):
        if key not in state_dict:
            raise CheckpointError(f"not an MViTv2 state dict: key {key!r} is missing")
        return tuple(state_dict[key].shape)

    embed_dim = shape("patch_embed.proj.weight")[0]
    blocks: list[BlockInfo] = []
    for i in _block_indices(state_dict):
        p = f"blocks.{i}."
        dim_in = shape(p + "norm1.weight")[0]
        dim_att = shape(p + "attn.proj.weight")[0]
        dim_out = shape(p + "mlp.fc2.weight")[0]
        head_dim = shape(p + "attn.pool_q.weight")[0]
        if dim_att % head_dim:
            raise CheckpointError(f"block {i}: attention width {dim_att} is not a multiple of the head dim {head_dim}")
        has_proj = p + "proj.weight" in state_dict
        rel = None
        if p + "attn.rel_pos_h" in state_dict and p + "attn.rel_pos_w" in state_dict:
            rel = (shape(p + "attn.rel_pos_h")[0], shape(p + "attn.rel_pos_w")[0])
        blocks.append(BlockInfo(dim_in, dim_att, dim_out, head_dim, dim_att // head_dim, has_proj,
                                has_proj and dim_att != dim_in, rel))
    if not blocks:
        raise CheckpointError("not an MViTv2 state dict: no 'blocks.{i}.' keys")

    starts = [0] + [i for i in range(1, len(blocks))
                    if blocks[i].heads != blocks[i - 1].heads or blocks[i].dim_att != blocks[i].dim_in]
    depths = tuple(b - a for a, b in zip(starts, starts[1:] + [len(blocks)]))
    heads = tuple(blocks[s].heads for s in starts)
    modes = {"attention" if b.proj_in_attention else "mlp" for b in blocks if b.has_proj}
    dim_change = modes.pop() if len(modes) == 1 else ("none" if not modes else "mixed")
    grid = None
    if blocks[0].rel_pos is not None:
        grid = ((blocks[0].rel_pos[0] + 1) // 2, (blocks[0].rel_pos[1] + 1) // 2)
    num_classes = shape("head.projection.weight")[0] if "head.projection.weight" in state_dict else None
    known = re.compile(r"^(patch_embed\.proj\.|cls_token$|pos_embed$|blocks\.\d+\.|norm\.|head\.projection\.|"
                       r"scale\d+_norm\.)")
    video = is_video(state_dict)
    frames = None
    if video and "blocks.0.attn.rel_pos_t" in state_dict:
        frames = (shape("blocks.0.attn.rel_pos_t")[0] + 1) // 2
    return ArchInfo(embed_dim=embed_dim, blocks=blocks, depths=depths, heads=heads, dim_change=dim_change,
                    cls_token="cls_token" in state_dict, num_classes=num_classes, grid=grid,
                    num_params=sum(t.numel() for t in state_dict.values()),
                    extra_keys=[k for k in state_dict if not known.match(k)], video=video, token_frames=frames)


def is_video(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a native state dict of the video model: a 5-D (Conv3d) patch-embedding weight."""
    w = state_dict.get("patch_embed.proj.weight")
    return w is not None and w.dim() == 5


def stage_depths(state_dict: Mapping[str, torch.Tensor], depths: Sequence[int] | None = None) -> tuple[int, ...]:
    """Blocks per stage of a native state dict: ``depths`` when given (checked), else read from it."""
    arch = inspect_native(state_dict)
    if depths is None:
        return arch.depths
    depths = tuple(int(d) for d in depths)
    if sum(depths) != arch.depth or min(depths) < 1:
        raise CheckpointError(f"depths {depths} do not fit the checkpoint: it has {arch.depth} blocks")
    # Every block where the heads or the attention width change must start a stage.
    starts = {sum(depths[:s]) for s in range(len(depths))}
    for i in range(1, arch.depth):
        b, prev = arch.blocks[i], arch.blocks[i - 1]
        if (b.heads != prev.heads or b.dim_att != b.dim_in) and i not in starts:
            raise CheckpointError(f"depths {depths} do not fit the checkpoint: block {i} starts a stage "
                                  f"(heads {prev.heads} -> {b.heads}, width {b.dim_in} -> {b.dim_att})")
    return depths


# ------------------------------------------------------------------------------------------------
# Conversions to native
# ------------------------------------------------------------------------------------------------
def _from_official(sd):
    return dict(sd), []


def _from_mmpretrain(sd, strict: bool):
    out, notes = {}, []
    for k, v in sd.items():
        k = _rename_prefix(k, "backbone.", "")
        k = _rename_prefix(k, "patch_embed.projection.", "patch_embed.proj.")
        k = _rename_prefix(k, "head.fc.", "head.projection.")
        out[k] = v
    norms = sorted({int(m.group(1)) for k in out if (m := _MM_NORM.match(k))})
    if norms:
        last = norms[-1]
        for name in ("weight", "bias"):
            if f"norm{last}.{name}" in out:
                out[f"norm.{name}"] = out.pop(f"norm{last}.{name}")
        inner = [f"norm{s}" for s in norms[:-1]]
        if inner:
            msg = (f"mmpretrain checkpoint has per-stage norms {inner}: it comes from a backbone built with "
                   f"out_scales={norms}, in which mmpretrain applies those norms on the main path, a different "
                   f"network from MViTv2")
            if strict:
                raise CheckpointError(msg + "; pass strict=False to drop them (the outputs will differ)")
            for name in inner:
                out.pop(f"{name}.weight", None)
                out.pop(f"{name}.bias", None)
            notes.append(msg + ": dropped")
    return out, notes


def _from_timm(sd):
    found = {}
    for k in sd:
        if m := _TIMM_BLOCK.match(k):
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if sorted(found) != list(range(len(found))):
        raise CheckpointError(f"timm checkpoint: stages are not numbered 0..{len(found) - 1}: {sorted(found)}")
    offset, start = 0, {}
    for s in range(len(found)):
        js = sorted(found[s])
        if js != list(range(len(js))):
            raise CheckpointError(f"timm checkpoint: stage {s} blocks are not numbered 0..{len(js) - 1}: {js}")
        start[s] = offset
        offset += len(js)
    out = {}
    for k, v in sd.items():
        if m := _TIMM_BLOCK.match(k):
            s, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            rest = _rename_prefix(rest, "shortcut_proj_attn.", "proj.")
            rest = _rename_prefix(rest, "shortcut_proj_mlp.", "proj.")
            k = f"blocks.{start[s] + j}.{rest}"
        else:
            k = _rename_prefix(k, "head.fc.", "head.projection.")
        out[k] = v
    return out, []


def _rename_block_key(key: str, pairs) -> str:
    """blocks.{i}.<old>... -> blocks.{i}.<new>... for the first matching (old, new) pair."""
    m = _BLOCK.match(key)
    if not m:
        return key
    rest = m.group(2)
    for old, new in pairs:
        if rest.startswith(old):
            return f"blocks.{m.group(1)}.{new}{rest[len(old):]}"
    return key


def _from_torchvision(sd):
    out = {}
    for k, v in sd.items():
        if k == "pos_encoding.class_token":
            out["cls_token"] = v.reshape(1, 1, -1)                      # (C0,) -> (1, 1, C0), a view
            continue
        if k.startswith("pos_encoding."):
            raise CheckpointError(f"torchvision checkpoint has {k!r}: an absolute position embedding "
                                  f"(MViT v1), which fastmvit's MViTv2 does not have")
        for old, new in _TORCHVISION_TOP:
            k = _rename_prefix(k, old, new)
        out[_rename_block_key(k, _TORCHVISION_BLOCK)] = v
    return out, []


def _key_group(key: str) -> str:
    """``roi_heads.*``, ``backbone.fpn_lateral2.*``, ``pixel_mean``: a key's module, for messages."""
    parts = key.split(".")
    depth = 2 if parts[0] == "backbone" else 1
    return ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")


def _from_detectron2(sd, dropped: list | None):
    """The backbone's keys of a detectron2 detector (``backbone.bottom_up.*``, prefix removed), or a
    bare backbone state dict as it is; every other detector key is ignored (listed in ``dropped``)."""
    if not any(k.startswith(DETECTRON2_PREFIX) for k in sd):
        return dict(sd), []
    out, ignored = {}, []
    for k, v in sd.items():
        if k.startswith(DETECTRON2_PREFIX):
            out[k[len(DETECTRON2_PREFIX):]] = v
        else:
            ignored.append(k)
    notes = []
    if ignored:
        groups = sorted({_key_group(k) for k in ignored})
        notes.append(f"ignored {len(ignored)} detector key(s) outside the backbone ({DETECTRON2_PREFIX}*): "
                     + ", ".join(groups[:_MAX_NOTE_GROUPS]) + (", ..." if len(groups) > _MAX_NOTE_GROUPS else ""))
        if dropped is not None:
            dropped.extend(ignored)
    return out, notes


_MAX_NOTE_GROUPS = 10


def to_native(state_dict: Mapping[str, torch.Tensor], fmt: str, *, strict: bool = True,
              dropped: list | None = None):
    """Rename an unwrapped state dict of layout ``fmt`` to the native keys.

    Returns ``(native_state_dict, notes)``; notes are human-readable lines about anything dropped.
    Keys left out on purpose (a detector's heads) are appended to ``dropped`` when it is given.
    Tensors are shared, not copied.
    """
    if fmt == "detectron2":
        return _from_detectron2(state_dict, dropped)
    if fmt in ("native", "official"):
        return _from_official(state_dict)
    if fmt == "mmpretrain":
        return _from_mmpretrain(state_dict, strict)
    if fmt == "timm":
        return _from_timm(state_dict)
    if fmt == "torchvision":
        return _from_torchvision(state_dict)
    raise CheckpointError(f"unknown checkpoint format {fmt!r}: expected one of {FORMATS}")


# ------------------------------------------------------------------------------------------------
# Conversions from native
# ------------------------------------------------------------------------------------------------
def from_native(state_dict: Mapping[str, torch.Tensor], fmt: str, *,
                depths: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Rename a native state dict to layout ``fmt`` (keys only; tensors shared).

    ``depths`` (blocks per stage) places the blocks in timm's stages and names mmpretrain's final
    norm; when None it is read from the state dict (``stage_depths``), which is right for every
    public arch. Pass the model's config depths for a custom arch whose heads do not change at
    stage boundaries. A detection backbone (``scale*_norm`` keys) goes to ``"native"`` and
    ``"detectron2"`` (its keys under ``backbone.bottom_up.``) only; ``"detectron2"`` refuses a
    classifier's keys.
    """
    video = is_video(state_dict)
    backbone = is_detection_backbone(state_dict)
    if fmt == "detectron2":
        if video:
            raise CheckpointError("detectron2's MViT is an image (2-D) backbone: a video state dict cannot be "
                                  "exported to the detectron2 layout")
        classifier = sorted(k for k in state_dict if k.startswith(("head.", "norm.")) or k == "cls_token")
        if classifier:
            raise CheckpointError(f"the detectron2 layout holds the detection backbone, but this state dict has "
                                  f"classifier keys ({_sample(classifier, 4)}): load it into "
                                  f"fastmvit.reference.MViTv2Backbone (load_checkpoint drops them) and export "
                                  f"the backbone's state dict")
        return {DETECTRON2_PREFIX + k: v for k, v in state_dict.items()}
    if fmt == "native":
        return dict(state_dict)
    if backbone and fmt in CLASSIFIER_FORMATS:
        raise CheckpointError(f"a detection backbone state dict (detectron2's MViT: scale*_norm keys) cannot be "
                              f"exported to the {fmt} layout, which holds the image classifier; use 'detectron2' "
                              f"or 'native'")
    if fmt == "official":
        return dict(state_dict)
    if fmt == "torchvision":
        if not video:
            raise CheckpointError("torchvision's MViT is the video model: an image (2-D) state dict cannot be "
                                  "exported to the torchvision layout")
        inverse = tuple((new, old) for old, new in _TORCHVISION_BLOCK)
        out = {}
        for k, v in state_dict.items():
            if k == "cls_token":
                out["pos_encoding.class_token"] = v.reshape(-1)
                continue
            for old, new in _TORCHVISION_TOP:
                k = _rename_prefix(k, new, old)
            out[_rename_block_key(k, inverse)] = v
        return out
    if video:
        raise CheckpointError(f"the {fmt} layout holds image models only; a video state dict converts to "
                              f"'official' (SlowFast) or 'torchvision'")
    if fmt == "mmpretrain":
        if "cls_token" in state_dict:
            raise CheckpointError("mmpretrain's MViT has no class token: a class-token model cannot be exported "
                                  "to the mmpretrain layout")
        num_stages = len(stage_depths(state_dict, depths))
        out = {}
        for k, v in state_dict.items():
            if k.startswith("head.projection."):
                out[_rename_prefix(k, "head.projection.", "head.fc.")] = v
                continue
            k = _rename_prefix(k, "patch_embed.proj.", "patch_embed.projection.")
            k = _rename_prefix(k, "norm.", f"norm{num_stages - 1}.")
            out["backbone." + k] = v
        return out
    if fmt == "timm":
        depths = stage_depths(state_dict, depths)
        where = [(s, j) for s, d in enumerate(depths) for j in range(d)]
        out = {}
        for k, v in state_dict.items():
            if m := _BLOCK.match(k):
                i, rest = int(m.group(1)), m.group(2)
                if rest.startswith("proj."):
                    in_attention = (state_dict[f"blocks.{i}.attn.proj.weight"].shape[0]
                                    == state_dict[f"blocks.{i}.proj.weight"].shape[0])
                    rest = ("shortcut_proj_attn." if in_attention else "shortcut_proj_mlp.") + rest[len("proj."):]
                s, j = where[i]
                k = f"stages.{s}.blocks.{j}.{rest}"
            else:
                k = _rename_prefix(k, "head.projection.", "head.fc.")
            out[k] = v
        return out
    raise CheckpointError(f"unknown checkpoint format {fmt!r}: expected one of {FORMATS}")


def is_rel_pos_key(key: str) -> bool:
    """True for the relative-position tables ``blocks.{i}.attn.rel_pos_{h,w,t}``."""
    return bool(_REL_POS.match(key))
