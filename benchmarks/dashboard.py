"""Render benchmarks/results/*.json into a static dashboard (HTML + matplotlib PNGs).

    python -m benchmarks.dashboard [--results-dir benchmarks/results] [--out benchmarks/dashboard]

Sections (each figure says whether it is MEASURED, and on which device, or MODELED):
1. speed-up over the baseline (eager op / reference model) per shape and per model, latest run
   of each device; plus a table of medians, IQRs, throughput and peak memory;
2. memory: measured peak CUDA memory (GPU runs only); modeled bytes read+written per forward and
   per training step, kernels launched, activation bytes saved per image (cost model, any device);
3. the sm_80 / sm_90 compile table (registers, shared memory, spills) when the run had one;
4. history over commits on the same device, with regressions flagged: a timing is a regression
   when it grew by more than the noise, max(5%, 3 x IQR/median of either run) (see
   common.noise_threshold); a modeled number (deterministic) when it grew at all;
5. cases skipped, with their reasons.
The headline plot (latest run: measured speed-ups on CUDA when there are any, else the modeled
bytes and launches) is also written to benchmarks/results/latest.png for the README.
"""
from __future__ import annotations

import argparse
import html
import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import common  # noqa: E402

IMPL_ORDER = ("eager", "reference", "reference+compile", "fastmvit", "fastmvit+compile", "sdpa", "flex")


def load_runs(results_dir: Path) -> list[dict]:
    """Every results file (schema with a "fastmvit" section), oldest first."""
    runs = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(doc, dict) and "fastmvit" in doc:
            doc["_file"] = path.name
            runs.append(doc)
    runs.sort(key=lambda d: d["fastmvit"]["env"]["date"])
    return runs


def device_label(env: dict) -> str:
    if env["device"] == "cuda":
        return f"MEASURED on {env['gpu']}"
    return f"MEASURED on CPU ({env['cpu']}, torch path)"


def timings(run: dict) -> list[dict]:
    """Flatten pytest-benchmark entries: labels from extra_info, median/IQR in seconds."""
    out = []
    for b in run.get("benchmarks", []):
        info, stats = b.get("extra_info", {}), b.get("stats", {})
        out.append({
            "suite": info.get("suite", "op" if Path(b.get("suite_file", "")).stem in common.OP_SUITES
                              else "other"),
            "case": info.get("case", b.get("group") or b["name"]),
            "impl": info.get("impl", b.get("param") or b["name"]),
            "pass": info.get("pass", "?"), "dtype": info.get("dtype", "?"),
            "median": stats.get("median", math.nan), "iqr": stats.get("iqr", 0.0),
            "items": info.get("items"), "peak_bytes": info.get("peak_bytes"), "name": b["name"],
        })
    return out


def speedups(rows: list[dict]) -> dict:
    """{(suite, pass, dtype): {case: {impl: baseline median / impl median}}}."""
    groups: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        groups[(r["suite"], r["pass"], r["dtype"])][r["case"]][r["impl"]] = r["median"]
    out: dict = {}
    for key, cases in groups.items():
        base = common.BASELINE_IMPL.get(key[0], "eager")
        for case, impls in cases.items():
            if base in impls and len(impls) > 1:
                out.setdefault(key, {})[case] = {i: impls[base] / t for i, t in impls.items()
                                                 if i != base and t > 0}
    return out


def _impl_key(name: str) -> tuple:
    return (IMPL_ORDER.index(name) if name in IMPL_ORDER else len(IMPL_ORDER), name)


