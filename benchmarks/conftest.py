"""Fixtures and hooks shared by the benchmark suites (pytest-benchmark).

Run through ``make bench`` (benchmarks/run.py), or one suite by hand::

    .venv/bin/python -m pytest benchmarks/bench_model.py --bench-profile cpu --benchmark-json out.json

Fixtures for suite authors:

- ``device``: "cuda" when a GPU is present, else "cpu".
- ``bench_profile``: the sizes to run (``PROFILES``: "full" on CUDA, "cpu" without, "smoke" for
  the harness test); read it in ``pytest_generate_tests`` through :func:`profile_of`.
- ``measure(fn, suite=, case=, impl=, pass_=, dtype=, items=None, modeled=None, **extra)``: times
  ``fn()`` with the ``benchmark`` fixture and labels the result (see benchmarks/common.py). On
  CUDA: three warm-up calls outside the timed region, a timer that synchronises the GPU, many
  rounds (the median is what the dashboard plots), CUDA-event times as a cross-check, the peak
  memory of one call. On the CPU: a few rounds, always under ``use_backend("torch")``, so a
  Triton-interpreter run is never timed. ``items`` (e.g. images per call) gives a throughput;
  ``modeled`` (a :class:`fastmvit.costmodel.Traffic`) attaches modeled bytes and launches.
  One ``measure`` per test (pytest-benchmark's rule): parametrize the test over the contenders.
- ``record``: for results that are not timings (modeled bytes, saved activations), on any
  device: ``record.modeled(suite=, case=, impl=, pass_=, dtype=, traffic=None, **numbers)``; the
  numbers are free-form, but ``bytes`` (or a ``traffic``) and, for op suites, ``op=`` (e.g.
  "pool_attention") are what the dashboard plots. Example, fused vs eager at one shape::

      record.modeled(suite="op", op="pool_attention", case=shape.label, impl="eager", pass_="fwd",
                     dtype=dtype, traffic=counts["fwd"]["eager"])   # counts: common.modeled_passes
- ``bench_dtype`` and ``attention_shape``: request them in a test and it is parametrized over the
  profile's op dtypes (bf16, fp16, fp32 on CUDA) and over the distinct pooling-attention shapes of
  the profile's archs (:func:`benchmarks.common.attention_shapes`, docs/design.md, "Pooling attention").

Skipped cases are recorded with their reason, so the results say what did not run and why.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # op suites may check kernels in the interpreter: never timed
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

from benchmarks import common  # noqa: E402
from fastmvit.kernels.backend import use_backend  # noqa: E402

PROFILES = {
    # A GPU box: every arch, several batch sizes, bf16 (the model dtype users train in).
    "full": dict(archs=common.MODEL_ARCHS, img=224, infer_batches=(1, 16, 64), train_batches=(8, 32),
                 model_dtypes=("bfloat16",), compile=True, cpu_rounds=None, cpu_budget_s=None,
                 op_archs=("tiny", "small"), op_dtypes=("bfloat16", "float16", "float32"), op_batch=8,
                 modeled_archs=common.MODEL_ARCHS, modeled_img=224, modeled_batch=8),
    # No GPU: torch-path timings at small batch, the cost model at the setting.
    "cpu": dict(archs=("tiny",), img=224, infer_batches=(1, 2), train_batches=(1,),
                model_dtypes=("float32",), compile=False, cpu_rounds=3, cpu_budget_s=2.0,
                op_archs=("tiny",), op_dtypes=("float32",), op_batch=1,
                modeled_archs=common.MODEL_ARCHS, modeled_img=224, modeled_batch=8),
    # `make gpu-check`: a few minutes on a GPU box. Each op at MViTv2-T's shapes in bf16; tiny and
    # base, inference and a training step, against the reference and torch.compile of it.
    "gpu-check": dict(archs=("tiny", "base"), img=224, infer_batches=(32,), train_batches=(16,),
                      model_dtypes=("bfloat16",), compile=True, cpu_rounds=None, cpu_budget_s=None,
                      op_archs=("tiny",), op_dtypes=("bfloat16",), op_batch=8,
                      modeled_archs=("tiny", "base"), modeled_img=224, modeled_batch=8),
    # The harness test: the smallest end-to-end run (no training timing: it is the slow one).
    "smoke": dict(archs=("tiny",), img=32, infer_batches=(1,), train_batches=(),
                  model_dtypes=("float32",), compile=False, cpu_rounds=2, cpu_budget_s=0.2,
                  op_archs=("tiny",), op_dtypes=("float32",), op_batch=1,
                  modeled_archs=("tiny",), modeled_img=32, modeled_batch=2),
}


def pytest_addoption(parser):
    group = parser.getgroup("fastmvit benchmarks")
    group.addoption("--bench-profile", choices=sorted(PROFILES), default=None,
                    help="sizes to run: full (default on CUDA), cpu (default without CUDA), smoke")
    group.addoption("--fastmvit-record", default=None,
                    help="write the environment, modeled results and skip reasons to this JSON file")


def pytest_generate_tests(metafunc):
    p = profile_of(metafunc.config)
    if "bench_dtype" in metafunc.fixturenames:
        metafunc.parametrize("bench_dtype", [getattr(torch, d) for d in p["op_dtypes"]], ids=list(p["op_dtypes"]))
    if "attention_shape" in metafunc.fixturenames:
        shapes = [s for arch in p["op_archs"] for s in common.attention_shapes(arch, p["img"])]
        metafunc.parametrize("attention_shape", shapes, ids=[s.label.replace(" ", "-") for s in shapes])


def profile_of(config) -> dict:
    """The profile in force (for pytest_generate_tests in the suites)."""
    name = config.getoption("--bench-profile") or ("full" if torch.cuda.is_available() else "cpu")
    return {"name": name, **PROFILES[name]}


# ----------------------------------------------------------------------------- the record

class Record:
    """Results that are not timings, and the reasons cases were skipped."""

    def __init__(self) -> None:
        self.modeled: list[dict] = []
        self.skipped: list[dict] = []
        self.measured: list[dict] = []  # copies of the timed results, kept if the run is cut short

    def add_modeled(self, *, suite: str, case: str, impl: str, pass_: str, dtype: str,
                    traffic=None, **numbers) -> dict:
        entry = dict(suite=suite, case=case, impl=impl, **{"pass": pass_}, dtype=str(dtype).replace("torch.", ""),
                     kind="modeled")
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
        if test:
            entry["test"] = test
        if traffic is not None:
            entry.update(traffic.to_dict(top=10))
        entry.update(numbers)
        self.modeled.append(entry)
        return entry


class _RecordFixture:
    def __init__(self, rec: Record) -> None:
        self._rec = rec

    def modeled(self, **kw) -> dict:
        return self._rec.add_modeled(**kw)


_RECORD = Record()


def pytest_runtest_logreport(report):
    if report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _RECORD.skipped.append({"test": report.nodeid, "reason": reason.removeprefix("Skipped: ")})
    elif report.failed and report.when == "call":
        _RECORD.skipped.append({"test": report.nodeid, "reason": "FAILED: " + str(report.longrepr)[-400:]})


def _write_record(config) -> None:
    path = config.getoption("--fastmvit-record")
    if not path:
        return
    out = {"env": common.environment(), "profile": profile_of(config)["name"],
           "modeled": _RECORD.modeled, "skipped": _RECORD.skipped, "measured": _RECORD.measured}
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1, default=str))
    tmp.replace(path)


def pytest_runtest_logfinish(nodeid, location):
    # After every test, so a suite stopped by the runner's time limit keeps what it finished.
    _write_record(_CONFIG[0])


_CONFIG: list = []


def pytest_configure(config):
    _CONFIG[:] = [config]


def pytest_sessionfinish(session):
    _write_record(session.config)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["fastmvit_env"] = common.environment()


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="session")
def bench_profile(request) -> dict:
    return profile_of(request.config)


@pytest.fixture(scope="session")
def env() -> dict:
    return common.environment()


@pytest.fixture(scope="session")
def record() -> _RecordFixture:
    return _RecordFixture(_RECORD)


def _labels(suite, case, impl, pass_, dtype, device, items, modeled, extra) -> dict:
    info = dict(suite=suite, case=case, impl=impl, **{"pass": pass_}, device=device,
                dtype=str(dtype).replace("torch.", ""), kind="measured")
    if items:
        info["items"] = items
    if modeled is not None:
        info.update({f"modeled_{k}": v for k, v in modeled.to_dict(top=0).items() if k != "top_ops"})
    info.update(extra)
    return info


def _time_cuda(benchmark, fn, info: dict) -> None:
    """CUDA: warm-up outside the timed region, a synchronising timer, enough iterations per round
    that the sync is negligible (>= 1 ms a round), many rounds; CUDA events as a cross-check."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    once_ms, _ = common.median_iqr(common.cuda_event_times(fn, 5))
    iterations = max(1, math.ceil(1.0 / max(once_ms, 1e-3)))
    rounds = int(min(200, max(20, 2000.0 / max(once_ms * iterations, 1e-3))))
    benchmark._timer = common.cuda_sync_timer  # pytest-benchmark reads the timer when it runs
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=2)
    median, iqr = common.median_iqr(common.cuda_event_times(fn, min(rounds, 50)))
    info.update(cuda_event_median_ms=median, cuda_event_iqr_ms=iqr, rounds=rounds, iterations=iterations,
                timer="perf_counter after cuda.synchronize (cross-check: CUDA events)")


