"""Whole-model benchmarks on the harness: the record kinds, the loop, the timing of a module.

A whole-model ``bench_<name>.py`` (bench_models.py, bench_latency_table.py) declares:

* ``NAME`` (the report's key: ``report.py NAME FILE``), ``DOC`` and ``RESULTS`` (the results
  file's stem: both write ``models.jsonl``, beside the attention op's records);
* ``records(ctx) -> Iterator[dict]``: one record per measured (or counted) configuration, with
  the fields of :data:`MODEL_RECORD_FIELDS` that apply; the harness adds the provenance
  (``gpu``, ``commit``, ``date``...), ``run_id`` and ``bench``, stops asking for more at Ctrl-C
  (gpu_check's timeout sends SIGINT) and keeps what it got; ``ctx.over_budget()`` says when
  ``--time-budget-s`` has passed (the module records ``status: not_run`` from then on);
* optionally ``add_args(parser)``, ``configure(ctx)``, ``finish(ctx, records)`` (ratios, plots,
  notes after the run), ``summary(ctx, records) -> dict`` (added to ``--summary-json``) and
  ``problems(ctx, records) -> list[str]`` (anything that makes the exit status 1 besides
  records of status ``error``).

``model_main(module)`` parses the shared command line (``harness.shared_args``: ``--quick``,
``--smoke``, ``--out``, ``--summary-json``, ``--time-budget-s``, ``--dtypes``, ``--warmup-ms``,
``--rep-ms``, ``--seed``) plus the module's, runs it, appends the records, prints the report
(report.py, keyed by ``NAME``) and writes the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from . import records as RS
from . import run as RUN
from . import timers as T

__all__ = [
    "MODEL_KINDS",
    "MODEL_RECORD_FIELDS",
    "model_args",
    "model_main",
    "run_case",
    "max_rel_err",
    "module_bytes",
    "peak_bytes",
    "bench_ms",
    "time_module",
]

# The kinds of whole-model records (``kind``): an op benchmark's rows have their role there.
MODEL_KINDS = ("config", "study", "latency_table")

MODEL_RECORD_FIELDS = {
    "bench": "models (bench_models.py) or latency_table (bench_latency_table.py)",
    "kind": "config (a compression configuration), study (one search-space operator alone), "
    "latency_table (a LatencyTable's prediction against the measured subnet)",
    "model": "deit_b, sam_vit_b (vit_tiny_smoke on the CPU)",
    "batch": "images per forward",
    "resolution": "input side in pixels",
    "dtype": "float16, bfloat16 (float32 on the CPU)",
    "mode": "eager (the library's model), compile (torch.compile of it), ours (converted, "
    "extracted, graph-replayed)",
    "config": "dense, w8a8, w4a16, lowrank50, cut, mixed, sampled (kind config)",
    "status": "ok | counts_only (no GPU) | not_run (time budget) | error",
    "reason": "why not ok",
    "params": "parameters (cost.profile)",
    "macs": "multiply-accumulates of one forward (batch-1 count times the batch)",
    "bitops": "MACs times weight bits times activation bits",
    "weight_bytes": "bytes of the weights as stored",
    "latency_ms": "the mode's own time: graph replay where captured, else the eager median",
    "eager_ms": "do_bench median of the eager forward",
    "graph_ms": "do_bench median of the captured graph's replay (mode ours)",
    "first_call_ms": "first synchronized forward, JIT and compile included",
    "images_per_s": "batch / latency",
    "peak_mem_bytes": "the module's weights + the extra memory one forward peaks at",
    "rel_err": "max |a - b| / max |b| against the library's eager output (dense configs)",
    "predicted_ms": "kind latency_table: the table's prediction",
    "measured_ms": "kind latency_table: the extracted subnet's graph-replayed latency",
}


def model_args(bench, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=bench.DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    RUN.shared_args(bench, p)
    if hasattr(bench, "add_args"):
        bench.add_args(p)
    return p.parse_args(argv)


def model_main(bench, argv=None) -> int:
    args = model_args(bench, argv)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    gpu = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if gpu else "cpu")
    if not gpu:
        why = "--smoke" if args.smoke else "no GPU found"
        print(f"[{bench.NAME}] {why}: {getattr(bench, 'CPU_NOTE', 'the CPU smoke run')}")
        # two threads at most: the machines these smoke runs share have few cores
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    env = T.environment(device)
    ctx = RUN.Context(
        bench, args, device, T.BenchSettings(warmup_ms=args.warmup_ms, rep_ms=args.rep_ms),
        None, env, f"{env['date']}-{os.getpid()}-{bench.NAME}",
    )  # fmt: skip
    if args.time_budget_s:
        ctx.deadline = t0 + args.time_budget_s
    if gpu:
        print(f"[{bench.NAME}] {env['gpu']}  commit {env['commit'][:12]}  torch {env['torch']}")
    if hasattr(bench, "configure"):
        bench.configure(ctx)
    records: list[dict[str, Any]] = []
    try:
        for rec in bench.records(ctx):
            records.append({**env, "run_id": ctx.run_id, "bench": bench.NAME, **rec})
    except KeyboardInterrupt:
        print(f"[{bench.NAME}] interrupted: writing the records measured so far", flush=True)
    if hasattr(bench, "finish"):
        bench.finish(ctx, records)
    path = RS.append_results(RUN.results_path(bench, args.out), records)

    import report

    targets = report.print_model_report(bench.NAME, records, gpu=gpu)
    dt = time.perf_counter() - t0
    print(f"[{bench.NAME}] {len(records)} records appended to {path} in {dt:.1f} s")
    bad = [r for r in records if r.get("status") == "error"]
    problems = bench.problems(ctx, records) if hasattr(bench, "problems") else []
    for line in problems:
        print(f"[{bench.NAME}] {line}")
    if args.summary_json:
        keys = ("model", "batch", "dtype", "mode", "config", "operator", "level", "reason")
        summary = dict(
            env=env, records=len(records), targets=targets,
            errors=[{k: r.get(k) for k in keys} for r in bad],
            not_run=sum(r.get("status") == "not_run" for r in records),
        )  # fmt: skip
        if hasattr(bench, "summary"):
            summary.update(bench.summary(ctx, records))
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(RS.jsonable(summary), indent=1, sort_keys=True))
    return 1 if (bad or problems) else 0


def run_case(ctx: RUN.Context, rec: dict[str, Any], measure: Callable[[], dict]) -> dict:
    """One record's outcome, the same rule for every whole-model benchmark: counts only without
    a GPU (``status: counts_only``), ``not_run`` once the time budget is spent, else
    ``measure()``'s fields with ``status: ok``, or ``error`` with the reason when it raises (the
    next configuration still runs). Fills ``rec`` in place and returns it."""
    if not ctx.gpu:
        rec.update(status="counts_only", reason=None)
    elif ctx.over_budget():
        rec.update(status="not_run", reason="time budget")
    else:
        try:
            rec.update(measure(), status="ok")
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one configuration must not stop the others
            rec.update(status="error", reason=_err(exc))
            traceback.print_exc(limit=3)
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
    return rec


# --------------------------------------------------------------------------- timing a module


def max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (fp32)."""
    o, r = out.float(), ref.float()
    return float((o - r).abs().max() / r.abs().max().clamp_min(1e-30))


