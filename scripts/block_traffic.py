"""Bytes and launches of one training step of single MViTv2 blocks, MEASURED in Triton's interpreter.

    .venv/bin/python scripts/block_traffic.py                       # tiny at 224, bf16, batch 1, blocks 0 and 1
    .venv/bin/python scripts/block_traffic.py --blocks 0 --json out.json

Each block runs forward and backward (of the sum of its output, in float32) on real CPU tensors,
the fused one with the "triton" backend in the interpreter, the reference with "torch":

- fused kernels: every load and store the interpreter executes, distinct bytes per launch
  (``tools.interpreter_traffic``), per kernel;
- torch ops (the fused block's own and the reference's): ``fastmvit.costmodel``'s rules, each
  op one launch reading its inputs and writing its outputs; fastmvit's custom ops run inline so
  that the torch ops inside them are counted too.

It also prints the cost model's figure for the fused block (the kernels' traffic statements, on
meta tensors), which should match. Slow (the interpreter): about a minute per block on 2 cores.
Runs on any version of the ops (it finds their implementations through torch's custom-op
registry), which is how a closing note compares kernels before and after a change.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: tools/, tests/

import torch  # noqa: E402

import fastmvit  # noqa: E402
from fastmvit.costmodel import TrafficCounter, training_step_traffic  # noqa: E402
from fastmvit.reference import MViTv2 as Reference  # noqa: E402
from tools.interpreter_traffic import InterpreterTraffic  # noqa: E402
import tests.conftest  # noqa: E402,F401  (mends the interpreter's bf16 and index bugs on import)


def block_inputs(ref, index: int, batch: int, img: int, dtype):
    """The tokens (B, N, C) entering block `index` of `ref` on a random image, and their grid."""
    with torch.no_grad(), fastmvit.use_backend("torch"):
        x, hw = ref.embed(torch.randn(batch, 3, img, img, dtype=dtype))
        for blk in ref.blocks[:index]:
            x, hw = blk(x, hw)
    return x, tuple(hw)


def step(block, x, hw):
    out, _ = block(x.detach().requires_grad_(), hw)
    out.float().sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--blocks", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    ref = Reference(args.arch, img_size=args.img).to(dtype).train()
    fast = fastmvit.MViTv2(args.arch, img_size=args.img).to(dtype).train()
    fast.load_state_dict(ref.state_dict())
    for blk in list(ref.blocks) + list(fast.blocks):   # no stochastic depth: the same work every run
        blk.drop_path = torch.nn.Identity()
    report = {}
    for index in args.blocks:
        x, hw = block_inputs(ref, index, args.batch, args.img, dtype)
        with fastmvit.use_backend("torch"), TrafficCounter() as counted_ref:
            step(ref.blocks[index], x, hw)
        with fastmvit.use_backend("triton"), InterpreterTraffic(inline_custom_ops=True) as counted:
            step(fast.blocks[index], x, hw)
        with torch.device("meta"):
            meta_block = fastmvit.MViTv2(args.arch, img_size=args.img).to(dtype).blocks[index].train()
            meta_block.drop_path = torch.nn.Identity()
        with fastmvit.use_backend("triton"):
            modeled = training_step_traffic(lambda t: meta_block(t, hw)[0],
                                            torch.empty(x.shape, dtype=dtype, device="meta", requires_grad=True))
        kernels: dict[str, list[int]] = {}
        for launch in counted.launches:
            k = kernels.setdefault(launch.kernel, [0, 0, 0])
            k[0] += 1
            k[1] += launch.read
            k[2] += launch.written
        kernel_bytes = sum(k[1] + k[2] for k in kernels.values())
        eager = counted.eager
        ref_t = counted_ref.traffic
        fused_bytes = kernel_bytes + eager.bytes
        report[index] = dict(
            grid=list(hw), tokens=x.shape[1], channels=x.shape[2],
            reference=dict(bytes=ref_t.bytes, ops=ref_t.launches),
            fused=dict(bytes=fused_bytes, kernel_bytes=kernel_bytes, eager_bytes=eager.bytes,
                       kernel_launches=len(counted.launches), eager_ops=eager.launches,
                       kernels={name: dict(launches=k[0], read=k[1], written=k[2]) for name, k in kernels.items()},
                       eager_top=[(op.name, op.launches, op.bytes) for op in eager.top(8)]),
            modeled_fused_bytes=modeled.total.bytes, ratio=fused_bytes / ref_t.bytes)
        print(f"\nblock {index} ({hw[0]}x{hw[1]} grid, {x.shape[2]} channels), one training step, "
              f"MEASURED in the interpreter (batch {args.batch}, {args.dtype}):")
        print(f"  reference: {ref_t.bytes / 1e6:8.1f} MB, {ref_t.launches} ops")
        print(f"  fastmvit:  {fused_bytes / 1e6:8.1f} MB = {eager.bytes / 1e6:.1f} torch ops + "
              f"{kernel_bytes / 1e6:.1f} kernels, {eager.launches} ops + {len(counted.launches)} launches; "
              f"ratio {fused_bytes / ref_t.bytes:.3f}")
        print(f"  fastmvit by the cost model (MODELED, meta): {modeled.total.bytes / 1e6:8.1f} MB")
        print(f"  {'kernel':<40}{'launches':>9}{'MB read':>10}{'MB written':>12}")
        for name, k in sorted(kernels.items(), key=lambda kv: -(kv[1][1] + kv[1][2])):
            print(f"  {name:<40}{k[0]:>9}{k[1] / 1e6:>10.2f}{k[2] / 1e6:>12.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
