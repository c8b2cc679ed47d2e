"""fastmvit.MViTv2Video, the fused video model, against the reference (fastmvit.reference.MViTv2Video).

As tests/test_model.py for the image model: the same weights in both (the reference's state dict
loaded strictly); compared are the logits and the gradient of every parameter of
``(logits * R).sum()`` for a fixed random R. The torch backend in float64 must agree to rounding;
the triton backend (kernels in Triton's interpreter: (T, H, W) pool_qkv, three-term
pool_attention, the (1, 3, 3) max-pool shortcut) in float32 and bf16 autocast must be at most
twice as far from the float64 reference as the eager reference in the same precision. Clips are
short and small (4 x 48 x 40: a 2 x 12 x 10 token grid; 4 x 32 x 32 on the triton backend), the
interpreter being slow.
"""
from __future__ import annotations

import copy

import pytest
import torch

import fastmvit
from fastmvit.costmodel import VIDEO_TARGETS, cost_ratios
from fastmvit.reference import MViTv2VideoConfig
from fastmvit.reference import MViTv2Video as RefVideo
from numerics import assert_matches_float64
from test_model import assert_grads_no_worse, assert_logits_no_worse, random_init_, run

# Two stages, head dim 16 (the kernels' minimum): a stride-1 block (kv stride (1, 2, 2)) and a
# (1, 2, 2)-strided block that widens (kv stride 1). No head dropout (the two models would draw
# different masks in training mode).
TWO_STAGE = MViTv2VideoConfig(embed_dims=16, num_heads=1, depths=(1, 1), adaptive_kv_stride=2,
                              drop_path_rate=0.0, head_drop_rate=0.0)
# Three stages, two heads (head dim 8: torch backend only).
THREE_STAGE = MViTv2VideoConfig(embed_dims=16, num_heads=2, depths=(1, 2, 1), adaptive_kv_stride=4,
                                drop_path_rate=0.0, head_drop_rate=0.0)
CLIP = (4, 48, 40)
# The triton-backend tests: square frames, so that at the built size no table is resized (torchvision
# sizes both spatial tables from the larger side, so non-square frames resize the w table at run
# time, which aot_eager decomposes into other float32 roundings than eager's interpolate).
TRITON_CLIP = (4, 24, 24)                    # 2 x 6 x 6 tokens, then 2 x 3 x 3
# torch.compile's equivalence with eager does not depend on the size: the smallest clip with two
# frames and both stages (2 x 4 x 4 tokens, then 2 x 2 x 2).
COMPILE_CLIP = (4, 16, 16)


def make_pair(cfg, clip=CLIP, dtype=torch.float32, seed=0, **kw):
    """(reference, fused) video models with the same random weights (see test_model.make_pair)."""
    kw = {"num_classes": 10, **kw}
    with torch.device("meta"):
        ref = RefVideo(cfg, num_frames=clip[0], img_size=clip[1:], **kw)
        fast = fastmvit.MViTv2Video(cfg, num_frames=clip[0], img_size=clip[1:], **kw)
    ref = random_init_(ref.to_empty(device="cpu"), seed).to(dtype)
    fast.load_state_dict({k: v.clone() for k, v in ref.state_dict().items()}, strict=True, assign=True)
    return ref, fast


def clips(batch, clip=CLIP, dtype=torch.float32, seed=1):
    return torch.randn(batch, 3, *clip, generator=torch.Generator().manual_seed(seed)).to(dtype)


def check_against_float64(fast, ref, clip=TRITON_CLIP, batch=1, backend="triton", autocast=False, device="cpu"):
    """The fused model (float32, or bf16 autocast) vs the float64 reference, at most twice as far
    as the reference in the same precision; on `device` (tests/test_cuda.py passes "cuda")."""
    ref, fast = ref.to(device), fast.to(device)
    ref64 = copy.deepcopy(ref).double()
    x = clips(batch, clip).to(device)
    weight = torch.randn(batch, 10, generator=torch.Generator().manual_seed(2)).to(device)
    exact, g_exact = run(ref64, x.double(), weight.double())
    eager, g_eager = run(ref, x, weight, autocast=autocast)
    fused, g_fused = run(fast, x, weight, backend, autocast=autocast)
    if autocast:
        assert fused.dtype == eager.dtype == torch.bfloat16
        assert_logits_no_worse(fused, eager, exact)
        assert_grads_no_worse(g_fused, g_eager, g_exact, torch.float32)
        return
    assert_matches_float64(fused, eager, exact, "logits")
    for name in g_exact:
        assert_matches_float64(g_fused[name], g_eager[name], g_exact[name], f"grad {name}")


