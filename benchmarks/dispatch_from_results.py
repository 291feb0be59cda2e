#!/usr/bin/env python
"""Rewrite a GPU's dispatch table from benchmark records already on disk (no GPU needed).

    python benchmarks/dispatch_from_results.py --gpu "NVIDIA H100 80GB HBM3" --capability 9.0 \
        --lowrank results/h100_run1/lowrank.jsonl --quant results/h100_run2/quant.jsonl \
        --attention results/h100_run2/attention_after_fix.jsonl

This module is the one home of that derivation: the benchmarks' ``--write-dispatch`` (the
harness) calls :func:`derive` on the records it just measured, this command line on records
already on disk; attention's buckets come from the forward rows of ``bench_attention.py``.
Every bucket keeps each registered implementation's eager and graph-replay time and the dense
layer's, ranks by graph time where recorded, and names what auto runs on a GPU of that
architecture (verified kernels only, the 1.10x rule). With --capability the architecture's
table (``sm90.json``) is written beside the GPU's.
Buckets end at twice the largest measured M (``harness.bucket_bounds``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

from harness.records import bucket_bounds, read_results  # noqa: E402

RANKING = (
    "graph-replay time where recorded (rank_by per bucket), else eager; times are geometric "
    "means over the shapes of a bucket; where the records have no torch_dense row, its time is "
    "the dense row's (its GEMM; the A8 paths' activation quantizer, one elementwise pass, not "
    "included)"
)


def _records(path: Path | None) -> list[dict]:
    return read_results(path) if path is not None else []


# --------------------------------------------------------------------------- ranking a bucket


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
        # two rows may time one implementation (the registered path and the benchmark's own
        # peer row of it): a row that ran correctly is not replaced by one that did not
        if name is not None and (config(r) not in by_name[name] or ok(r)):
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


def cell_dense(
    cell: list[dict],
    dense_rows: list[dict],
    dtype: str,
    m: int,
    config: Callable[[dict], tuple],
    times: dict[str, dict[str, float | None]],
) -> tuple[set, dict[str, float | None] | None]:
    """The cell's configurations and the dense layer's times over them (its rows at the cell's
    dtype and M); in older records, which have no ``torch_dense`` rows, the dense row's GEMM
    stands in for it in ``times``."""
    shapes = {config(r) for r in cell}
    dcell = [
        r for r in dense_rows if r["dtype"] == dtype and r["M"] == m and config(r) in shapes
    ]  # fmt: skip
    dense = dense_times(dcell, cell, config)
    if dense is not None and not (times.get("torch_dense") or {}).get("eager"):
        times["torch_dense"] = dict(dense)
    return shapes, dense


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


# --------------------------------------------------------------------------- lowrank_linear


def lowrank_entries(records: list[dict], capability: str | None = None) -> list[dict]:
    """Buckets for write_dispatch_table, ordered (dtype, m_max, rank_max) ascending so that
    'first entry with M <= m_max and rank <= rank_max' picks the nearest measured bucket. Each
    keeps every implementation's eager and graph time (geometric mean over the shapes measured
    there), the dense layer's (also torch_dense's: that GEMM), the ranking (graph time where
    recorded) and auto's pick on a GPU of ``capability``."""
    rows = [r for r in records if r["backend"] != "dense" and r.get("M") is not None]
    dense_rows = [r for r in records if r["backend"] == "dense"]
    config = lambda r: (r["K"], r["N"])  # noqa: E731
    ok = lambda r: r.get("status") == "ok"  # noqa: E731
    pick = auto_pick("lowrank_linear", capability)
    from supernet_kernels import registry

    registered = set(registry.implementations("lowrank_linear")) | {"torch_two_gemm", "torch_dense"}
    entries: list[dict] = []
    for dtype in sorted({r["dtype"] for r in rows}):
        rows_d = [r for r in rows if r["dtype"] == dtype]
        for m, m_max in bucket_bounds(r["M"] for r in rows_d):
            for rank, rank_max in bucket_bounds(r["rank"] for r in rows_d):
                cell = [r for r in rows_d if r["M"] == m and r["rank"] == rank]
                if not cell:
                    continue
                # records of an implementation no longer registered (the CUDA C++ kernel,
                # removed after it lost at every shape) are left out
                times = cell_times(
                    cell, lambda r: r["backend"] if r["backend"] in registered else None, ok, config
                )
                if "torch" in times and "torch_two_gemm" not in times:
                    # older records: the reference's rows time the two GEMMs on slices
                    times["torch_two_gemm"] = dict(times["torch"])
                shapes, dense = cell_dense(cell, dense_rows, dtype, m, config, times)
                entry = {"dtype": dtype, "m_max": m_max, "rank_max": rank_max,
                         "shapes": sorted([list(c) for c in shapes])}  # fmt: skip
                k, n = min(shapes)
                call = {"dtype": dtype, "m": m, "rank": rank, "k": k, "n": n}
                entry.update(ranked_entry(times, dense, pick, call))
                entries.append(entry)
    return entries


