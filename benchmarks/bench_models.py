#!/usr/bin/env python
"""Whole-model benchmark: DeiT-B (timm deit_base_patch16_224) and the SAM ViT-B image encoder
(segment-anything, 1024x1024), end to end: the library's own model against our path.

Modes (per model, dtype, batch):
  eager    the library's model (timm's / segment-anything's), eager, under torch.no_grad
  compile  the same under torch.compile (default mode; full mode only: compiling SAM takes
           about a minute, more than --quick's budget)
  ours     convert(model, attention="ours") (attention through torch.ops.supernet_kernels
           .attention), extract(config), captured with supernet_kernels.capture_cuda_graph and
           replayed; ops on the --backend (default "triton": the dispatch table of an
           unmeasured GPU sends every op to the torch reference)
Configs: dense (max config: every linear dense 16-bit) in all three modes, and the compressed
subnets through our path only:
  w8a8       every linear W8A8 (per-channel weights, int8 activations)
  w4a16      every linear W4A16, group 128
  lowrank50  qkv / fc1 / fc2 factorized at the one rank ratio (of the space's r/8 choices)
             whose linear-layer MACs come closest to 50% of dense
  cut        SuperSAM-style depth / width cut: blocks 1, 2, 5, 6, 9 dropped where the space
             allows (SAM keeps its global-attention blocks 2, 5), every MLP hidden 1536
  mixed      attention (qkv, proj) W8A8 per 128-group, MLP (fc1, fc2) W4A16, head fp16
  sampled    Supernet.sample_config(seed 0) of the default space
Shapes: DeiT-B 224 at batch 1, 64, 256; SAM ViT-B 1024 at batch 1, 4; fp16 and bf16.

Per row: params, MACs, BitOPs, weight bytes from supernet_kernels.cost.profile (batch-1 count
scaled by the batch) and, on a GPU: latency (median; the mode's own: eager forward, compiled
call, graph replay), images/s, the eager forward's median too, peak memory (the timed module's
weights + the extra torch.cuda.max_memory_allocated of one forward after
reset_peak_memory_stats, so the other models kept resident do not count), the GPU time by op
family (linear / attention / other) from a short torch.profiler run of the forward (rule:
models_report.op_family), and for our dense path (and compile) the max relative error against
the library's eager output (max |a - b| / max |b|; tolerance 2e-2 fp16, 6e-2 bf16).
Targets (PASS / MISS): our dense SAM encoder >= 4x faster than segment-anything eager fp16 at
batch 1; DeiT-B b1 fp16 graph latency <= 1.2x its kernels' GPU time. Also the search-space
study (full mode): each operator alone, BitOPs cut vs latency cut.

Without a GPU (or --smoke) it reports counts only, on models built on the meta device and
materialized without initialization; the SVD that converting a factorized layer runs is
replaced by zero factors (counts and latency do not depend on the factor values; the GPU run
does the same, since the benchmark uses random weights anyway).

    python benchmarks/bench_models.py --quick     # GPU, ~90 s: SAM b1 fp16 eager / ours dense /
                                                  # ours w8a8; DeiT-B b1 fp16 eager / ours dense
    python benchmarks/bench_models.py             # GPU: every mode, config, batch, dtype, study
    python benchmarks/bench_models.py --smoke     # CPU: counts only, < 60 s
    python benchmarks/report.py models benchmarks/results/models.jsonl   # tables + plot again

A whole-model benchmark on the harness (``harness.model_main``: the shared command line, the
records' provenance, the time budget and Ctrl-C, the summary; ``harness.time_module`` times a
mode); this module declares the models, configs and plan (models_configs.py) and the op-family
profile.
"""

from __future__ import annotations

import contextlib
import copy  # noqa: F401 - the tests reach copy.deepcopy through this module
import functools
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

import harness as H  # noqa: E402
import models_report as R  # noqa: E402
from models_configs import (  # noqa: E402, F401 - the models and configs it times (tests use them here)
    ATTENTION_KINDS,
    CUT_BLOCKS,
    CUT_MLP_HIDDEN,
    DTYPES,
    LINEAR_KINDS,
    LINEAR_ONLY,
    MODELS,
    MODES,
    PLOT_NAME,
    QUICK_PLAN,
    REL_TOL,
    ModelSpec,
    Variant,
    _err,
    build_model,
    choose_rank_ratio,
    count,
    linear_dims,
    linear_macs,
    make_supernets,
    scaled,
    uniform_bits,
    variants,
)

