#!/usr/bin/env python
"""Speedup-over-dense plots of any benchmark's records, keyed by the benchmark.

    python benchmarks/plot.py quant --results benchmarks/results/h100_run2/quant.jsonl
    python benchmarks/plot.py lowrank                    # default: results/lowrank.jsonl

One PNG per (GPU, dtype), from the latest commit measured on that GPU: lowrank, one panel per
(M, K, N), speedup against rank per implementation; quant, one panel per (K, N), speedup
against M per bit-width (our best solid, the best peer dotted); attention, one panel per pass
and rel pos, speedup against T per implementation; mlp_block, one panel per (M, K, H), speedup
against rank per implementation. The dashed line is the dense layer. models: the whole-model
latency against BitOPs of the last run (models_report.plot_scatter).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

import harness as H  # noqa: E402
import report  # noqa: E402


@dataclass(frozen=True)
class Layout:
    panel: Callable[[dict], tuple]
    panel_title: Callable[[tuple], str]
    x: str
    line: Callable[[dict], str]


LAYOUTS = {
    "lowrank": Layout(
        lambda r: (r["M"], r["K"], r["N"]), lambda p: "M={} K={} N={}".format(*p), "rank",
        lambda r: r["backend"],
    ),
    "quant": Layout(
        lambda r: (r["K"], r["N"]), lambda p: "K={} N={}".format(*p), "M",
        lambda r: report.CONFIG["quant"](r)[0] + ("" if r["role"] == "ours" else " peer"),
    ),
    "attention": Layout(
        lambda r: (r.get("pass"), int(bool(r.get("rel")))), lambda p: "{} rel={}".format(*p),
        "T", lambda r: r["backend"],
    ),
    "mlp_block": Layout(
        lambda r: (r["M"], r["K"], r["H"]), lambda p: "M={} K={} H={}".format(*p), "rank",
        lambda r: r["backend"],
    ),
}  # fmt: skip


def latest_per_gpu(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(gpu, dtype) -> rows of the latest commit measured on that GPU."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r.get("gpu", "?"), r["dtype"])].append(r)
    out = {}
    for key, rs in groups.items():
        commit = max(rs, key=lambda r: r.get("date", "")).get("commit")
        out[key] = [r for r in rs if r.get("commit") == commit]
    return out


def series(bench: str, rows: list[dict]) -> dict[tuple, dict[str, list[tuple]]]:
    """panel -> line -> sorted (x, speedup) of the fastest row per (panel, line, x)."""
    lay = LAYOUTS[bench]
    best: dict[tuple, dict] = {}
    for r in rows:
        k = (lay.panel(r), lay.line(r), r[lay.x])
        if k not in best or r["median_us"] < best[k]["median_us"]:
            best[k] = r
    out: dict[tuple, dict[str, list[tuple]]] = defaultdict(lambda: defaultdict(list))
    for (panel, line, x), r in sorted(best.items(), key=lambda kv: str(kv[0])):
        out[panel][line].append((x, r["speedup_vs_dense"]))
    return {p: {ln: sorted(pts) for ln, pts in lines.items()} for p, lines in out.items()}


def plot_group(bench: str, gpu: str, dtype: str, rows: list[dict], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on benchmark machines
    import matplotlib.pyplot as plt

    panels = series(bench, rows)
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol + 2, 2.8 * nrow), squeeze=False)
    lines = sorted({ln for p in panels.values() for ln in p})
    colors = dict(zip(lines, plt.get_cmap("tab20").colors, strict=False))
    for ax, (panel, by_line) in zip(axes.flat, sorted(panels.items(), key=str), strict=False):
        for line, pts in sorted(by_line.items()):
            style = ":" if line.endswith(" peer") else "-"
            ax.plot(*zip(*pts, strict=True), ls=style, marker="o", ms=3,
                    color=colors[line], label=line)  # fmt: skip
        ax.axhline(1.0, color="black", ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title(LAYOUTS[bench].panel_title(panel), fontsize=8)
        ax.set_xlabel(LAYOUTS[bench].x, fontsize=8)
        ax.set_ylabel("speedup vs dense", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    legend = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(lab, h)
    fig.legend(legend.values(), legend.keys(), loc="center right", fontsize=7)
    commit = (rows[0].get("commit") or "unknown")[:10]
    fig.suptitle(f"{gpu} {dtype}: {bench} speedup over dense (commit {commit})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.84, 0.94))
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "_", f"{gpu}_{dtype}".lower()).strip("_")
    path = out_dir / f"{bench}_speedup_{slug}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_models(files: list[Path], out_dir: Path) -> int:
    """Whole models: latency against BitOPs of the last run in the files (models_report)."""
    import models_report

    records = models_report.latest_run([r for f in files for r in H.read_results(f)])
    models_report.add_ratios(records)
    from models_configs import PLOT_NAME

    path = models_report.plot_scatter(records, out_dir / PLOT_NAME)
    print(path if path else f"no models records with latency in {', '.join(map(str, files))}")
    return 0 if path else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench", choices=(*LAYOUTS, "models"))
    p.add_argument("--results", type=Path, nargs="+", default=None,
                   help="JSON-lines files (default: results/<bench>.jsonl)")  # fmt: skip
    p.add_argument("--out", type=Path, default=H.RESULTS_DIR, help="folder for the PNGs")
    args = p.parse_args(argv)
    files = args.results or [H.RESULTS_DIR / f"{args.bench}.jsonl"]
    if args.bench == "models":
        return plot_models(files, args.out)
    rows = [
        r for r in report.load(files, args.bench)
        if r["role"] != "dense" and report.ok(r) and r.get("speedup_vs_dense")
        and r.get(LAYOUTS[args.bench].x) is not None
    ]  # fmt: skip
    groups = latest_per_gpu(rows)
    if not groups:
        print(f"no {args.bench} records with timings in {', '.join(map(str, files))}")
        return 1
    for (gpu, dtype), group in sorted(groups.items()):
        print(plot_group(args.bench, gpu, dtype, group, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