# --------------------------------------------------------------------------- quant ops


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
    if r.get("kind") in ("ours", "peer") and r.get("op") is not None:
        # a registered implementation of an op (torch's paths are role "peer" since the
        # harness's one schema; records before it have them as "ours")
        # (records of an implementation no longer registered, such as the deleted CUDA int8
        # GEMM, are left out)
        from supernet_kernels import registry

        known = r.get("op") == op and r["backend"] in registry.implementations(op)
        return r["backend"] if known else None
    hit = REGISTERED_PEERS.get((r.get("kind"), r.get("backend")))
    return hit[1] if hit and hit[0] == op else None


def _correct(r: dict) -> bool:
    ok = r.get("status") == "ok" and r.get("median_us") is not None
    return ok and r.get("correct", True) is not False


def quant_entries(records: list[dict], capability: str | None = None) -> dict[str, list[dict]]:
    """Buckets per op for write_dispatch_table: per (dtype, [bits, act_bits,] M bucket) every
    registered implementation's eager and graph time (geometric mean over the shapes measured
    there), the dense layer's, the ranking (graph time where recorded) and auto's pick on a GPU
    of ``capability`` (``auto_pick``). torch_dense is timed by the dense row: it
    runs that GEMM. quant_linear buckets pin "bits" and "act_bits"."""
    out: dict[str, list[dict]] = {}
    config = lambda r: (r["K"], r["N"])  # noqa: E731
    for op in DISPATCH_OPS:
        rows = [r for r in records if impl_name(r, op) not in (None, "dense")]
        # Where the registered path itself ran (records since the harness's schema), the
        # benchmark's own row of the same name gives way: torch_int_mm's bare GEMM skips the
        # activation quantizer the registered path runs. Where it declined (torch_int4pack
        # takes no fp16 on CUDA), the benchmark's row (bf16 x) stays, as before.
        registered = {r["backend"] for r in rows if r.get("op") == op and _correct(r)}
        rows = [r for r in rows if r.get("op") == op or impl_name(r, op) not in registered]
        if not rows:
            continue
        dense_rows = [r for r in records if impl_name(r, op) == "dense"]
        pick = auto_pick(op, capability)
        entries: list[dict] = []
        for dtype in sorted({r["dtype"] for r in rows}):
            rows_d = [r for r in rows if r["dtype"] == dtype]
            buckets = bucket_bounds(r["M"] for r in rows_d)
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
                    times = cell_times(cell, lambda r, op=op: impl_name(r, op), _correct, config)
                    shapes, dense = cell_dense(cell, dense_rows, dtype, m, config, times)
                    entry = {"dtype": dtype, "m_max": m_max, **pins,
                             "shapes": sorted([list(c) for c in shapes])}  # fmt: skip
                    k, n = min(shapes)
                    call = {"dtype": dtype, "m": m, "k": k, "n": n, **pins}
                    if pins:
                        call["group_size"] = next(
                            (r["group_size"] for r in cell if r.get("group_size")), k
                        )
                    entry.update(ranked_entry(times, dense, pick, call))
                    entries.append(entry)
        out[op] = entries
    return out


# --------------------------------------------------------------------------- attention


# bench_attention's forward rows -> the registered implementation they time.
ATTENTION_IMPLS = {
    "triton": "triton",
    "triton_norel": "triton",
    "reference": "torch",
    "sdpa": "torch_sdpa",
}  # noqa: E501


