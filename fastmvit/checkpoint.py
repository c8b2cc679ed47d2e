"""Load every public MViTv2 checkpoint into a fastmvit model, and export back.

    model = fastmvit.reference.MViTv2(...)          # or fastmvit.MViTv2: same state dict
    fastmvit.load_checkpoint(model, "mvitv2-tiny_3rdparty_in1k_20220722-db7beeef.pth")
    timm_sd = fastmvit.convert_state_dict(model.state_dict(), to="timm")

Formats (key layouts in ``fastmvit.checkpoint_formats``): ``official`` (facebookresearch/mvit
``.pyth`` and SlowFast's video ``.pyth``, wrapped as ``{"model_state": ...}``), ``mmpretrain``
(mmcls model zoo, ``backbone.`` prefix, maybe wrapped as ``{"state_dict": ..., "meta": ...}``),
``timm`` (``stages.{s}.blocks.{j}``), ``torchvision`` (the video ``mvit_v2_s``: ``conv_proj``,
``pos_encoding.class_token``, ...), ``detectron2`` (the detection backbone,
``fastmvit.reference.MViTv2Backbone``: detector checkpoints with the backbone under
``backbone.bottom_up.`` in ``{"model": ...}``, or a bare backbone state dict) and ``native``
(fastmvit's own, = the official keys unwrapped). Image and video checkpoints are told apart by
their shapes (a Conv3d patch embedding), and one given to the other kind of model is a clear
error. Files: ``.pth``/``.pyth``/``.pt``/``.bin`` (torch pickles, always read with
``torch.load(weights_only=True)``: no pickled code ever runs), ``.safetensors``, and detectron2's
model-zoo ``.pkl`` (plain pickles of numpy arrays, read by an unpickler that builds numpy arrays
and plain containers only).

Loading converts the keys, resizes the relative-position tables by 1-D linear interpolation
(align_corners False, the reference's ``resize_rel_pos``) when the model was built for another input
size than the checkpoint, drops the unused ``cls_token`` of the official in1k files when the model
has no class token, and raises ``CheckpointError`` naming the keys and shapes that differ. Into a
detection backbone it also drops a classifier's final ``norm`` and ``head`` and leaves the
``scale*_norm`` layers an ImageNet checkpoint lacks at their initialisation (reported, not an
error), as detectron2 does when a detector starts from the official ``.pyth`` files.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .checkpoint_formats import (CLASSIFIER_FORMATS, DETECTRON2_PREFIX, FORMATS, ArchInfo, CheckpointError,
                                 detect_format, from_native, inspect_native, is_detection_backbone, is_rel_pos_key,
                                 is_scale_norm_key, is_video, scale_norm_names, to_native)

__all__ = ["CheckpointError", "FORMATS", "LoadResult", "checkpoint_info", "convert_state_dict",
           "load_checkpoint", "read_checkpoint", "read_numpy_pickle", "save_checkpoint"]

# Keys a training checkpoint may keep its weights under, in order of preference.
_WRAPPERS = ("model_state", "state_dict", "model")
_MAX_LISTED = 8


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike) -> Any:
    """Read a checkpoint file without executing pickled code.

    ``.safetensors`` files (by name or by their first bytes) are read with safetensors; ``.pkl`` files
    that are plain pickles (detectron2's model zoo: numpy arrays) with ``read_numpy_pickle``;
    anything else with ``torch.load(weights_only=True, map_location="cpu")``. Raises
    ``FileNotFoundError`` for a missing file and ``CheckpointError`` (naming the file) for a
    truncated, corrupt or unsafe one.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".pkl") and not zipfile.is_zipfile(path):
        return read_numpy_pickle(path)
    if path.endswith(".safetensors") or _looks_like_safetensors(path):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors is a test dependency
            raise CheckpointError(f"{path}: reading .safetensors needs the 'safetensors' package") from e
        try:
            return load_file(path, device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError (and others) on bad bytes
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({type(e).__name__}: {e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's weights-only unpickler says "Unsupported global: GLOBAL x.y ..." for objects it will
        # not build (code would run) and other "WeightsUnpickler error"s for bytes that are no pickle.
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if unsafe:
            raise CheckpointError(
                f"{path}: the file holds pickled objects other than tensors and plain containers "
                f"({unsafe.group(1)}), and fastmvit never runs pickled code. If you trust the file, load it "
                f"yourself with torch.load(path, weights_only=False) and pass the state dict") from e
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(\n|$)", str(e))
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint (unpickling failed: "
                              f"{detail.group(1) if detail else str(e).splitlines()[0]})") from e
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError) as e:
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e


class _NumpyUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, numpy scalars and plain containers, and nothing else:
    any other global (a class or function the pickle names, through which code would run) is
    refused before it is looked up."""
    _ALLOWED = {(m, name) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype"),
                                                            ("collections", "OrderedDict")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")


def _numpy_to_torch(obj: Any) -> Any:
    import numpy as np
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufc":
            raise CheckpointError(f"an array of dtype {obj.dtype} is not a tensor")
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, Mapping):
        return {k: _numpy_to_torch(v) for k, v in obj.items()}
    return obj


def read_numpy_pickle(path: str | os.PathLike) -> Any:
    """Read a plain pickle of numpy arrays (detectron2's model-zoo ``.pkl``: ``{"model": {name:
    ndarray}, "__author__": ...}``) without executing pickled code; arrays become tensors.

    Python 2 pickles (Detectron's) are read with latin-1 strings, as detectron2 does. Raises
    ``CheckpointError`` naming the file for anything else the pickle would build.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            obj = _NumpyUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if unsafe:
            raise CheckpointError(
                f"{path}: the pickle holds objects other than numpy arrays and plain containers "
                f"({unsafe.group(1)}), and fastmvit never runs pickled code. If you trust the file, load it "
                f"yourself and pass the state dict") from e
        raise CheckpointError(f"{path}: truncated or corrupt pickle ({e})") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, ImportError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e})") from e
    try:
        return _numpy_to_torch(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _looks_like_safetensors(path: str) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian) and then the
    JSON header, ``{``; torch files start with ``PK`` (zip) or a pickle opcode."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path)


def _unwrap(obj: Any, name: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict inside a checkpoint object, and the wrapper key it was under (or None)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{name}: not a state dict (a {type(obj).__name__})")
    wrapper = None
    for key in _WRAPPERS:
        if isinstance(obj.get(key), Mapping):
            obj, wrapper = obj[key], key
            break
    sd = dict(obj)
    # DistributedDataParallel / fairscale wrappers prefix every key with "module.".
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{name}: not a state dict: entries {bad[:_MAX_LISTED]} are not tensors")
    return sd, wrapper


def _read_native(source, *, strict: bool = True, fmt: str | None = None):
    """(native state dict, detected format, wrapper, notes, ignored keys) from a path or an
    in-memory checkpoint; the ignored keys are a detector's, outside its backbone."""
    if isinstance(source, (str, os.PathLike)):
        name, obj = os.fspath(source), read_checkpoint(source)
    else:
        name, obj = "state dict", source
    sd, wrapper = _unwrap(obj, name)
    try:
        detected = detect_format(sd, wrapper)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: {e}") from None
    # The same keys under two names: the official files hold native keys, and a bare detectron2
    # backbone state dict is the native backbone's.
    same = ({"native", "official"}, {"native", "detectron2"})
    if (fmt is not None and fmt != detected
            and not ({fmt, detected} in same and not any(k.startswith(DETECTRON2_PREFIX) for k in sd))):
        raise CheckpointError(f"{name}: expected the {fmt} layout but the keys are in the {detected} layout")
    ignored: list[str] = []
    native, notes = to_native(sd, detected, strict=strict, dropped=ignored)
    return native, detected, wrapper, notes, ignored


def save_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, fmt: str = "native", *,
                    depths: Sequence[int] | None = None) -> None:
    """Write a (native, or any recognised) state dict to ``path`` in layout ``fmt``.

    The file is wrapped as each framework writes it: official ``{"model_state": sd}``, mmpretrain
    ``{"state_dict": sd, "meta": {...}}``, detectron2 ``{"model": sd, "__author__": "fastmvit"}``
    (the backbone under ``backbone.bottom_up.``), timm and native a plain state dict. A ``.safetensors``
    path gets the plain state dict (safetensors holds tensors only), with the layout in its metadata.
    """
    sd = convert_state_dict(state_dict, to=fmt, depths=depths)
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file
        # safetensors refuses views that share storage: give it compact copies.
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}, path,
                  metadata={"format": fmt, "converted_by": "fastmvit"})
        return
    sd = {k: v.detach().to("cpu") for k, v in sd.items()}
    if fmt == "official":
        obj: Any = {"model_state": sd}
    elif fmt == "mmpretrain":
        obj = {"state_dict": sd, "meta": {"converted_by": "fastmvit"}}
    elif fmt == "detectron2":
        obj = {"model": sd, "__author__": "fastmvit"}
    else:
        obj = sd
    torch.save(obj, path)


