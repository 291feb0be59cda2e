#!/usr/bin/env python
"""Plot low-rank speedup over dense from benchmarks/results/lowrank.jsonl.

One PNG per (GPU, dtype), from that GPU's latest commit: a grid with one row per M and one
column per (K, N); x = rank, y = speedup vs dense F.linear, one line per backend. The dashed
line at 1 is dense; the dotted curve is the FLOPs ratio (the compute-bound ceiling).

    python benchmarks/plot_lowrank.py [--results benchmarks/results/lowrank.jsonl] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report_common as RC  # noqa: E402

BACKEND_STYLE = {"torch": ("tab:gray", "o"), "triton": ("tab:blue", "s"), "cuda": ("tab:red", "^")}


def latest_rows(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(gpu, dtype) -> low-rank rows of the latest commit measured on that GPU; where a
    configuration was measured more than once at that commit, the latest run wins."""
    rows = [
        r
        for r in records
        if r.get("backend") != "dense" and r.get("status") == "ok" and r.get("speedup_vs_dense")
    ]
    return RC.latest_per_gpu(rows, lambda r: (r["M"], r["K"], r["N"], r["rank"], r["backend"]))


def plot_group(gpu: str, dtype: str, rows: list[dict], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on benchmark machines
    import matplotlib.pyplot as plt

    ms = sorted({r["M"] for r in rows})
    kns = sorted({(r["K"], r["N"]) for r in rows})
    fig, axes = plt.subplots(
        len(ms), len(kns), figsize=(3.2 * len(kns), 2.6 * len(ms)), squeeze=False, sharex=True
    )
    for i, m in enumerate(ms):
        for j, (k, n) in enumerate(kns):
            ax = axes[i][j]
            cell = [r for r in rows if r["M"] == m and (r["K"], r["N"]) == (k, n)]
            if not cell:
                ax.set_visible(False)
                continue
            for backend, (color, marker) in BACKEND_STYLE.items():
                pts = sorted(
                    (r["rank"], r["speedup_vs_dense"]) for r in cell if r["backend"] == backend
                )
                if pts:
                    ax.plot(*zip(*pts, strict=True), color=color, marker=marker, label=backend)
            ratio = sorted({(r["rank"], r["flops_ratio"]) for r in cell if r.get("flops_ratio")})
            if ratio:
                ax.plot(
                    *zip(*ratio, strict=True),
                    color="black",
                    ls=":",
                    lw=1,
                    marker=".",
                    label="FLOPs ratio",
                )
            ax.axhline(1.0, color="black", ls="--", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.set_title(f"M={m}  K={k} N={n}", fontsize=8)
            ax.tick_params(labelsize=7)
            if i == len(ms) - 1:
                ax.set_xlabel("rank", fontsize=8)
            if j == 0:
                ax.set_ylabel("speedup vs dense", fontsize=8)
    commit = rows[0].get("commit", "unknown")[:10]
    RC.panel_legend(fig, axes, fontsize=8)
    fig.suptitle(f"{gpu} {dtype}: low-rank speedup over dense (commit {commit})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.86, 0.95))
    return RC.save_figure(fig, out_dir, "lowrank_speedup", gpu, dtype)


def main(argv=None) -> int:
    return RC.plot_main(
        argv,
        description=__doc__.splitlines()[0],
        results="lowrank.jsonl",
        what="low-rank",
        latest_rows=latest_rows,
        plot_group=plot_group,
    )


if __name__ == "__main__":
    sys.exit(main())
