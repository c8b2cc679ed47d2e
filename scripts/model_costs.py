"""The cost-model target ratios of fastmvit.MViTv2 against the eager reference, on the meta device.

    .venv/bin/python scripts/model_costs.py                 # tiny, 224x224, bf16, batch 8
    .venv/bin/python scripts/model_costs.py --arch small --ops 12
    .venv/bin/python scripts/model_costs.py --time-cpu 15     # + CPU inference, fastmvit auto vs reference
    .venv/bin/python scripts/model_costs.py --video           # mvit_v2_s, 16 x 224 x 224, bf16, batch 4
    .venv/bin/python scripts/model_costs.py --detection       # the tiny backbone, 1024 x 1024, bf16, batch 2

Prints forward bytes, training-step bytes, saved-activation bytes and training-step launches of
both models (fastmvit with the "triton" backend: every fused op counted launch by launch through
its kernels' traffic statements; the reference with "torch"), the ratios against MODEL_TARGETS,
and with --ops the most expensive ops and kernels of fastmvit's forward and backward
(fastmvit.costmodel's rules: every dispatched op one kernel reading its inputs and writing its
outputs once, views free). No memory is allocated and nothing runs on a device.

--time-cpu N also times inference on the CPU (float32, eval, inference_mode, batch --cpu-batch):
fastmvit with the "auto" backend (its torch path on CPU) and the reference, same weights,
alternating A/B for N rounds after a warm-up, and prints the medians and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastmvit
from fastmvit.costmodel import DETECTION_TARGETS, VIDEO_TARGETS, cost_ratios, training_step_traffic
from fastmvit.reference import MViTv2 as Reference
from fastmvit.reference import MViTv2Backbone as BackboneReference
from fastmvit.reference import MViTv2Video as VideoReference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--img", type=int, default=None, help="default 224 (1024 with --detection)")
    parser.add_argument("--img-w", type=int, default=None, help="image width (default: --img)")
    parser.add_argument("--batch", type=int, default=None, help="default 8 (image), 4 (video), 2 (detection)")
    parser.add_argument("--video", action="store_true", help="the video model (--arch small: mvit_v2_s)")
    parser.add_argument("--detection", action="store_true", help="the detection backbone (detectron2's MViT)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--ops", type=int, default=0, help="also print the top N ops of fastmvit's step")
    parser.add_argument("--time-cpu", type=int, default=0, metavar="N", help="also time CPU inference, N rounds")
    parser.add_argument("--cpu-batch", type=int, default=1)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    batch = args.batch or (4 if args.video else 2 if args.detection else 8)
    arch = "small" if args.video and args.arch == "tiny" else args.arch
    img = args.img or (1024 if args.detection else 224)
    img_w = args.img_w or img

    with torch.device("meta"):
        if args.detection:
            fast = fastmvit.MViTv2Backbone(arch).to(dtype)
            ref = BackboneReference(arch).to(dtype)
        elif args.video:
            fast = fastmvit.MViTv2Video(arch, num_frames=args.frames, img_size=img).to(dtype)
            ref = VideoReference(arch, num_frames=args.frames, img_size=img).to(dtype)
        else:
            fast = fastmvit.MViTv2(arch, img_size=img).to(dtype)
            ref = Reference(arch, img_size=img).to(dtype)
    frames = (args.frames,) if args.video else ()
    x = torch.randn(batch, 3, *frames, img, img_w, device="meta", dtype=dtype)

    size = "x".join(map(str, (*frames, img, img_w)))
    kind = "Video" if args.video else "Backbone" if args.detection else ""
    print(f"MViTv2{kind}-{arch} {size} {args.dtype} batch {batch} (meta device)")
    print(f"{'measure':<20}{'fastmvit':>16}{'reference':>16}{'ratio':>8}{'target':>8}  ok")
    # the detection targets, with the forward bytes and launches reported beside them (no target: -)
    targets = VIDEO_TARGETS if args.video else \
        {"forward_bytes": None, **DETECTION_TARGETS, "training_launches": None} if args.detection else None
    for name, r in cost_ratios(fast, ref, x, targets=targets).items():
        unit, scale = ("launches", 1) if name.endswith("launches") else ("MB", 1e6)
        print(f"{name:<20}{r['candidate'] / scale:>12.1f} {unit:<3}{r['reference'] / scale:>12.1f} {unit:<3}"
              + (f"{r['ratio']:>8.3f}{r['target']:>8.2f}  {'yes' if r['ok'] else 'NO'}" if r['target'] is not None
                 else f"{r['ratio']:>8.3f}{'-':>8}"))
    if args.ops:
        with fastmvit.use_backend("triton"):
            step = training_step_traffic(fast, x)
        print("\nfastmvit training forward:\n" + step.forward.table(args.ops))
        print("\nfastmvit backward:\n" + step.backward.table(args.ops))
    if args.time_cpu:
        time_cpu(args.arch, img, args.cpu_batch, args.time_cpu)


def time_cpu(arch: str, img: int, batch: int, rounds: int) -> None:
    """Median seconds of one inference forward on the CPU, fastmvit (auto) against the reference."""
    torch.manual_seed(0)
    ref = Reference(arch, img_size=img).eval()
    fast = fastmvit.MViTv2(arch, img_size=img).eval()
    fast.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(batch, 3, img, img)
    times = {"fastmvit": [], "reference": []}

    def once(name, model):
        start = time.perf_counter()
        with torch.inference_mode(), fastmvit.use_backend("auto" if name == "fastmvit" else "torch"):
            model(x)
        times[name].append(time.perf_counter() - start)

    for name, model in (("fastmvit", fast), ("reference", ref)):   # warm-up
        once(name, model)
    times = {"fastmvit": [], "reference": []}
    for i in range(rounds):                                        # alternate, so load drifts hit both
        pair = (("fastmvit", fast), ("reference", ref)) if i % 2 == 0 else (("reference", ref), ("fastmvit", fast))
        for name, model in pair:
            once(name, model)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"\nCPU inference, MViTv2-{arch} {img}x{img} float32 batch {batch}, {torch.get_num_threads()} threads, "
          f"median of {rounds}:")
    for name, t in med.items():
        print(f"  {name:<10} {t * 1e3:8.1f} ms  (min {min(times[name]) * 1e3:.1f} ms)")
    print(f"  time ratio fastmvit / reference: {med['fastmvit'] / med['reference']:.3f}")


if __name__ == "__main__":
    main()
