#!/usr/bin/env python
"""Benchmark the sliced low-rank linear (y = x @ v[:r].T @ u[:n, :r].T + b) against dense.

On a GPU: dense F.linear (cuBLAS), the unfused torch backend and the fused triton / cuda
backends on ViT-B / SAM-B shapes, with correctness against fp32, % of the measured roofline,
first-call (JIT) cost, JSONL records, two target checks and, with --write-dispatch, a
dispatch table derived from the measurements. Without a GPU: a small CPU smoke run.

    python benchmarks/bench_lowrank.py --quick --write-dispatch   # ~2 min on an H100
    python benchmarks/bench_lowrank.py                            # full sweep, ~4 min
    python benchmarks/bench_lowrank.py --smoke                    # CPU, < 60 s
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

_HERE = Path(__file__).resolve().parent
# harness from any cwd; the package from this checkout even when it is not pip-installed.
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

import harness as H  # noqa: E402

# Relative Frobenius error vs fp32 that a correct kernel stays under. fp16/bf16 kernels
# accumulate in fp32; the unfused path also rounds its (M, r) intermediate, hence the slack.
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Sweep:
    name: str
    ms: tuple[int, ...]
    kns: tuple[tuple[int, int], ...]
    ranks: tuple[int, ...]
    dtypes: tuple[str, ...]


# M: one ViT-B image (197 tokens), a batch of 64 images, SAM-B 64x64 windows, 4 of those.
# (K, N): attention proj, qkv, MLP fc1, MLP fc2. M order puts the target shapes first so a
# time budget cut loses the least important ones.
FULL = Sweep(
    "full",
    ms=(197, 4096, 4 * 4096, 197 * 64),
    kns=((768, 768), (768, 2304), (768, 3072), (3072, 768)),
    ranks=(32, 64, 128, 256, 384),
    dtypes=("float16", "bfloat16"),
)
QUICK = Sweep(
    "quick",
    ms=(197, 4096, 4 * 4096),
    kns=((768, 3072), (3072, 768)),
    ranks=(32, 128, 384),
    dtypes=("float16",),
)
SMOKE = Sweep("smoke", ms=(64,), kns=((96, 80),), ranks=(8, 24), dtypes=("float32",))
# Triton's interpreter runs every program instance in Python: keep it tiny.
SMOKE_INTERPRET = Sweep(
    "smoke-interpret", ms=(16,), kns=((32, 48),), ranks=(8,), dtypes=("float32",)
)


# --------------------------------------------------------------------------- formulas


def lowrank_flops(*, m: int, k: int, n: int, rank: int) -> int:
    return 2 * m * rank * (k + n)


def lowrank_bytes(*, m: int, k: int, n: int, rank: int, elem: int, bias: bool) -> int:
    """Ideal traffic of the fused op: x read, y written, the used weight slices, bias.
    The (M, r) intermediate is not counted: a fused kernel keeps it on chip."""
    return elem * (m * k + m * n + rank * k + n * rank + (n if bias else 0))


def dense_flops(*, m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def dense_bytes(*, m: int, k: int, n: int, elem: int, bias: bool) -> int:
    return elem * (m * k + k * n + m * n + (n if bias else 0))


def flops_ratio(*, k: int, n: int, rank: int) -> float:
    """Dense FLOPs / low-rank FLOPs: the best speedup a compute-bound kernel could get."""
    return k * n / (rank * (k + n))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = torch.linalg.vector_norm(out.float() - ref)
    return float(diff / torch.linalg.vector_norm(ref).clamp_min(1e-30))


# --------------------------------------------------------------------------- package API


@dataclass
class Api:
    lowrank_linear: Any = None
    backend: Any = None  # context manager factory: supernet_kernels.backend(name)
    backend_status: Any = None
    write_dispatch_table: Any = None
    error: str | None = None


def load_api() -> Api:
    """Import the package lazily so a half-written package costs rows, not the whole run."""

    def load():
        import supernet_kernels as sk
        from supernet_kernels.backends import backend_status
        from supernet_kernels.ops import lowrank_linear

        return lowrank_linear, sk.backend, backend_status

    got, error, write_dispatch_table = H.import_package(load)
    if error:
        return Api(error=error)
    return Api(*got, write_dispatch_table)


def usable_backends(
    api: Api, device: torch.device, wanted: tuple[str, ...]
) -> dict[str, str | None]:
    """backend -> None if usable, else the reason it is skipped."""
    if api.error:
        return {b: api.error for b in wanted}
    try:
        status = api.backend_status(device)
    except Exception as exc:  # noqa: BLE001
        return {b: f"backend_status failed: {exc}" for b in wanted}
    out: dict[str, str | None] = {}
    for b in wanted:
        # torch's registered paths run wherever torch does (their own supports() decides per
        # call); backend_status reports the kernel families.
        default = (True, "ok") if b.startswith("torch") else (False, "not reported")
        ok, reason = status.get(b, default)
        if b == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            ok, reason = False, "CPU run without TRITON_INTERPRET=1"
        out[b] = None if ok else (reason or "unavailable")
    return out


# --------------------------------------------------------------------------- inputs


@dataclass
class InputSet:
    x: torch.Tensor
    u: torch.Tensor  # (N, R_max): the supernet's full factor, sliced per call
    v: torch.Tensor  # (R_max, K)
    w: torch.Tensor  # (N, K) dense weight of the same layer
    b: torch.Tensor | None


def make_set(*, m: int, k: int, n: int, rank_max: int, dtype: torch.dtype, device, bias: bool):
    # randn, scaled so outputs are O(1): timing zeros can flatter (and fp16 must not overflow).
    def rnd(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, device=device) * scale).to(dtype)

    return InputSet(
        x=rnd(m, k, scale=1.0),
        u=rnd(n, rank_max, scale=rank_max**-0.5),
        v=rnd(rank_max, k, scale=k**-0.5),
        w=rnd(n, k, scale=k**-0.5),
        b=rnd(n, scale=0.1) if bias else None,
    )


# --------------------------------------------------------------------------- sweep


@dataclass
class Runner:
    api: Api
    device: torch.device
    settings: H.BenchSettings
    ceilings: H.Ceilings | None
    env: dict[str, Any]
    run_id: str
    graph_max_m: int
    bias: bool

    def time(self, sets: list[InputSet], call, *, m: int) -> tuple[H.Timing, H.Timing | None]:
        if self.device.type == "cpu":
            return H.bench_cpu(lambda: call(sets[0])), None
        return H.bench_gpu(
            lambda i: lambda s=sets[i]: call(s),
            len(sets),
            settings=self.settings,
            cuda_graph=m <= self.graph_max_m,
        )

    def record(
        self, base: dict[str, Any], timing, graph, flops: int, nbytes: int
    ) -> dict[str, Any]:
        rec = dict(base)
        rec.update(
            median_us=timing.median_us,
            timing_method=timing.method,
            n_rotate=timing.n_rotate,
            graph_us=graph.median_us if graph else None,
            tflops=H.tflops(flops, timing.median_s),
            gbps=H.gbps(nbytes, timing.median_s),
        )
        if self.ceilings is not None:
            peak = self.ceilings.peak_flops.get(base["dtype"])
            if peak:
                floor = H.time_floor_s(
                    bytes_moved=nbytes,
                    flops=flops,
                    bw_bytes_per_s=self.ceilings.hbm_bytes_per_s,
                    peak_flops=peak,
                )
                rec.update(
                    floor_us=floor * 1e6,
                    pct_roofline=H.percent_of_roofline(floor_s=floor, measured_s=timing.median_s),
                )
        return rec

    def run_group(
        self, *, dtype: str, m: int, k: int, n: int, ranks, backends, skipped
    ) -> list[dict]:
        tdtype, elem = DTYPES[dtype], DTYPES[dtype].itemsize
        rank_max = max(ranks)
        if self.device.type == "cuda":
            set_bytes = lowrank_bytes(m=m, k=k, n=n, rank=min(ranks), elem=elem, bias=self.bias)
            n_rotate = H.rotation_count(set_bytes=set_bytes, l2_bytes=H.l2_cache_bytes(self.device))
        else:
            n_rotate = 1
        kw = dict(
            m=m, k=k, n=n, rank_max=rank_max, dtype=tdtype, device=self.device, bias=self.bias
        )
        sets = [make_set(**kw) for _ in range(n_rotate)]
        s0 = sets[0]
        b32 = s0.b.float() if s0.b is not None else None
        common = dict(
            self.env,
            run_id=self.run_id,
            dtype=dtype,
            M=m,
            K=k,
            N=n,
            rank_max=rank_max,
            bias=self.bias,
        )

        # Dense baseline (independent of rank).
        dense_call = lambda s: F.linear(s.x, s.w, s.b)
        first, out = H.first_call_s(lambda: dense_call(s0), self.device)
        err = rel_err(out, F.linear(s0.x.float(), s0.w.float(), b32))
        timing, graph = self.time(sets, dense_call, m=m)
        fl, nb = dense_flops(m=m, k=k, n=n), dense_bytes(m=m, k=k, n=n, elem=elem, bias=self.bias)
        dense = self.record(
            dict(
                common,
                backend="dense",
                rank=None,
                status="ok",
                first_call_ms=first * 1e3,
                rel_err=err,
                tol=TOLERANCE[dtype],
                correct=err <= TOLERANCE[dtype],
                flops=fl,
                bytes=nb,
            ),
            timing,
            graph,
            fl,
            nb,
        )
        records = [dense]

        for rank in ranks:
            x32 = s0.x.float()
            ref = F.linear(F.linear(x32, s0.v[:rank].float()), s0.u[:n, :rank].float(), b32)
            fl = lowrank_flops(m=m, k=k, n=n, rank=rank)
            nb = lowrank_bytes(m=m, k=k, n=n, rank=rank, elem=elem, bias=self.bias)
            base = dict(
                common,
                rank=rank,
                flops=fl,
                bytes=nb,
                flops_ratio=flops_ratio(k=k, n=n, rank=rank),
                tol=TOLERANCE[dtype],
                dense_us=dense["median_us"],
                dense_graph_us=dense.get("graph_us"),
            )
            row: dict[str, dict] = {}
            for backend in backends:
                if skipped.get(backend):
                    row[backend] = dict(
                        base, backend=backend, status="skipped", reason=skipped[backend]
                    )
                    continue
                row[backend] = self.run_backend(
                    base, backend, sets, rank=rank, n=n, ref=ref, fl=fl, nb=nb
                )
            torch_us = row.get("torch", {}).get("median_us")
            for rec in row.values():
                if rec.get("median_us"):
                    rec["speedup_vs_dense"] = dense["median_us"] / rec["median_us"]
                    rec["speedup_vs_torch"] = torch_us / rec["median_us"] if torch_us else None
                records.append(rec)
        del sets
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return records

    def run_backend(self, base, backend, sets, *, rank, n, ref, fl, nb) -> dict:
        api = self.api
        call = lambda s: api.lowrank_linear(s.x, s.u, s.v, rank, out_features=n, bias=s.b)
        try:
            with api.backend(backend):
                first, out = H.first_call_s(lambda: call(sets[0]), self.device)
                err = rel_err(out, ref)
                ok = err <= base["tol"]  # NaN compares False: NaN output counts as incorrect
                timing, graph = self.time(sets, call, m=base["M"])
        except Exception as exc:  # noqa: BLE001 - one broken backend must not stop the sweep
            return dict(
                base, backend=backend, status="error", reason=f"{type(exc).__name__}: {exc}"[:400]
            )
        rec = dict(
            base,
            backend=backend,
            status="ok" if ok else "incorrect",
            first_call_ms=first * 1e3,
            rel_err=err,
            correct=ok,
        )
        return self.record(rec, timing, graph, fl, nb)


def run_sweeps(runner: Runner, sweeps, backends, *, budget_s: float) -> tuple[list[dict], int]:
    """Run every (dtype, M, K, N) group; returns records and the number of groups cut by budget."""
    t0 = time.perf_counter()
    skipped = usable_backends(runner.api, runner.device, backends)
    for b, why in skipped.items():
        if why:
            print(f"[bench] backend {b!r} skipped: {why}")

    def run_group(sweep, sweep_backends, _state, dtype, m, k, n):
        return runner.run_group(
            dtype=dtype, m=m, k=k, n=n, ranks=sweep.ranks, backends=sweep_backends,
            skipped=skipped,
        )  # fmt: skip

    return H.run_sweeps(sweeps, run_group, budget_s=budget_s, t0=t0)


from lowrank_report import (  # noqa: E402
    derive_dispatch,
    evaluate_targets,
    format_first_calls,
    format_table,
    format_targets,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small GPU subset (~2 min on an H100)")
    mode.add_argument(
        "--smoke", action="store_true", help="CPU smoke configuration, even if a GPU exists"
    )
    p.add_argument(
        "--write-dispatch", action="store_true", help="derive and write the dispatch table"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=H.RESULTS_DIR,
        help="folder for lowrank.jsonl (and a dispatch copy)",
    )
    p.add_argument(
        "--summary-json", type=Path, default=None, help="also write targets/summary here"
    )
    p.add_argument(
        "--time-budget-s",
        type=float,
        default=0.0,
        help="stop starting new shapes after this (0: none)",
    )
    p.add_argument(
        "--backends", default="all",
        help="implementations to time, comma list; 'all': every one registered for "
        "lowrank_linear (reference, torch's fast paths, our kernels)",
    )  # fmt: skip
    p.add_argument("--dtypes", default=None, help="override dtypes, e.g. float16,bfloat16")
    p.add_argument("--warmup-ms", type=int, default=10)
    p.add_argument("--rep-ms", type=int, default=40)
    p.add_argument(
        "--graph-max-m", type=int, default=256, help="also time CUDA-graph replay for M <= this"
    )
    p.add_argument(
        "--autotune",
        action="store_true",
        help="set SUPERNET_KERNELS_AUTOTUNE=1 (tuning then counts in the first-call cost)",
    )
    p.add_argument("--no-bias", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.autotune:
        os.environ["SUPERNET_KERNELS_AUTOTUNE"] = "1"
    backends = H.op_backends("lowrank_linear", tuple(b for b in args.backends.split(",") if b))
    gpu = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda") if gpu else torch.device("cpu")
    if not gpu:
        print(
            "[bench] no GPU found (or --smoke): running the CPU smoke configuration"
            if not args.smoke
            else "[bench] --smoke: running the CPU smoke configuration"
        )
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        # Unusable backends (cuda here) are still listed so their skip reason is recorded.
        interp = os.environ.get("TRITON_INTERPRET") == "1" and "triton" in backends
        sweeps = [(SMOKE, tuple(b for b in backends if not (interp and b == "triton")))]
        if interp:
            sweeps.append((SMOKE_INTERPRET, tuple(b for b in backends if b in ("torch", "triton"))))  # noqa: E501
    else:
        sweep = QUICK if args.quick else FULL
        if args.dtypes:
            sweep = Sweep(
                sweep.name, sweep.ms, sweep.kns, sweep.ranks, tuple(args.dtypes.split(","))
            )
        sweeps = [(sweep, backends)]

    env = H.environment(device)
    run_id = f"{env['date']}-{os.getpid()}"
    ceilings = None
    if gpu:
        ceilings, env = H.report_ceilings(device, env)

    runner = Runner(
        api=load_api(),
        device=device,
        settings=H.BenchSettings(warmup_ms=args.warmup_ms, rep_ms=args.rep_ms),
        ceilings=ceilings,
        env=env,
        run_id=run_id,
        graph_max_m=args.graph_max_m,
        bias=not args.no_bias,
    )
    t0 = time.perf_counter()
    records, not_run = run_sweeps(runner, sweeps, backends, budget_s=args.time_budget_s)
    path = H.append_results(args.out / "lowrank.jsonl", records)
    print(format_table(records))
    print(format_first_calls(records))
    targets = evaluate_targets(records)
    print(format_targets(targets))
    if not_run:
        print(f"[bench] time budget: {not_run} (dtype, M, K, N) groups not run")
    print(f"[bench] {len(records)} records appended to {path} in {time.perf_counter() - t0:.1f} s")

    dispatch_path = None
    if args.write_dispatch:
        try:
            dispatch_path = write_dispatch(runner, records, sweeps, args.out)
        except Exception as exc:  # noqa: BLE001 - the measurements are already saved
            print(f"[bench] --write-dispatch failed: {type(exc).__name__}: {exc}")

    bad = [r for r in records if r.get("status") in ("error", "incorrect")]
    keys = ("backend", "dtype", "M", "K", "N", "rank", "status", "reason")
    return H.finish_run(
        bad,
        lambda r: f"{r['dtype']} M={r['M']} K={r['K']} N={r['N']} rank={r['rank']}",
        args.summary_json,
        lambda: dict(
            env=env,
            sweep=[s.name for s, _ in sweeps],
            records=len(records),
            groups_not_run=not_run,
            targets=targets,
            dispatch=str(dispatch_path) if dispatch_path else None,
            bad=[{k: r.get(k) for k in keys} for r in bad],
        ),
    )


def write_dispatch(runner: Runner, records, sweeps, out: Path) -> Path | None:
    if runner.device.type != "cuda":
        print("[bench] --write-dispatch ignored: dispatch tables come from GPU measurements only")
        return None
    if runner.api.write_dispatch_table is None:
        print(
            "[bench] --write-dispatch: supernet_kernels.dispatch.write_dispatch_table unavailable"
        )
        return None
    cap = "{}.{}".format(*torch.cuda.get_device_capability(runner.device))
    entries = derive_dispatch(records, cap)
    meta = {
        "source": "benchmarks/bench_lowrank.py",
        "sweep": [s.name for s, _ in sweeps],
        "criterion": "per (dtype, M bucket, rank bucket): every registered implementation's "
        "eager and graph time (geometric mean over the bucket's (K, N)) and the dense layer's; "
        "ranked by graph time where recorded; pick: the fastest within 1.10x of dense that is "
        "a torch path or a kernel verified on this architecture, else torch_dense",
        **{
            k: runner.env.get(k)
            for k in ("gpu", "commit", "date", "torch", "triton", "cuda", "ceilings")
        },
    }
    written = runner.api.write_dispatch_table(
        runner.env["gpu"], "lowrank_linear", entries, meta, capability=cap
    )
    path = Path(written[0])  # the GPU's own table; the architecture's (sm90.json) beside it
    print(f"[bench] dispatch table ({len(entries)} entries) written to {written}")
    H.copy_dispatch(path, out)
    return path


if __name__ == "__main__":
    sys.exit(main())
