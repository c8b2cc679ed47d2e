"""The benchmark harness end to end on the CPU at tiny sizes, and the dashboard's logic.

`make bench` runs on GPU boxes we do not have in CI; this keeps its CPU path (and everything the
CUDA path shares with it: labels, records, merging, rendering) exercised: a smoke run of the model
and memory suites writes a results JSON with the environment record, and the dashboard renders it
with at least one PNG. The regression rule and the speed-up arithmetic are checked on synthetic
results.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common, dashboard, run  # noqa: E402


def test_smoke_run_writes_results_and_dashboard(tmp_path):
    results, dash, png = tmp_path / "results", tmp_path / "dashboard", tmp_path / "latest.png"
    run.main(["--profile", "smoke", "--suites", "bench_model", "bench_memory", "--one-process",
              "--no-kernel-table", "--results-dir", str(results), "--dashboard-dir", str(dash),
              "--latest-png", str(png)])
    files = list(results.glob("*_cpu_*.json"))
    assert len(files) == 1, f"expected one results file, got {files}"
    doc = json.loads(files[0].read_text())
    env = doc["fastmvit"]["env"]
    for key in ("device", "device_name", "gpu", "driver", "cuda", "torch", "triton", "fastmvit",
                "commit", "date", "cpu"):
        assert key in env, f"environment record lacks {key}"
    assert env["device"] == "cpu" and env["torch"] and env["cpu"]
    assert doc["fastmvit"]["profile"] == "smoke"
    # a CPU timing of the reference, labelled, with pytest-benchmark statistics
    timed = [b for b in doc["benchmarks"] if b["extra_info"].get("impl") == "reference"]
    assert timed, f"no reference timing; skipped: {doc['fastmvit']['skipped']}"
    info = timed[0]["extra_info"]
    assert (info["suite"], info["pass"], info["device"], info["backend"]) == ("model", "infer", "cpu", "torch")
    assert timed[0]["stats"]["median"] > 0
    # modeled costs of the reference on meta: forward and training, saved activations per image
    modeled = {(m["impl"], m["pass"]): m for m in doc["fastmvit"]["modeled"]}
    assert modeled[("reference", "infer")]["launches"] > 100
    assert modeled[("reference", "train")]["bytes"] > modeled[("reference", "infer")]["bytes"] > 0
    assert modeled[("reference", "train")]["saved_bytes_per_image"] > 0
    # what could not run is recorded with a reason
    assert all(s["reason"] for s in doc["fastmvit"]["skipped"])
    html = (dash / "index.html").read_text()
    pngs = list(dash.glob("*.png"))
    assert pngs and png.exists()
    assert all(f"src='{p.name}'" in html for p in pngs)
    assert "MODELED" in html and "MEASURED on CPU" in html



def test_op_suites_are_run_and_model_fused_against_eager(tmp_path):
    """Every op suite is found by the runner; the gelu_linear and max_pool_tokens suites record
    modeled bytes, launches and saved bytes of the fused op and of eager at each shape (meta
    tensors), skip their CUDA timings with a reason here, and the dashboard draws one figure per op."""
    assert set(common.OP_SUITES) <= {p.stem for p in run.suite_files(None)}
    results, dash, png = tmp_path / "results", tmp_path / "dashboard", tmp_path / "latest.png"
    run.main(["--profile", "smoke", "--suites", "bench_gelu_linear", "bench_max_pool_tokens", "--one-process",
              "--no-kernel-table", "--results-dir", str(results), "--dashboard-dir", str(dash),
              "--latest-png", str(png)])
    (path,) = results.glob("*.json")
    doc = json.loads(path.read_text())
    assert [s["status"] for s in doc["fastmvit"]["suites"]] == ["ok"]
    modeled = {(m["op"], m["case"], m["impl"], m["pass"]): m for m in doc["fastmvit"]["modeled"]}
    for op, cases in (("gelu_linear", 8), ("max_pool_tokens", 6)):
        for impl in ("eager", "fastmvit"):
            for pass_ in ("fwd", "fwd+bwd"):
                found = [m for (o, _, i, p), m in modeled.items() if (o, i, p) == (op, impl, pass_)]
                assert len(found) == cases, (op, impl, pass_, len(found))
                assert all(m["bytes"] > 0 and m["launches"] > 0 and m["dtype"] == "bfloat16" for m in found)
        for (o, case, impl, p), m in modeled.items():
            if (o, impl) == (op, "fastmvit"):
                eager = modeled[(o, case, "eager", p)]
                assert m["launches"] <= eager["launches"]
                if p == "fwd+bwd":
                    assert 0 < m["saved_bytes"] < eager["saved_bytes"]
    # MViTv2-T stage 1 MLP (B 8, 3136 tokens, K 384, N 96, bf16): fused forward reads h and the
    # residual and writes y: 8 * 3136 * (384 + 2 * 96) * 2 bytes plus the weight and bias
    fwd = modeled[("gelu_linear", "s1 t3136 k384 n96 residual", "fastmvit", "fwd")]
    assert (fwd["launches"], fwd["bytes"]) == (1, 8 * 3136 * (384 + 2 * 96) * 2 + (96 * 384 + 96) * 2)
    timed = [s for s in doc["fastmvit"]["skipped"] if "::test_speed" in s["test"]]
    assert len(timed) == 4 * 2 * 2 * 2 + 6 * 2 * 2 and all("CUDA" in s["reason"] for s in timed)
    html = (dash / "index.html").read_text()
    for op in ("gelu_linear", "max_pool_tokens"):
        assert list(dash.glob(f"*modeled_op_{op}_fwd_bwd_bfloat16.png")), op
        assert f"{op} fwd+bwd bfloat16" in html


def test_pool_qkv_suite_models_the_real_shapes_and_stores_no_timing(tmp_path):
    """bench_pool_qkv: its shapes are MViTv2-S's own (block_specs), its modeled bytes are MODELED
    records, never timings (no benchmark entry without CUDA)."""
    from benchmarks.bench_pool_qkv import SHAPES
    from fastmvit.reference import block_specs, get_config
    real = {(b.input_size[0], b.stride_q[0], b.stride_kv[0], b.num_heads) for b in block_specs(get_config("small"), 224)}
    assert {s[1:] for s in SHAPES} == real and len(SHAPES) == len(real) == 7
    results = tmp_path / "results"
    run.main(["--profile", "smoke", "--suites", "bench_pool_qkv", "--one-process", "--no-kernel-table",
              "--results-dir", str(results), "--dashboard-dir", str(tmp_path / "dashboard"),
              "--latest-png", str(tmp_path / "latest.png")])
    (path,) = results.glob("*.json")
    doc = json.loads(path.read_text())
    assert [s["status"] for s in doc["fastmvit"]["suites"]] == ["ok"]
    assert doc["benchmarks"] == []
    modeled = [m for m in doc["fastmvit"]["modeled"] if m.get("op") == "pool_qkv"]
    assert len(modeled) == 7 * 2 * 2 and all(m["kind"] == "modeled" and m["bytes"] > 0 for m in modeled)


def _run(commit: str, date: str, medians: dict, iqr: float = 0.0, modeled_bytes: int = 1000) -> dict:
    env = {"device": "cuda", "device_name": "Fake GPU", "gpu": "Fake GPU", "commit_short": commit,
           "date": date, "cpu": "x", "driver": "1", "cuda": "12", "torch": "2", "triton": "3"}
    benchmarks = [{"name": f"t[{impl}]", "stats": {"median": t, "iqr": iqr},
                   "extra_info": {"suite": "model", "case": "tiny b8", "impl": impl, "pass": "infer",
                                  "dtype": "bfloat16", "items": 8}} for impl, t in medians.items()]
    modeled = [{"suite": "model", "case": "tiny b8", "impl": "fastmvit", "pass": "infer",
                "bytes": modeled_bytes, "launches": 10, "img": 224}]
    return {"benchmarks": benchmarks, "fastmvit": {"env": env, "profile": "full", "modeled": modeled,
                                                   "skipped": [], "suites": []}}


def test_speedups_against_the_baseline():
    rows = dashboard.timings(_run("a", "2026-01-01", {"reference": 0.030, "fastmvit": 0.010}))
    sp = dashboard.speedups(rows)
    assert sp[("model", "infer", "bfloat16")]["tiny b8"] == {"fastmvit": pytest.approx(3.0)}


def test_regressions_beyond_noise_only():
    old = _run("a", "2026-01-01", {"reference": 0.030, "fastmvit": 0.010})
    slower = _run("b", "2026-01-02", {"reference": 0.030, "fastmvit": 0.0112})    # +12%
    jitter = _run("c", "2026-01-03", {"reference": 0.0303, "fastmvit": 0.0103})   # +3%
    noisy = _run("d", "2026-01-04", {"reference": 0.030, "fastmvit": 0.0112}, iqr=0.001)  # IQR 9%
    assert [f["what"] for f in dashboard.regressions(old, slower)] == ["model infer bfloat16 tiny b8 fastmvit: time"]
    assert dashboard.regressions(old, jitter) == []
    assert dashboard.regressions(old, noisy) == []          # 12% < 3 x 9%
    assert common.noise_threshold(0.01, 0.0) == 0.05
    more_bytes = _run("e", "2026-01-05", {"reference": 0.030, "fastmvit": 0.010}, modeled_bytes=1001)
    assert [f["what"] for f in dashboard.regressions(old, more_bytes)] == ["modeled infer tiny b8 fastmvit: bytes"]


def test_dashboard_history_and_compile_table(tmp_path):
    runs = [_run("a", "2026-01-01T00:00:00", {"reference": 0.030, "fastmvit": 0.010}),
            _run("b", "2026-01-02T00:00:00", {"reference": 0.030, "fastmvit": 0.0125}, modeled_bytes=900)]
    runs[1]["fastmvit"]["kernel_table"] = {"table": {"rows": [{"kernel": "_fwd_kernel", "target": "sm_90",
                                                              "registers": 168, "STACK": 0}]}}
    for i, r in enumerate(runs):
        (tmp_path / f"r{i}.json").write_text(json.dumps(r))
    index = dashboard.build(tmp_path, tmp_path / "dash", latest_png=tmp_path / "latest.png")
    html = index.read_text()
    assert "1 regression(s)" in html and "+25.0%" in html
    assert "MEASURED on Fake GPU" in html and "_fwd_kernel" in html and "168" in html
    assert (tmp_path / "dash" / "history_timing_0.png").exists()
    assert (tmp_path / "dash" / "history_speedup_0.png").exists()
    assert (tmp_path / "latest.png").exists()