def bar_chart(path: Path, title: str, categories: list[str], series: dict[str, list[float]],
              ylabel: str, hline: float | None = None, log: bool | None = None) -> Path:
    """Grouped bars: one group per category, one bar per series (log scale when the values
    span more than 20x, unless `log` says otherwise)."""
    values = [v for vs in series.values() for v in vs if v]
    if log is None:
        log = bool(values) and min(values) > 0 and max(values) / min(values) > 20
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(categories) * max(1, len(series)) ** 0.5 + 2), 4.2))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(sorted(series.items(), key=lambda kv: _impl_key(kv[0]))):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(categories))]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=name)
    if hline is not None:
        ax.axhline(hline, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories, rotation=30 if len(categories) > 4 else 0, ha="right" if len(categories) > 4 else "center",
                       fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def modeled_rows(run: dict) -> list[dict]:
    return [m for m in run["fastmvit"].get("modeled", []) if m.get("suite") == "model"]


def modeled_figures(run: dict, out: Path, prefix: str) -> list[tuple[str, Path]]:
    """Bytes moved per forward / training step, launches, saved activations per image, per arch."""
    rows = modeled_rows(run)
    if not rows:
        return []
    cases = sorted({r["case"] for r in rows}, key=lambda c: [a in c for a in common.MODEL_ARCHS[::-1]])
    impls = sorted({r["impl"] for r in rows}, key=_impl_key)
    get = {(r["case"], r["impl"], r["pass"]): r for r in rows}
    figs = []
    specs = [("infer", "bytes", 1e9, "GB read + written per forward"),
             ("train", "bytes", 1e9, "GB read + written per training step"),
             ("infer", "launches", 1, "kernels launched per forward"),
             ("train", "saved_bytes_per_image", 1e6, "MB saved for backward per image")]
    for pass_, field, scale, ylabel in specs:
        series = {i: [(get.get((c, i, pass_)) or {}).get(field, 0) / scale for c in cases] for i in impls}
        name = f"{prefix}modeled_{pass_}_{field}.png"
        img = rows[0].get("img", "?")
        title = f"MODELED (cost model, meta device, bf16, {img}x{img}): {ylabel}"
        figs.append((title, bar_chart(out / name, title, cases, series, ylabel)))
    return figs


def op_modeled_figures(run: dict, out: Path, prefix: str) -> list[tuple[str, Path]]:
    """Modeled bytes per call of each op at each shape, per contender (one figure per op, pass
    and dtype), from the op suites' records."""
    groups = defaultdict(dict)
    for m in run["fastmvit"].get("modeled", []):
        if m.get("suite") == "op" and m.get("bytes"):
            op = m.get("op") or Path(m.get("test", "op").split("::")[0]).stem.removeprefix("bench_")
            groups[(op, m.get("pass"), m.get("dtype"))].setdefault(m["case"], {})[m["impl"]] = m["bytes"]
    figs = []
    for (op, pass_, dtype), cases in sorted(groups.items(), key=str):
        names = list(cases)
        impls = sorted({i for c in cases.values() for i in c}, key=_impl_key)
        title = f"MODELED (cost model): {op} {pass_} {dtype}, MB read + written per call"
        path = out / f"{prefix}modeled_op_{op}_{pass_}_{dtype}.png".replace("+", "_").replace("/", "_")
        figs.append((title, bar_chart(path, title, names, {i: [cases[c].get(i, 0) / 1e6 for c in names]
                                                           for i in impls}, "MB per call")))
    return figs


def measured_figures(run: dict, out: Path, prefix: str) -> list[tuple[str, Path]]:
    """Speed-up over the baseline per case, one figure per (suite, pass, dtype); peak memory."""
    env = run["fastmvit"]["env"]
    rows = timings(run)
    figs = []
    for (suite, pass_, dtype), cases in sorted(speedups(rows).items()):
        names = list(cases)
        impls = sorted({i for c in cases.values() for i in c}, key=_impl_key)
        series = {i: [cases[c].get(i) for c in names] for i in impls}
        base = common.BASELINE_IMPL.get(suite, "eager")
        title = f"{device_label(env)}: {suite} {pass_} {dtype}, speed-up over {base}"
        path = out / f"{prefix}speedup_{suite}_{pass_}_{dtype}.png".replace("+", "_")
        figs.append((title, bar_chart(path, title, names, series, f"x faster than {base}", hline=1.0)))
    peaks = [r for r in rows if r["peak_bytes"]]
    if peaks:
        by = defaultdict(dict)
        for r in peaks:
            by[f"{r['suite']} {r['pass']} {r['case']}"][r["impl"]] = r["peak_bytes"] / 2**20
        names = sorted(by)
        impls = sorted({i for v in by.values() for i in v}, key=_impl_key)
        title = f"{device_label(env)}: peak CUDA memory per call"
        figs.append((title, bar_chart(out / f"{prefix}peak_memory.png", title, names,
                                      {i: [by[n].get(i) for n in names] for i in impls}, "MiB")))
    return figs


def regressions(prev: dict, new: dict) -> list[dict]:
    """Timings (same device) that grew beyond the noise, and modeled numbers that grew at all."""
    flagged = []
    old = {(r["suite"], r["case"], r["impl"], r["pass"], r["dtype"]): r for r in timings(prev)}
    for r in timings(new):
        o = old.get((r["suite"], r["case"], r["impl"], r["pass"], r["dtype"]))
        if not o or not o["median"] or math.isnan(o["median"]):
            continue
        change = r["median"] / o["median"] - 1
        noise = max(common.noise_threshold(o["median"], o["iqr"]), common.noise_threshold(r["median"], r["iqr"]))
        if change > noise:
            flagged.append({"what": f"{r['suite']} {r['pass']} {r['dtype']} {r['case']} {r['impl']}: time",
                            "name": f"{r['suite']} {r['pass']} {r['case']} {r['impl']}",
                            "old": o["median"], "new": r["median"], "change": change, "noise": noise})
    oldm = {(m["case"], m["impl"], m["pass"]): m for m in modeled_rows(prev)}
    for m in modeled_rows(new):
        o = oldm.get((m["case"], m["impl"], m["pass"]))
        for field in ("bytes", "launches", "saved_bytes_per_image"):
            if o and o.get(field) and m.get(field) and m[field] > o[field]:
                flagged.append({"what": f"modeled {m['pass']} {m['case']} {m['impl']}: {field}",
                                "old": o[field], "new": m[field], "change": m[field] / o[field] - 1, "noise": 0.0})
    return flagged


def _history_key(run: dict) -> tuple:
    """Runs are comparable when taken on the same device with the same profile (same sizes)."""
    return (run["fastmvit"]["env"]["device_name"], run["fastmvit"].get("profile"))


def _line_plot(path: Path, title: str, labels: list[str], series: dict, ylabel: str,
               flagged: set | None = None) -> Path:
    """Lines over runs; points in `flagged` ((name, run index)) get a red cross."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, points in sorted(series.items())[:24]:
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=name)
        for x in xs:
            if flagged and (name, x) in flagged:
                ax.plot([x], [points[x]], marker="x", color="red", markersize=12, mew=2)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def history_figures(runs: list[dict], out: Path) -> list[tuple[str, Path]]:
    """Per device and profile, over commits: each timing relative to its first run (red cross =
    regression against the previous run), the speed-ups, and the modeled bytes per forward."""
    figs = []
    groups = defaultdict(list)
    for run in runs:
        groups[_history_key(run)].append(run)
    for k, ((device, profile), same) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        if len(same) < 2:
            continue
        labels = [r["fastmvit"]["env"].get("commit_short") or "?" for r in same]
        where = f"{device_label(same[-1]['fastmvit']['env'])}, profile {profile}"
        times, speed, flagged = defaultdict(dict), defaultdict(dict), set()
        for i, run in enumerate(same):
            rows = timings(run)
            for r in rows:
                name = f"{r['suite']} {r['pass']} {r['case']} {r['impl']}"
                times[name][i] = r
            for (suite, pass_, dtype), cases in speedups(rows).items():
                for case, impls in cases.items():
                    for impl, x in impls.items():
                        speed[f"{suite} {pass_} {dtype} {case} {impl}"][i] = x
            if i:
                flagged |= {(f["name"], i) for f in regressions(same[i - 1], run) if "name" in f}
        rel = {n: {i: r["median"] / pts[min(pts)]["median"] for i, r in pts.items()} for n, pts in times.items()}
        title = f"{where}: time relative to the first run (red x: regression beyond noise)"
        figs.append((title, _line_plot(out / f"history_timing_{k}.png", title, labels, rel,
                                       "time / time at first run", flagged)))
        if speed:
            title = f"{where}: speed-up over the baseline, over commits"
            figs.append((title, _line_plot(out / f"history_speedup_{k}.png", title, labels, speed, "x faster")))
        modeled = defaultdict(dict)
        for i, run in enumerate(same):
            for m in modeled_rows(run):
                if m["pass"] == "infer":
                    modeled[f"{m['case']} {m['impl']}"][i] = m["bytes"] / 1e9
        if modeled:
            title = f"MODELED (cost model), profile {profile}: forward bytes over commits"
            figs.append((title, _line_plot(out / f"history_modeled_{k}.png", title, labels, modeled,
                                           "GB per forward")))
    return figs


def headline(run: dict, path: Path) -> Path:
    """The README plot: model speed-ups measured on CUDA if the run has them, else modeled costs."""
    env = run["fastmvit"]["env"]
    sp = {k: v for k, v in speedups(timings(run)).items() if k[0] == "model"}
    if env["device"] == "cuda" and sp:
        key = sorted(sp, key=lambda k: (k[1] != "infer", k))[0]
        cases = sp[key]
        impls = sorted({i for c in cases.values() for i in c}, key=_impl_key)
        title = f"fastmvit: {key[1]} speed-up over the eager reference, {key[2]}, {device_label(env)}"
        return bar_chart(path, title, list(cases), {i: [cases[c].get(i) for c in cases] for i in impls},
                         "x faster than reference", hline=1.0)
    rows = [m for m in modeled_rows(run) if m["pass"] == "infer"]
    if not rows:  # no model in this run: the first op figure, or say there is nothing
        figs = op_modeled_figures(run, path.parent, "_headline_")
        if figs:
            figs[0][1].replace(path)
            for _, extra in figs[1:]:
                extra.unlink()
            return path
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no model results in the latest run", ha="center", va="center")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
    cases = sorted({r["case"] for r in rows}, key=lambda c: [a in c for a in common.MODEL_ARCHS[::-1]])
    impls = sorted({r["impl"] for r in rows}, key=_impl_key)
    get = {(r["case"], r["impl"]): r for r in rows}
    missing = "" if "fastmvit" in impls else " (fastmvit.MViTv2 not in this run)"
    img = rows[0].get("img", "?") if rows else "?"
    title = f"MODELED forward cost (cost model), bf16, {img}x{img}{missing}; commit {env.get('commit_short')}"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, field, scale, ylabel in ((axes[0], "bytes", 1e9, "GB read + written per forward"),
                                     (axes[1], "launches", 1, "kernels launched per forward")):
        width = 0.8 / max(1, len(impls))
        for k, impl in enumerate(impls):
            xs = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(cases))]
            heights = [(get.get((c, impl)) or {}).get(field, 0) / scale for c in cases]
            ax.bar(xs, heights, width, label=impl)
            if impl != "reference":  # the ratio to the reference above each bar
                for x, h, c in zip(xs, heights, cases):
                    ref = (get.get((c, "reference")) or {}).get(field)
                    if ref and h:
                        ax.annotate(f"{h * scale / ref:.2f}x", (x, h), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def target_ratios(run: dict) -> list[list]:
    """The cost-model target ratios (fastmvit.costmodel.MODEL_TARGETS), fastmvit / reference, per
    modeled case, with the targets."""
    from fastmvit.costmodel import MODEL_TARGETS
    get = {(m["case"], m["impl"], m["pass"]): m for m in modeled_rows(run)}
    rows = []
    for case in sorted({c for c, _, _ in get}):
        f_inf, r_inf = get.get((case, "fastmvit", "infer")), get.get((case, "reference", "infer"))
        f_tr, r_tr = get.get((case, "fastmvit", "train")), get.get((case, "reference", "train"))
        if not (f_inf and r_inf and f_tr and r_tr):
            continue
        values = {"forward_bytes": f_inf["bytes"] / r_inf["bytes"], "training_bytes": f_tr["bytes"] / r_tr["bytes"],
                  "saved_activations": f_tr["saved_bytes"] / r_tr["saved_bytes"],
                  "training_launches": f_tr["launches"] / r_tr["launches"]}
        rows.append([case] + [f"{v:.2f} ({'ok' if v <= MODEL_TARGETS[k] else 'over'} {MODEL_TARGETS[k]})"
                              for k, v in values.items()])
    return rows


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(x, unit="", scale=1.0, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x / scale:.{digits}g}{unit}"


def kernel_table_html(table: dict | None) -> str:
    """Render the compile table (rows of dicts, wherever they sit in the JSON) or say why not."""
    if not table:
        return "<p>No compile table in this run.</p>"
    if "error" in table:
        return f"<p>No compile table: {html.escape(table['error'])}</p>"
    data = table.get("table")
    rows = data if isinstance(data, list) else next(
        (v for v in (data or {}).values() if isinstance(v, list)), None) if isinstance(data, dict) else None
    if rows and all(isinstance(r, dict) for r in rows):
        headers = list(dict.fromkeys(k for r in rows for k in r))
        return "<p>COMPILED, not run: sm_80 / sm_90 cubins built with a stand-in driver (no GPU needed); " \
            "registers, shared memory and spills as ptxas/cuobjdump report them.</p>" + \
            _table(headers, [[r.get(h, "") for h in headers] for r in rows])
    return f"<pre>{html.escape(json.dumps(data, indent=1)[:20000])}</pre>"


def build(results_dir: Path, out_dir: Path, latest_png: Path | None = None) -> Path:
    """Write out_dir/index.html (and its PNGs) from every run in results_dir; return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    runs = load_runs(results_dir)
    parts = ["<!doctype html><meta charset='utf-8'><title>fastmvit benchmarks</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
             ".bad{color:#b00}</style>",
             "<h1>fastmvit benchmarks</h1>"]
    if not runs:
        parts.append(f"<p>No results in {html.escape(str(results_dir))}: run <code>make bench</code>.</p>")
        (out_dir / "index.html").write_text("\n".join(parts))
        return out_dir / "index.html"

    latest_by_device = {}
    for run in runs:
        latest_by_device[run["fastmvit"]["env"]["device_name"]] = run
    newest = runs[-1]
    if latest_png is not None:
        Path(latest_png).parent.mkdir(parents=True, exist_ok=True)
        headline(newest, Path(latest_png))
        headline(newest, out_dir / "latest.png")
        parts.append("<h2>Headline (latest run)</h2><img src='latest.png'>")

    for k, (device, run) in enumerate(sorted(latest_by_device.items())):
        env, fm = run["fastmvit"]["env"], run["fastmvit"]
        parts.append(f"<h2>Latest run on {html.escape(device)}</h2>")
        parts.append(_table(["key", "value"], [[k2, env.get(k2)] for k2 in
                                              ("date", "device", "gpu", "driver", "cuda", "torch", "triton",
                                               "fastmvit", "commit", "dirty", "cpu", "python")]
                            + [["profile", fm.get("profile")], ["file", run["_file"]]]))
        parts.append("<h3>Speed</h3>")
        figs = measured_figures(run, out_dir, f"d{k}_")
        if not figs:
            parts.append("<p>No speed-up to show (no contender next to its baseline in this run).</p>")
        for title, path in figs:
            parts.append(f"<h4>{html.escape(title)}</h4><img src='{path.name}'>")
        rows = timings(run)
        if rows:
            parts.append("<h4>All timings (median over rounds; " + html.escape(device_label(env)) + ")</h4>")
            parts.append("<p>IQR/median over 25% marks a noisy measurement (a busy machine): do not read "
                         "speed-ups from it.</p>")
            parts.append(_table(["suite", "pass", "dtype", "case", "impl", "median", "IQR", "IQR/median", "items/s",
                                 "peak MiB"],
                                [[r["suite"], r["pass"], r["dtype"], r["case"], r["impl"], _fmt(r["median"] * 1e3, " ms"),
                                  _fmt(r["iqr"] * 1e3, " ms"),
                                  (f"{r['iqr'] / r['median']:.0%}" + (" NOISY" if r["iqr"] > 0.25 * r["median"] else ""))
                                  if r["median"] else "",
                                  _fmt(r["items"] / r["median"]) if r["items"] and r["median"] else "",
                                  _fmt(r["peak_bytes"], "", 2**20)] for r in sorted(rows, key=lambda r: (
                                      r["suite"], r["pass"], r["case"], _impl_key(r["impl"])))]))
        parts.append("<h3>Memory and traffic (MODELED: cost model on meta tensors)</h3>")
        ratios = target_ratios(run)
        if ratios:
            parts.append("<p>fastmvit / reference, every fused kernel's own traffic counted, against the "
                         "targets (set for tiny b8, bf16, 224):</p>"
                         + _table(["case", "forward bytes", "training bytes", "saved activations",
                                   "training-step launches"], ratios))
        for title, path in modeled_figures(run, out_dir, f"d{k}_") + op_modeled_figures(run, out_dir, f"d{k}_"):
            parts.append(f"<h4>{html.escape(title)}</h4><img src='{path.name}'>")
        mrows = [m for m in fm.get("modeled", [])]
        if mrows:
            parts.append(_table(["suite", "pass", "dtype", "case", "impl", "GB read", "GB written", "launches",
                                 "GFLOP", "MB saved / image"],
                                [[m.get("suite"), m.get("pass"), m.get("dtype"), m.get("case"), m.get("impl"),
                                  _fmt(m.get("bytes_read"), "", 1e9), _fmt(m.get("bytes_written"), "", 1e9),
                                  m.get("launches", ""), _fmt(m.get("flops"), "", 1e9),
                                  _fmt(m.get("saved_bytes_per_image"), "", 1e6)] for m in mrows]))
        parts.append("<h3>Compile table (sm_80 / sm_90)</h3>" + kernel_table_html(fm.get("kernel_table")))
        parts.append("<h3>Suites</h3>" + _table(["suite", "status", "seconds"],
                                                [[s["suite"], s["status"], s["seconds"]] for s in fm.get("suites", [])]))
        if fm.get("skipped"):
            parts.append("<h3>Skipped (reason recorded)</h3>" + _table(
                ["test", "reason"], [[s["test"], s["reason"]] for s in fm["skipped"]]))

    parts.append("<h2>History</h2><p>Regression = a timing that grew by more than the noise, "
                 "max(5%, 3 x IQR/median of either run), against the previous run on the same device; "
                 "a modeled number that grew at all (the cost model is deterministic).</p>")
    for key in sorted({_history_key(r) for r in runs}, key=str):
        same = [r for r in runs if _history_key(r) == key]
        device = f"{key[0]}, profile {key[1]}"
        if len(same) >= 2:
            flagged = regressions(same[-2], same[-1])
            parts.append(f"<h4>{html.escape(device)}: {same[-2]['fastmvit']['env'].get('commit_short')} -> "
                         f"{same[-1]['fastmvit']['env'].get('commit_short')}: "
                         f"{len(flagged)} regression(s)</h4>")
            if flagged:
                parts.append(_table(["what", "old", "new", "change", "noise"],
                                    [[f["what"], _fmt(f["old"]), _fmt(f["new"]), f"{f['change']:+.1%}",
                                      f"{f['noise']:.1%}"] for f in flagged]).replace("<td>", "<td class='bad'>"))
    for title, path in history_figures(runs, out_dir):
        parts.append(f"<h4>{html.escape(title)}</h4><img src='{path.name}'>")
    (out_dir / "index.html").write_text("\n".join(parts))
    return out_dir / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the benchmark dashboard.")
    parser.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--out", type=Path, default=common.REPO / "benchmarks" / "dashboard")
    parser.add_argument("--latest-png", type=Path, default=None)
    args = parser.parse_args(argv)
    print(build(args.results_dir, args.out, latest_png=args.latest_png))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
