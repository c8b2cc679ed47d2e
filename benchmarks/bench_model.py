"""Model-level benchmarks: MViTv2 tiny/small/base/large, the reference against fastmvit.

Measured (timed with pytest-benchmark through the ``measure`` fixture):
- inference: one forward in eval mode under ``torch.inference_mode``, images/s = batch / median;
- training step: forward, cross-entropy on random labels, backward (no optimizer step: it is the
  same for every implementation); the weights are in the benchmark dtype (bf16 on CUDA);
- on CUDA, the peak memory of one call (torch.cuda.max_memory_allocated after a reset).
Contenders: the eager reference, torch.compile(reference), fastmvit.MViTv2 and
torch.compile(fastmvit); what does not exist or cannot run here is skipped with the reason
recorded. On the CPU only the torch paths are timed, at small batch. The modeled costs of the
same models (bytes moved, launches, saved activations) are in bench_memory.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks import common
from benchmarks.conftest import profile_of
from fastmvit.kernels.backend import use_backend

IMPLS = ("reference", "reference+compile", "fastmvit", "fastmvit+compile")


def pytest_generate_tests(metafunc):
    p = profile_of(metafunc.config)
    impls = IMPLS if p["compile"] else tuple(i for i in IMPLS if "+compile" not in i)
    if metafunc.definition.name == "test_inference":
        cases = [(i, a, b, d) for a in p["archs"] for b in p["infer_batches"] for d in p["model_dtypes"]
                 for i in impls]
        metafunc.parametrize("impl,arch,batch,dtype", cases, ids=["-".join(map(str, c)) for c in cases])
    elif metafunc.definition.name == "test_train_step":
        cases = [(i, a, b, d) for a in p["archs"] for b in p["train_batches"] for d in p["model_dtypes"]
                 for i in impls]
        if not cases:
            cases = [pytest.param(None, None, None, None, marks=pytest.mark.skip(
                reason=f"no training step in the {p['name']} profile"), id="none")]
        metafunc.parametrize("impl,arch,batch,dtype", cases,
                             ids=None if not isinstance(cases[0], tuple) else ["-".join(map(str, c)) for c in cases])


def _model_or_skip(impl, arch, img, device, dtype):
    try:
        return common.build_model(impl, arch, img, device, getattr(torch, dtype))
    except common.Unavailable as e:
        pytest.skip(str(e))


def _guard_oom(fn):
    """Run fn; a CUDA out-of-memory becomes a recorded skip instead of a failure."""
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip("CUDA out of memory at this batch size")


def test_inference(impl, arch, batch, dtype, device, bench_profile, measure):
    img = bench_profile["img"]
    model = _model_or_skip(impl, arch, img, device, dtype).eval()
    x = torch.randn(batch, 3, img, img, device=device, dtype=getattr(torch, dtype))

    def forward():
        with torch.inference_mode(), use_backend(common.model_backend(impl, device)):
            return model(x)

    _guard_oom(lambda: measure(forward, suite="model", case=f"{arch} b{batch}", impl=impl,
                               pass_="infer", dtype=dtype, items=batch, arch=arch, batch=batch, img=img))


def test_train_step(impl, arch, batch, dtype, device, bench_profile, measure):
    img = bench_profile["img"]
    model = _model_or_skip(impl, arch, img, device, dtype).train()
    x = torch.randn(batch, 3, img, img, device=device, dtype=getattr(torch, dtype))
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step():
        model.zero_grad(set_to_none=True)
        with use_backend(common.model_backend(impl, device)):
            F.cross_entropy(model(x).float(), labels).backward()

    _guard_oom(lambda: measure(step, suite="model", case=f"{arch} b{batch}", impl=impl,
                               pass_="train", dtype=dtype, items=batch, arch=arch, batch=batch, img=img))
