"""Tables, notes and the scatter plot of ``bench_models.py``: pure functions of its JSONL records
(matplotlib is imported inside :func:`plot_scatter` only)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import harness as H

# Shared measurement on an H200 (segment-anything ViT-B encoder, 1024x1024, fp16, batch 1):
# nn.Linear layers take ~8.5% of its GPU time; the rest is attention with decomposed relative
# position terms, windowing / padding, norms, the conv neck and elementwise work.
SAM_LINEAR_SHARE = 0.085
SAM_NOTE = (
    "note: segment-anything's ViT-B encoder at 1024x1024 spends only ~8.5% of its GPU time in "
    "linear layers (shared measurement, H200), so cuts to linear-layer BitOPs barely move its "
    "latency: compare the bitops_ratio and latency_ratio columns."
)
LATENCY_NEEDS_GPU = "latency needs a GPU: counts only (params, MACs, BitOPs, weight bytes)"


def giga(v) -> float | None:
    return None if v is None else v / 1e9


def mib(v) -> float | None:
    return None if v is None else v / 2**20


def ratio(a, b) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def amdahl_latency_ratio(linear_share: float, linear_bitops_ratio: float) -> float:
    """The latency ratio if only the linear layers got faster, in proportion to their BitOPs."""
    return 1.0 - linear_share + linear_share * linear_bitops_ratio


def main_rows(records: Iterable[dict]) -> list[list]:
    rows = []
    for r in records:
        if r.get("kind") != "config":
            continue
        rows.append(
            [
                r["model"], r["batch"], r["config"], giga(r.get("params")), giga(r.get("macs")),
                r.get("bitops") and r["bitops"] / 1e12, mib(r.get("weight_bytes")),
                r.get("macs_ratio"), r.get("bitops_ratio"), r.get("median_ms"),
                r.get("graph_ms"), r.get("latency_ratio"), r.get("status"),
            ]
        )  # fmt: skip
    return rows


MAIN_HEADER = (
    "model", "batch", "config", "Gparams", "GMACs", "TBitOPs", "weights MiB", "macs_ratio",
    "bitops_ratio", "eager ms", "graph ms", "latency_ratio", "status",
)  # fmt: skip


def format_main(records: Iterable[dict]) -> str:
    """Configs side by side; ratios are against the dense fp16 row of the same model and batch."""
    return H.format_table(MAIN_HEADER, main_rows(records))


STUDY_HEADER = (
    "model", "batch", "operator", "level", "bitops_ratio", "bitops cut %", "latency_ratio",
    "latency cut %", "status",
)  # fmt: skip


def format_study(records: Iterable[dict]) -> str:
    """Seed-paper search-space study: each operator alone, BitOPs cut vs measured latency cut."""
    rows = []
    for r in records:
        if r.get("kind") != "study":
            continue
        br, lr = r.get("bitops_ratio"), r.get("latency_ratio")
        rows.append(
            [
                r["model"], r["batch"], r["operator"], r["level"], br,
                None if br is None else 100 * (1 - br), lr,
                None if lr is None else 100 * (1 - lr), r.get("status"),
            ]
        )  # fmt: skip
    return H.format_table(STUDY_HEADER, rows)


def add_ratios(records: Sequence[dict]) -> None:
    """In place: macs/bitops/weight-byte/latency ratios against the model's dense row at the same
    batch (the study's rows too)."""
    base = {
        (r["model"], r["batch"]): r
        for r in records
        if r.get("kind") == "config" and r.get("config") == "dense"
    }
    for r in records:
        d = base.get((r.get("model"), r.get("batch")))
        if d is None:
            continue
        for key in ("macs", "bitops", "weight_bytes"):
            r[f"{key}_ratio"] = ratio(r.get(key), d.get(key))
        r["latency_ratio"] = ratio(r.get("median_ms"), d.get("median_ms"))
        r["graph_latency_ratio"] = ratio(r.get("graph_ms"), d.get("graph_ms"))


def format_failures(records: Iterable[dict]) -> str:
    lines = []
    for r in records:
        for key in ("reason", "graph_reason"):
            if r.get(key):
                what = r.get("config") or f"{r.get('operator')}={r.get('level')}"
                lines.append(f"  {r['model']} b{r['batch']} {what}: {key} {r[key]}")
    return "\n".join(lines)


def plot_scatter(records: Sequence[dict], path: Path) -> Path | None:
    """Latency vs BitOPs, one marker per config, one panel per model (largest batch measured
    first: batch 1). Returns the path, or None when no record has a latency."""
    pts = [r for r in records if r.get("kind") == "config" and r.get("median_ms")]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in pts})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    markers = "osD^v<>PX*"
    for ax, model in zip(axes[0], models, strict=True):
        rs = [r for r in pts if r["model"] == model]
        configs = list(dict.fromkeys(r["config"] for r in rs))
        for batch in sorted({r["batch"] for r in rs}):
            for i, cfg in enumerate(configs):
                sel = [r for r in rs if r["config"] == cfg and r["batch"] == batch]
                if not sel:
                    continue
                r = sel[-1]
                ax.scatter(
                    r["bitops"] / 1e12, r["median_ms"], marker=markers[i % len(markers)],
                    label=f"{cfg} (b{batch})", s=50,
                )  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("BitOPs (T)")
        ax.set_ylabel("latency, eager median (ms)")
        ax.set_title(f"{model}: latency vs BitOPs")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def latest_run(records: Sequence[dict]) -> list[dict]:
    """The records of the last run in an append-only JSONL."""
    if not records:
        return []
    last = records[-1].get("run_id")
    return [r for r in records if r.get("run_id") == last]


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Tables and plot from bench_models.py's JSONL.")
    p.add_argument("jsonl", type=Path, nargs="?", default=H.RESULTS_DIR / "models.jsonl")
    p.add_argument("--plot", type=Path, default=H.RESULTS_DIR / "models_latency_vs_bitops.png")
    p.add_argument("--all-runs", action="store_true", help="every run, not just the last")
    args = p.parse_args(argv)
    records = H.read_results(args.jsonl)
    records = records if args.all_runs else latest_run(records)
    print(format_main(records))
    if any(r.get("kind") == "study" for r in records):
        print("\n" + format_study(records))
    if any(r.get("model") == "sam_vit_b" for r in records):
        print("\n" + SAM_NOTE)
    out = plot_scatter(records, args.plot)
    print(f"plot: {out}" if out else "no latency in these records: no plot")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
