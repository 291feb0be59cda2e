"""The runner: a benchmark module's declarations in, records, report and dispatch tables out.

A ``bench_<op>.py`` module declares:

* ``NAME`` (the results file ``<NAME>.jsonl`` and the key of report.py / plot.py) and ``DOC``;
* ``SWEEPS``: ``{"full": Sweep, "quick": Sweep, "smoke": (Sweep, ...)}`` (a GPU runs full or
  ``--quick``; a CPU, or ``--smoke``, the smoke sweeps);
* ``implementations(ctx, sweep, group) -> list[Impl]``: every implementation to time on one group
  (``{"dtype", "M", "K", "N"}`` by default; a module may define ``groups(sweep)``), the dense
  16-bit layer included (role "dense": every ratio is against it); each ``Impl.prepare`` builds
  its inputs and returns a :class:`Prepared` with its FLOP and byte counts from
  ``supernet_kernels.cost.formulas``;
* optionally ``PEERS`` (the default of ``--peers``), ``add_args(parser)``, ``configure(ctx)``
  (before the run), ``finish_group(ctx, records)``, ``extra_ceilings(ceilings)`` (peaks the
  run measures beside the copy and 16-bit matmul ceilings) and ``summary(records)``.

``main(module)`` parses the shared command line, runs the groups (eager do_bench and, for small
M, CUDA-graph replay; correctness against the reference first), fills the ratio to the dense
layer and the per-call roofline on every record, appends the records, prints the report
(report.py) and, with ``--write-dispatch`` on a GPU, writes the dispatch tables (derived by
dispatch_from_results.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import records as RS
from . import timers as T

__all__ = [
    "TOLERANCE",
    "DTYPES",
    "Skip",
    "Sweep",
    "Prepared",
    "Impl",
    "Context",
    "rel_err",
    "OURS",
    "role_of",
    "op_backends",
    "measure",
    "run_group",
    "run",
    "shared_args",
    "parse_args",
    "results_path",
    "main",
    "write_dispatch",
]

TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Skip(Exception):
    """An implementation that cannot run here (not installed, wrong GPU); the message says why."""


@dataclass(frozen=True)
class Sweep:
    """The shapes of one run: every dtype x M x (K, N), plus the op's own axes in ``params``.
    ``only`` / ``exclude`` restrict the implementations of ours this sweep times."""

    name: str
    dtypes: tuple[str, ...]
    ms: tuple[int, ...] = ()
    kns: tuple[tuple[int, int], ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    only: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def groups(self) -> Iterator[dict[str, Any]]:
        for dtype in self.dtypes:
            for m in self.ms:
                for k, n in self.kns:
                    yield {"dtype": dtype, "M": m, "K": k, "N": n}


@dataclass
class Prepared:
    """What an implementation needs to be timed: ``factory(i)`` allocates input set ``i`` and
    returns a zero-argument closure running the op on it; the output of set 0 is checked
    against ``ref`` (``error(out, ref) <= tol``) when ``ref`` is given."""

    factory: Callable[[int], Callable[[], Any]]
    flops: int
    bytes: int | None
    ref: Any = None
    tol: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    max_rotate: int = T.MAX_ROTATE
    error: Callable[[Any, Any], float] | None = None
    graph: bool = True  # also time CUDA-graph replay (at M <= --graph-max-m)


@dataclass
class Impl:
    """One row of a group: ``backend`` (the name recorded), ``role`` (ours, dense, peer, gemm),
    ``prepare`` (raises :class:`Skip` when it cannot run here), the record's own ``fields``,
    and ``select``: the supernet_kernels backend the call runs under (ours)."""

    backend: str
    role: str
    prepare: Callable[[], Prepared]
    fields: dict[str, Any] = field(default_factory=dict)
    select: str | None = None


@dataclass
class Context:
    bench: Any
    args: argparse.Namespace
    device: torch.device
    settings: T.BenchSettings
    ceilings: T.Ceilings | None
    env: dict[str, Any]
    run_id: str
    _unusable: dict[str, str | None] = field(default_factory=dict)
    # whole-model benchmarks (harness.models): no new timing after the deadline (perf_counter),
    # and what a module keeps between its records (a table's build time, failed models)
    deadline: float = float("inf")
    state: dict[str, Any] = field(default_factory=dict)

    def over_budget(self) -> bool:
        return time.perf_counter() > self.deadline

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    def unusable(self, backend: str) -> str | None:
        """Why a backend of supernet_kernels cannot run on this device (None: it can)."""
        if backend not in self._unusable:
            self._unusable[backend] = _unusable(backend, self.device)
        return self._unusable[backend]


def _unusable(backend: str, device: torch.device) -> str | None:
    if backend == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "CPU run without TRITON_INTERPRET=1"
    if backend.startswith("torch"):
        return None  # torch's paths run wherever torch does; their supports() decides per call
    try:
        from supernet_kernels.backends import backend_status

        ok, reason = backend_status(device).get(backend, (False, "not reported"))
    except Exception as exc:  # noqa: BLE001 - a half-written package costs rows, not the run
        return f"supernet_kernels not usable: {_err(exc)}"
    return None if ok else (reason or "unavailable")


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:400]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| (Frobenius, in fp32); NaN output gives NaN (never <= tol)."""
    diff = torch.linalg.vector_norm(out.float() - ref.float())
    return float(diff / torch.linalg.vector_norm(ref.float()).clamp_min(1e-30))