def _time_cpu(benchmark, fn, info: dict, rounds: int, budget_s: float) -> None:
    """CPU: torch path only, one warm-up call, then at least `rounds` rounds of >= 10 ms each
    (short ops get more iterations per round and more rounds, up to about `budget_s` in all).
    These are CPU numbers and labelled so."""
    with use_backend("torch"):
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-6)
        iterations = max(1, math.ceil(0.01 / once))
        rounds = max(rounds, min(50, int(budget_s / (once * iterations))))
        benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=0)
    info.update(rounds=rounds, iterations=iterations, timer="perf_counter", backend="torch")


@pytest.fixture
def measure(benchmark, device, bench_profile):
    def run(fn, *, suite: str, case: str, impl: str, pass_: str, dtype, items: int | None = None,
            modeled=None, **extra):
        info = _labels(suite, case, impl, pass_, dtype, device, items, modeled, extra)
        benchmark.group = f"{suite} {pass_} {info['dtype']} {case}"
        start = time.perf_counter()
        if device == "cuda":
            _time_cuda(benchmark, fn, info)
        else:
            _time_cpu(benchmark, fn, info, bench_profile["cpu_rounds"] or 5, bench_profile["cpu_budget_s"] or 2.0)
        info["wall_s"] = round(time.perf_counter() - start, 3)
        memory = common.peak_memory(fn, device)  # after the warm-up: no compile/autotune workspace
        if memory:
            info.update(memory)
        benchmark.extra_info.update(info)
        if benchmark.stats:
            st = benchmark.stats.stats
            _RECORD.measured.append({
                "name": benchmark.name, "fullname": benchmark.fullname, "group": benchmark.group,
                "extra_info": dict(info), "partial_record": True,
                "stats": {k: getattr(st, k) for k in ("min", "max", "mean", "stddev", "median", "iqr", "rounds")}})
        return benchmark.stats.stats.median if benchmark.stats else None
    return run
