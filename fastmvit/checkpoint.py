"""Load every public MViTv2 checkpoint into a fastmvit model, and export back.

    model = fastmvit.reference.MViTv2(...)          # or fastmvit.MViTv2: same state dict
    fastmvit.load_checkpoint(model, "mvitv2-tiny_3rdparty_in1k_20220722-db7beeef.pth")
    timm_sd = fastmvit.convert_state_dict(model.state_dict(), to="timm")

Formats (key layouts in ``fastmvit.checkpoint_formats``): ``official`` (facebookresearch/mvit
``.pyth`` and SlowFast's video ``.pyth``, wrapped as ``{"model_state": ...}``), ``mmpretrain``
(mmcls model zoo, ``backbone.`` prefix, maybe wrapped as ``{"state_dict": ..., "meta": ...}``),
``timm`` (``stages.{s}.blocks.{j}``), ``torchvision`` (the video ``mvit_v2_s``: ``conv_proj``,
``pos_encoding.class_token``, ...) and ``native`` (fastmvit's own, = the official keys unwrapped).
Image and video checkpoints are told apart by their shapes (a Conv3d patch embedding), and one
given to the other kind of model is a clear error. Files: ``.pth``/``.pyth``/``.pt``/
``.bin`` (torch pickles, always read with ``torch.load(weights_only=True)``: no pickled code ever
runs) and ``.safetensors``.

Loading converts the keys, resizes the relative-position tables by 1-D linear interpolation
(align_corners False, the reference's ``resize_rel_pos``) when the model was built for another input
size than the checkpoint, drops the unused ``cls_token`` of the official in1k files when the model
has no class token, and raises ``CheckpointError`` naming the keys and shapes that differ.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .checkpoint_formats import (FORMATS, ArchInfo, CheckpointError, detect_format, from_native,
                                 inspect_native, is_rel_pos_key, is_video, to_native)

__all__ = ["CheckpointError", "FORMATS", "LoadResult", "checkpoint_info", "convert_state_dict",
           "load_checkpoint", "read_checkpoint", "save_checkpoint"]

# Keys a training checkpoint may keep its weights under, in order of preference.
_WRAPPERS = ("model_state", "state_dict", "model")
_MAX_LISTED = 8


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike) -> Any:
    """Read a checkpoint file without executing pickled code.

    ``.safetensors`` files (by name or by their first bytes) are read with safetensors; anything else with
    ``torch.load(weights_only=True, map_location="cpu")``. Raises ``FileNotFoundError`` for a
    missing file and ``CheckpointError`` (naming the file) for a truncated, corrupt or unsafe one.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
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
    """(native state dict, detected format, wrapper, notes) from a path or an in-memory checkpoint."""
    if isinstance(source, (str, os.PathLike)):
        name, obj = os.fspath(source), read_checkpoint(source)
    else:
        name, obj = "state dict", source
    sd, wrapper = _unwrap(obj, name)
    try:
        detected = detect_format(sd, wrapper)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: {e}") from None
    if fmt is not None and fmt != detected and {fmt, detected} != {"native", "official"}:
        raise CheckpointError(f"{name}: expected the {fmt} layout but the keys are in the {detected} layout")
    native, notes = to_native(sd, detected, strict=strict)
    return native, detected, wrapper, notes


def save_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, fmt: str = "native", *,
                    depths: Sequence[int] | None = None) -> None:
    """Write a (native, or any recognised) state dict to ``path`` in layout ``fmt``.

    The file is wrapped as each framework writes it: official ``{"model_state": sd}``, mmpretrain
    ``{"state_dict": sd, "meta": {...}}``, timm and native a plain state dict. A ``.safetensors``
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
        state_dict: keys in the native, official, mmpretrain, timm or torchvision layout, possibly
            wrapped (``{"model_state": ...}``, ``{"state_dict": ...}``); or a checkpoint file's path.
        to: ``"native"``, ``"official"``, ``"mmpretrain"``, ``"timm"`` (image models) or
            ``"torchvision"`` (video models; ``"official"`` is SlowFast's layout for them).
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
    native, _, _, _ = _read_native(state_dict, strict=strict)
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
            ``fastmvit.reference.MViTv2``.
        source: a path (``.pth``, ``.pyth``, ``.safetensors``, ...) or a (possibly wrapped) state dict.
        strict: when True, every model key must be in the checkpoint and every checkpoint key in the
            model (the official files' unused ``cls_token`` excepted). When False, missing and
            unexpected keys are reported in the result instead. Shape mismatches are errors either
            way, except the relative-position tables, which are resized.
        format: insist on a layout (``"timm"`` ...) instead of detecting it.

    Returns a ``LoadResult``. Raises ``CheckpointError`` for an unreadable file, an unknown layout or
    a checkpoint of another architecture (naming the keys and shapes that differ).
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    native, fmt, _, notes = _read_native(source, strict=strict, fmt=format)
    model_sd = model.state_dict()
    result = LoadResult(format=fmt, notes=list(notes))
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

    missing = [k for k in model_sd if k not in native]
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
    result.missing_keys, result.unexpected_keys = sorted(missing), sorted(unexpected)
    model.load_state_dict({k: v for k, v in native.items() if k in model_sd}, strict=strict)
    return result


def _natural(key: str):
    return [int(p) if p.isdigit() else p for p in key.split(".")]


# ------------------------------------------------------------------------------------------------
# Info
# ------------------------------------------------------------------------------------------------
def _arch_name(arch: ArchInfo) -> str | None:
    """The public arch these shapes are (tiny, small, ..., *_cls; video: small = torchvision's
    mvit_v2_s, base, large), from the reference's configs."""
    from .reference import ARCH_SETTINGS, VIDEO_ARCH_SETTINGS
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
    model never uses it (``cls_token`` still says whether the key is there).
    """
    native, fmt, wrapper, notes = _read_native(source, strict=False)
    arch = inspect_native(native)
    unused_cls = arch.cls_token and fmt in ("official", "mmpretrain")
    # The official in1k files (and mmcls conversions of them) carry a cls_token but are the plain
    # archs: mmpretrain has no class token at all, the official models run with CLS_EMBED_ON False.
    name = _arch_name(ArchInfo(**{**arch.__dict__, "cls_token": False}) if unused_cls else arch)
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in native.values()})
    if arch.video and name == "small":
        name = "small (mvit_v2_s)"
    return {
        "format": fmt,
        "wrapper": wrapper,
        "model": "video" if arch.video else "image",
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
        "notes": notes,
    }