NAME, DOC, RESULTS = "models", __doc__, "models"
WARMUP_MS, REP_MS = 25, 200
CPU_NOTE = R.LATENCY_NEEDS_GPU

# --------------------------------------------------------------------------- profiling


def module_family(m: nn.Module) -> str | None:
    name = type(m).__name__
    if name in LINEAR_KINDS:
        return "linear"
    if name in ATTENTION_KINDS:
        return "attention"
    return None


@contextlib.contextmanager
def family_scopes(module: nn.Module | None) -> Iterator[None]:
    """Forward hooks opening a profiler scope ``sk_family::<family>`` around every linear and
    attention module of ``module`` (None: nothing)."""
    handles = []
    if module is not None:
        from torch.autograd.profiler import record_function

        for m in module.modules():
            fam = module_family(m)
            if fam is None:
                continue
            stack: list = []

            def pre(mod, args, fam=fam, stack=stack):
                rf = record_function(R.FAMILY_SCOPE + fam)
                rf.__enter__()
                stack.append(rf)

            def post(mod, args, out, stack=stack):
                if stack:
                    stack.pop().__exit__(None, None, None)

            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _scopes(evt) -> list[str]:
    """Names of ``evt`` and its enclosing CPU events, innermost first."""
    names = []
    while evt is not None and len(names) < 64:
        names.append(evt.name)
        evt = evt.cpu_parent
    return names


def kernel_rows(events) -> list[tuple[str, float, list[str]]]:
    """(name, GPU microseconds, scopes of its launch) of every device event of a profile."""
    from torch.autograd import DeviceType

    events = list(events)
    launch = {e.id: e for e in events if e.device_type == DeviceType.CPU and e.kernels}
    rows = []
    for e in events:
        if e.device_type != DeviceType.CUDA:
            continue
        # Our record_function scopes also appear on the GPU timeline as user annotations
        # spanning their kernels (and the gaps between them): counting them double-counted
        # linear and attention time in the first H100 run (kernel sum 2.6 ms for a forward
        # that replays in 0.71 ms).
        if getattr(e, "is_user_annotation", False) or e.name.startswith(R.FAMILY_SCOPE):
            continue
        parent = launch.get(getattr(e, "linked_correlation_id", 0) or -1)
        rows.append((e.name, e.time_range.elapsed_us(), _scopes(parent)))
    if not rows:  # older profilers: device kernels only as their launcher's .kernels
        for e in launch.values():
            rows += [(k.name, k.duration, _scopes(e)) for k in e.kernels]
    return rows


def profile_split(fn: Callable[[], Any], module: nn.Module | None, calls: int = 3) -> dict:
    """GPU time per forward by op family (models_report.family_split) over ``calls`` calls of
    ``fn``, with module scopes from ``module`` (None: kernel names only)."""
    from torch.profiler import ProfilerActivity, profile

    with family_scopes(module):
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
    return R.family_split(kernel_rows(prof.events()), calls)


# --------------------------------------------------------------------------- timing

rel_err = H.max_rel_err  # max |out - ref| / max |ref| (fp32)


# --------------------------------------------------------------------------- run


def plan(spec: ModelSpec, vs: list[Variant], args, gpu: bool) -> list[tuple[Variant, tuple]]:
    """(variant, batches) in run order."""
    if args.quick:
        want = QUICK_PLAN[spec.key]
        picked = [
            v for m, c in want for v in vs if v.kind == "config" and (v.mode, v.name) == (m, c)
        ]
        return [(v, (1,)) for v in picked]
    out = []
    for v in vs:
        if v.mode == "compile" and (args.no_compile or not gpu):
            continue
        out.append((v, spec.batches[:1] if v.kind == "study" else spec.batches))
    return out


