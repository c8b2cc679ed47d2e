"""`make bench`: run the benchmark suites for the device found, save the results, draw the dashboard.

    python -m benchmarks.run                      # what `make bench` runs
    python -m benchmarks.run --profile smoke --results-dir /tmp/r --dashboard-dir /tmp/d

On CUDA everything runs ("full" profile). Without CUDA, the CPU-measurable part ("cpu" profile):
torch-path timings at small batch, the cost model (bytes moved, launches, saved activations, on
meta tensors) and the sm_80/sm_90 compile table. Each suite (benchmarks/bench_*.py) runs in its
own pytest process, so a suite that fails or times out costs only its own results. One JSON file
is written to benchmarks/results/ named <date>_<device>_<commit>.json: a pytest-benchmark JSON
(machine_info, commit_info, benchmarks) with a "fastmvit" section (environment, modeled results,
skipped cases with reasons, per-suite status, the compile table).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

# Per-suite time limits (seconds). The CPU run must fit in about five minutes all told.
SUITE_TIMEOUT = {"full": 3600, "cpu": 240, "smoke": 120, "gpu-check": 150}
KERNEL_TABLE_TIMEOUT = {"full": 600, "cpu": 240, "smoke": 60, "gpu-check": 60}
UNTIMED_SUITES = ("bench_memory",)  # modeled only: may run beside the compile-table build
SCHEMA = 1


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def suite_files(selected: list[str] | None) -> list[Path]:
    """benchmarks/bench_*.py (the untimed suites first, then the op suites, the model suite last: its
    torch.compile runs are the slow part, and a time limit should cut those, not the ops), optionally
    only the named ones."""
    files = sorted((common.REPO / "benchmarks").glob("bench_*.py"),
                   key=lambda p: (p.stem not in UNTIMED_SUITES, p.name == "bench_model.py", p.name))
    if selected:
        files = [f for f in files if f.stem in selected or f.name in selected]
    return files


def _read_json(path: Path):
    """A suite's JSON output, or None when it wrote none. pytest-benchmark leaves an empty file
    behind when a suite ran no timed benchmark (the untimed suites, or every timing skipped)."""
    text = path.read_text() if path.exists() else ""
    return json.loads(text) if text.strip() else None


def run_suite(paths: list[Path], name: str, profile: str, tmp: Path, timeout: int,
              extra_args: list[str]) -> dict:
    """Run suites in one pytest process; return its status and what it wrote."""
    bench_json, record_json = tmp / f"{name}.json", tmp / f"{name}.record.json"
    cmd = [sys.executable, "-m", "pytest", *(str(p.relative_to(common.REPO)) for p in paths), "-q", "-rs",
           "-p", "no:cacheprovider", "--bench-profile", profile,
           f"--benchmark-json={bench_json}", f"--fastmvit-record={record_json}",
           "--benchmark-columns=median,iqr,rounds", "--benchmark-sort=fullname", *extra_args]
    # A run started from inside a pytest-xdist worker (the harness test) must not look like one:
    # pytest-benchmark disables itself when it sees PYTEST_XDIST_WORKER.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=common.REPO, timeout=timeout, env=env)
        rc, status = proc.returncode, {0: "ok", 5: "nothing collected"}.get(proc.returncode, "failures")
    except subprocess.TimeoutExpired:
        rc, status = None, f"timed out after {timeout} s"
    seconds = round(time.perf_counter() - start, 1)
    out = {"suite": name, "rc": rc, "status": status, "seconds": seconds,
           "benchmark_json": _read_json(bench_json), "record": _read_json(record_json)}
    log(f"{name}: {status} in {seconds} s")
    return out


class KernelTable:
    """scripts/kernel_table.py --json, started in the background (it compiles for sm_80/sm_90 on
    the CPU: minutes) while the untimed suites run, and waited for before any timing starts."""

    def __init__(self, profile: str, tmp: Path) -> None:
        self.limit = KERNEL_TABLE_TIMEOUT[profile]
        self.out = tmp / "kernel_table.json"
        self.proc = None
        self.result = None
        script = common.REPO / "scripts" / "kernel_table.py"
        if not script.exists():
            self.result = {"error": "scripts/kernel_table.py is not written yet"}
            return
        self.start = time.perf_counter()
        self.log = open(tmp / "kernel_table.log", "w+")
        # Without a GPU box's cores, compile each module's representative sample (minutes on 2 cores);
        # the full profile compiles every MViTv2 shape.
        sample = [] if profile == "full" else ["--sample"]
        self.proc = subprocess.Popen([sys.executable, str(script), "--unique", *sample, "--json", str(self.out)],
                                     cwd=common.REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # its own group: stoppable with its workers

    def wait(self) -> dict:
        if self.result is not None:
            return self.result
        left = self.limit - (time.perf_counter() - self.start)
        try:
            rc = self.proc.wait(timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group we started, and nothing else
            self.proc.wait()
            self.result = {"error": f"scripts/kernel_table.py did not finish within {self.limit} s"}
            return self.result
        seconds = round(time.perf_counter() - self.start, 1)
        if rc != 0 or not self.out.exists():
            self.log.seek(0)
            self.result = {"error": f"scripts/kernel_table.py failed (exit {rc}): {self.log.read()[-600:]}"}
        else:
            log(f"kernel table: done in {seconds} s")
            self.result = {"seconds": seconds, "table": json.loads(self.out.read_text())}
        return self.result


def merge(runs: list[dict], env: dict, profile: str, table: dict) -> dict:
    """One results document: pytest-benchmark's layout plus a "fastmvit" section."""
    doc = {"machine_info": {}, "commit_info": {}, "benchmarks": [], "datetime": env["date"], "version": None,
           "fastmvit": {"schema": SCHEMA, "env": env, "profile": profile, "suites": [], "modeled": [],
                        "skipped": [], "kernel_table": table}}
    for run in runs:
        bj, rec = run["benchmark_json"], run["record"]
        if bj:
            doc["machine_info"] = doc["machine_info"] or bj.get("machine_info", {})
            doc["commit_info"] = doc["commit_info"] or bj.get("commit_info", {})
            doc["version"] = bj.get("version")
            for b in bj.get("benchmarks", []):
                b.get("stats", {}).pop("data", None)  # the raw rounds: large, and the stats suffice
                b["suite_file"] = b.get("fullname", run["suite"]).split("::")[0].rsplit("/", 1)[-1]
                doc["benchmarks"].append(b)
        if rec and not bj and rec.get("measured"):
            # the suite was cut short (time limit): keep the timings it finished
            for b in rec["measured"]:
                b["suite_file"] = b["fullname"].split("::")[0].rsplit("/", 1)[-1]
                doc["benchmarks"].append(b)
        if rec:
            doc["fastmvit"]["modeled"] += rec["modeled"]
            doc["fastmvit"]["skipped"] += rec["skipped"]
        doc["fastmvit"]["suites"].append({k: run[k] for k in ("suite", "rc", "status", "seconds")})
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=("auto", "full", "cpu", "smoke", "gpu-check"), default="auto",
                        help="auto: full on CUDA, cpu otherwise")
    parser.add_argument("--suites", nargs="*", help="only these suites (e.g. bench_model)")
    parser.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--dashboard-dir", type=Path, default=common.REPO / "benchmarks" / "dashboard")
    parser.add_argument("--latest-png", type=Path, default=None,
                        help="headline plot (default: <results-dir>/latest.png)")
    parser.add_argument("--no-kernel-table", action="store_true")
    parser.add_argument("--one-process", action="store_true",
                        help="run the selected suites in a single pytest process (faster start, "
                             "one time limit for all)")
    parser.add_argument("--suite-timeout", type=int, default=None,
                        help="seconds per pytest run (default: the profile's, SUITE_TIMEOUT)")
    parser.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[],
                        help="passed to every pytest run (e.g. -k tiny)")
    args = parser.parse_args(argv)

    import torch
    profile = args.profile if args.profile != "auto" else ("full" if torch.cuda.is_available() else "cpu")
    env = common.environment()
    log(f"device: {env['device']} ({env['device_name']}), torch {env['torch']}, triton {env['triton']}, "
        f"commit {env['commit_short']}{' (dirty tree)' if env['dirty'] else ''}, profile {profile}")
    if env["device"] != "cuda":
        log("no CUDA: timing the torch paths on the CPU at small batch; modeled bytes and launches; "
            "no GPU timings")

    suite_timeout = args.suite_timeout or SUITE_TIMEOUT[profile]
    runs = []
    with tempfile.TemporaryDirectory(prefix="fastmvit-bench-") as tmp:
        files = suite_files(args.suites)
        if args.no_kernel_table:
            table = None
        else:
            log("compile table for sm_80/sm_90 (scripts/kernel_table.py --json) in the background")
            table = KernelTable(profile, Path(tmp))

        def wait_for_table():
            if table is not None and table.result is None:
                log("waiting for the compile table before timing anything")
                result = table.wait()
                if "error" in result:
                    log(result["error"].splitlines()[0])

        if args.one_process:
            wait_for_table()
            log(f"suites {', '.join(f.name for f in files)} in one process")
            runs.append(run_suite(files, "suites", profile, Path(tmp), suite_timeout, args.pytest_args))
        for i, path in enumerate([] if args.one_process else files, 1):
            if path.stem not in UNTIMED_SUITES:
                wait_for_table()
            log(f"suite {i}/{len(files)}: {path.name}")
            runs.append(run_suite([path], path.stem, profile, Path(tmp), suite_timeout,
                                  args.pytest_args))
        wait_for_table()
        table = table.result if table is not None else {"error": "skipped (--no-kernel-table)"}
    doc = merge(runs, env, profile, table)

    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.fromisoformat(env["date"]).strftime("%Y%m%d-%H%M%S")
    path = args.results_dir / f"{stamp}_{common.device_slug(env)}_{env['commit_short'] or 'nocommit'}.json"
    path.write_text(json.dumps(doc, indent=1, default=str))
    log(f"results: {path} ({len(doc['benchmarks'])} timings, {len(doc['fastmvit']['modeled'])} modeled, "
        f"{len(doc['fastmvit']['skipped'])} skipped)")

    from benchmarks import dashboard
    latest = args.latest_png or args.results_dir / "latest.png"
    index = dashboard.build(args.results_dir, args.dashboard_dir, latest_png=latest)
    log(f"dashboard: {index}")
    log(f"headline plot: {latest}")
    failed = [r["suite"] for r in runs if r["status"] not in ("ok", "nothing collected")]
    if failed:
        log(f"suites with failures or timeouts: {', '.join(failed)} (see the output above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