# ------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------
def convert_state_dict(state_dict: Mapping[str, Any] | str | os.PathLike, to: str = "native", *,
                       depths: Sequence[int] | None = None, strict: bool = True) -> dict[str, torch.Tensor]:
    """Convert a state dict of any recognised layout (wrapped or not) to layout ``to``.

    Args:
        state_dict: keys in the native, official, mmpretrain, timm, torchvision or detectron2 layout,
            possibly wrapped (``{"model_state": ...}``, ``{"state_dict": ...}``, ``{"model": ...}``);
            or a checkpoint file's path.
        to: ``"native"``, ``"official"``, ``"mmpretrain"``, ``"timm"`` (image models),
            ``"torchvision"`` (video models; ``"official"`` is SlowFast's layout for them) or
            ``"detectron2"`` (the detection backbone: its keys under ``backbone.bottom_up.``).
            A detection backbone converts to ``"native"`` and ``"detectron2"`` only; reading a
            detector keeps its backbone (the other keys are left out).
        depths: blocks per stage (e.g. ``(1, 2, 5, 2)`` for tiny), for timm's stage nesting and
            mmpretrain's final-norm name. Default: read from the heads in the state dict, which
            is right for every public arch; give the model's config depths for a custom one.
        strict: refuse (True) or drop (False) keys fastmvit cannot represent (mmpretrain's
            per-stage norms).

    Returns a new, unwrapped dict; tensors are shared with the input, not copied. The conversion
    is a pure renaming: native -> any format -> native gives back the same keys and tensors.
    """
    if to not in FORMATS:
        raise CheckpointError(f"unknown target format {to!r}: expected one of {FORMATS}")
    native, detected, _, _, _ = _read_native(state_dict, strict=strict)
    if detected == "detectron2" and to in CLASSIFIER_FORMATS:
        raise CheckpointError(f"a detectron2 MViTv2 detection backbone checkpoint cannot be converted to the {to} "
                              f"layout, which holds the image classifier; use 'detectron2' or 'native'")
    return from_native(native, to, depths=depths)


