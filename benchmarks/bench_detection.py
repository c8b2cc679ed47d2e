"""The detection backbone: window and global pooling attention at the tiny backbone's 1024 x 1024
shapes, and the backbone itself, fastmvit against the eager reference (bf16, batch 2: the
detection issue's setting).

    .venv/bin/python -m pytest benchmarks/bench_detection.py --benchmark-json out.json

Recorded on any device, MODELED (fastmvit.costmodel on meta tensors):
- op level: bytes read + written per attention call, forward and forward + backward, fused (every
  launch by its traffic statement, the windows read in place) against eager torch (detectron2's
  window_partition copies, the scores materialised);
- model level: bytes per inference forward and per training step, and activations saved for
  backward, the tiny backbone at 1024 x 1024 and 800 x 1333 against the eager reference backbone.
Measured on CUDA only (the Triton kernels are never timed in the interpreter): the attention
against eager and SDPA with an additive bias over the partitioned windows; the backbone's
inference and training step (images/s, peak memory) against the reference and torch.compile of it.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks import common
from fastmvit.costmodel import count_traffic, training_step_traffic
from fastmvit.kernels import pool_attention, use_backend

SHAPES = common.detection_attention_shapes()
BATCH = common.DETECTION_BATCH
IMAGES = common.DETECTION_IMAGES
MODEL_IMPLS = ("reference", "reference+compile", "fastmvit", "fastmvit+compile")
IDS = [s.label.replace(" ", "-") for s in SHAPES]


def _inputs(shape, dtype, device, requires_grad=False):
    g = dict(dtype=dtype, device=device)
    q = torch.randn(BATCH, shape.heads, shape.nq, shape.head_dim, **g)
    k = torch.randn(BATCH, shape.heads, shape.nk, shape.head_dim, **g)
    v = torch.randn(BATCH, shape.heads, shape.nk, shape.head_dim, **g)
    tables = [torch.randn(n, shape.head_dim, **g) * 0.1 for n in shape.rel_len]     # h, w
    return [t.requires_grad_(requires_grad) for t in (q, k, v, *tables)]


def _attention(backend):
    def run(q, k, v, th, tw, shape):
        with use_backend(backend):
            return pool_attention(q, k, v, th, tw, shape.q_grid, shape.kv_grid, window=shape.window)
    return run


def _sdpa(q, k, v, th, tw, shape):
    """SDPA over detectron2's partitioned windows (or the maps), the rel-pos terms materialised as a
    (windows, H, n_q, n_k) additive mask; then unpartitioned, plus the residual."""
    from fastmvit.kernels.ops.pool_attention.torch_impl import rel_terms, window_partition, window_unpartition
    B = q.shape[0]
    if shape.window:
        wq, wk = (shape.q_window,) * 2, (shape.kv_window,) * 2
        qw, kw, vw = (window_partition(t, g, w) for t, g, w in
                      ((q, shape.q_grid, wq), (k, shape.kv_grid, wk), (v, shape.kv_grid, wk)))
    else:
        wq, wk, qw, kw, vw = shape.q_grid, shape.kv_grid, q, k, v
    rel_h, rel_w = rel_terms(qw, (th, tw), wq, wk)
    mask = (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2).flatten(2, 3)      # (n, H, n_q, n_k)
    out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask)
    if shape.window:
        out = window_unpartition(out, B, shape.q_grid, wq)
    return out + q


ATTENTION = {"eager": _attention("torch"), "fastmvit": _attention("triton"), "sdpa": _sdpa}


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_modeled_attention(shape, record):
    """Bytes per call, fused vs eager, forward and forward + backward (MODELED, any device)."""
    common.record_modeled_attention(record, shape, ATTENTION, _inputs, "pool_attention (windows)", BATCH)


@pytest.mark.parametrize("impl", ("eager", "fastmvit", "sdpa"))
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_attention_speed(shape, impl, pass_, measure, device):
    if device != "cuda":
        pytest.skip("GPU timings need CUDA (the Triton kernels are never timed in the interpreter)")
    common.time_attention(measure, shape, ATTENTION[impl], _inputs, impl, pass_, BATCH, device)


def _backbone(impl, device):
    import fastmvit
    base, _, compiled = impl.partition("+")
    if compiled and device != "cuda":
        raise common.Unavailable("torch.compile timings are taken on CUDA only")
    cls = fastmvit.reference.MViTv2Backbone if base == "reference" else fastmvit.MViTv2Backbone
    torch.manual_seed(0)
    with torch.device(device):
        model = cls("tiny").to(torch.bfloat16)
    return torch.compile(model) if compiled else model


def _case(img):
    return f"backbone tiny {img[0]}x{img[1]} b{BATCH}"


@pytest.mark.parametrize("img", IMAGES, ids=[f"{h}x{w}" for h, w in IMAGES])
@pytest.mark.parametrize("impl", ("reference", "fastmvit"))
def test_modeled_model(impl, img, record):
    """The tiny backbone: bytes per forward and per training step, saved activations (MODELED)."""
    model = _backbone(impl, "meta")
    x = torch.randn(BATCH, 3, *img, device="meta", dtype=torch.bfloat16)
    with use_backend(common.model_backend(impl, "meta")):
        forward = count_traffic(model, x)
        step = training_step_traffic(model, x)
    labels = dict(suite="model", case=_case(img), impl=impl, dtype="bfloat16", arch="backbone-tiny",
                  batch=BATCH, img=img[0], device="meta")
    record.modeled(pass_="infer", traffic=forward, **labels)
    record.modeled(pass_="train", traffic=step.total, saved_bytes=step.saved_bytes,
                   saved_bytes_per_image=step.saved_bytes / BATCH, **labels)
    assert forward.launches > 0 and step.saved_bytes > 0


@pytest.mark.parametrize("img", IMAGES, ids=[f"{h}x{w}" for h, w in IMAGES])
@pytest.mark.parametrize("impl", MODEL_IMPLS)
@pytest.mark.parametrize("pass_", ["infer", "train"])
def test_model_speed(impl, pass_, img, device, measure):
    if device != "cuda":
        pytest.skip("backbone timings need CUDA (a 1024 x 1024 batch on this CPU would take the whole budget)")
    try:
        model = _backbone(impl, device)
    except common.Unavailable as e:
        pytest.skip(str(e))
    x = torch.randn(BATCH, 3, *img, device=device, dtype=torch.bfloat16)
    backend = common.model_backend(impl, device)
    if pass_ == "infer":
        model.eval()

        def call():
            with torch.inference_mode(), use_backend(backend):
                model(x)
    else:
        model.train()

        def call():
            model.zero_grad(set_to_none=True)
            with use_backend(backend):
                sum(m.float().mean() for m in model(x).values()).backward()
    try:
        measure(call, suite="model", case=_case(img), impl=impl, pass_=pass_, dtype="bfloat16", items=BATCH,
                arch="backbone-tiny", batch=BATCH, img=img[0])
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip("CUDA out of memory at this batch size")