def attention_entries(records: list[dict], capability: str | None = None) -> list[dict]:
    """Per (dtype, rel, T bucket): every implementation's forward time, ranked. The "dense"
    attention is torch's SDPA (torch_sdpa, the dense-equivalent path) where it was recorded;
    records before the torch_sdpa rows have it without rel pos only (with rel pos: null)."""
    rows = [
        r for r in records
        if r.get("kind") == "attention" and r.get("pass") == "fwd" and r.get("status") == "ok"
        and r.get("median_us") and r.get("backend") in ATTENTION_IMPLS
    ]  # fmt: skip
    config = lambda r: (r.get("B"), r.get("H"), r.get("d"))  # noqa: E731
    pick = auto_pick("attention", capability)
    entries = []
    for dtype in sorted({r["dtype"] for r in rows}):
        for rel in (1, 0):
            rows_r = [r for r in rows if r["dtype"] == dtype and int(r["rel"]) == rel]
            for t, m_max in bucket_bounds(r["T"] for r in rows_r) if rows_r else ():
                cell = [r for r in rows_r if r["T"] == t]
                times = cell_times(
                    cell, lambda r: ATTENTION_IMPLS[r["backend"]], lambda r: True, config
                )
                dense = dict(times["torch_sdpa"]) if "torch_sdpa" in times else None
                shapes = sorted([list(c) for c in {config(r) for r in cell}])
                entry = {"dtype": dtype, "m_max": m_max, "rel": rel, "bias": 0, "shapes": shapes}
                b, h, d = min(tuple(c) for c in shapes)
                call = {
                    "dtype": dtype,
                    "m": t,
                    "bh": b * h,
                    "t_k": t,
                    "d": d,
                    "rel": rel,
                    "bias": 0,
                }
                entry.update(ranked_entry(times, dense, pick, call))
                entries.append(entry)
    return entries


def derive(bench: str, records: list[dict], capability: str | None = None) -> dict[str, list]:
    """op -> dispatch buckets of a benchmark's records (``bench``: lowrank, quant, attention)."""
    if bench == "lowrank":
        return {"lowrank_linear": lowrank_entries(records, capability)}
    if bench == "quant":
        return quant_entries(records, capability)
    if bench == "attention":
        return {"attention": attention_entries(records, capability)}
    raise ValueError(f"bench must be lowrank, quant or attention, got {bench!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--gpu", required=True)
    p.add_argument(
        "--capability", default=None,
        help="the GPU's compute capability (9.0): also write the architecture's table (sm90.json)",
    )  # fmt: skip
    p.add_argument("--lowrank", type=Path)
    p.add_argument("--quant", type=Path)
    p.add_argument("--attention", type=Path)
    p.add_argument("--config-dir", type=Path, default=None, help="default: the package's")
    p.add_argument(
        "--note", default=None,
        help="a sentence kept in each op's meta (e.g. which kernels changed since the records)",
    )  # fmt: skip
    args = p.parse_args(argv)
    from supernet_kernels.dispatch import write_dispatch_table

    tables: dict[str, tuple[list[dict], Path]] = {}
    if args.lowrank:
        entries = lowrank_entries(_records(args.lowrank), args.capability)
        tables["lowrank_linear"] = (entries, args.lowrank)
    if args.quant:
        for op, entries in quant_entries(_records(args.quant), args.capability).items():
            tables[op] = (entries, args.quant)
    if args.attention:
        entries = attention_entries(_records(args.attention), args.capability)
        tables["attention"] = (entries, args.attention)
    for op, (entries, source) in tables.items():
        recs = _records(source)
        meta = {
            "source": str(source), "derived_by": "benchmarks/dispatch_from_results.py",
            "commit": recs[0].get("commit") if recs else None,
            "ranking": RANKING,
            "torch": recs[0].get("torch") if recs else None,
            "triton": recs[0].get("triton") if recs else None,
            **({"note": args.note} if args.note else {}),
        }  # fmt: skip
        paths = write_dispatch_table(
            args.gpu, op, entries, meta, args.config_dir, capability=args.capability
        )
        print(f"{op}: {len(entries)} buckets -> {', '.join(map(str, paths))}")
        for e in entries:
            keys = {k: v for k, v in e.items() if k not in ("times_us", "ranked", "shapes")}
            print("   ", keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
