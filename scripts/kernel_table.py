"""Print the compiled-kernel table (registers, shared memory, spills, tensor cores) for the README.

    .venv/bin/python scripts/kernel_table.py                       # every kernel module, sm_80 and sm_90
    .venv/bin/python scripts/kernel_table.py --arch 90 --module fastmvit.kernels.ops.pool_qkv.compile_cases
    .venv/bin/python scripts/kernel_table.py --json kernels.json   # also write the reports (dashboard)
    .venv/bin/python scripts/kernel_table.py --unique              # one row per distinct compile
    .venv/bin/python scripts/kernel_table.py --sass-all            # SASS counts for every kernel

No GPU needed: each (module, target) compiles in its own subprocess through
tools/gpu_compile.py (two at a time by default). A module that does not exist yet, or has
no cases(), is left out with a note on stderr. Exit status 1 when any kernel has a
problem (spills, shared memory over the limit, failed compile, missing tensor cores).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: tools/
from tools.gpu_compile import (ARCHS, KERNEL_MODULES, KernelReport, NoCompileCases,  # noqa: E402
                               compile_cases, format_table)


def unique(reports: list[KernelReport]) -> list[KernelReport]:
    """One report per distinct compile (kernel hash), keeping the first case that launched it;
    failures are all kept."""
    seen, out = set(), []
    for r in reports:
        if r.hash is not None:
            if r.hash in seen:
                continue
            seen.add(r.hash)
        out.append(r)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, choices=ARCHS, action="append",
                        help="target (repeatable); default: all of %s" % (ARCHS,))
    parser.add_argument("--module", action="append",
                        help="kernel module (repeatable); default: %s" % ", ".join(KERNEL_MODULES))
    parser.add_argument("--json", metavar="OUT", help="also write every report as JSON to OUT")
    parser.add_argument("--unique", action="store_true", help="one row per distinct compiled kernel")
    parser.add_argument("--sass-all", action="store_true",
                        help="dump the SASS of every kernel (default: only those with a tensor-core tl.dot)")
    parser.add_argument("--sample", action="store_true",
                        help="each module's representative subset (what the tests compile), not every MViTv2 shape")
    parser.add_argument("--jobs", type=int, default=2, help="subprocesses at a time (default 2)")
    args = parser.parse_args(argv)

    modules = []
    for name in args.module or KERNEL_MODULES:
        if not name.endswith(".py") and importlib.util.find_spec(name) is None:
            print(f"kernel_table: {name} does not exist: left out", file=sys.stderr)
            continue
        modules.append(name)
    jobs = [(m, a) for m in modules for a in (args.arch or ARCHS)]

    def one(job):
        start = time.perf_counter()
        try:
            reports = compile_cases(*job, sass="all" if args.sass_all else "auto", sample=args.sample)
        except NoCompileCases as e:
            print(f"kernel_table: {e}: left out", file=sys.stderr)
            return None
        except RuntimeError as e:
            print(f"kernel_table: {job[0]} sm_{job[1]}: {e}", file=sys.stderr)
            reports = []
        print(f"kernel_table: {job[0]} sm_{job[1]}: {len(reports)} reports in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
        return reports

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, jobs))
    reports = [r for rs in results if rs for r in (unique(rs) if args.unique else rs)]

    print(format_table(reports))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(r.to_json(), problems=r.problems()) for r in reports], f, indent=1)
    failed = any(rs == [] for rs in results)  # a subprocess failed (None: no cases, left out)
    return 1 if failed or any(r.problems() for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
