"""The ``fastmvit`` command line.

    fastmvit info CHECKPOINT [--json]
        layout detected, arch, input size the tables were made for, parameter count
    fastmvit convert IN OUT --to {native,official,mmpretrain,timm,torchvision,detectron2}
                     [--depths 1,2,5,2] [--no-strict]
        rewrite a checkpoint in another framework's layout (OUT ending in .safetensors writes
        safetensors, anything else a torch file wrapped as that framework writes it)

Both read any public MViTv2 layout (official .pyth, mmpretrain/mmcls, timm, native, torchvision's
video model, detectron2's detection backbone: detector checkpoints and model-zoo .pkl files), never
executing pickled code. Exit status: 0 on success, 2 for a usage error or a checkpoint that cannot
be read, recognised or converted (the message says why).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .checkpoint import FORMATS, CheckpointError, checkpoint_info, convert_state_dict, save_checkpoint


def _depths(text: str) -> tuple[int, ...]:
    try:
        depths = tuple(int(x) for x in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--depths wants comma-separated integers like 1,2,5,2, not {text!r}")
    if not depths or min(depths) < 1:
        raise argparse.ArgumentTypeError(f"--depths wants positive integers, not {text!r}")
    return depths


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmvit", description="MViTv2 checkpoint tools (fastmvit).")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a checkpoint: layout, arch, input size, parameters")
    info.add_argument("checkpoint")
    info.add_argument("--json", action="store_true", help="print the description as JSON")

    convert = sub.add_parser("convert", help="rewrite a checkpoint in another layout")
    convert.add_argument("input")
    convert.add_argument("output")
    convert.add_argument("--to", required=True, choices=FORMATS, help="target layout")
    convert.add_argument("--depths", type=_depths, default=None,
                         help="blocks per stage, e.g. 1,2,5,2 (default: read from the checkpoint)")
    convert.add_argument("--no-strict", dest="strict", action="store_false",
                         help="drop keys fastmvit cannot represent instead of refusing")
    return parser


def _format_info(path: str, info: dict) -> str:
    img = "unknown" if info["img_size"] is None else "x".join(map(str, info["img_size"]))
    cls = "no"
    if info["cls_token"]:
        cls = "yes" if info["cls_token_used"] else "present but unused (official in1k files carry one)"
    millions = info["num_params"] / 1e6
    rows = [
        ("checkpoint", path),
        ("format", info["format"] + (f" (wrapped in {info['wrapper']!r})" if info["wrapper"] else "")),
        ("model", info["model"] + (f", {info['num_frames']} frames" if info.get("num_frames") else "")),
        *((("outputs", ", ".join(info["out_features"]) or "none"),) if info.get("out_features") is not None else ()),
        ("arch", info["arch"] or "custom"),
        ("embed dim", info["embed_dim"]),
        ("blocks", f"{info['depth']} ({'-'.join(map(str, info['depths']))} per stage)"),
        ("heads", "-".join(map(str, info["heads"])) + f" (head dim {info['head_dim']})"),
        ("dim change in", info["dim_change"]),
        ("class token", cls),
        ("classes", info["num_classes"] if info["num_classes"] is not None else "no head"),
        ("input size", img),
        ("parameters", f"{info['num_params']:,} ({millions:.2f} M)"),
        ("dtypes", ", ".join(info["dtypes"])),
    ]
    if info["extra_keys"]:
        rows.append(("other keys", ", ".join(info["extra_keys"][:8])))
    if info.get("ignored_keys"):
        rows.append(("ignored keys", f"{len(info['ignored_keys'])} (the detector outside its backbone)"))
    for note in info["notes"]:
        rows.append(("note", note))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "info":
            info = checkpoint_info(args.checkpoint)
            print(json.dumps({"checkpoint": args.checkpoint, **info}, indent=2) if args.json
                  else _format_info(args.checkpoint, info))
        else:
            native = convert_state_dict(args.input, to="native", strict=args.strict)
            save_checkpoint(native, args.output, args.to, depths=args.depths)
            print(f"wrote {args.output} ({args.to} layout, {len(native)} tensors)")
    except (CheckpointError, FileNotFoundError) as e:
        print(f"fastmvit {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