# ------------------------------------------------------------------------------------------------
# The drop-in contract
# ------------------------------------------------------------------------------------------------
def test_mvit_v2_s_state_dict_is_the_references_both_ways():
    with torch.device("meta"):
        ref, fast = fastmvit.reference.mvit_v2_s(), fastmvit.mvit_v2_s()
    assert type(fast) is fastmvit.MViTv2Video and fast.config == ref.config
    assert [(k, v.shape, v.dtype) for k, v in fast.state_dict().items()] == \
           [(k, v.shape, v.dtype) for k, v in ref.state_dict().items()]
    assert fast.no_weight_decay() == ref.no_weight_decay()
    assert sum(p.numel() for p in fast.parameters()) == 34_537_744
    small_ref, small_fast = make_pair(TWO_STAGE)
    other = RefVideo(TWO_STAGE, num_frames=4, img_size=(48, 40), num_classes=10)
    other.load_state_dict(small_fast.state_dict(), strict=True)
    small_fast.load_state_dict(other.state_dict(), strict=True)
    for (n, a), (_, b) in zip(small_ref.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n


def test_patch_embedding_writes_contiguous_tokens():
    ref, fast = make_pair(TWO_STAGE, dtype=torch.float64)
    fast = fast.double()
    x = clips(2, dtype=torch.float64)
    (ref_tokens, ref_thw), (tokens, thw) = ref.embed(x), fast.embed(x)
    assert tokens.is_contiguous() and thw == ref_thw == (2, 12, 10)
    torch.testing.assert_close(tokens, ref_tokens, rtol=1e-12, atol=1e-12)
    assert fastmvit.MViTv2Video(TWO_STAGE, num_frames=4, img_size=32).patch_embed.proj.weight.is_contiguous(
        memory_format=torch.channels_last_3d)


# ------------------------------------------------------------------------------------------------
# Equivalence, torch backend
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", [CLIP, (6, 40, 56)], ids=["built_size", "other_size_tables_resized"])
def test_torch_backend_float64_matches_reference(clip):
    torch.manual_seed(0)
    ref, fast = make_pair(THREE_STAGE, dtype=torch.float64)
    x = clips(2, clip, torch.float64)
    weight = torch.randn(2, 10, dtype=torch.float64)
    exact, g_exact = run(ref, x, weight)
    fused, g_fused = run(fast, x, weight, "auto")
    tol = dict(rtol=1e-9, atol=1e-9)
    assert_matches_float64(fused, None, exact, "logits", tol)
    for name in g_exact:
        assert_matches_float64(g_fused[name], None, g_exact[name], f"grad {name}", tol)


def test_stochastic_depth_and_grad_checkpointing_match_reference():
    torch.manual_seed(0)
    ref, fast = make_pair(THREE_STAGE, dtype=torch.float64, drop_path_rate=0.6)
    ref.train(), fast.train()
    x = clips(4, dtype=torch.float64)
    weight = torch.randn(4, 10, dtype=torch.float64)
    torch.manual_seed(5)
    exact, g_exact = run(ref, x, weight)
    tol = dict(rtol=1e-9, atol=1e-9)
    for checkpointing in (False, True):
        fast.set_grad_checkpointing(checkpointing)
        torch.manual_seed(5)
        fused, g_fused = run(fast, x, weight)
        assert_matches_float64(fused, None, exact, "logits", tol)
        for name in g_exact:
            assert_matches_float64(g_fused[name], None, g_exact[name], f"grad {name}", tol)


def test_forward_intermediates_are_video_maps():
    ref, fast = make_pair(THREE_STAGE)
    ref.eval(), fast.eval()
    x = clips(2)
    with torch.no_grad():
        feats, maps = fast.forward_intermediates(x)
        ref_feats, ref_maps = ref.forward_intermediates(x)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 2, 12, 10), (2, 32, 2, 6, 5), (2, 64, 2, 3, 3)]
    torch.testing.assert_close(feats, ref_feats, rtol=1e-5, atol=1e-5)
    for m, r in zip(maps, ref_maps):
        torch.testing.assert_close(m, r, rtol=1e-5, atol=1e-5)


def test_bad_input_is_a_clear_error():
    _, fast = make_pair(TWO_STAGE)
    with pytest.raises(ValueError, match="5-D video batch"):
        fast(torch.randn(2, 3, 48, 40))


# ------------------------------------------------------------------------------------------------
# What runs: the cost model on the meta device
# ------------------------------------------------------------------------------------------------
def test_modeled_costs_meet_the_video_targets():
    """mvit_v2_s at 16 x 224 x 224, bf16, batch 4, against the eager video reference, every fused
    op counted by its kernels' traffic statements: forward bytes <= 0.30, training-step bytes
    <= 0.40, saved activations <= 0.45 (VIDEO_TARGETS). The figures: scripts/model_costs.py --video."""
    with torch.device("meta"):
        ref = fastmvit.reference.mvit_v2_s().to(torch.bfloat16)
        fast = fastmvit.mvit_v2_s().to(torch.bfloat16)
    x = torch.randn(4, 3, 16, 224, 224, device="meta", dtype=torch.bfloat16)
    ratios = cost_ratios(fast, ref, x, targets=VIDEO_TARGETS)
    assert set(ratios) == set(VIDEO_TARGETS)
    assert all(r["ok"] for r in ratios.values()), {k: round(r["ratio"], 3) for k, r in ratios.items()}


# ------------------------------------------------------------------------------------------------
# Equivalence, triton backend (kernels in the interpreter)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_triton_backend_float32():
    """(Without a class token the kernels are tested op by op; the public video models have one.)"""
    torch.manual_seed(0)
    ref, fast = make_pair(TWO_STAGE, TRITON_CLIP)
    check_against_float64(fast, ref)


@pytest.mark.slow
def test_triton_backend_bf16_autocast():
    torch.manual_seed(0)
    ref, fast = make_pair(TWO_STAGE, TRITON_CLIP)
    check_against_float64(fast, ref, autocast=True)


@pytest.mark.slow
def test_compile_fullgraph_triton_training():
    """torch.compile(fullgraph=True) of a training step on the triton backend: the same logits and
    gradients as eager, bit for bit."""
    torch._dynamo.reset()
    _, fast = make_pair(TWO_STAGE, COMPILE_CLIP)
    x = clips(1, COMPILE_CLIP)
    weight = torch.randn(1, 10)
    eager, g_eager = run(fast, x, weight, "triton")
    out, grads = run(torch.compile(fast, fullgraph=True, backend="aot_eager"), x, weight, "triton")
    assert torch.equal(out, eager)
    for name in g_eager:
        assert torch.equal(grads["_orig_mod." + name], g_eager[name]), name
