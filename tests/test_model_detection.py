"""fastmvit.MViTv2Backbone, the fused detection backbone, against the reference
(fastmvit.reference.MViTv2Backbone, detectron2's MViT).

As tests/test_model.py for the image model: the same weights in both (the reference's state dict
loaded strictly); compared are the four NCHW maps and the gradient of every parameter and of the
images for ``sum_s (map_s * R_s).sum()`` with fixed random R_s. The torch backend in float64 must
agree to rounding; the triton backend (kernels in Triton's interpreter: window attention over
padded windows, the global blocks with tables resized at run time) in float32 must be at most
twice as far from the float64 reference as the eager reference in float32.
"""
from __future__ import annotations

import copy

import pytest
import torch

import fastmvit
from fastmvit.costmodel import DETECTION_TARGETS, cost_ratios
from fastmvit.reference import DETECTION_ARCH_SETTINGS
from fastmvit.reference import MViTv2Backbone as RefBackbone
from numerics import assert_matches_float64
from test_model import random_init_

# Four stages on a 64 x 64 plan, head dim 16: block 0 windows (q 8, kv 2: kv stride 4), block 1
# q-strided windows (q 4, kv 4), blocks 2-4 global (block 2 with the doubled kv stride). A 40 x 48
# image gives a 10 x 12 token map: windows padded on both axes (q and kv maps), and global blocks
# whose tables are resized at run time.
SMALL = dict(embed_dim=16, depth=5, num_heads=1, last_block_indexes=(0, 2, 3, 4), adaptive_window_size=8,
             img_size=64)
IMAGE = (40, 48)


def make_pair(dtype=torch.float32, seed=0, **kw):
    kw = {**SMALL, **kw}
    with torch.device("meta"):
        ref, fast = RefBackbone(**kw), fastmvit.MViTv2Backbone(**kw)
    ref = random_init_(ref.to_empty(device="cpu"), seed).to(dtype)
    fast.load_state_dict({k: v.clone() for k, v in ref.state_dict().items()}, strict=True, assign=True)
    return ref, fast


def run(model, x, backend="torch"):
    """The maps and {name: grad} (parameters and "images") of sum_s (map_s * R_s).sum()."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with fastmvit.use_backend(backend):
        maps = model(x)
        g = torch.Generator().manual_seed(7)
        loss = sum((m.double() * torch.randn(m.shape, generator=g, dtype=torch.float64)).sum() for m in maps.values())
        loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(v is not None for v in grads.values()), [n for n, v in grads.items() if v is None]
    grads["images"] = x.grad
    return {k: m.detach() for k, m in maps.items()}, grads


def images(batch=1, size=IMAGE, dtype=torch.float32):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1)).to(dtype)


@pytest.mark.parametrize("arch", sorted(DETECTION_ARCH_SETTINGS))
def test_state_dict_is_the_references_both_ways(arch):
    with torch.device("meta"):
        ref, fast = RefBackbone(arch), fastmvit.MViTv2Backbone(arch)
    assert [(k, v.shape) for k, v in fast.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    assert fast.output_shape() == ref.output_shape()
    assert fast.no_weight_decay() == ref.no_weight_decay()
    assert [type(b.attn).__name__ for b in fast.blocks] == ["FusedWindowedAttention"] * len(fast.blocks)
    assert [(b.attn.q_window, b.attn.kv_window) for b in fast.blocks] == \
           [(b.attn.q_window, b.attn.kv_window) for b in ref.blocks]


def test_state_dict_round_trip_values():
    ref, fast = make_pair()
    other = RefBackbone(**SMALL)
    other.load_state_dict(fast.state_dict(), strict=True)
    for (n, a), (_, b) in zip(ref.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n


def test_torch_backend_float64_matches_reference():
    ref, fast = make_pair(torch.float64)
    x = images(2, (80, 48), torch.float64)
    (maps, grads), (exact, g_exact) = run(fast, x, "torch"), run(ref, x)
    assert list(maps) == ["scale2", "scale3", "scale4", "scale5"]
    for name in exact:
        torch.testing.assert_close(maps[name], exact[name], rtol=1e-9, atol=1e-9)
    for name in g_exact:
        torch.testing.assert_close(grads[name], g_exact[name], rtol=1e-9, atol=1e-9, msg=name)


def test_act_checkpointing_gives_the_same_gradients():
    ref, fast = make_pair(torch.float64)
    x = images(1, (40, 56), torch.float64)
    plain = run(fast, x, "torch")[1]
    fast.set_grad_checkpointing(True)
    assert fast.use_act_checkpoint and all(b.grad_checkpointing for b in fast.blocks)
    fast.train()
    checkpointed = run(fast, x, "torch")[1]
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-12, atol=1e-12, msg=name)


def test_triton_backend_float32_matches_float64():
    """The interpreter run: the maps and every gradient, at most twice as far from float64 as the
    float32 reference."""
    ref, fast = make_pair()
    ref64 = copy.deepcopy(ref).double()
    x = images()
    exact, g_exact = run(ref64, x.double())
    eager, g_eager = run(ref, x)
    fused, g_fused = run(fast, x, "triton")
    for name in exact:
        assert fused[name].shape == exact[name].shape and fused[name].dtype == torch.float32
        assert_matches_float64(fused[name], eager[name], exact[name], name)
    for name in g_exact:
        assert_matches_float64(g_fused[name], g_eager[name], g_exact[name], f"grad {name}")


def test_cost_targets_tiny_1024():
    """The detection issue's targets, modeled on the meta device with every kernel's own traffic:
    the tiny backbone at 1024 x 1024, bf16, batch 2, against the eager reference backbone:
    training-step bytes <= 0.35, saved activations <= 0.40 (DETECTION_TARGETS). The figures:
    scripts/model_costs.py --detection."""
    with torch.device("meta"):
        ref = RefBackbone("tiny").to(torch.bfloat16)
        fast = fastmvit.MViTv2Backbone("tiny").to(torch.bfloat16)
    x = torch.randn(2, 3, 1024, 1024, device="meta", dtype=torch.bfloat16)
    ratios = cost_ratios(fast, ref, x, targets=DETECTION_TARGETS)
    assert set(ratios) == set(DETECTION_TARGETS)
    assert all(r["ok"] for r in ratios.values()), {k: round(r["ratio"], 3) for k, r in ratios.items()}
