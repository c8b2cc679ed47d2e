"""`make gpu-check`: on a CUDA machine, in minutes, does everything work there, and how fast is it.

    make gpu-check                       # python3 on PATH, with the box's own torch and triton
    make gpu-check PYTHON=/opt/venv/bin/python GPU_CHECK_OUT=/tmp/out

No pip, no venv, no network: it runs with the interpreter that holds the machine's torch and triton,
the checkout on PYTHONPATH (``fastmvit/__init__.py`` maps ``kernels/`` and ``reference/`` when the
package is not installed). Each part runs in its own subprocess with a time limit, all inside
TOTAL_BUDGET_S:

1. ``tests``: ``pytest -m cuda tests`` (tests/test_cuda.py): every op against float64 on CUDA,
   values and gradients, all dtypes, MViTv2 shapes; the model against the reference; every backward
   run twice and compared bit for bit; half precision at large logits.
2. ``sanitizer``: ``compute-sanitizer --tool memcheck`` over one small training step that launches
   every kernel (``--one-step``), where the tool exists and the device lets it run.
3. ``bench``: ``python -m benchmarks.run --profile gpu-check``: each op at MViTv2-T's shapes against
   eager, tiny and base inference and training step against the reference and torch.compile of it,
   peak memory. The results JSON and the dashboard go to GPU_CHECK_OUT (default benchmarks/results).

Then a one-screen summary: the environment, passed/failed per part, the headline speed-ups.
Exit status: 0 when every part passed, 1 when one failed, 3 (NO_CUDA) without CUDA: then only the
CUDA tests and the benchmark cases are collected, so that a broken test shows up on any machine
(tests/test_gpu_check.py runs that dry run).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))   # benchmarks/ (its environment record and dashboard helpers)
NO_CUDA = 3
TOTAL_BUDGET_S = 480            # the 8 minutes, start-up included
LIMITS_S = {"tests": 240, "sanitizer": 100, "bench": 200}
PYTEST_WORKERS = 4              # one GPU, 16 cores: several CUDA contexts side by side


def log(msg: str) -> None:
    print(f"[gpu-check] {msg}", flush=True)


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONUNBUFFERED"] = "1"
    # Autotune results on disk: the sanitizer's run reuses the warm-up's instead of timing every
    # config under memcheck (minutes).
    env["TRITON_CACHE_AUTOTUNING"] = "1"
    env.update(extra)
    return env


def run(cmd: list[str], limit: float, log_path: Path, env: dict | None = None,
        echo: int = 25) -> tuple[int | None, float, str]:
    """(exit code, None on timeout; seconds; the output's tail). The whole output goes to log_path;
    its last `echo` lines are printed."""
    start = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env or child_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)   # its own group: a timeout stops its children too
        try:
            rc = proc.wait(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc = None
    text = log_path.read_text(errors="replace")
    if echo:
        print("\n".join(text.rstrip().splitlines()[-echo:]), flush=True)
    return rc, round(time.perf_counter() - start, 1), text[-3000:]


def pytest_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", *args]


def junit_counts(path: Path) -> dict:
    """passed / failed / errors / skipped from a pytest junit file (empty when it is missing)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else list(root)
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed": n["failures"],
            "errors": n["errors"], "skipped": n["skipped"]}


def collected(output: str) -> int | None:
    m = re.search(r"(\d+)(?:/\d+)? tests? collected", output)
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------------------------------------
# The parts
# ------------------------------------------------------------------------------------------------
def part_tests(out: Path, limit: float, tests: str) -> dict:
    xml = out / "gpu_check_tests.xml"
    workers = ["-n", str(PYTEST_WORKERS)] if importlib.util.find_spec("xdist") else []
    rc, seconds, tail = run(pytest_cmd(tests, "-m", "cuda", f"--junitxml={xml}", *workers), limit,
                            out / "gpu_check_tests.log")
    counts = junit_counts(xml)
    ok = rc == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped")
    status = "passed" if ok else ("timed out" if rc is None else "failed")
    return {"part": "tests", "status": status, "seconds": seconds, **counts,
            "detail": "" if ok else tail[-1500:]}


