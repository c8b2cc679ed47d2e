"""The issue-5 cost-model ratios of fastmvit.MViTv2 against the eager reference, on the meta device.

    .venv/bin/python scripts/model_costs.py                 # tiny, 224x224, bf16, batch 8
    .venv/bin/python scripts/model_costs.py --arch small --ops 12

Prints forward bytes, training-step bytes, forward launches and saved-activation bytes of both
models (fastmvit with the "triton" backend: its fused ops modeled through their fake
implementations; the reference with "torch"), the ratios against MODEL_TARGETS, and with --ops the
most expensive ops of fastmvit's forward and backward (fastmvit.costmodel's rules: every
dispatched op one kernel reading its inputs and writing its outputs once, views free). No memory
is allocated and nothing runs on a device.
"""
from __future__ import annotations

import argparse

import torch

import fastmvit
from fastmvit.costmodel import cost_ratios, training_step_traffic
from fastmvit.reference import MViTv2 as Reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--ops", type=int, default=0, help="also print the top N ops of fastmvit's step")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    with torch.device("meta"):
        fast = fastmvit.MViTv2(args.arch, img_size=args.img).to(dtype)
        ref = Reference(args.arch, img_size=args.img).to(dtype)
    x = torch.randn(args.batch, 3, args.img, args.img, device="meta", dtype=dtype)

    print(f"MViTv2-{args.arch} {args.img}x{args.img} {args.dtype} batch {args.batch} (meta device)")
    print(f"{'measure':<20}{'fastmvit':>16}{'reference':>16}{'ratio':>8}{'target':>8}  ok")
    for name, r in cost_ratios(fast, ref, x).items():
        unit, scale = ("launches", 1) if name == "forward_launches" else ("MB", 1e6)
        print(f"{name:<20}{r['candidate'] / scale:>12.1f} {unit:<3}{r['reference'] / scale:>12.1f} {unit:<3}"
              f"{r['ratio']:>8.3f}{r['target']:>8.2f}  {'yes' if r['ok'] else 'NO'}")
    if args.ops:
        with fastmvit.use_backend("triton"):
            step = training_step_traffic(fast, x)
        print("\nfastmvit training forward:\n" + step.forward.table(args.ops))
        print("\nfastmvit backward:\n" + step.backward.table(args.ops))


if __name__ == "__main__":
    main()