def run_model(spec: ModelSpec, ctx: H.Context) -> Iterator[dict]:
    """Count (and time) every (mode, config) of one model per dtype and batch: its records."""
    from supernet_kernels.cost import profile

    args, gpu, device = ctx.args, ctx.gpu, ctx.device
    dtypes = ["float16"] if (args.quick or not gpu) else list(args.dtypes or DEFAULT_DTYPES)
    counts: dict[tuple, tuple[dict, str | None]] = {}
    for di, dname in enumerate(dtypes):
        dtype = DTYPES[dname]
        if ctx.over_budget():
            break
        t0 = time.perf_counter()
        model = build_model(spec, device, dtype)
        dense_prof = profile(model, (1, 3, spec.resolution, spec.resolution))
        sns = make_supernets(model)
        vs = variants(spec, model, sns, dense_prof)
        print(
            f"[models] {spec.key} {dname}: built + 3 supernets in {time.perf_counter() - t0:.1f} s"
        )
        todo = plan(spec, vs, args, gpu)
        if di > 0:  # the study once (first dtype)
            todo = [(v, b) for v, b in todo if v.kind == "config"]
        refs: dict[int, torch.Tensor] = {}
        for v, batches in todo:
            # the same (supernet, config) counts once (dense in every mode, w8a8 = bits W8A8 ...)
            ck = (id(v.sn), json.dumps(v.config, sort_keys=True, default=str), v.resolution)
            if ck not in counts:
                try:
                    counts[ck] = (count(v, model, dense_prof if v.sn is None else None), None)
                except Exception as exc:  # noqa: BLE001 - one config must not stop the others
                    counts[ck] = ({}, f"count failed: {_err(exc)}")
            c, why = counts[ck]
            held: dict[str, nn.Module] = {}  # the variant's module, made at its first timing
            for batch in batches:
                rec = dict(
                    kind=v.kind, model=spec.key, model_title=spec.title,
                    batch=batch, resolution=v.resolution, dtype=dname, mode=v.mode,
                    config=v.name if v.kind == "config" else None, operator=v.operator,
                    level=v.level, note=v.note, supernet_config=v.config,
                    counts_batch_scaled=batch != 1, **(scaled(c, batch) if c else {}),
                )  # fmt: skip
                if why:
                    rec.update(status="error", reason=why)
                elif gpu and args.no_study_timing and v.kind == "study":
                    rec.update(status="counts_only", reason="study timing off")
                else:
                    H.run_case(ctx, rec, functools.partial(_time, ctx, v, held, batch, dtype, refs))
                if gpu and rec.get("latency_ms"):
                    _print_timed(rec, spec, v, batch, dname)
                yield rec
            held.clear()
            if gpu:
                torch.cuda.empty_cache()
        del model, sns, vs, refs
        if gpu:
            torch.cuda.empty_cache()


def _time(ctx: H.Context, v: Variant, held: dict, batch: int, dtype, refs: dict) -> dict:
    """One (mode, config, batch) timed; the dense configs' output checked against the library's
    eager one (kept in ``refs`` per batch)."""
    if "mod" not in held:
        held["mod"] = v.make().to(device=ctx.device).eval()
    mod = held["mod"]
    torch.manual_seed(batch)
    x = torch.randn(batch, 3, v.resolution, v.resolution, device=ctx.device, dtype=dtype)
    got, out = H.time_module(
        mod, v.mode, x, ctx.settings, backend=ctx.args.backend, graph=not ctx.args.no_graph,
        profile=None if ctx.args.no_profile else profile_split,
    )  # fmt: skip
    if v.kind == "config" and v.name == "dense" and out is not None:
        dname = str(dtype).replace("torch.", "")
        if v.mode == "eager":
            refs[batch] = out
        elif batch in refs and out.shape == refs[batch].shape:
            got["rel_err"] = rel_err(out, refs[batch])
            got["rel_err_tol"] = REL_TOL[dname]
            got["output_match"] = got["rel_err"] <= REL_TOL[dname]
    return got