def part_sanitizer(out: Path, limit: float) -> dict:
    tool = shutil.which("compute-sanitizer", path=os.pathsep.join((os.environ.get("PATH", ""), "/usr/local/cuda/bin")))
    if tool is None:
        return {"part": "sanitizer", "status": "skipped", "seconds": 0.0,
                "detail": "compute-sanitizer is not on this machine"}
    step = [sys.executable, str(Path(__file__).resolve()), "--one-step"]
    start = time.perf_counter()
    rc, _, tail = run(step, limit / 3, out / "gpu_check_step.log")     # compiles and autotunes
    if rc != 0:
        return {"part": "sanitizer", "status": "failed", "seconds": round(time.perf_counter() - start, 1),
                "detail": "the training step failed without the sanitizer:\n" + tail[-1500:]}
    cmd = [tool, "--tool", "memcheck", "--error-exitcode", "86", "--print-limit", "20", *step]
    rc, _, tail = run(cmd, limit - (time.perf_counter() - start), out / "gpu_check_sanitizer.log")
    seconds = round(time.perf_counter() - start, 1)
    summary = re.search(r"ERROR SUMMARY: (\d+) error", tail)
    if rc == 0 and summary and summary.group(1) == "0":
        return {"part": "sanitizer", "status": "passed", "seconds": seconds, "detail": "0 memcheck errors"}
    if re.search(r"Device not supported|not supported on this|Unable to find injection", tail):
        return {"part": "sanitizer", "status": "skipped", "seconds": seconds,
                "detail": "compute-sanitizer cannot run on this device: " + tail.strip().splitlines()[-1][:200]}
    status = "timed out" if rc is None else "failed"
    return {"part": "sanitizer", "status": status, "seconds": seconds,
            "detail": (f"{summary.group(1)} memcheck errors\n" if summary else "") + tail[-1500:]}


def part_bench(out: Path, limit: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.run", "--profile", "gpu-check", "--no-kernel-table",
           "--one-process", "--suite-timeout", str(int(max(limit - 40, 30))),
           "--results-dir", str(out), "--dashboard-dir", str(out / "dashboard")]
    before = set(out.glob("*.json"))
    rc, seconds, tail = run(cmd, limit, out / "gpu_check_bench.log")
    new = sorted(set(out.glob("*.json")) - before)
    status = "passed" if rc == 0 and new else ("timed out" if rc is None else "failed")
    return {"part": "bench", "status": status, "seconds": seconds, "results": [str(p) for p in new],
            "detail": "" if status == "passed" else tail[-1500:]}


def one_step() -> int:
    """One small bf16-autocast training step on the triton backend that launches every kernel
    (pool_qkv, pool_attention, max_pool_tokens in the q-strided blocks, gelu_linear), fwd and bwd."""
    import torch
    import torch.nn.functional as F

    import fastmvit
    from fastmvit.reference import MViTv2Config
    torch.manual_seed(0)
    cfg = MViTv2Config(embed_dims=32, num_heads=1, depths=(1, 2, 1, 1), drop_path_rate=0.1, with_cls_token=True)
    model = fastmvit.MViTv2(cfg, img_size=64, num_classes=10).cuda().train()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with fastmvit.use_backend("triton"), torch.autocast("cuda", torch.bfloat16):
        loss = F.cross_entropy(model(x).float(), torch.tensor([1, 7], device="cuda"))
    loss.backward()
    torch.cuda.synchronize()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    print(f"one step: loss {loss.item():.4f}, {len(bad)} parameters without a finite gradient {bad[:5]}")
    return 1 if bad else 0


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------
def headline(result_files: list[str]) -> list[str]:
    """Speed-ups of fastmvit over the baseline (eager / the reference), MEASURED, from the results."""
    if not result_files:
        return []
    from benchmarks import dashboard
    doc = json.loads(Path(result_files[-1]).read_text())
    lines = []
    for (suite, pass_, dtype), cases in sorted(dashboard.speedups(dashboard.timings(doc)).items()):
        for case, impls in sorted(cases.items()):
            shown = ", ".join(f"{impl} {ratio:.2f}x" for impl, ratio in sorted(impls.items()))
            lines.append(f"  {suite:6} {pass_:6} {dtype:9} {case:28} {shown}")
    return lines


