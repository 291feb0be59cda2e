#!/usr/bin/env python
"""Rewrite a GPU's dispatch table from benchmark records already on disk (no GPU needed).

    python benchmarks/dispatch_from_results.py --gpu "NVIDIA H100 80GB HBM3" \
        --lowrank results/h100_run1/lowrank.jsonl --quant results/h100_run2/quant.jsonl \
        --attention results/h100_run2/attention_after_fix.jsonl

Each op's entries come from the same derivation the benchmark's ``--write-dispatch`` uses
(``lowrank_report.derive_dispatch``, ``quant_report.derive_dispatch``); attention's from the
op rows of ``bench_attention.py``: per (dtype, rel pos), the fastest correct backend, where the
"torch" backend without rel pos is SDPA (the ``sdpa`` row) and with it the materializing
reference. Buckets end at twice the largest measured M (``harness.bucket_bounds``).
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


def _records(path: Path | None) -> list[dict]:
    if path is None:
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def attention_entries(records: list[dict]) -> list[dict]:
    """Per (dtype, rel): the backend of the fastest correct forward row; "torch" stands for the
    reference (rel) or SDPA (no rel), which is what the torch backend runs on a GPU."""
    rows = [
        r for r in records
        if r.get("kind") == "attention" and r.get("pass") == "fwd" and r.get("status") == "ok"
        and r.get("median_us")
    ]  # fmt: skip
    as_backend = {
        "triton": "triton", "triton_norel": "triton", "reference": "torch", "sdpa": "torch"
    }  # fmt: skip
    entries = []
    for dtype in sorted({r["dtype"] for r in rows}):
        for rel in (1, 0):
            cell = [r for r in rows if r["dtype"] == dtype and int(r["rel"]) == rel]
            if not cell:
                continue
            best = min(cell, key=lambda r: r["median_us"])
            m_max = H.bucket_bounds(r["T"] for r in cell)[-1][1]
            entries.append(
                {"dtype": dtype, "m_max": m_max, "rel": rel, "bias": 0,
                 "backend": as_backend[best["backend"]]}
            )  # fmt: skip
    return entries


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--gpu", required=True)
    p.add_argument("--lowrank", type=Path)
    p.add_argument("--quant", type=Path)
    p.add_argument("--attention", type=Path)
    p.add_argument("--config-dir", type=Path, default=None, help="default: the package's")
    args = p.parse_args(argv)
    from supernet_kernels.dispatch import write_dispatch_table

    tables: dict[str, tuple[list[dict], Path]] = {}
    if args.lowrank:
        tables["lowrank_linear"] = (LR.derive_dispatch(_records(args.lowrank)), args.lowrank)
    if args.quant:
        for op, entries in QR.derive_dispatch(_records(args.quant)).items():
            tables[op] = (entries, args.quant)
    if args.attention:
        tables["attention"] = (attention_entries(_records(args.attention)), args.attention)
    for op, (entries, source) in tables.items():
        recs = _records(source)
        meta = {
            "source": str(source), "derived_by": "benchmarks/dispatch_from_results.py",
            "commit": recs[0].get("commit") if recs else None,
            "torch": recs[0].get("torch") if recs else None,
            "triton": recs[0].get("triton") if recs else None,
        }  # fmt: skip
        path = write_dispatch_table(args.gpu, op, entries, meta, args.config_dir)
        print(f"{op}: {len(entries)} entries -> {path}")
        for e in entries:
            print("   ", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
