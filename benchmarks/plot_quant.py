#!/usr/bin/env python
"""Plot quantized-linear speedup over fp16 cuBLAS by M, per bit-width, from quant.jsonl.

One PNG per (GPU, dtype), from that GPU's latest commit: one panel per (K, N); x = M, y =
speedup vs dense F.linear (do_bench, eager). Solid lines: the best correct backend of ours per
(w_bits, a_bits); dotted lines of the same colour: the best installed peer at those bits. The
dashed line at 1 is fp16.

    python benchmarks/plot_quant.py [--results benchmarks/results/quant.jsonl] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quant_report as R  # noqa: E402
import report_common as RC  # noqa: E402


def latest_rows(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(gpu, dtype) -> timed rows of the latest commit measured on that GPU (the latest run
    wins where a configuration was measured more than once at that commit)."""
    rows = [r for r in records if r.get("status") == "ok" and r.get("speedup_vs_dense")]
    return RC.latest_per_gpu(
        rows,
        lambda r: (
            *(r["M"], r["K"], r["N"], r["w_bits"], r["a_bits"], r.get("group_size")),
            *(r["kind"], r["backend"], r.get("op")),
        ),
    )


def plot_group(gpu: str, dtype: str, rows: list[dict], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on benchmark machines
    import matplotlib.pyplot as plt

    kns = sorted({(r["K"], r["N"]) for r in rows})
    ours, peers = R.best_ours(rows), R.best_peers(rows)
    combos = sorted({k[4:] for k in ours} | {k[4:] for k in peers}, key=lambda c: (c[1], c[0]))
    colors = dict(zip(combos, plt.get_cmap("tab10").colors, strict=False))
    ncol = min(4, len(kns))
    nrow = -(-len(kns) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.8 * nrow), squeeze=False)
    for ax, (k, n) in zip(axes.flat, kns, strict=False):
        for combo in combos:
            label = f"W{combo[0]}A{combo[1]}"
            for best, style, suffix in ((ours, "-", ""), (peers, ":", " peer")):
                pts = sorted(
                    (key[1], r["speedup_vs_dense"])
                    for key, r in best.items()
                    if key[2:4] == (k, n) and key[4:] == combo
                )
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True), ls=style, marker="o", ms=3,
                        color=colors.get(combo), label=label + suffix,
                    )  # fmt: skip
        ax.axhline(1.0, color="black", ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title(f"K={k} N={n}", fontsize=8)
        ax.set_xlabel("M (tokens)", fontsize=8)
        ax.set_ylabel("speedup vs fp16", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(kns) :]:
        ax.set_visible(False)
    commit = (rows[0].get("commit") or "unknown")[:10]
    RC.panel_legend(fig, axes, fontsize=7)
    fig.suptitle(
        f"{gpu} {dtype}: quantized linear speedup over fp16 (commit {commit})", fontsize=10
    )
    fig.tight_layout(rect=(0, 0, 0.85, 0.94))
    return RC.save_figure(fig, out_dir, "quant_speedup", gpu, dtype)


def main(argv=None) -> int:
    return RC.plot_main(
        argv,
        description=__doc__.splitlines()[0],
        results="quant.jsonl",
        what="quantized-linear",
        latest_rows=latest_rows,
        plot_group=plot_group,
    )


if __name__ == "__main__":
    sys.exit(main())
