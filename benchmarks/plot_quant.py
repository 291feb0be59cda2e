#!/usr/bin/env python
"""Plot quantized-linear speedup over fp16 cuBLAS by M, per bit-width, from quant.jsonl.

One PNG per (GPU, dtype), from that GPU's latest commit: one panel per (K, N); x = M, y =
speedup vs dense F.linear (do_bench, eager). Solid lines: the best correct backend of ours per
(w_bits, a_bits); dotted lines of the same colour: the best installed peer at those bits. The
dashed line at 1 is fp16.

    python benchmarks/plot_quant.py [--results benchmarks/results/quant.jsonl] [--out DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as H  # noqa: E402
import quant_report as R  # noqa: E402


def latest_rows(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(gpu, dtype) -> timed rows of the latest commit measured on that GPU (the latest run
    wins where a configuration was measured more than once at that commit)."""
    rows = [r for r in records if r.get("status") == "ok" and r.get("speedup_vs_dense")]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r.get("gpu", "?"), r["dtype"])].append(r)
    out = {}
    for key, rs in groups.items():
        commit = max(rs, key=lambda r: r.get("date", "")).get("commit")
        latest: dict[tuple, dict] = {}
        for r in sorted(
            (r for r in rs if r.get("commit") == commit), key=lambda r: r.get("date", "")
        ):
            cfg = (r["M"], r["K"], r["N"], r["w_bits"], r["a_bits"], r.get("group_size"))
            latest[(*cfg, r["kind"], r["backend"], r.get("op"))] = r
        out[key] = list(latest.values())
    return out


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
    legend = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(lab, h)
    commit = (rows[0].get("commit") or "unknown")[:10]
    fig.legend(legend.values(), legend.keys(), loc="center right", fontsize=7)
    fig.suptitle(
        f"{gpu} {dtype}: quantized linear speedup over fp16 (commit {commit})", fontsize=10
    )
    fig.tight_layout(rect=(0, 0, 0.85, 0.94))
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "_", f"{gpu}_{dtype}".lower()).strip("_")
    path = out_dir / f"quant_speedup_{slug}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=H.RESULTS_DIR / "quant.jsonl")
    p.add_argument("--out", type=Path, default=H.RESULTS_DIR)
    args = p.parse_args(argv)
    groups = latest_rows(H.read_results(args.results))
    if not groups:
        print(f"no quantized-linear records with timings in {args.results}")
        return 1
    for (gpu, dtype), rows in sorted(groups.items()):
        print(plot_group(gpu, dtype, rows, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