def _print_timed(rec: dict, spec: ModelSpec, v: Variant, batch: int, dname: str) -> None:
    split = "/".join(
        "-" if rec.get(f"{f}_pct") is None else f"{rec[f'{f}_pct']:.0f}" for f in R.FAMILIES
    )
    print(
        f"[models] {spec.key} b{batch} {dname} {v.mode}:{v.name}: "
        f"{rec['latency_ms']:.3f} ms ({rec['images_per_s']:.0f} img/s, eager "
        f"{rec['eager_ms']:.3f} ms, graph "
        f"{rec.get('graph_ms') or rec.get('graph_reason')}), "
        f"peak {rec['peak_mem_bytes'] / 2**20:.0f} MiB, lin/attn/other % {split}"
        + (f", rel_err {rec['rel_err']:.2e}" if "rel_err" in rec else ""),
        flush=True,
    )  # fmt: skip


# --------------------------------------------------------------------------- the harness's hooks

DEFAULT_DTYPES = ("float16", "bfloat16")


def add_args(p) -> None:
    p.add_argument("--models", default=",".join(MODELS), help="comma list of " + ",".join(MODELS))
    p.add_argument("--backend", default="triton", help="supernet_kernels backend of mode ours")
    p.add_argument("--plot-dir", type=Path, default=H.RESULTS_DIR, help="folder for the plot")
    p.add_argument("--no-graph", action="store_true", help="mode ours: no CUDA-graph capture")
    p.add_argument("--no-compile", action="store_true", help="full mode: skip torch.compile")
    p.add_argument("--no-profile", action="store_true", help="no op-family split")
    p.add_argument("--no-study-timing", action="store_true", help="study: counts only")


def parse_args(argv=None):
    """The harness's shared arguments (--quick, --smoke, --out, --dtypes, --time-budget-s,
    --warmup-ms 25, --rep-ms 200...) and this benchmark's."""
    return H.model_args(sys.modules[__name__], argv)


def configure(ctx: H.Context) -> None:
    ctx.state["failed"] = {}
    if ctx.gpu and ctx.args.quick:
        print("[models] --quick: fp16 b1 only, no torch.compile (its compile time: full mode)")


def records(ctx: H.Context) -> Iterator[dict]:
    """Every model of --models in turn; one that fails is noted and the next still runs."""
    for key in [k for k in ctx.args.models.split(",") if k]:
        try:
            yield from run_model(MODELS[key], ctx)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - the other model still runs
            ctx.state["failed"][key] = _err(exc)
            traceback.print_exc(limit=4)
            print(f"[models] {key} failed: {ctx.state['failed'][key]}")


def finish(ctx: H.Context, records: list[dict]) -> None:
    """Ratios to the dense rows, then (GPU) the latency-vs-BitOPs plot (plot.py models)."""
    R.add_ratios(records)
    if not ctx.gpu:
        return
    try:
        plot = R.plot_scatter(records, ctx.args.plot_dir / PLOT_NAME)
    except Exception as exc:  # noqa: BLE001
        print(f"[models] plot failed: {_err(exc)}")
        return
    if plot:
        print(f"[models] plot: {plot}")


def summary(ctx: H.Context, records: list[dict]) -> dict:
    """gpu_check.sh's models entries (errors, not_run and targets come from the harness)."""
    return {
        "models_failed": ctx.state.get("failed", {}),
        "latency_ms": {
            f"{r['model']}/b{r['batch']}/{R.short_dtype(r['dtype'])}/{r['mode']}/{r['config']}":
            r.get("latency_ms") for r in records if r["kind"] == "config"
        },
        "rel_err": {f"{r['model']}/b{r['batch']}/{R.short_dtype(r['dtype'])}/{r['mode']}":
                    r["rel_err"] for r in records if "rel_err" in r},
        "output_mismatch": sum(r.get("output_match") is False for r in records),
    }  # fmt: skip


def problems(ctx: H.Context, records: list[dict]) -> list[str]:
    """Failed models and dense outputs off the library's: the exit status is 1."""
    out = [f"{k} failed: {why}" for k, why in ctx.state.get("failed", {}).items()]
    out += [
        f"OUTPUT MISMATCH: {r['model']} b{r['batch']} {r['dtype']} {r['mode']}: rel_err "
        f"{r['rel_err']:.2e} > {r['rel_err_tol']}"
        for r in records if r.get("output_match") is False
    ]  # fmt: skip
    return out


def main(argv=None) -> int:
    return H.model_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