# ------------------------------------------------------------------------------------------------
# Loading into a model
# ------------------------------------------------------------------------------------------------
@dataclass
class LoadResult:
    """What ``load_checkpoint`` did. ``missing_keys``/``unexpected_keys`` are non-empty only with
    ``strict=False``."""
    format: str
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    resized_keys: list[str] = field(default_factory=list)
    dropped_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _resize_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """Resize a (L, hd) table to (length, hd) with the reference's interpolation, in >= float32.

    The result stays in float32 (or float64): ``load_state_dict`` rounds it once, to the model's
    dtype.
    """
    from .reference import resize_rel_pos
    if table.dtype in (torch.float16, torch.bfloat16):
        table = table.float()
    return resize_rel_pos(table, length)


def _describe(arch: ArchInfo) -> str:
    img = "?" if arch.img_size is None else "x".join(map(str, arch.img_size))
    return (f"C0 {arch.embed_dim}, depths {'-'.join(map(str, arch.depths))}, heads "
            f"{'-'.join(map(str, arch.heads))}, head dim {arch.blocks[0].head_dim}, dim change in "
            f"{arch.dim_change}, cls_token {arch.cls_token}, classes {arch.num_classes}, tables for {img}")


def _mismatch_message(name, fmt, native, model_sd, missing, unexpected, mismatched) -> str:
    lines = [f"{name} ({fmt} layout) does not match the model:"]
    if mismatched:
        lines.append(f"  {len(mismatched)} shape mismatch(es): " + "; ".join(
            f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched[:_MAX_LISTED]))
    if missing:
        lines.append(f"  {len(missing)} key(s) missing from the checkpoint: {sorted(missing)[:_MAX_LISTED]}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s) in the checkpoint: {sorted(unexpected)[:_MAX_LISTED]}")
    for label, sd in (("checkpoint", native), ("model", model_sd)):
        try:
            lines.append(f"  {label}: {_describe(inspect_native(sd))}")
        except CheckpointError:
            pass
    if mismatched and all(k.startswith("head.") for k, _, _ in mismatched):
        lines.append("  (to fine-tune with another number of classes, delete the head.* keys from the "
                     "converted state dict and load with strict=False)")
    return "\n".join(lines)