def module_bytes(mod: torch.nn.Module) -> int:
    ts = {id(t): t for t in [*mod.parameters(), *mod.buffers()]}
    return sum(t.numel() * t.element_size() for t in ts.values())


def peak_bytes(fn: Callable[[], Any], mod: torch.nn.Module) -> int:
    """The module's weights (parameters + buffers) plus the extra memory one forward peaks at:
    max_memory_allocated after reset_peak_memory_stats minus what was allocated before (so the
    other models the benchmark keeps resident do not count)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return module_bytes(mod) + int(torch.cuda.max_memory_allocated()) - base


def bench_ms(fn: Callable[[], Any], settings: T.BenchSettings) -> float:
    """do_bench median of a whole forward (one input: a model's activations dwarf L2, so the
    op benchmarks' rotation of input sets buys nothing here)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=settings.warmup_ms, rep=settings.rep_ms, return_mode="median")


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:400]


def time_module(
    mod: torch.nn.Module, mode: str, x: torch.Tensor, settings: T.BenchSettings, *,
    backend: str | None = None, graph: bool = True,
    profile: Callable[[Callable[[], Any], torch.nn.Module | None], dict] | None = None,
) -> tuple[dict[str, Any], torch.Tensor | None]:  # fmt: skip
    """Time one module on input ``x`` in ``mode`` (eager: the module's forward; compile: under
    torch.compile, its compile time recorded; ours: under supernet_kernels' ``backend``,
    captured with capture_cuda_graph and replayed, eager if capture fails). Returns the record's
    fields and a copy of the output. ``profile(fn, module)`` adds the GPU time by op family."""
    import supernet_kernels as sk

    rec: dict[str, Any] = {"backend": backend if mode == "ours" else None}
    ctx = sk.backend(backend) if mode == "ours" and backend else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        fmod = mod
        if mode == "compile":
            t0 = time.perf_counter()
            fmod = torch.compile(mod)
            fmod(x)
            torch.cuda.synchronize()
            rec["compile_s"] = time.perf_counter() - t0

        def eager():
            return fmod(x)

        first, out = T.first_call_s(eager, x.device)
        rec["first_call_ms"] = first * 1e3
        out = out.detach().clone()
        rec["eager_ms"] = bench_ms(eager, settings)
        runner = None
        if mode == "ours" and graph:
            try:
                try:
                    runner = sk.capture_cuda_graph(mod, x)
                except RuntimeError as exc:  # the host-work check: record it, capture anyway
                    if "host work" not in str(exc):
                        raise
                    rec["graph_check"] = _err(exc)
                    runner = sk.capture_cuda_graph(mod, x, check=False)
                rec["graph_ms"] = bench_ms(runner.graph.replay, settings)
                out = runner(x).detach().clone()
            except Exception as exc:  # noqa: BLE001 - the reason is the result
                with contextlib.suppress(Exception):
                    torch.cuda.synchronize()
                rec["graph_ms"], rec["graph_reason"] = None, _err(exc)
        rec["latency_ms"] = rec.get("graph_ms") or rec["eager_ms"]
        rec["median_ms"] = rec["latency_ms"]  # the summary's / older reports' name
        rec["timing_method"] = "cuda_graph_median" if rec.get("graph_ms") else "do_bench_median"
        rec["images_per_s"] = x.shape[0] / (rec["latency_ms"] * 1e-3)
        rec["peak_mem_bytes"] = peak_bytes(eager, mod)
        if profile is not None:
            try:
                rec.update(profile(eager, None if mode == "compile" else mod))
            except Exception as exc:  # noqa: BLE001
                rec["profile_reason"] = _err(exc)
        runner = None
    return rec, out
