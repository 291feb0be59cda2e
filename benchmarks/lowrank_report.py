"""Reporting for bench_lowrank.py: the table, first-call costs, target checks and the
dispatch table derived from measured records. Pure functions of the JSONL records."""

from __future__ import annotations

import statistics

import harness as H
import report_common as RC
from report_common import format_targets  # noqa: F401 - bench_lowrank imports it from here

LOWRANK_BACKENDS = ("torch", "triton", "cuda")

# --------------------------------------------------------------------------- reporting


def _config_key(r: dict) -> tuple:
    return (r["dtype"], r["M"], r["K"], r["N"], r["rank"])


def best_rows(records: list[dict]) -> dict[tuple, dict]:
    """Fastest correct low-rank backend per configuration."""
    return RC.fastest(
        records, _config_key, lambda r: r["backend"] != "dense" and r.get("status") == "ok"
    )


def format_table(records: list[dict]) -> str:
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if r["backend"] != "dense":
            by_key.setdefault(_config_key(r), {})[r["backend"]] = r
    best = best_rows(records)
    seen = {b for row in by_key.values() for b in row}
    backends = [b for b in LOWRANK_BACKENDS if b in seen] + sorted(seen - set(LOWRANK_BACKENDS))

    rows = []
    for key, row in by_key.items():
        b = best.get(key)
        any_rec = next(iter(row.values()))
        rows.append(
            [
                *key,
                any_rec.get("dense_us"),
                *(RC.time_cell(row.get(name)) for name in backends),
                b["backend"] if b else None,
                b.get("tflops") if b else None,
                b.get("pct_roofline") if b else None,
                b.get("speedup_vs_dense") if b else None,
                b.get("speedup_vs_torch") if b else None,
                any_rec.get("flops_ratio"),
            ]
        )
    header = [
        "dtype",
        "M",
        "K",
        "N",
        "r",
        "dense_us",
        *(f"{n}_us" for n in backends),
        "best",
        "TFLOP/s",
        "%roof",
        "x_dense",
        "x_torch",
        "flops_x",
    ]
    methods = ", ".join(sorted({r["timing_method"] for r in records if r.get("timing_method")}))
    legend = f"(us: {methods}; '!' = failed the fp32 check; '-' = skipped; best = fastest correct)"
    return H.format_table(header, rows) + "\n" + legend


def format_first_calls(records: list[dict]) -> str:
    """First call per new shape/dtype, JIT compile included: median and max per backend."""
    per: dict[str, list[float]] = {}
    for r in records:
        if r.get("first_call_ms") is not None:
            per.setdefault(r["backend"], []).append(r["first_call_ms"])
    rows = [[b, len(v), statistics.median(v), max(v)] for b, v in per.items()]
    return "first-call cost (ms, wall, synchronized):\n" + H.format_table(
        ["backend", "shapes", "median_ms", "max_ms"], rows
    )


def evaluate_targets(records: list[dict]) -> dict[str, dict]:
    """(1) M >= 4096: best backend >= 85% of roofline; (2) M = 197, rank <= 128: best beats dense.
    'pass' is None when no configuration of that kind was measured (e.g. the CPU smoke run)."""
    best = best_rows(records)

    def check(name: str, rows: list[dict], ok, metric: str) -> dict:
        return RC.target_check(name, rows, ok, metric, ("dtype", "M", "K", "N", "rank", "backend"))

    big = [r for r in best.values() if r["M"] >= 4096 and r.get("pct_roofline") is not None]
    small = [r for r in best.values() if r["M"] == 197 and r["rank"] <= 128]
    # Same check on CUDA-graph replay (GPU time without launch overhead), for information.
    graph_best: dict[tuple, float] = {}
    for r in records:
        if r["backend"] != "dense" and r.get("status") == "ok" and r.get("graph_us"):
            key = _config_key(r)
            graph_best[key] = min(graph_best.get(key, float("inf")), r["graph_us"])
    graph_wins = [
        graph_best[_config_key(r)] < r["dense_graph_us"]
        for r in small
        if r.get("dense_graph_us") and _config_key(r) in graph_best
    ]
    result = {
        "roofline85_m_ge_4096": check(
            "M >= 4096: best backend >= 85% of roofline",
            big,
            lambda r: r["pct_roofline"] >= 85.0,
            "pct_roofline",
        ),
        "beats_dense_m197_rank_le_128": check(
            "M = 197, rank <= 128: best backend beats dense",
            small,
            lambda r: r["speedup_vs_dense"] > 1.0,
            "speedup_vs_dense",
        ),
    }
    result["beats_dense_m197_rank_le_128"]["cuda_graph_n_pass"] = (
        f"{sum(graph_wins)}/{len(graph_wins)}" if graph_wins else None
    )
    return result


def derive_dispatch(records: list[dict], capability: str | None = None) -> list[dict]:
    """Buckets for write_dispatch_table, ordered (dtype, m_max, rank_max) ascending so that
    'first entry with M <= m_max and rank <= rank_max' picks the nearest measured bucket. Each
    keeps every implementation's eager and graph time (geometric mean over the shapes measured
    there), the dense layer's (also torch_dense's: that GEMM), the ranking (graph time where
    recorded) and auto's pick on a GPU of ``capability``."""
    rows = [r for r in records if r["backend"] != "dense" and r.get("M") is not None]
    dense_rows = [r for r in records if r["backend"] == "dense"]
    config = lambda r: (r["K"], r["N"])  # noqa: E731
    ok = lambda r: r.get("status") == "ok"  # noqa: E731
    pick = RC.auto_pick("lowrank_linear", capability)
    from supernet_kernels import registry

    registered = set(registry.implementations("lowrank_linear")) | {"torch_two_gemm", "torch_dense"}
    entries: list[dict] = []
    for dtype in sorted({r["dtype"] for r in rows}):
        rows_d = [r for r in rows if r["dtype"] == dtype]
        for m, m_max in H.bucket_bounds(r["M"] for r in rows_d):
            for rank, rank_max in H.bucket_bounds(r["rank"] for r in rows_d):
                cell = [r for r in rows_d if r["M"] == m and r["rank"] == rank]
                if not cell:
                    continue
                shapes = {config(r) for r in cell}
                dcell = [
                    r for r in dense_rows
                    if r["dtype"] == dtype and r["M"] == m and config(r) in shapes
                ]  # fmt: skip
                # records of an implementation no longer registered (the CUDA C++ kernel,
                # removed after it lost at every shape) are left out
                times = RC.cell_times(
                    cell, lambda r: r["backend"] if r["backend"] in registered else None, ok, config
                )
                if "torch" in times and "torch_two_gemm" not in times:
                    # older records: the reference's rows time the two GEMMs on slices
                    times["torch_two_gemm"] = dict(times["torch"])
                dense = RC.dense_times(dcell, cell, config)
                if dense is not None and not (times.get("torch_dense") or {}).get("eager"):
                    times["torch_dense"] = dict(dense)  # older records: the dense row's GEMM
                entry = {"dtype": dtype, "m_max": m_max, "rank_max": rank_max,
                         "shapes": sorted([list(c) for c in shapes])}  # fmt: skip
                k, n = min(shapes)
                call = {"dtype": dtype, "m": m, "rank": rank, "k": k, "n": n}
                entry.update(RC.ranked_entry(times, dense, pick, call))
                entries.append(entry)
    return entries


# --------------------------------------------------------------------------- main