def load_checkpoint(model: nn.Module, source: str | os.PathLike | Mapping[str, Any], *, strict: bool = True,
                    format: str | None = None) -> LoadResult:
    """Load an MViTv2 checkpoint of any public layout into ``model``.

    Args:
        model: any module whose state dict has the native keys: ``fastmvit.MViTv2``,
            ``fastmvit.reference.MViTv2``, the video models, or the detection backbone
            ``fastmvit.reference.MViTv2Backbone`` (and subclasses of it).
        source: a path (``.pth``, ``.pyth``, ``.safetensors``, detectron2's ``.pkl``, ...) or a
            (possibly wrapped) state dict.
        strict: when True, every model key must be in the checkpoint and every checkpoint key in the
            model (the official files' unused ``cls_token`` excepted; into a detection backbone also
            a classifier's ``norm`` and ``head``, dropped, and the ``scale*_norm`` layers an
            ImageNet checkpoint lacks, left as they are). When False, missing and unexpected keys
            are reported in the result instead. Shape mismatches are errors either way, except the
            relative-position tables, which are resized.
        format: insist on a layout (``"timm"`` ...) instead of detecting it.

    Returns a ``LoadResult``: ``dropped_keys`` lists what was left out on purpose (the unused class
    token, a classifier's norm and head, a detector's keys outside its backbone) and
    ``missing_keys`` the ``scale*_norm`` keys a backbone kept. Raises ``CheckpointError`` for an
    unreadable file, an unknown layout or a checkpoint of another architecture (naming the keys
    and shapes that differ).
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    native, fmt, _, notes, ignored = _read_native(source, strict=strict, fmt=format)
    model_sd = model.state_dict()
    result = LoadResult(format=fmt, notes=list(notes), dropped_keys=list(ignored))
    backbone = _is_backbone(model, model_sd)
    if "patch_embed.proj.weight" in native and "patch_embed.proj.weight" in model_sd:
        ckpt_video, model_video = is_video(native), is_video(model_sd)
        if ckpt_video != model_video:
            kind = {True: "a video (3-D, Conv3d patch embedding)", False: "an image (2-D)"}
            build = "fastmvit.MViTv2Video (or mvit_v2_s)" if ckpt_video else "fastmvit.MViTv2"
            raise CheckpointError(f"{name} ({fmt} layout) is {kind[ckpt_video]} checkpoint but the model is "
                                  f"{kind[model_video]} model; build a {build} to load it")

    if "cls_token" in native and "cls_token" not in model_sd:
        # The official in1k files (and mmcls conversions of them) carry a class token the model never uses.
        native.pop("cls_token")
        result.dropped_keys.append("cls_token")
        result.notes.append("dropped the unused cls_token (the model has no class token)")

    if fmt == "timm" and "cls_token" in native and "cls_token" in model_sd:
        result.notes.append("timm's *_cls models also add the pooling residual to the class-token row; "
                            "fastmvit follows the official model, so outputs differ slightly from timm's")

    kept_missing = []  # missing keys that are not an error, even under strict
    if backbone:
        # An ImageNet classifier into the detection backbone (detectron2 starts its detectors from
        # the official .pyth files): its final norm and head have no place in a backbone, and the
        # backbone's per-output norms are new.
        classifier = [k for k in native if k.startswith(("norm.", "head.")) and k not in model_sd]
        for k in classifier:
            native.pop(k)
        if classifier:
            result.dropped_keys.extend(classifier)
            parts = " and ".join(sorted({k.split(".")[0] for k in classifier}))
            result.notes.append(f"dropped the classifier's {parts} (a detection backbone has neither)")
        kept_missing = [k for k in model_sd if k not in native and is_scale_norm_key(k)]
        if kept_missing:
            outs = scale_norm_names(dict.fromkeys(kept_missing))
            result.notes.append(f"{', '.join(n + '_norm' for n in outs)} not in the checkpoint: left at their "
                                f"initialisation (LayerNorm 1, 0), as detectron2 does with ImageNet weights")
    elif fmt == "detectron2" and strict:
        raise CheckpointError(f"{name} is a detectron2 MViTv2 detection backbone checkpoint (no classifier norm "
                              f"or head) but the model is not a detection backbone; build a "
                              f"fastmvit.reference.MViTv2Backbone to load it (or pass strict=False to load its "
                              f"blocks into this model)")

    missing = [k for k in model_sd if k not in native and k not in kept_missing]
    unexpected = [k for k in native if k not in model_sd]
    mismatched = []
    for k in native.keys() & model_sd.keys():
        have, want = native[k].shape, model_sd[k].shape
        if have == want:
            continue
        if is_rel_pos_key(k) and len(have) == len(want) == 2 and have[1] == want[1]:
            native[k] = _resize_table(native[k], want[0])
            result.resized_keys.append(k)
        else:
            mismatched.append((k, have, want))
    if mismatched or (strict and (missing or unexpected)):
        order = {k: i for i, k in enumerate(model_sd)}  # list them in the model's order
        raise CheckpointError(_mismatch_message(name, fmt, native, model_sd, missing, unexpected,
                                                sorted(mismatched, key=lambda m: order[m[0]])))
    if result.resized_keys:
        result.resized_keys.sort(key=_natural)
        result.notes.append(f"resized {len(result.resized_keys)} relative-position tables to the model's input size")
    result.missing_keys, result.unexpected_keys = sorted(missing + kept_missing), sorted(unexpected)
    model.load_state_dict({k: v for k, v in native.items() if k in model_sd}, strict=strict and not kept_missing)
    return result


def _is_backbone(model: nn.Module, model_sd: Mapping[str, torch.Tensor]) -> bool:
    """A detection backbone: the reference ``MViTv2Backbone`` (or a subclass, e.g. the fused one),
    or any module with its keys (``scale*_norm``, no classifier head)."""
    from .reference import MViTv2Backbone
    if isinstance(model, MViTv2Backbone):
        return True
    return is_detection_backbone(model_sd) and not any(k.startswith("head.") for k in model_sd)


def _natural(key: str):
    return [int(p) if p.isdigit() else p for p in key.split(".")]


# ------------------------------------------------------------------------------------------------
# Info
# ------------------------------------------------------------------------------------------------
def _arch_name(arch: ArchInfo, detection: bool = False) -> str | None:
    """The public arch these shapes are (tiny, small, ..., *_cls; video: small = torchvision's
    mvit_v2_s, base, large; detection: tiny ... huge), from the reference's configs."""
    from .reference import ARCH_SETTINGS, DETECTION_ARCH_SETTINGS, VIDEO_ARCH_SETTINGS
    if detection:
        last_blocks = tuple(sum(arch.depths[:s + 1]) - 1 for s in range(len(arch.depths)))
        for name, (embed_dim, depth, heads, lbi) in DETECTION_ARCH_SETTINGS.items():
            if ((embed_dim, depth, heads, tuple(lbi), "attention")
                    == (arch.embed_dim, arch.depth, arch.heads[0], last_blocks, arch.dim_change)):
                return name
        return None
    for name, cfg in (VIDEO_ARCH_SETTINGS if arch.video else ARCH_SETTINGS).items():
        dim_change = "attention" if cfg.dim_mul_in_attention else "mlp"
        if ((cfg.embed_dims, cfg.num_heads, tuple(cfg.depths), dim_change, cfg.with_cls_token)
                == (arch.embed_dim, arch.heads[0], arch.depths, arch.dim_change, arch.cls_token)):
            return name
    return None