def summary(env: dict, parts: list[dict], out: Path) -> None:
    print("\n" + "=" * 100)
    print(f"gpu-check  commit {env.get('commit_short')}  {env.get('gpu')}  driver {env.get('driver')}  "
          f"CUDA {env.get('cuda')}  torch {env['torch']}  triton {env.get('triton')}  python {env['python']}")
    for p in parts:
        counts = " ".join(f"{k} {p[k]}" for k in ("passed", "failed", "errors", "skipped") if p.get(k))
        print(f"  {p['part']:10} {p['status'].upper():10} {p['seconds']:7.1f} s  {counts}")
        if p["status"] not in ("passed",) and p.get("detail"):
            for line in p["detail"].strip().splitlines()[-12:]:
                print(f"      | {line[:150]}")
    speed = headline(next((p.get("results", []) for p in parts if p["part"] == "bench"), []))
    if speed:
        print("speed-ups, MEASURED on this GPU (baseline median / median; >1 is faster):")
        print("\n".join(speed[:30]))
    print(f"logs, results JSON and dashboard: {out}")
    print("=" * 100)


def dry_run(out: Path, tests: str) -> int:
    """No CUDA: collect what would run (a typo fails here), then exit NO_CUDA."""
    log("no CUDA device: collecting the CUDA tests and the gpu-check benchmark cases only")
    rc_t, _, tail_t = run(pytest_cmd(tests, "-m", "cuda", "--collect-only"), 300, out / "gpu_check_collect.log")
    suites = sorted(str(p.relative_to(REPO)) for p in (REPO / "benchmarks").glob("bench_*.py"))
    rc_b, _, tail_b = run(pytest_cmd(*suites, "--bench-profile", "gpu-check", "--collect-only"), 300,
                          out / "gpu_check_collect_bench.log")
    n_t, n_b = collected(tail_t), collected(tail_b)
    if rc_t != 0 or rc_b != 0 or not n_t or not n_b:
        log(f"collection FAILED (tests exit {rc_t}, benchmarks exit {rc_b}): see the output above")
        return 1
    log(f"collected {n_t} CUDA tests and {n_b} benchmark cases; nothing ran (no CUDA). Exit {NO_CUDA}.")
    return NO_CUDA


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one-step", action="store_true", help=argparse.SUPPRESS)  # the sanitizer's target
    parser.add_argument("--parts", nargs="*", default=["tests", "sanitizer", "bench"],
                        choices=["tests", "sanitizer", "bench"])
    parser.add_argument("--tests", default="tests", help="where the CUDA tests are (pytest -m cuda)")
    args = parser.parse_args(argv)
    if args.one_step:
        return one_step()

    out = Path(os.environ.get("GPU_CHECK_OUT") or REPO / "benchmarks" / "results").resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch
    if not torch.cuda.is_available():
        return dry_run(out, args.tests)
    from benchmarks.common import environment
    env = environment()
    log(f"{env['gpu']}, torch {env['torch']}, triton {env['triton']}; output in {out}")
    start, parts = time.perf_counter(), []
    part_fns = {"tests": lambda o, t: part_tests(o, t, args.tests), "sanitizer": part_sanitizer, "bench": part_bench}
    for name, fn in part_fns.items():
        if name not in args.parts:
            continue
        left = TOTAL_BUDGET_S - (time.perf_counter() - start)
        if left < 20:
            parts.append({"part": name, "status": "failed", "seconds": 0.0,
                          "detail": f"no time left in the {TOTAL_BUDGET_S} s budget"})
            continue
        log(f"part {name} (limit {min(LIMITS_S[name], left):.0f} s)")
        parts.append(fn(out, min(LIMITS_S[name], left)))
    (out / "gpu_check_summary.json").write_text(json.dumps({"env": env, "parts": parts}, indent=1))
    summary(env, parts, out)
    return 0 if all(p["status"] in ("passed", "skipped") for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
