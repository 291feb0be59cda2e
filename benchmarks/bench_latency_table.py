#!/usr/bin/env python
"""How well does a LatencyTable predict a subnet's latency? DeiT-B, batch 1, fp16.

Builds :class:`supernet_kernels.cost.LatencyTable` for the converted DeiT-B supernet on the GPU
(every rank-elastic layer at three ranks of its choices: the smallest but one, the middle one
and the largest; every other layer as it is), then for a few random configs over those ranks:
the table's prediction, and the measured latency of the extracted subnet (CUDA-graph replay,
as the table times layers). Error = |predicted - measured| / measured (``cost.compare``).

    python benchmarks/bench_latency_table.py --out DIR            # GPU, ~40 s
    python benchmarks/bench_latency_table.py --smoke --out DIR    # CPU, tiny ViT, logic only

A whole-model benchmark on the harness (``harness.model_main``: its command line, records and
summary): records (kind "latency_table", bench "latency_table") are appended to
DIR/models.jsonl; the report (``report.py latency_table FILE``) ends with the summary line. On
the CPU the times are CPU times (the table warns), so the error says nothing about a GPU.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

import harness as H  # noqa: E402
import models_report  # noqa: E402

NAME, DOC, RESULTS = "latency_table", __doc__, "models"
WARMUP_MS, REP_MS = 10, 30
CPU_NOTE = "a tiny ViT on the CPU: the logic only (CPU times say nothing about a GPU)"


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


def add_args(p) -> None:
    p.add_argument("--configs", type=int, default=6, help="random configs to predict and time")


def records(ctx: H.Context):
    """Build the table, then per config: the table's prediction and the measured subnet."""
    import supernet_kernels as sk
    from supernet_kernels.cost import LatencyTable, compare

    smoke, device = not ctx.gpu, ctx.device
    dtype = torch.float16 if ctx.gpu else torch.float32
    t0 = time.perf_counter()
    model, shape = build_model(smoke)
    sn = sk.convert(model).to(device=device, dtype=dtype).eval()
    choices = rank_choices(sn.space)
    s = ctx.settings
    kwargs = dict(warmup=s.warmup_ms, reps=s.rep_ms) if ctx.gpu else dict(warmup=1, reps=3)
    with torch.no_grad():
        table = LatencyTable.build(
            sn, shape, device, choices={n: [{"rank": r} for r in rs] for n, rs in choices.items()},
            **kwargs,
        )  # fmt: skip
    t_build = time.perf_counter() - t0
    rng = random.Random(ctx.args.seed)
    for i in range(ctx.args.configs):
        cfg = sn.max_config()
        for name, rs in choices.items():
            cfg["linear"][name]["rank"] = rs[0] if i == 0 else rng.choice(rs)
        base = dict(
            kind="latency_table", model="vit_tiny_smoke" if smoke else "deit_b", batch=1,
            dtype=str(dtype).replace("torch.", ""), config_index=i,
            ranks={n: cfg["linear"][n]["rank"] for n in choices}, other_ms=table.other_ms,
            build_s=t_build,
        )  # fmt: skip
        if ctx.over_budget():
            yield dict(base, status="not_run", reason="time budget")
            continue
        predicted = table.predict(cfg, model=sn)
        sub = sn.extract(cfg).to(device=device, dtype=dtype).eval()
        measured = LatencyTable.measure(sub, shape, device, **kwargs)
        err = compare(predicted, measured)  # |p - m| / m
        print(
            f"[latency] config {i}: predicted {predicted:.3f} ms, measured {measured:.3f} ms, "
            f"error {100 * err:.1f}%",
            flush=True,
        )
        del sub
        yield dict(base, status="ok", predicted_ms=predicted, measured_ms=measured, rel_err=err)


def summary(ctx: H.Context, records: list[dict]) -> dict:
    """The table's prediction error (gpu_check.sh's latency_table entry)."""
    return models_report.latency_summary(records)


def main(argv=None) -> int:
    return H.model_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