def checkpoint_info(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Describe a checkpoint: layout, arch, input size, parameter count.

    The input size comes from the first block's relative-position tables (4 pixels a token).
    ``num_params`` leaves out a ``cls_token`` in the official and mmpretrain layouts, where the
    model never uses it (``cls_token`` still says whether the key is there). A detectron2
    checkpoint describes its backbone (``model`` "detection backbone", ``out_features`` from its
    ``scale*_norm`` layers, ``arch`` from ``DETECTION_ARCH_SETTINGS``); the detector's other keys
    are listed in ``ignored_keys``.
    """
    native, fmt, wrapper, notes, ignored = _read_native(source, strict=False)
    arch = inspect_native(native)
    unused_cls = arch.cls_token and fmt in ("official", "mmpretrain")
    detection = fmt == "detectron2"
    # The official in1k files (and mmcls conversions of them) carry a cls_token but are the plain
    # archs: mmpretrain has no class token at all, the official models run with CLS_EMBED_ON False.
    name = _arch_name(ArchInfo(**{**arch.__dict__, "cls_token": False}) if unused_cls else arch, detection)
    if unused_cls and name is None and _arch_name(arch) is not None:
        # A class-token arch (the official in21k large_cls / huge_cls files): the token is used.
        name, unused_cls = _arch_name(arch), False
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in native.values()})
    if arch.video and name == "small":
        name = "small (mvit_v2_s)"
    return {
        "format": fmt,
        "wrapper": wrapper,
        "model": "detection backbone" if detection else "video" if arch.video else "image",
        "arch": name,
        "embed_dim": arch.embed_dim,
        "depth": arch.depth,
        "depths": list(arch.depths),
        "heads": list(arch.heads),
        "head_dim": arch.blocks[0].head_dim,
        "dim_change": arch.dim_change,
        "cls_token": arch.cls_token,
        "cls_token_used": arch.cls_token and not unused_cls,
        "num_classes": arch.num_classes,
        "img_size": None if arch.img_size is None else list(arch.img_size),
        "num_frames": arch.num_frames,
        "num_params": arch.num_params - (native["cls_token"].numel() if unused_cls else 0),
        "num_tensors": len(native),
        "dtypes": dtypes,
        "extra_keys": arch.extra_keys,
        "out_features": scale_norm_names(native) if detection else None,
        "abs_pos": "pos_embed" in native,
        "ignored_keys": ignored,
        "notes": notes,
    }
