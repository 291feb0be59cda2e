#!/usr/bin/env python
"""How well does a LatencyTable predict a subnet's latency? DeiT-B, batch 1, fp16.

Builds :class:`supernet_kernels.cost.LatencyTable` for the converted DeiT-B supernet on the GPU
(every rank-elastic layer at three ranks of its choices: the smallest but one, the middle one
and the largest; every other layer as it is), then for a few random configs over those ranks:
the table's prediction, and the measured latency of the extracted subnet (CUDA-graph replay,
as the table times layers). Error = |predicted - measured| / measured (``cost.compare``).

    python benchmarks/bench_latency_table.py --out DIR            # GPU, ~40 s
    python benchmarks/bench_latency_table.py --smoke --out DIR    # CPU, tiny ViT, logic only

Records (kind "latency_table") are appended to DIR/models.jsonl; the summary line is printed
last. On the CPU the times are CPU times (the table warns), so the error says nothing about a
GPU.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

import harness as H  # noqa: E402


def build_model(smoke: bool):
    import timm

    if smoke:
        m = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32, patch_size=16
        )
        return m.eval(), (1, 3, 32, 32)
    return timm.create_model("deit_base_patch16_224", pretrained=False).eval(), (1, 3, 224, 224)


def rank_choices(space: dict) -> dict[str, list[int]]:
    """Three ranks per rank-elastic layer: the smallest but one, the middle, the largest."""
    out = {}
    for name, dims in space["linear"].items():
        ranks = [r for r in dims.get("rank", []) if r is not None]
        if len(ranks) >= 3:
            out[name] = sorted({ranks[1], ranks[len(ranks) // 2], ranks[-1]})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=H.RESULTS_DIR)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny ViT (logic only)")
    p.add_argument("--configs", type=int, default=6)
    p.add_argument("--warmup-ms", type=float, default=10)
    p.add_argument("--rep-ms", type=float, default=30)
    p.add_argument("--summary-json", type=Path, default=None)
    args = p.parse_args(argv)

    import supernet_kernels as sk
    from supernet_kernels.cost import LatencyTable, compare

    gpu = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.float16 if gpu else torch.float32
    t0 = time.perf_counter()
    model, shape = build_model(args.smoke)
    sn = sk.convert(model).to(device=device, dtype=dtype).eval()
    choices = rank_choices(sn.space)
    kwargs = dict(warmup=args.warmup_ms, reps=args.rep_ms) if gpu else dict(warmup=1, reps=3)
    with torch.no_grad():
        table = LatencyTable.build(
            sn, shape, device, choices={n: [{"rank": r} for r in rs] for n, rs in choices.items()},
            **kwargs,
        )  # fmt: skip
    t_build = time.perf_counter() - t0
    env = H.environment(device)
    rng = random.Random(0)
    records = []
    for i in range(args.configs):
        cfg = sn.max_config()
        for name, rs in choices.items():
            cfg["linear"][name]["rank"] = rs[0] if i == 0 else rng.choice(rs)
        predicted = table.predict(cfg, model=sn)
        sub = sn.extract(cfg).to(device=device, dtype=dtype).eval()
        measured = LatencyTable.measure(sub, shape, device, **kwargs)
        err = compare(predicted, measured)  # |p - m| / m
        rec = dict(
            env, kind="latency_table", model="deit_b" if not args.smoke else "vit_tiny_smoke",
            batch=1, dtype=str(dtype).replace("torch.", ""), config_index=i,
            ranks={n: cfg["linear"][n]["rank"] for n in choices},
            predicted_ms=predicted, measured_ms=measured, rel_err=err,
            other_ms=table.other_ms, build_s=t_build,
        )  # fmt: skip
        records.append(rec)
        print(
            f"[latency] config {i}: predicted {predicted:.3f} ms, measured {measured:.3f} ms, "
            f"error {100 * err:.1f}%",
            flush=True,
        )
        del sub
    errs = [abs(r["rel_err"]) for r in records]
    summary = {
        "device": env.get("gpu") or str(device),
        "table_build_s": round(t_build, 1),
        "configs": len(records),
        "median_abs_err": statistics.median(errs) if errs else None,
        "max_abs_err": max(errs) if errs else None,
        "other_ms": table.other_ms,
    }
    path = H.append_results(args.out / "models.jsonl", records)
    print(f"[latency] {len(records)} records appended to {path}")
    print("[latency] summary " + json.dumps(summary))
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
