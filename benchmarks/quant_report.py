"""Reporting for bench_quant.py: byte / BitOPs formulas, tables, first-call costs, target checks
and the dispatch tables derived from measured records. Pure functions of the JSONL records
(no GPU, no package import), so tests/test_bench_quant.py can check them on fake records."""

from __future__ import annotations

import statistics

import harness as H
import report_common as RC
from report_common import format_targets  # noqa: F401 - bench_quant uses R.format_targets

OUR_BACKENDS = ("torch", "triton", "cuda")
OPS = ("quant_linear", "int8_linear")
FP16_BITOPS = 16 * 16

# --------------------------------------------------------------------------- formulas


def packed_width(k: int, bits: int) -> int:
    """int32 words per row in sk-pack-v1 (32 // bits codes per word; 3-bit: 10 per word)."""
    return -(-k // (32 // bits))


def quant_weight_bytes(*, k: int, n: int, bits: int, group_size: int) -> int:
    """Packed int32 codes + float32 scales and zeros (N x K/G each)."""
    return 4 * n * packed_width(k, bits) + 2 * 4 * n * (k // group_size)


def quant_bytes(*, m: int, k: int, n: int, bits: int, group_size: int, elem: int) -> int:
    """Ideal traffic of quant_linear: packed weight + scales/zeros + x read + y written.
    x counts at its own dtype for act_bits=8 too (the kernel quantizes it on the fly)."""
    return quant_weight_bytes(k=k, n=n, bits=bits, group_size=group_size) + elem * m * (k + n)


def int8_bytes(*, m: int, k: int, n: int, elem: int) -> int:
    """int8_linear: int8 weight + float32 per-channel scale + x + y."""
    return n * k + 4 * n + elem * m * (k + n)


def dense_bytes(*, m: int, k: int, n: int, elem: int) -> int:
    return elem * (k * n + m * k + m * n)


def nominal_bytes(*, m: int, k: int, n: int, bits: int, group_size: int | None, elem: int) -> int:
    """Peers' weights at their nominal size: bits/8 per weight + fp16 scale and zero per group."""
    meta = 2 * 2 * n * (k // group_size) if group_size else 0
    return n * k * bits // 8 + meta + elem * m * (k + n)


def matmul_flops(*, m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def bitops(*, m: int, k: int, n: int, w_bits: int, a_bits: int) -> int:
    return m * n * k * w_bits * a_bits


def bitops_ratio(*, w_bits: int, a_bits: int) -> float:
    """fp16 BitOPs / these BitOPs: the speedup a bit-serial (BitOPs-bound) machine would give."""
    return FP16_BITOPS / (w_bits * a_bits)


# --------------------------------------------------------------------------- grouping


def is_ours(r: dict) -> bool:
    return r.get("kind") == "ours"


def _ok(r: dict) -> bool:
    return r.get("status") == "ok" and r.get("median_us") is not None


def shape_key(r: dict) -> tuple:
    return (r["dtype"], r["M"], r["K"], r["N"])


def bits_key(r: dict) -> tuple:
    return (*shape_key(r), r["w_bits"], r["a_bits"])


def best_ours(records: list[dict], metric: str = "median_us") -> dict[tuple, dict]:
    """Fastest correct backend of ours per (dtype, M, K, N, w_bits, a_bits), over ops and
    group sizes (W8A8: quant_linear 8-bit and int8_linear both count)."""
    return RC.fastest(
        records, bits_key, lambda r: is_ours(r) and _ok(r) and r.get(metric) is not None, metric
    )


def best_peers(records: list[dict]) -> dict[tuple, dict]:
    """Fastest correct installed peer per (dtype, M, K, N, w_bits, a_bits). Peers are complete
    low-bit linears (kind 'peer'); bare GEMM baselines (kind 'gemm') are listed, not compared."""
    return RC.fastest(records, bits_key, lambda r: r.get("kind") == "peer" and _ok(r))


# --------------------------------------------------------------------------- tables


def format_table(records: list[dict]) -> str:
    """One row per configuration of ours: each backend's time and the best one's metrics."""
    rows_by: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if is_ours(r):
            key = (*bits_key(r), r.get("group_size"), r["op"])
            rows_by.setdefault(key, {})[r["backend"]] = r
    # Our kernels and the reference first, then every other registered implementation timed.
    seen = {b for row in rows_by.values() for b in row}
    backends = [b for b in OUR_BACKENDS if b in seen] + sorted(seen - set(OUR_BACKENDS))
    peers = best_peers(records)

    rows = []
    for key, row in rows_by.items():
        dtype, m, k, n, wb, ab, g, op = key
        ok = [r for r in row.values() if _ok(r)]
        b = min(ok, key=lambda r: r["median_us"]) if ok else None
        any_rec = next(iter(row.values()))
        peer = peers.get(key[:6])
        rows.append([
            dtype, m, k, n, f"W{wb}A{ab}", "ch" if g == k else g,
            "i8" if op == "int8_linear" else "q",
            any_rec.get("dense_us"), *(RC.time_cell(row.get(name)) for name in backends),
            b["backend"] if b else None, b.get("graph_us") if b else None,
            b.get("tflops") if b else None, b.get("gbps") if b else None,
            b.get("pct_hbm") if b else None, b.get("pct_roofline") if b else None,
            b.get("speedup_vs_dense") if b else None,
            b.get("graph_speedup_vs_dense") if b else None, any_rec.get("bitops_ratio"),
            f"{peer['backend']} {peer['median_us']:.1f}" if peer else None,
        ])  # fmt: skip
    header = [
        "dtype", "M", "K", "N", "bits", "G", "op", "dense_us", *(f"{b}_us" for b in backends),
        "best", "graph_us", "TFLOP/s", "GB/s", "%HBM", "%roof", "x_fp16", "x_fp16_g",
        "bitops_x", "best_peer_us",
    ]  # fmt: skip
    legend = (
        "(us: do_bench median, eager; graph_us: CUDA-graph replay per call (M <= 256); "
        "x_fp16_g: speedup on graph replay; '!' failed the fp32 check; '-' skipped; "
        "G ch = per-channel; op q = quant_linear, i8 = int8_linear)"
    )
    return H.format_table(header, rows) + "\n" + legend


def format_baselines(records: list[dict]) -> str:
    rows = []
    for r in records:
        if is_ours(r):
            continue
        rows.append([
            r["dtype"], r["M"], r["K"], r["N"], r["backend"], r.get("kind"),
            f"W{r['w_bits']}A{r['a_bits']}", r.get("act_dtype"),
            r.get("median_us") if r.get("status") in ("ok", "incorrect") else r.get("status"),
            r.get("graph_us"), r.get("speedup_vs_dense"), r.get("rel_err"),
            (r.get("reason") or "")[:60],
        ])  # fmt: skip
    header = [
        "dtype", "M", "K", "N", "baseline", "kind", "bits", "x_dtype", "us", "graph_us",
        "x_fp16", "rel_err", "reason",
    ]  # fmt: skip
    return "baselines and peers (gemm = bare GEMM on pre-quantized inputs):\n" + H.format_table(
        header, rows
    )


def format_first_calls(records: list[dict]) -> str:
    per: dict[str, list[float]] = {}
    for r in records:
        if r.get("first_call_ms") is not None:
            name = f"{r['backend']}:{r['op']}" if is_ours(r) else r["backend"]
            per.setdefault(name, []).append(r["first_call_ms"])
    rows = [[b, len(v), statistics.median(v), max(v)] for b, v in sorted(per.items())]
    return "first-call cost (ms, wall, synchronized, JIT included):\n" + H.format_table(
        ["backend", "configs", "median_ms", "max_ms"], rows
    )


# --------------------------------------------------------------------------- targets


def _check(name, rows, ok, metric, graph_ok=None) -> dict:
    keys = ("dtype", "M", "K", "N", "w_bits", "a_bits", "backend", "op")
    out = RC.target_check(name, rows, ok, metric, keys)
    if graph_ok is not None:
        g = [graph_ok(r) for r in rows if graph_ok(r) is not None]
        out["cuda_graph_n_pass"] = f"{sum(g)}/{len(g)}" if g else None
    return out


def _speedup(threshold: float):
    def ok(r: dict) -> bool:
        return (r.get("speedup_vs_dense") or 0.0) >= threshold

    def graph_ok(r: dict) -> bool | None:
        g = r.get("graph_speedup_vs_dense")
        return None if g is None else g >= threshold

    return ok, graph_ok


def evaluate_targets(records: list[dict]) -> dict[str, dict]:
    """PASS when every measured configuration of the kind meets the bar; 'pass' is None (N/A)
    when none was measured. Speedups are do_bench (eager) times of the best correct backend of
    ours vs fp16 cuBLAS; the CUDA-graph count is printed beside them for information."""
    best = list(best_ours(records).values())

    def sel(wb=None, ab=None, m_max=None, m_min=None, m_eq=None, big=False, kn=None):
        return [
            r for r in best
            if (wb is None or r["w_bits"] == wb) and (ab is None or r["a_bits"] == ab)
            and (m_max is None or r["M"] <= m_max) and (m_min is None or r["M"] >= m_min)
            and (m_eq is None or r["M"] == m_eq)
            and (not big or (r["K"] >= 4096 and r["N"] >= 4096))
            and (kn is None or (r["K"], r["N"]) == kn)
        ]  # fmt: skip

    out = {}
    ok, g = _speedup(3.5)
    out["w4a16_small_m_3.5x"] = _check(
        "W4A16, M <= 16, K,N >= 4096: >= 3.5x fp16", sel(4, 16, m_max=16, big=True),
        ok, "speedup_vs_dense", g,
    )  # fmt: skip
    out["w4a16_hbm85"] = _check(
        "W4A16, M <= 16, 4096x11008: >= 85% of HBM bandwidth",
        sel(4, 16, m_max=16, kn=(4096, 11008)),
        lambda r: (r.get("pct_hbm") or 0.0) >= 85.0,
        "pct_hbm",
    )
    ok, g = _speedup(5.0)
    out["w2a16_m1_5x"] = _check(
        "W2A16, M = 1, K,N >= 4096: >= 5x fp16", sel(2, 16, m_eq=1, big=True),
        ok, "speedup_vs_dense", g,
    )  # fmt: skip
    ok, g = _speedup(0.95)
    out["a16_large_m_0.95x"] = _check(
        "weight-only (A16), M >= 4096: >= 0.95x fp16", sel(ab=16, m_min=4096),
        ok, "speedup_vs_dense", g,
    )  # fmt: skip
    ok, g = _speedup(1.6)
    out["w8a8_large_m_1.6x"] = _check(
        "W8A8 int8, M >= 4096: >= 1.6x fp16", sel(8, 8, m_min=4096), ok, "speedup_vs_dense", g
    )
    ok, g = _speedup(1.4)
    out["w4a8_large_m_1.4x"] = _check(
        "W4A8, M >= 4096: >= 1.4x fp16", sel(4, 8, m_min=4096), ok, "speedup_vs_dense", g
    )
    out["beats_peers"] = _peer_check(records)
    return out


def _peer_check(records: list[dict]) -> dict:
    """Per (dtype, M, K, N, bits) where a peer ran correctly: our best is no slower."""
    ours = best_ours(records)
    rows = []
    for key, peer in best_peers(records).items():
        mine = ours.get(key)
        rows.append({
            "dtype": key[0], "M": key[1], "K": key[2], "N": key[3], "w_bits": key[4],
            "a_bits": key[5], "backend": mine["backend"] if mine else None,
            "op": mine["op"] if mine else None, "peer": peer["backend"],
            "ratio_vs_peer": peer["median_us"] / mine["median_us"] if mine else 0.0,
        })  # fmt: skip
    return _check(
        "every bit-width no slower than the best installed peer (same bits, shape)",
        rows,
        lambda r: r["ratio_vs_peer"] >= 1.0,
        "ratio_vs_peer",
    )


# --------------------------------------------------------------------------- dispatch


# Benchmark rows that time a registered implementation of an op: (kind, backend) -> name, and
# the (w_bits, a_bits) they measured where that matters.
REGISTERED_PEERS = {
    ("peer", "torch_int4pack"): ("quant_linear", "torch_int4pack"),
    ("gemm", "torch_int_mm"): ("int8_linear", "torch_int_mm"),
    ("gemm", "torch_scaled_mm_fp8"): ("fp8_linear", "torch_scaled_mm"),
}
DISPATCH_OPS = ("quant_linear", "int8_linear", "fp8_linear")


def impl_name(r: dict, op: str) -> str | None:
    """The registered implementation of ``op`` a record times (None: another op, or a peer we
    do not run). The dense row is "dense"."""
    if r.get("kind") == "dense" or r.get("backend") == "dense":
        return "dense"
    if is_ours(r):
        return r["backend"] if r.get("op") == op else None
    hit = REGISTERED_PEERS.get((r.get("kind"), r.get("backend")))
    return hit[1] if hit and hit[0] == op else None


def _correct(r: dict) -> bool:
    return _ok(r) and r.get("correct", True) is not False


def derive_dispatch(records: list[dict], capability: str | None = None) -> dict[str, list[dict]]:
    """Buckets per op for write_dispatch_table: per (dtype, [bits, act_bits,] M bucket) every
    registered implementation's eager and graph time (geometric mean over the shapes measured
    there), the dense layer's, the ranking (graph time where recorded) and auto's pick on a GPU
    of ``capability`` (``report_common.auto_pick``). torch_dense is timed by the dense row: it
    runs that GEMM. quant_linear buckets pin "bits" and "act_bits"."""
    out: dict[str, list[dict]] = {}
    config = lambda r: (r["K"], r["N"])  # noqa: E731
    for op in DISPATCH_OPS:
        rows = [r for r in records if impl_name(r, op) not in (None, "dense")]
        if not rows:
            continue
        dense_rows = [r for r in records if impl_name(r, op) == "dense"]
        pick = RC.auto_pick(op, capability)
        entries: list[dict] = []
        for dtype in sorted({r["dtype"] for r in rows}):
            rows_d = [r for r in rows if r["dtype"] == dtype]
            buckets = H.bucket_bounds(r["M"] for r in rows_d)
            combos = (
                sorted({(r["w_bits"], r["a_bits"]) for r in rows_d})
                if op == "quant_linear"
                else [None]
            )  # noqa: E501
            for combo in combos:
                pins = {} if combo is None else {"bits": combo[0], "act_bits": combo[1]}
                for m, m_max in buckets:
                    cell = [
                        r for r in rows_d
                        if r["M"] == m and (combo is None or (r["w_bits"], r["a_bits"]) == combo)
                    ]  # fmt: skip
                    if not cell:
                        continue
                    shapes = {config(r) for r in cell}
                    dcell = [
                        r for r in dense_rows
                        if r["dtype"] == dtype and r["M"] == m and config(r) in shapes
                    ]  # fmt: skip
                    times = RC.cell_times(cell, lambda r, op=op: impl_name(r, op), _correct, config)
                    dense = RC.dense_times(dcell, cell, config)
                    if dense is not None and not (times.get("torch_dense") or {}).get("eager"):
                        times["torch_dense"] = dict(dense)  # older records: the dense row
                    entry = {"dtype": dtype, "m_max": m_max, **pins,
                             "shapes": sorted([list(c) for c in shapes])}  # fmt: skip
                    k, n = min(shapes)
                    call = {"dtype": dtype, "m": m, "k": k, "n": n, **pins}
                    if pins:
                        call["group_size"] = next(
                            (r["group_size"] for r in cell if r.get("group_size")), k
                        )
                    entry.update(RC.ranked_entry(times, dense, pick, call))
                    entries.append(entry)
        out[op] = entries
    return out


def pick_backend(cell: list[dict]) -> str:
    """Lowest geometric mean of time / best time over the cell's configurations (shape and
    group size), among backends correct on every one of them; torch when none qualifies."""
    return RC.geomean_pick(cell, OUR_BACKENDS, lambda r: (r["K"], r["N"], r.get("group_size")), _ok)