# The reference and our kernel families; every other registered implementation (torch_two_gemm,
# torch_dense, torch_int4pack, torch_int_mm, torch_scaled_mm, torch_dequant, torch_sdpa) is
# torch's own path: registered so that auto can run it, and in the report a peer of ours.
OURS = ("torch", "triton", "cuda")


def role_of(backend: str) -> str:
    """The role of a registered implementation: ours (the reference and our kernels) or peer
    (torch's registered paths)."""
    return "ours" if backend in OURS else "peer"


def op_backends(op: str, wanted: tuple[str, ...] = ("all",)) -> tuple[str, ...]:
    """Every implementation registered for ``op`` (``wanted`` = ("all",)), else those of
    ``wanted`` registered for it."""
    try:
        from supernet_kernels import registry

        names = tuple(registry.implementations(op))
    except Exception:  # noqa: BLE001 - a half-written package: time what was asked
        return tuple(b for b in wanted if b != "all")
    return names if "all" in wanted else tuple(b for b in wanted if b in names)


# --------------------------------------------------------------------------- measuring


def measure(ctx: Context, group: dict[str, Any], impl: Impl) -> dict[str, Any]:
    """First call (checked against the reference), then the timing: one record."""
    base = {
        **ctx.env, "run_id": ctx.run_id, "bench": ctx.bench.NAME, "role": impl.role,
        "kind": impl.role, "backend": impl.backend, **group, **impl.fields,
    }  # fmt: skip
    ours = impl.role == "ours"
    why = ctx.unusable(impl.select) if impl.select else None
    if why:
        return dict(base, status="skipped", reason=why)
    cache: dict[int, Callable[[], Any]] = {}
    try:
        with _selected(impl.select):
            prep = impl.prepare()
            base.update(prep.fields)

            def fn(i: int) -> Callable[[], Any]:
                if i not in cache:
                    cache[i] = prep.factory(i)
                return cache[i]

            first, out = T.first_call_s(fn(0), ctx.device)
            err = (prep.error or rel_err)(out, prep.ref) if prep.ref is not None else None
            ok = err <= prep.tol if err is not None else True  # NaN compares False
            del out
            timing, graph = _time(ctx, fn, prep, base)
    except Skip as exc:
        return dict(base, status="skipped", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - one broken implementation must not stop the run
        # An implementation that does not take this call (its supports() said why) is skipped;
        # one of ours that raises otherwise is an error.
        declined = type(exc).__name__ == "BackendUnavailable"
        return dict(base, status="error" if ours and not declined else "skipped", reason=_err(exc))
    finally:
        cache.clear()
    rec = dict(
        base, status="ok" if ok else "incorrect", correct=ok, rel_err=err, tol=prep.tol,
        first_call_ms=first * 1e3, median_us=timing.median_us, timing_method=timing.method,
        n_rotate=timing.n_rotate, graph_us=graph.median_us if graph else None,
        graph_method=graph.method if graph else None, flops=prep.flops, bytes=prep.bytes,
        tflops=T.tflops(prep.flops, timing.median_s),
        gbps=T.gbps(prep.bytes, timing.median_s) if prep.bytes else None,
    )  # fmt: skip
    if ctx.ceilings is not None and prep.bytes:
        peak_key = "int8" if rec.get("a_bits") == 8 else group["dtype"]
        peak = ctx.ceilings.peak_flops.get(peak_key)
        bw = ctx.ceilings.hbm_bytes_per_s
        if peak:
            floor = T.time_floor_s(
                bytes_moved=prep.bytes, flops=prep.flops, bw_bytes_per_s=bw, peak_flops=peak
            )
            rec["floor_us"] = floor * 1e6
            rec["pct_roofline"] = T.percent_of_roofline(floor_s=floor, measured_s=timing.median_s)
        if "M" in group and group["M"] <= 256:
            rec["pct_hbm"] = 100.0 * prep.bytes / timing.median_s / bw
    return rec


@contextlib.contextmanager
def _selected(backend: str | None):
    if backend is None:
        yield
        return
    import supernet_kernels

    with supernet_kernels.backend(backend):
        yield


def _time(ctx: Context, fn, prep: Prepared, base: dict) -> tuple[T.Timing, T.Timing | None]:
    if not ctx.gpu:
        # the interpreter is slow
        reps = 3 if str(base.get("backend")).startswith("triton") else 20
        return T.bench_cpu(fn(0), warmup=min(reps, 3), repeats=reps), None
    rot = T.rotation_count(
        set_bytes=prep.bytes or T.DEFAULT_L2_BYTES, l2_bytes=T.l2_cache_bytes(ctx.device),
        maximum=prep.max_rotate,
    )  # fmt: skip
    graph = prep.graph and base.get("M", 0) <= ctx.args.graph_max_m
    return T.bench_gpu(fn, rot, settings=ctx.settings, cuda_graph=graph)


def run_group(ctx: Context, sweep: Sweep, group: dict[str, Any]) -> list[dict[str, Any]]:
    """Every implementation of one group, then the ratios to its dense row and the roofline."""
    records = []
    for impl in ctx.bench.implementations(ctx, sweep, group):
        if impl.role == "ours" and (
            (sweep.only is not None and impl.backend not in sweep.only)
            or impl.backend in sweep.exclude
        ):
            continue
        records.append(measure(ctx, group, impl))
    # the dense row of the same pass (attention times forward and backward in one group)
    dense = {r.get("pass"): r for r in records if r["role"] == "dense" and r.get("median_us")}
    for r in records:
        r["sweep"] = sweep.name
        d = dense.get(r.get("pass"))
        if d is not None and r.get("median_us"):
            r["dense_us"] = d["median_us"]
            r["speedup_vs_dense"] = d["median_us"] / r["median_us"]
            if r.get("graph_us") and d.get("graph_us"):
                r["dense_graph_us"] = d["graph_us"]
                r["graph_speedup_vs_dense"] = d["graph_us"] / r["graph_us"]
        RS.add_derived(r)
    if hasattr(ctx.bench, "finish_group"):
        ctx.bench.finish_group(ctx, records)
    if ctx.gpu:
        torch.cuda.empty_cache()
    return records


def _wanted(group: dict[str, Any], args: argparse.Namespace) -> bool:
    for key, arg in (("M", args.m), ("K", args.k), ("N", args.n)):
        if arg and key in group and group[key] not in arg:
            return False
    return not args.dtypes or group.get("dtype") in args.dtypes


def run(ctx: Context, sweeps) -> tuple[list[dict[str, Any]], int]:
    """Every wanted group of the sweeps; groups not started within --time-budget-s are counted.
    Ctrl-C (gpu_check's timeout sends SIGINT) keeps what was measured."""
    t0, records, not_run = time.perf_counter(), [], 0
    groups_of = getattr(ctx.bench, "groups", lambda s: s.groups())
    try:
        for sweep in sweeps:
            for group in groups_of(sweep):
                if not _wanted(group, ctx.args):
                    continue
                if ctx.args.time_budget_s and time.perf_counter() - t0 > ctx.args.time_budget_s:
                    not_run += 1
                    continue
                records += run_group(ctx, sweep, group)
                where = " ".join(f"{k}={v}" for k, v in group.items())
                print(f"[{ctx.bench.NAME}] {where} done ({time.perf_counter() - t0:.1f} s)")
    except KeyboardInterrupt:
        print(f"[{ctx.bench.NAME}] interrupted: writing the records measured so far", flush=True)
    return records, not_run


# --------------------------------------------------------------------------- command line


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def shared_args(bench, p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments every benchmark has, op and whole-model alike: the sweep (``--quick`` /
    ``--smoke``), ``--out``, ``--summary-json``, ``--time-budget-s``, ``--dtypes``, the timer's
    budgets (the module's ``WARMUP_MS`` / ``REP_MS``) and ``--seed``."""
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the GPU subset (gpu_check.sh)")
    mode.add_argument("--smoke", action="store_true", help="the CPU smoke sweep, even on a GPU")
    p.add_argument(
        "--out", type=Path, default=T.RESULTS_DIR,
        help=f"folder for {_results_name(bench)}.jsonl (and a dispatch copy), or a .jsonl file",
    )  # fmt: skip
    p.add_argument("--summary-json", type=Path, default=None, help="targets and summary here")
    p.add_argument("--time-budget-s", type=float, default=0.0, help="no new groups after this")
    p.add_argument("--dtypes", type=lambda s: tuple(s.split(",")), default=None)
    p.add_argument("--warmup-ms", type=int, default=getattr(bench, "WARMUP_MS", 10))
    p.add_argument("--rep-ms", type=int, default=getattr(bench, "REP_MS", 40))
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_args(bench, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=bench.DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    shared_args(bench, p)
    p.add_argument(
        "--backends", default="all",
        help="our implementations to time, comma list; 'all': every one registered for the op",
    )  # fmt: skip
    p.add_argument(
        "--peers", default=",".join(getattr(bench, "PEERS", ())),
        help="baselines and other libraries, comma list ('' = none)",
    )  # fmt: skip
    p.add_argument("--m", type=_ints, default=None, help="only these M (comma list)")
    p.add_argument("--k", type=_ints, default=None, help="only these K")
    p.add_argument("--n", type=_ints, default=None, help="only these N")
    p.add_argument("--write-dispatch", action="store_true", help="GPU: write dispatch tables")
    p.add_argument(
        "--graph-max-m", type=int, default=getattr(bench, "GRAPH_MAX_M", 256),
        help="graph replay for M <= this",
    )  # fmt: skip
    if hasattr(bench, "add_args"):
        bench.add_args(p)
    args = p.parse_args(argv)
    args.backends = tuple(b for b in args.backends.split(",") if b)
    args.peers = tuple(b for b in args.peers.split(",") if b)
    return args


def _results_name(bench) -> str:
    """The results file's stem: the module's ``RESULTS`` (the whole-model benchmarks share
    models.jsonl), else its ``NAME``."""
    return getattr(bench, "RESULTS", bench.NAME)


def results_path(bench, out: Path) -> Path:
    return out if out.suffix == ".jsonl" else out / f"{_results_name(bench)}.jsonl"


def main(bench, argv=None) -> int:
    args = parse_args(bench, argv)
    torch.manual_seed(args.seed)
    gpu = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        sweeps = [bench.SWEEPS["quick" if args.quick else "full"]]
    else:
        print(f"[{bench.NAME}] {'--smoke' if args.smoke else 'no GPU found'}: CPU smoke sweep")
        # One thread: on a shared machine an OpenMP barrier waiting for a descheduled thread
        # cost whole 20 ms time slices (smoke runs measured F.linear at 64x96x80 at 20 ms with
        # two threads, 13 us with one); the smoke run checks the plumbing, not CPU speed.
        torch.set_num_threads(1)
        sweeps = list(bench.SWEEPS["smoke"])
    env = T.environment(device)
    ctx = Context(
        bench, args, device, T.BenchSettings(warmup_ms=args.warmup_ms, rep_ms=args.rep_ms),
        None, env, f"{env['date']}-{os.getpid()}-{bench.NAME}",
    )  # fmt: skip
    if gpu:
        ctx.ceilings, ctx.env = T.report_ceilings(
            device, env, extend=getattr(bench, "extra_ceilings", None), describe=_err
        )
    if hasattr(bench, "configure"):
        bench.configure(ctx)
    t0 = time.perf_counter()
    records, not_run = run(ctx, sweeps)
    path = RS.append_results(results_path(bench, args.out), records)

    import report

    targets = report.print_report(bench.NAME, records)
    if not_run:
        print(f"[{bench.NAME}] time budget: {not_run} groups not run")
    dt = time.perf_counter() - t0
    print(f"[{bench.NAME}] {len(records)} records appended to {path} in {dt:.1f} s")
    written: list[str] = []
    if args.write_dispatch:
        try:
            written = write_dispatch(ctx, records, sweeps)
        except Exception as exc:  # noqa: BLE001 - the measurements are already saved
            print(f"[{bench.NAME}] --write-dispatch failed: {_err(exc)}")
    bad = [
        r for r in records
        if r["role"] in ("ours", "dense") and r.get("status") in ("error", "incorrect")
    ]  # fmt: skip
    for r in bad:
        what = r.get("reason") or f"rel_err={r.get('rel_err')}"
        print(f"[{bench.NAME}] {r['status'].upper()}: {r['backend']} {report.where(r)}: {what}")
    if args.summary_json:
        keys = ("backend", "op", "dtype", "M", "K", "N", "status", "reason", "rel_err")
        summary = dict(
            env=ctx.env, sweep=[s.name for s in sweeps], records=len(records),
            groups_not_run=not_run, targets=targets, dispatch=written or None,
            bad=[{k: r.get(k) for k in keys} for r in bad],
        )  # fmt: skip
        if hasattr(bench, "summary"):
            summary.update(bench.summary(records))
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(RS.jsonable(summary), indent=1, sort_keys=True))
    return 1 if bad else 0


# --------------------------------------------------------------------------- dispatch tables


def write_dispatch(ctx: Context, records: list[dict], sweeps) -> list[str]:
    """The dispatch tables of this run's records (dispatch_from_results.derive: the same
    derivation as rebuilding them from files), the GPU's and its architecture's (sm90.json);
    a copy goes to --out so that a remote run brings it back."""
    if not ctx.gpu:
        print(f"[{ctx.bench.NAME}] --write-dispatch ignored: tables come from GPU runs only")
        return []
    if not getattr(ctx.bench, "DISPATCH", True):
        print(f"[{ctx.bench.NAME}] --write-dispatch ignored: no dispatch table for this op")
        return []
    import dispatch_from_results as D

    from supernet_kernels.dispatch import write_dispatch_table

    cap = "{}.{}".format(*torch.cuda.get_device_capability(ctx.device))
    meta = {
        "source": f"benchmarks/bench_{ctx.bench.NAME}.py",
        "sweep": [s.name for s in sweeps],
        "ranking": D.RANKING,
        **{k: ctx.env.get(k) for k in ("gpu", "commit", "date", "torch", "triton", "cuda")},
    }
    paths = []
    for op, entries in D.derive(ctx.bench.NAME, records, cap).items():
        written = write_dispatch_table(ctx.env["gpu"], op, entries, meta, capability=cap)
        print(f"[{ctx.bench.NAME}] dispatch for {op} ({len(entries)} entries): {written}")
        paths.append(str(written[0]))
    if paths:
        out = ctx.args.out if ctx.args.out.suffix != ".jsonl" else ctx.args.out.parent
        RS.copy_dispatch(paths[-1], out)
    return paths
