"""The video model: pooling attention over (t, h, w) at the mvit_v2_s shapes, and mvit_v2_s itself,
fastmvit against the eager reference (bf16, batch 4, 16 x 224 x 224: the video issue's setting).

    .venv/bin/python -m pytest benchmarks/bench_video.py --benchmark-json out.json

Recorded on any device, MODELED (fastmvit.costmodel on meta tensors):
- op level: bytes read + written per attention call, forward and forward + backward, fused
  (every launch by its traffic statement) against eager torch (scores materialised);
- model level: bytes per inference forward and per training step, and activations saved for
  backward, mvit_v2_s against the eager video reference (the dashboard's modeled figures).
Measured on CUDA only (a CPU run of a 16-frame clip would take the whole benchmark budget, and
the Triton kernels are never timed in the interpreter): the attention against eager and SDPA with
an additive bias, forward and forward + backward; mvit_v2_s inference (clips/s = batch / median)
and a training step, with peak memory, against the reference and torch.compile of it.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks import common
from fastmvit.costmodel import count_traffic, training_step_traffic
from fastmvit.kernels import pool_attention, use_backend

SHAPES = common.video_attention_shapes()
BATCH = common.VIDEO_BATCH
CLIP = common.VIDEO_CLIP
MODEL_IMPLS = ("reference", "reference+compile", "fastmvit", "fastmvit+compile")


def _inputs(shape, dtype, device, requires_grad=False):
    g = dict(dtype=dtype, device=device)
    q = torch.randn(BATCH, shape.heads, shape.nq, shape.head_dim, **g)
    k = torch.randn(BATCH, shape.heads, shape.nk, shape.head_dim, **g)
    v = torch.randn(BATCH, shape.heads, shape.nk, shape.head_dim, **g)
    tables = [torch.randn(n, shape.head_dim, **g) * 0.1 for n in shape.rel_len]     # t, h, w
    return [t.requires_grad_(requires_grad) for t in (q, k, v, *tables)]


def _attention(backend):
    def run(q, k, v, tt, th, tw, shape):
        with use_backend(backend):
            return pool_attention(q, k, v, th, tw, shape.q_grid, shape.kv_grid, rel_pos_t=tt, has_cls_token=True)
    return run


def _sdpa(q, k, v, tt, th, tw, shape):
    """SDPA with the three rel-pos terms materialised as a (B, H, Nq, Nk) additive mask."""
    from fastmvit.kernels.ops.pool_attention.torch_impl import rel_terms
    B, H, Nq, _ = q.shape
    rel_t, rel_h, rel_w = rel_terms(q[:, :, 1:], (tt, th, tw), shape.q_grid, shape.kv_grid)
    bias = (rel_t[..., :, None, None] + rel_h[..., None, :, None] + rel_w[..., None, None, :])
    mask = q.new_zeros(B, H, Nq, k.shape[2])
    mask[:, :, 1:, 1:] = bias.reshape(B, H, Nq - 1, k.shape[2] - 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return torch.cat([out[:, :, :1], out[:, :, 1:] + q[:, :, 1:]], dim=2)


ATTENTION = {"eager": _attention("torch"), "fastmvit": _attention("triton"), "sdpa": _sdpa}


@pytest.mark.parametrize("shape", SHAPES, ids=[s.label.replace(" ", "-") for s in SHAPES])
def test_modeled_attention(shape, record):
    """Bytes per call, fused vs eager, forward and forward + backward (MODELED, any device)."""
    common.record_modeled_attention(record, shape, ATTENTION, _inputs, "pool_attention (t, h, w)", BATCH)


@pytest.mark.parametrize("impl", ("eager", "fastmvit", "sdpa"))
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.label.replace(" ", "-") for s in SHAPES])
def test_attention_speed(shape, impl, pass_, measure, device):
    if device != "cuda":
        pytest.skip("GPU timings need CUDA (the Triton kernels are never timed in the interpreter)")
    common.time_attention(measure, shape, ATTENTION[impl], _inputs, impl, pass_, BATCH, device)


@pytest.mark.parametrize("impl", ("reference", "fastmvit"))
def test_modeled_model(impl, record):
    """mvit_v2_s: bytes per forward and per training step, saved activations (MODELED)."""
    model = common.build_model(impl, "small", CLIP[1], "meta", torch.bfloat16, num_classes=400, num_frames=CLIP[0])
    x = torch.randn(BATCH, 3, *CLIP, device="meta", dtype=torch.bfloat16)
    with use_backend(common.model_backend(impl, "meta")):
        forward = count_traffic(model, x)
        step = training_step_traffic(model, x)
    labels = dict(suite="model", case=f"mvit_v2_s {'x'.join(map(str, CLIP))} b{BATCH}", impl=impl, dtype="bfloat16",
                  arch="mvit_v2_s", batch=BATCH, img=CLIP[1], frames=CLIP[0], device="meta")
    record.modeled(pass_="infer", traffic=forward, **labels)
    record.modeled(pass_="train", traffic=step.total, saved_bytes=step.saved_bytes,
                   saved_bytes_per_image=step.saved_bytes / BATCH, **labels)
    assert forward.launches > 0 and step.saved_bytes > 0


@pytest.mark.parametrize("impl", MODEL_IMPLS)
@pytest.mark.parametrize("pass_", ["infer", "train"])
def test_model_speed(impl, pass_, device, measure):
    if device != "cuda":
        pytest.skip("mvit_v2_s timings need CUDA (a 16 x 224 x 224 clip on this CPU would take the whole budget)")
    try:
        model = common.build_model(impl, "small", CLIP[1], device, torch.bfloat16, num_classes=400,
                                   num_frames=CLIP[0])
    except common.Unavailable as e:
        pytest.skip(str(e))
    x = torch.randn(BATCH, 3, *CLIP, device=device, dtype=torch.bfloat16)
    backend = common.model_backend(impl, device)
    if pass_ == "infer":
        model.eval()

        def call():
            with torch.inference_mode(), use_backend(backend):
                model(x)
    else:
        model.train()
        labels = torch.randint(0, 400, (BATCH,), device=device)

        def call():
            model.zero_grad(set_to_none=True)
            with use_backend(backend):
                F.cross_entropy(model(x).float(), labels).backward()
    try:
        measure(call, suite="model", case=f"mvit_v2_s {'x'.join(map(str, CLIP))} b{BATCH}", impl=impl,
                pass_=pass_, dtype="bfloat16", items=BATCH, arch="mvit_v2_s", batch=BATCH, img=CLIP[1], frames=CLIP[0])
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip("CUDA out of memory at this batch size")
