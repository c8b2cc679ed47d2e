"""Memory and traffic of the models, MODELED on any device (fastmvit.costmodel on meta tensors).

Per arch (the profile's modeled size: tiny, small, base, large at 224x224, batch 8, bf16, the
setting of the cost-model targets, fastmvit.costmodel.MODEL_TARGETS), for the eager reference and fastmvit.MViTv2:
- bytes read + written and kernels launched by one inference forward;
- the same for one training step (forward + backward of a sum; no optimizer step);
- activation bytes saved for backward, per image.
No memory is allocated and nothing is timed, so this suite runs the same on every machine. The
measured peak CUDA memory of each timed case is in bench_model.py (GPU runs only).
"""
from __future__ import annotations

import pytest
import torch

from benchmarks import common
from benchmarks.conftest import profile_of
from fastmvit.costmodel import count_traffic, training_step_traffic
from fastmvit.kernels.backend import use_backend

IMPLS = ("reference", "fastmvit")


def pytest_generate_tests(metafunc):
    if metafunc.definition.name == "test_modeled":
        p = profile_of(metafunc.config)
        cases = [(i, a) for a in p["modeled_archs"] for i in IMPLS]
        metafunc.parametrize("impl,arch", cases, ids=["-".join(c) for c in cases])


def test_modeled(impl, arch, bench_profile, record):
    img, batch = bench_profile["modeled_img"], bench_profile["modeled_batch"]
    try:
        model = common.build_model(impl, arch, img, "meta", torch.bfloat16)
    except common.Unavailable as e:
        pytest.skip(str(e))
    x = torch.randn(batch, 3, img, img, device="meta", dtype=torch.bfloat16)
    with use_backend(common.model_backend(impl, "meta")):
        forward = count_traffic(model, x)
        step = training_step_traffic(model, x)  # also counts the activations saved for backward
    train, saved = step.total, step.saved_bytes
    labels = dict(suite="model", case=f"{arch} b{batch}", impl=impl, dtype="bfloat16", arch=arch,
                  batch=batch, img=img, device="meta")
    record.modeled(pass_="infer", traffic=forward, **labels)
    record.modeled(pass_="train", traffic=train, saved_bytes=saved, saved_bytes_per_image=saved / batch,
                   **labels)
    assert forward.launches > 0 and train.launches > forward.launches and saved > 0
