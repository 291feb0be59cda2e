#!/usr/bin/env python
"""Rewrite a GPU's dispatch table from benchmark records already on disk (no GPU needed).

    python benchmarks/dispatch_from_results.py --gpu "NVIDIA H100 80GB HBM3" --capability 9.0 \
        --lowrank results/h100_run1/lowrank.jsonl --quant results/h100_run2/quant.jsonl \
        --attention results/h100_run2/attention_after_fix.jsonl

Each op's buckets come from the same derivation the benchmark's ``--write-dispatch`` uses
(``lowrank_report.derive_dispatch``, ``quant_report.derive_dispatch``); attention's from the
forward rows of ``bench_attention.py``. Every bucket keeps each registered implementation's
eager and graph-replay time and the dense layer's, ranks by graph time where recorded, and
names what auto runs on a GPU of that architecture (verified kernels only, the 1.10x rule).
With --capability the architecture's table (``sm90.json``) is written beside the GPU's.
Buckets end at twice the largest measured M (``harness.bucket_bounds``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

import harness as H  # noqa: E402
import lowrank_report as LR  # noqa: E402
import quant_report as QR  # noqa: E402
import report_common as RC  # noqa: E402


def _records(path: Path | None) -> list[dict]:
    if path is None:
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    pick = RC.auto_pick("attention", capability)
    entries = []
    for dtype in sorted({r["dtype"] for r in rows}):
        for rel in (1, 0):
            rows_r = [r for r in rows if r["dtype"] == dtype and int(r["rel"]) == rel]
            for t, m_max in H.bucket_bounds(r["T"] for r in rows_r) if rows_r else ():
                cell = [r for r in rows_r if r["T"] == t]
                times = RC.cell_times(
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
                entry.update(RC.ranked_entry(times, dense, pick, call))
                entries.append(entry)
    return entries


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
        entries = LR.derive_dispatch(_records(args.lowrank), args.capability)
        tables["lowrank_linear"] = (entries, args.lowrank)
    if args.quant:
        for op, entries in QR.derive_dispatch(_records(args.quant), args.capability).items():
            tables[op] = (entries, args.quant)
    if args.attention:
        entries = attention_entries(_records(args.attention), args.capability)
        tables["attention"] = (entries, args.attention)
    for op, (entries, source) in tables.items():
        recs = _records(source)
        meta = {
            "source": str(source), "derived_by": "benchmarks/dispatch_from_results.py",
            "commit": recs[0].get("commit") if recs else None,
            "ranking": "graph-replay time where recorded (rank_by per bucket), else eager; "
            "times are geometric means over the shapes of a bucket; where the records have no "
            "torch_dense row, its time is the dense row's (its GEMM; the A8 paths' activation "
            "quantizer, one elementwise pass, not included)",
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
