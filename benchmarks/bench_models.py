#!/usr/bin/env python
"""Whole-model benchmark: DeiT-B (timm deit_base_patch16_224) and the SAM ViT-B image encoder
(segment-anything, 1024x1024) under the configurations the supernet and the quantizer produce.

Configs (per model; ratios are against ``dense`` at the same batch):
  dense      the original model, fp16
  w8a8       quantize_model(bits=8, group_size=None (per-channel), act_bits=8), every linear
  w4a16      quantize_model(bits=4, group_size=128), every linear
  lowrank50  supernet_kernels.convert(model); qkv / fc1 / fc2 factorized at the one rank ratio
             (of the space's r/8 choices) whose linear-layer MACs come closest to 50% of dense
  cut        SuperSAM-style depth / width cut: blocks 1, 2, 5, 6, 9 dropped where the space
             allows (SAM keeps its global-attention blocks 2, 5), every MLP hidden 1536
  mixed      attention (qkv, proj) W8A8 per 128-group, MLP (fc1, fc2) W4A16, head fp16
  sampled    Supernet.sample_config(seed 0) of the default space (full mode only)

For each: params, MACs, BitOPs, weight bytes from supernet_kernels.cost.profile (batch-1 count
scaled by the batch: every op of these models is per image) and, on a GPU, the latency of the
standalone model (extract(config) or quantize_model) in fp16 under torch.no_grad: eager median
(harness.bench_gpu, do_bench) and CUDA-graph replay where capture works (else the reason).
Also the search-space study: each operator alone (resolution, MLP width, depth, rank, bits) at a
few levels, BitOPs cut vs measured latency cut.

Without a GPU (or --smoke) it reports counts only, on models built on the meta device and
materialized without initialization; the SVD that converting a factorized layer runs is
replaced by zero factors (counts and latency do not depend on the factor values; the GPU run
does the same, since the benchmark uses random weights anyway).

    python benchmarks/bench_models.py --quick     # GPU: DeiT-B b1 + SAM b1, 4 configs, ~90 s
    python benchmarks/bench_models.py             # GPU: all configs, batches, and the study
    python benchmarks/bench_models.py --smoke     # CPU: counts only, < 60 s
    python benchmarks/models_report.py benchmarks/results/models.jsonl   # tables + plot again
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

import harness as H  # noqa: E402
import models_report as R  # noqa: E402

LINEAR_KINDS = ("Linear", "LowRankLinear", "QuantLinear", "ElasticLinear", "ElasticLowRankLinear")
CUT_BLOCKS = (1, 2, 5, 6, 9)  # SuperSAM-style depth cut
CUT_MLP_HIDDEN = 1536
QUICK_CONFIGS = ("dense", "w8a8", "lowrank50", "cut")
ALL_CONFIGS = ("dense", "w8a8", "w4a16", "lowrank50", "cut", "mixed", "sampled")
# A space in which every linear is dense and may be quantized (W8A8 needs w_bits <= 8).
QUANT_SPACE = {"linear": {"*": {"rank": [None], "w_bits": [4, 8, 16], "a_bits": [8, 16]}}}
PLOT_NAME = "models_latency_vs_bitops.png"
# Configs that change only linear layers (the 8.5%-of-SAM-time note applies to them as is).
LINEAR_ONLY = ("w8a8", "w4a16", "lowrank50", "mixed")


@dataclass(frozen=True)
class ModelSpec:
    key: str
    title: str
    resolution: int
    batches: tuple[int, ...]  # full mode
    build: Callable[[], nn.Module]


def _deit() -> nn.Module:
    import timm

    return timm.create_model("deit_base_patch16_224", pretrained=False)


def _sam() -> nn.Module:
    from segment_anything import build_sam_vit_b

    return build_sam_vit_b(checkpoint=None).image_encoder


MODELS = {
    "deit_b": ModelSpec("deit_b", "DeiT-B/16 224", 224, (1, 16), _deit),
    "sam_vit_b": ModelSpec("sam_vit_b", "SAM ViT-B encoder 1024", 1024, (1, 4), _sam),
}


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:400]


# --------------------------------------------------------------------------- building


def build_model(spec: ModelSpec, device: torch.device, dtype=torch.float16) -> nn.Module:
    """The architecture built on the meta device, then materialized on ``device`` without
    running its initializers: zeros on CPU (counting only), N(0, 0.02) on a GPU (timing)."""
    with torch.device("meta"):
        model = spec.build()
    model = model.to(dtype).to_empty(device=device).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02) if device.type == "cuda" else p.zero_()
        for b in model.buffers():
            if b.is_floating_point():
                b.zero_()
    model.requires_grad_(False)
    return model


@contextlib.contextmanager
def zero_factors() -> Iterator[None]:
    """convert() factorizes qkv / fc1 / fc2 by a float64 SVD (minutes on a CPU); counts and
    latency do not depend on the factor values, so use zero factors of the right shapes."""
    import supernet_kernels.nn.lowrank as L

    orig = L.svd_factors

    def fake(weight: torch.Tensor, rank: int | None = None):
        r = min(weight.shape) if rank is None else rank
        return weight.new_zeros(weight.shape[0], r), weight.new_zeros(r, weight.shape[1])

    L.svd_factors = fake
    try:
        yield
    finally:
        L.svd_factors = orig


@dataclass
class Supernets:
    lowrank: Any  # default space: qkv / fc1 / fc2 factorized, proj w_bits {4, 8, 16}
    dense: Any  # QUANT_SPACE, group 128: every linear dense, quantizable
    per_channel: Any  # QUANT_SPACE, per-channel groups (W8A8)


def make_supernets(model: nn.Module) -> Supernets:
    import supernet_kernels as sk

    with zero_factors():
        lowrank = sk.convert(model, build=None)
    dense = sk.convert(model, space=QUANT_SPACE, group_size=128, build=None)
    per_channel = sk.convert(model, space=QUANT_SPACE, group_size=None, build=None)
    return Supernets(lowrank, dense, per_channel)


# --------------------------------------------------------------------------- configs


def with_linears(sn, base: dict, pick: Callable[[str, dict], dict | None]) -> dict:
    """``base`` with each linear's entry replaced by ``pick(name, its space)`` (None: kept)."""
    cfg = copy.deepcopy(base)
    for name, sp in sn.space["linear"].items():
        new = pick(name, sp)
        if new is not None:
            cfg["linear"][name] = new
    return cfg


