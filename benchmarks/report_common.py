"""Reporting and plotting pieces shared by lowrank_report / quant_report and plot_lowrank /
plot_quant. Pure functions of the JSONL records (matplotlib is imported by the plot scripts)."""

from __future__ import annotations

import argparse
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import harness as H

# --------------------------------------------------------------------------- tables


def fastest(
    records: Iterable[dict], key: Callable[[dict], tuple], keep: Callable[[dict], bool],
    metric: str = "median_us",
) -> dict[tuple, dict]:  # fmt: skip
    """The record with the lowest ``metric`` per ``key(r)`` among those ``keep(r)`` accepts."""
    best: dict[tuple, dict] = {}
    for r in records:
        if keep(r):
            k = key(r)
            if k not in best or r[metric] < best[k][metric]:
                best[k] = r
    return best


def time_cell(rec: dict | None) -> str | None:
    """A backend's time in a table: '-' skipped / absent, 'ERR', '!' = failed the fp32 check."""
    if rec is None or rec.get("status") == "skipped":
        return None
    if rec.get("status") == "error":
        return "ERR"
    return f"{rec['median_us']:.1f}" + ("!" if rec.get("status") == "incorrect" else "")


# --------------------------------------------------------------------------- targets


def target_check(
    name: str, rows: list[dict], ok: Callable[[dict], bool], metric: str, keys: Sequence[str]
) -> dict:
    """'pass' when every row meets the bar (None when there is no row) and the worst row's
    ``keys`` and ``metric``."""
    hits = [r for r in rows if ok(r)]
    worst = min(rows, key=lambda r: r.get(metric) or 0.0, default=None)
    return {
        "target": name,
        "pass": (len(hits) == len(rows)) if rows else None,
        "n": len(rows),
        "n_pass": len(hits),
        "worst": {k: worst.get(k) for k in (*keys, metric)} if worst else None,
    }


def format_targets(targets: dict[str, dict]) -> str:
    lines = []
    for t in targets.values():
        verdict = {True: "PASS", False: "MISS", None: "N/A "}[t["pass"]]
        line = f"[target] {verdict} {t['target']}: {t['n_pass']}/{t['n']} configs (do_bench)"
        if t.get("cuda_graph_n_pass"):
            line += f", {t['cuda_graph_n_pass']} on CUDA-graph replay"
        lines.append(f"{line}; worst {t['worst']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- dispatch


def geomean_pick(
    cell: list[dict], backends: Sequence[str], cfg: Callable[[dict], tuple],
    ok: Callable[[dict], bool],
) -> str:  # fmt: skip
    """Lowest geometric mean of time / best time over the cell's configurations ``cfg(r)``,
    among ``backends`` measured and correct (``ok``) on every one of them; torch (the
    always-correct fallback) when none qualifies."""
    configs = {cfg(r) for r in cell}
    best_us = {
        c: min((r["median_us"] for r in cell if cfg(r) == c and ok(r)), default=None)
        for c in configs
    }
    scores: dict[str, float] = {}
    for backend in backends:
        mine = {cfg(r): r for r in cell if r["backend"] == backend and ok(r)}
        if not configs or set(mine) != configs:
            continue
        logs = [math.log(mine[c]["median_us"] / best_us[c]) for c in configs]
        scores[backend] = math.exp(sum(logs) / len(logs))
    return min(scores, key=scores.get) if scores else "torch"


# --------------------------------------------------------------------------- plots


def latest_per_gpu(rows: Iterable[dict], config: Callable[[dict], tuple]) -> dict:
    """(gpu, dtype) -> rows of the latest commit measured on that GPU; where a configuration
    (``config(r)``) was measured more than once at that commit, the latest run wins."""
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
            latest[config(r)] = r
        out[key] = list(latest.values())
    return out


def panel_legend(fig, axes, *, fontsize: int) -> None:
    """One figure legend from every panel: a line may be missing from some of them."""
    legend = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(lab, h)
    fig.legend(legend.values(), legend.keys(), loc="center right", fontsize=fontsize)


def save_figure(fig, out_dir: Path, prefix: str, gpu: str, dtype: str) -> Path:
    """``out_dir / {prefix}_{gpu}_{dtype}.png`` (file-name-safe), then the figure is closed."""
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "_", f"{gpu}_{dtype}".lower()).strip("_")
    path = out_dir / f"{prefix}_{slug}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_main(
    argv, *, description: str, results: str, what: str,
    latest_rows: Callable[[list[dict]], dict], plot_group: Callable[..., Path],
) -> int:  # fmt: skip
    """A plot script's command line: --results (default results/{results}), --out."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--results", type=Path, default=H.RESULTS_DIR / results)
    p.add_argument("--out", type=Path, default=H.RESULTS_DIR)
    args = p.parse_args(argv)
    groups = latest_rows(H.read_results(args.results))
    if not groups:
        print(f"no {what} records with timings in {args.results}")
        return 1
    for (gpu, dtype), rows in sorted(groups.items()):
        print(plot_group(gpu, dtype, rows, args.out))
    return 0
