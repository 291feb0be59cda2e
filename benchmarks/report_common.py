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


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def cell_times(
    cell: list[dict], name_of: Callable[[dict], str | None], ok: Callable[[dict], bool],
    config: Callable[[dict], tuple],
) -> dict[str, dict[str, float | None]]:  # fmt: skip
    """implementation -> {"eager", "graph"}: the geometric mean over the cell's configurations
    (``config(r)``) of its eager (``median_us``) and CUDA-graph (``graph_us``) times; a time is
    None unless recorded, and correct (``ok``), on every configuration of the cell."""
    configs = {config(r) for r in cell}
    by_name: dict[str, dict[tuple, dict]] = defaultdict(dict)
    for r in cell:
        name = name_of(r)
        if name is not None:
            by_name[name][config(r)] = r
    out = {}
    for name, rows in sorted(by_name.items()):
        times = {}
        for metric, key in (("eager", "median_us"), ("graph", "graph_us")):
            vals = [rows[c].get(key) if c in rows and ok(rows[c]) else None for c in configs]
            times[metric] = _geomean(vals) if all(vals) else None
        out[name] = times
    return out


def dense_times(
    dense_rows: list[dict], cell: list[dict], config: Callable[[dict], tuple]
) -> dict[str, float | None] | None:
    """The dense layer's {"eager", "graph"} over the cell's configurations: from its own rows
    where the benchmark wrote them, else from the ``dense_us``/``dense_graph_us`` each record
    carries."""
    if dense_rows:
        return cell_times(dense_rows, lambda r: "dense", lambda r: True, config).get("dense")
    by_config = {config(r): r for r in cell if r.get("dense_us")}
    if not by_config:
        return None
    rows = [
        {**r, "median_us": r["dense_us"], "graph_us": r.get("dense_graph_us")}
        for r in by_config.values()
    ]
    return cell_times(rows, lambda r: "dense", lambda r: True, config).get("dense")


def ranked_entry(
    times: dict[str, dict[str, float | None]], dense: dict[str, float | None] | None,
    pick: Callable[[list[str], dict, dict], str], call: dict,
) -> dict:  # fmt: skip
    """The ranking fields of a dispatch bucket: ``rank_by`` is "graph" where the dense layer and
    some candidate have graph-replay times (models are served under CUDA graphs), else "eager";
    ``ranked`` orders the candidates by it (those without it after, by eager time, those with
    no time last); ``pick(ranked, entry, call)`` names what auto runs on the measured GPU for
    ``call`` (the op's dispatch keys at a shape the bucket measured, dtype included)."""
    has_graph = dense is not None and dense.get("graph") and any(t["graph"] for t in times.values())
    rank_by = "graph" if has_graph else "eager"
    inf = float("inf")

    def order(name: str) -> tuple:
        t = times[name]
        return (t[rank_by] is None, t[rank_by] or inf, t["eager"] or inf, name)

    names = sorted(times, key=order)
    entry = {
        "rank_by": rank_by,
        "ranked": names,
        "times_us": {
            n: {k: (round(v, 3) if v else None) for k, v in times[n].items()} for n in names
        },
        "dense_us": (
            {k: (round(v, 3) if v else None) for k, v in dense.items()} if dense else None
        ),
    }
    entry["pick"] = pick(names, entry, call)
    return entry


def auto_pick(op: str, capability: str | None) -> Callable[[list[str], dict, dict], str]:
    """What "auto" runs for a bucket on the measured GPU: the first candidate within the 1.10x
    rule that is a torch path, or a kernel verified on ``capability``, and that supports the
    call; else the dense-equivalent path (the reference never: it is the oracle, not a GPU
    path)."""
    import torch

    from supernet_kernels import backends, dispatch, registry

    impls = registry.implementations(op)

    def pick(names: list[str], entry: dict, call: dict) -> str:
        call = dict(call)
        dtype = getattr(torch, call.pop("dtype"))
        for name in names:
            impl = impls.get(name)
            if impl is None or impl.reference or not dispatch.within_rule(entry, name):
                continue
            if impl.kernel and not dispatch.is_verified(op, name, capability):
                continue
            if backends._impl_reason(
                impl, torch.device("cuda"), dtype, call, capability or (9, 0), here=False
            ):
                continue
            return name
        dense = registry.dense_equivalent(op)
        return dense.name if dense else registry.fallbacks(op)[0].name

    return pick


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