def _role(name: str) -> str:
    last = name.rsplit(".", 1)[-1]
    if last in ("qkv", "proj"):
        return "attn"
    if last in ("fc1", "fc2", "lin1", "lin2"):
        return "mlp"
    return "other"


def uniform_bits(sn, w_bits: int, a_bits: int, roles=("attn", "mlp", "other")) -> dict:
    return with_linears(
        sn,
        sn.max_config(),
        lambda n, sp: (
            {"rank": None, "w_bits": w_bits, "a_bits": a_bits} if _role(n) in roles else None
        ),
    )


def rank_config(sn, eighths: int) -> dict:
    """Every factorized layer at its ``eighths``-th rank choice (eighths/8 of min(in, out))."""

    def pick(name, sp):
        ranks = [r for r in sp["rank"] if r is not None]
        if not ranks:
            return None
        return {"rank": ranks[min(eighths, len(ranks)) - 1], "w_bits": 16, "a_bits": 16}

    return with_linears(sn, sn.max_config(), pick)


def linear_dims(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {
        n: (m.in_features, m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    }


def linear_macs(prof) -> int:
    return sum(r.macs for r in prof.layers if r.type in LINEAR_KINDS)


def choose_rank_ratio(
    space: dict, dense_prof, dims: dict[str, tuple[int, int]], target: float = 0.5
) -> tuple[int, float, dict[int, float]]:
    """The rank ratio e/8 (one for every factorized layer) whose linear-layer MACs come closest
    to ``target`` x the dense model's. Per layer, tokens = dense MACs / (in x out), so a rank-r
    layer costs tokens x r x (in + out). Returns (e, estimated ratio, {e: ratio})."""
    dense_rows = {r.name: r for r in dense_prof.layers if r.type in LINEAR_KINDS}
    total = sum(r.macs for r in dense_rows.values())
    est: dict[int, float] = {}
    n_choices = max(
        (len([r for r in sp["rank"] if r is not None]) for sp in space["linear"].values()),
        default=0,
    )
    for e in range(1, n_choices + 1):
        macs = 0
        for name, row in dense_rows.items():
            sp = space["linear"].get(name)
            ranks = [r for r in sp["rank"] if r is not None] if sp else []
            if not ranks:
                macs += row.macs
                continue
            k, n = dims[name]
            tokens = row.macs / (k * n)
            macs += tokens * ranks[min(e, len(ranks)) - 1] * (k + n)
        est[e] = macs / total
    if not est:
        raise ValueError("the space has no factorized layer")
    best = min(est, key=lambda e: abs(est[e] - target))
    return best, est[best], est


def cut_config(sn, blocks=CUT_BLOCKS, hidden: int = CUT_MLP_HIDDEN) -> tuple[dict, list[str]]:
    """Blocks ``blocks`` dropped where the space allows, every MLP at ``hidden`` (or the nearest
    choice), dense 16-bit linears. Returns (config, blocks kept because the space pins them)."""
    sp = sn.space
    cfg = uniform_bits(sn, 16, 16)
    pinned = []
    for b in blocks:
        name = f"blocks.{b}"
        if name in sp["depth"] and False in sp["depth"][name]:
            cfg["depth"][name] = False
        else:
            pinned.append(name)
    for m, widths in sp["mlp"].items():
        cfg["mlp"][m] = min(widths, key=lambda w: abs(w - hidden))
    return cfg, pinned


def mixed_config(sn) -> dict:
    return with_linears(
        sn,
        sn.max_config(),
        lambda n, sp: (
            {"rank": None, "w_bits": 8, "a_bits": 8}
            if _role(n) == "attn"
            else {"rank": None, "w_bits": 4, "a_bits": 16}
            if _role(n) == "mlp"
            else None
        ),
    )


def droppable(sn) -> list[str]:
    return [b for b, c in sn.space["depth"].items() if False in c]


def evenly(items: list, k: int) -> list:
    if k >= len(items):
        return list(items)
    step = len(items) / k
    return [items[int(i * step + step / 2)] for i in range(k)]


@dataclass
class Variant:
    """One thing to count and (on a GPU) time."""

    kind: str  # "config" | "study"
    name: str  # config name, or "operator=level"
    sn: Any  # supernet the config belongs to (None: the original model)
    config: dict | None
    resolution: int
    make: Callable[[], nn.Module]  # the standalone model to time
    operator: str | None = None
    level: Any = None
    note: str | None = None


def variants(spec: ModelSpec, model: nn.Module, sns: Supernets, dense_prof) -> list[Variant]:
    """Every config and study level of one model, in order (the table's order)."""
    from supernet_kernels.quant import quantize_model

    res = spec.resolution

    def quantized(**kw):
        def make():
            q = copy.deepcopy(model)
            quantize_model(q, **kw)
            return q

        return make

    def sub(sn, cfg):
        return lambda: sn.extract(cfg)

    e, est, _ = choose_rank_ratio(sns.lowrank.space, dense_prof, linear_dims(model))
    lr = rank_config(sns.lowrank, e)
    cut, pinned = cut_config(sns.dense)
    w8 = uniform_bits(sns.per_channel, 8, 8)
    w4 = uniform_bits(sns.dense, 4, 16)
    mixed = mixed_config(sns.dense)
    sampled = sns.lowrank.sample_config(0)
    out = [
        Variant("config", "dense", None, None, res, lambda: model),
        Variant("config", "w8a8", sns.per_channel, w8, res,
                quantized(bits=8, group_size=None, act_bits=8), note="per-channel, int8 act"),
        Variant("config", "w4a16", sns.dense, w4, res,
                quantized(bits=4, group_size=128, act_bits=16), note="group 128"),
        Variant("config", "lowrank50", sns.lowrank, lr, res, sub(sns.lowrank, lr),
                note=f"rank ratio {e}/8 (estimated linear MACs {100 * est:.0f}% of dense)"),
        Variant("config", "cut", sns.dense, cut, res, sub(sns.dense, cut),
                note="blocks kept by the space: " + (", ".join(pinned) or "none")),
        Variant("config", "mixed", sns.dense, mixed, res, sub(sns.dense, mixed),
                note="attn W8A8 g128, MLP W4A16 g128"),
        Variant("config", "sampled", sns.lowrank, sampled, sampled.get("resolution") or res,
                sub(sns.lowrank, sampled), note="sample_config(0), default space"),
    ]  # fmt: skip

    def study(op, level, sn, cfg, resolution=res):
        out.append(Variant("study", f"{op}={level}", sn, cfg, resolution, sub(sn, cfg), op, level))

    base = uniform_bits(sns.dense, 16, 16)
    for r in (sns.dense.space["resolution"] or [])[:-1]:
        study("resolution", r, sns.dense, dict(copy.deepcopy(base), resolution=r), r)
    mlp_space = sns.dense.space["mlp"]
    if mlp_space:
        widths = next(iter(mlp_space.values()))
        for i in range(len(widths) - 1):
            cfg = copy.deepcopy(base)
            for m, ws in mlp_space.items():
                cfg["mlp"][m] = ws[min(i, len(ws) - 1)]
            study("mlp_width", f"{widths[i]}/{widths[-1]}", sns.dense, cfg)
    blocks = droppable(sns.dense)
    for k in sorted({min(2, len(blocks)), min(4, len(blocks)), len(blocks)} - {0}):
        cfg = copy.deepcopy(base)
        for b in evenly(blocks, k):
            cfg["depth"][b] = False
        study("depth", f"-{k} blocks", sns.dense, cfg)
    for eighths in (2, 4, 6):
        study("rank", f"{eighths}/8", sns.lowrank, rank_config(sns.lowrank, eighths))
    for wb, ab, sn in ((8, 16, sns.dense), (4, 16, sns.dense), (8, 8, sns.per_channel)):
        study("bits", f"W{wb}A{ab}", sn, uniform_bits(sn, wb, ab))
    return out


# --------------------------------------------------------------------------- counting


def count(variant: Variant, model: nn.Module, dense_prof=None) -> dict:
    """params / MACs / BitOPs / weight bytes at batch 1 (profile under FakeTensorMode) and the
    linear layers' share of the MACs and BitOPs."""
    from supernet_kernels.cost import profile

    shape = (1, 3, variant.resolution, variant.resolution)
    if variant.sn is None:
        prof = dense_prof if dense_prof is not None else profile(model, shape)
    else:
        prof = profile(variant.sn, shape, config=variant.config)
    lin = [r for r in prof.layers if r.type in LINEAR_KINDS]
    return {
        "params": prof.total_params,
        "macs": prof.total_macs,
        "bitops": prof.total_bitops,
        "weight_bytes": prof.total_weight_bytes,
        "linear_macs": sum(r.macs for r in lin),
        "linear_bitops": sum(r.bitops for r in lin),
    }


def scaled(counts: dict, batch: int) -> dict:
    out = dict(counts)
    for k in ("macs", "bitops", "linear_macs", "linear_bitops"):
        out[k] = counts[k] * batch
    return out


# --------------------------------------------------------------------------- timing


def _graph_time(fn: Callable[[], Any], settings: H.BenchSettings) -> tuple[H.Timing | None, str]:
    """CUDA-graph replay time of ``settings.graph_calls`` forwards; (None, reason) on failure."""
    from triton.testing import do_bench

    calls = max(1, settings.graph_calls)
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        ms = do_bench(
            graph.replay, warmup=settings.warmup_ms, rep=settings.rep_ms, return_mode="median"
        )
    except Exception as exc:  # noqa: BLE001 - the reason is the result
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
        return None, _err(exc)
    finally:
        graph = None
        torch.cuda.empty_cache()
    return H.Timing(ms * 1e-3 / calls, "cuda_graph_median", 1, calls), ""


def measure(mod: nn.Module, batch: int, resolution: int, settings, graph: bool) -> dict:
    device = torch.device("cuda")
    xs = [
        torch.randn(batch, 3, resolution, resolution, device=device, dtype=torch.float16)
        for _ in range(2)
    ]

    def factory(i):
        x = xs[i]

        def run():
            with torch.no_grad():
                return mod(x)

        return run

    first, _ = H.first_call_s(factory(0), device)
    timing, _ = H.bench_gpu(factory, len(xs), settings=settings, cuda_graph=False)
    rec = {
        "first_call_ms": first * 1e3,
        "median_ms": timing.median_s * 1e3,
        "timing_method": timing.method,
        "n_rotate": timing.n_rotate,
    }
    if graph:
        g, why = _graph_time(factory(0), settings)
        rec["graph_ms"] = g.median_s * 1e3 if g else None
        rec["graph_reason"] = None if g else why
    return rec


# --------------------------------------------------------------------------- run


def run_model(spec: ModelSpec, args, gpu: bool, env: dict, run_id: str, deadline: float):
    """Count (and time) every variant of one model; returns its records."""
    from supernet_kernels.cost import profile

    device = torch.device("cuda" if gpu else "cpu")
    t0 = time.perf_counter()
    model = build_model(spec, device)
    dense_prof = profile(model, (1, 3, spec.resolution, spec.resolution))
    sns = make_supernets(model)
    vs = variants(spec, model, sns, dense_prof)
    print(f"[models] {spec.key}: built + 3 supernets in {time.perf_counter() - t0:.1f} s")
    if args.quick:
        vs = [v for v in vs if v.kind == "config" and v.name in QUICK_CONFIGS]
    batches = (1,) if args.quick else spec.batches
    settings = H.BenchSettings(
        warmup_ms=args.warmup_ms, rep_ms=args.rep_ms, graph_calls=args.graph_calls
    )
    records = []
    for v in vs:
        try:
            c = count(v, model, dense_prof if v.sn is None else None)
            why = None
        except Exception as exc:  # noqa: BLE001 - one config must not stop the others
            c, why = {}, f"count failed: {_err(exc)}"
        mod = None
        study_batches = batches[:1] if v.kind == "study" else batches
        for batch in study_batches:
            rec = dict(
                env, run_id=run_id, kind=v.kind, model=spec.key, model_title=spec.title,
                batch=batch, resolution=v.resolution, dtype="float16",
                config=v.name if v.kind == "config" else None, operator=v.operator,
                level=v.level, note=v.note, supernet_config=v.config,
                counts_batch_scaled=batch != 1, **(scaled(c, batch) if c else {}),
            )  # fmt: skip
            if why:
                rec.update(status="error", reason=why)
            elif not gpu:
                rec.update(status="counts_only", reason=None)
            elif args.no_study_timing and v.kind == "study":
                rec.update(status="counts_only", reason="study timing off")
            elif time.perf_counter() > deadline:
                rec.update(status="not_run", reason="time budget")
            else:
                try:
                    if mod is None:
                        mod = v.make().to(device=device).eval()
                    rec.update(measure(mod, batch, v.resolution, settings, not args.no_graph))
                    rec["status"] = "ok"
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001
                    rec.update(status="error", reason=_err(exc))
                    traceback.print_exc(limit=3)
            records.append(rec)
            if gpu and rec.get("median_ms"):
                print(
                    f"[models] {spec.key} b{batch} {v.name}: {rec['median_ms']:.2f} ms eager, "
                    f"graph {rec.get('graph_ms') or rec.get('graph_reason')}",
                    flush=True,
                )
        del mod
        if gpu:
            torch.cuda.empty_cache()
    return records


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="GPU: b1, 4 configs, no study (~90 s)")
    mode.add_argument("--smoke", action="store_true", help="counts only, even with a GPU")
    p.add_argument("--models", default=",".join(MODELS), help="comma list of " + ",".join(MODELS))
    p.add_argument("--out", type=Path, default=H.RESULTS_DIR, help="folder for models.jsonl")
    p.add_argument("--plot-dir", type=Path, default=H.RESULTS_DIR, help="folder for the plot")
    p.add_argument("--summary-json", type=Path, default=None)
    p.add_argument("--time-budget-s", type=float, default=0.0, help="no new timings after this")
    p.add_argument("--warmup-ms", type=int, default=25)
    p.add_argument("--rep-ms", type=int, default=200)
    p.add_argument("--graph-calls", type=int, default=2, help="forwards per captured graph")
    p.add_argument("--no-graph", action="store_true", help="skip CUDA-graph capture")
    p.add_argument("--no-study-timing", action="store_true", help="study: counts only")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    gpu = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if gpu else "cpu")
    if not gpu:
        why = "--smoke" if args.smoke else "no GPU found"
        print(f"[models] {why}: {R.LATENCY_NEEDS_GPU}")
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    env = H.environment(device)
    run_id = f"{env['date']}-{os.getpid()}"
    if gpu:
        print(f"[models] {env['gpu']}  commit {env['commit'][:12]}  torch {env['torch']}")
    deadline = t_start + args.time_budget_s if args.time_budget_s else float("inf")
    records: list[dict] = []
    failed: dict[str, str] = {}
    try:
        for key in [k for k in args.models.split(",") if k]:
            try:
                records += run_model(MODELS[key], args, gpu, env, run_id, deadline)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - the other model still runs
                failed[key] = _err(exc)
                traceback.print_exc(limit=4)
                print(f"[models] {key} failed: {failed[key]}")
    except KeyboardInterrupt:
        print("[models] interrupted: writing the records measured so far", flush=True)
    R.add_ratios(records)
    path = H.append_results(args.out / "models.jsonl", records)
    print(R.format_main(records))
    if any(r["kind"] == "study" for r in records):
        print("\nsearch-space study (each operator alone; ratios vs dense at the same batch):")
        print(R.format_study(records))
    if any(r["model"] == "sam_vit_b" for r in records):
        print("\n" + R.SAM_NOTE)
        print("  (Amdahl estimate for the configs that change linear layers only)")
        sam = [r for r in records if r["model"] == "sam_vit_b" and r.get("kind") == "config"]
        for r in sam:
            d = next((x for x in sam if x["config"] == "dense" and x["batch"] == r["batch"]), None)
            if d and r.get("linear_bitops") is not None and r["config"] in LINEAR_ONLY:
                lin_ratio = (r["linear_bitops"] / d["linear_bitops"]) if d["linear_bitops"] else 1
                exp = R.amdahl_latency_ratio(R.SAM_LINEAR_SHARE, lin_ratio)
                lat = r.get("latency_ratio")
                measured = "-" if lat is None else f"x{lat:.2f}"
                print(
                    f"  {r['config']:<10} b{r['batch']}: linear BitOPs x{lin_ratio:.2f} -> "
                    f"expected latency x{exp:.2f} at 8.5% linear time; measured {measured}"
                )
    if not gpu:
        print(f"\n[models] {R.LATENCY_NEEDS_GPU}")
    fails = R.format_failures(records)
    if fails:
        print("\n[models] failures / graph capture:\n" + fails)
    plot = None
    if gpu:
        try:
            plot = R.plot_scatter(records, args.plot_dir / PLOT_NAME)
        except Exception as exc:  # noqa: BLE001
            print(f"[models] plot failed: {_err(exc)}")
    if plot:
        print(f"[models] plot: {plot}")
    print(
        f"[models] {len(records)} records appended to {path} in "
        f"{time.perf_counter() - t_start:.1f} s"
    )
    bad = [r for r in records if r.get("status") == "error"]
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "env": env, "records": len(records), "models_failed": failed,
            "errors": [{k: r.get(k) for k in ("model", "batch", "config", "operator", "level",
                                                "reason")} for r in bad],
            "not_run": sum(r.get("status") == "not_run" for r in records),
            "latency_ms": {f"{r['model']}/b{r['batch']}/{r['config']}": r.get("median_ms")
                           for r in records if r["kind"] == "config"},
        }  # fmt: skip
        args.summary_json.write_text(json.dumps(H.jsonable(summary), indent=1, sort_keys=True))
    return 1 if (bad or failed) else 0


if __name__ == "__main__":
    sys.exit(main())
