#!/usr/bin/env python
"""The attention op alone at SAM ViT-B's shapes: ``torch.ops.supernet_kernels.attention`` with
SAM's decomposed relative-position bias, Triton backend vs the materializing reference, and
F.scaled_dot_product_attention (no rel pos: it cannot take the decomposed bias) as the bar.

Shapes (heads 12, head dim 64):
  global  the 64 x 64 token grid of SAM's global-attention blocks at 1024x1024: T = 4096
          (batch 1; full mode also batch 4), rel pos (H = W = 64)
  window  14 x 14 windows: T = 196, batch 25 (SAM b1: the 64 x 64 grid padded to 70 x 70),
          rel pos (H = W = 14)
Rows per shape and dtype (fp16, bf16):
  triton       the op, backend "triton", with rel pos
  reference    the op, backend "torch" (fp32 T x T scores), with rel pos
  triton_norel the op, backend "triton", without rel pos
  sdpa         F.scaled_dot_product_attention, without rel pos
  <name>, <name>_norel   every other implementation registered for the op (torch's fast paths:
               torch_sdpa = SDPA with the rel-pos term as an additive mask), with and without
               rel pos, as ``supernet_kernels.ops.attention`` runs it
Passes: fwd; full mode also bwd (fwd + bwd through autograd minus fwd; every input that takes a
gradient does: q, k, v, and rel_h / rel_w).

FLOPs are the QK^T and PV matmuls only: 4 B H T^2 d forward, 10 B H T^2 d backward (recomputed
QK^T, dV, dP, dQ, dK); TFLOP/s = FLOPs / median time, and % of the bf16 tensor-core peak that
harness.measure_ceilings measures in the same run (an 8192^3 bf16 matmul). The bias adds
O(T^2) work the count leaves out. Target: the Triton forward with rel pos at T = 4096, bf16,
>= 40% of that peak (PASS / MISS). Correctness before timing: triton (and sdpa) against the
reference in fp32 statistics, max |a - b| / max |b| <= 2e-2 (a failed check marks the row
"mismatch"; it is still timed).

    python benchmarks/bench_attention.py --quick   # GPU: fwd, both dtypes, ~30 s
    python benchmarks/bench_attention.py           # GPU: + bwd, + global batch 4
    python benchmarks/bench_attention.py --smoke   # CPU: tiny shapes under TRITON_INTERPRET=1
                                                   # (triton rows skipped without Triton), < 30 s
Records go to --out (a JSONL file; gpu_check.sh appends them to models.jsonl, kind
"attention"); models_report.py prints their table too.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

import harness as H  # noqa: E402
import models_report as R  # noqa: E402

TARGET_PCT = 40.0
TOL = 2e-2
BASE_ROWS = ("triton", "reference", "triton_norel", "sdpa")


def registered_rows() -> tuple[str, ...]:
    """Rows for the registered implementations the base rows do not cover."""
    names = H.op_backends("attention", ("all",))
    extra = [n for n in names if n not in ("torch", "triton")]
    return tuple(r for n in extra for r in (n, f"{n}_norel"))


BACKENDS = BASE_ROWS


@dataclass(frozen=True)
class Shape:
    name: str
    b: int
    h: int
    grid: int  # tokens per side: T = grid^2
    d: int = 64

    @property
    def t(self) -> int:
        return self.grid * self.grid


QUICK_SHAPES = (Shape("global", 1, 12, 64), Shape("window", 25, 12, 14))
FULL_SHAPES = (*QUICK_SHAPES, Shape("global", 4, 12, 64))
SMOKE_SHAPES = (Shape("global", 1, 2, 4, 16), Shape("window", 3, 2, 3, 16))
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def flops(shape: Shape, pass_: str) -> int:
    return R.attention_flops(shape.b, shape.h, shape.t, shape.d, pass_)


def evaluate_target(records: list[dict]) -> dict:
    """>= 40% of the bf16 peak: the Triton forward with rel pos at T = 4096, bf16 (best batch)."""
    rows = [
        r for r in records
        if r.get("backend") == "triton" and r.get("pass") == "fwd" and r.get("T") == 4096
        and r.get("dtype") == "bfloat16" and r.get("pct_bf16_peak") is not None
    ]  # fmt: skip
    best = max((r["pct_bf16_peak"] for r in rows), default=None)
    return {
        "target": f"attention fwd, rel pos, T=4096, bf16, triton: >= {TARGET_PCT:g}% of the "
        "bf16 tensor-core peak (measured in the same run)",
        "pass": None if best is None else best >= TARGET_PCT,
        "value": best,
        "detail": "% of bf16 peak",
    }


def make_inputs(shape: Shape, dtype, device, rel: bool, grad: bool = False):
    g = torch.Generator(device="cpu").manual_seed(shape.t + shape.b)

    def rnd(*size, scale=1.0):
        t = (torch.randn(*size, generator=g) * scale).to(device=device, dtype=dtype)
        return t.requires_grad_(grad)

    b, h, t, d = shape.b, shape.h, shape.t, shape.d
    q, k, v = (rnd(b, h, t, d) for _ in range(3))
    if not rel:
        return q, k, v, None, None
    return q, k, v, rnd(b, h, t, shape.grid, scale=0.5), rnd(b, h, t, shape.grid, scale=0.5)


def runner(backend: str, inputs, scale: float):
    """A zero-argument forward for one backend row."""
    import torch.nn.functional as F

    import supernet_kernels as sk

    q, k, v, rh, rw = inputs
    if backend == "sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v, scale=scale)
    if backend.removesuffix("_norel") == "torch_sdpa":
        from supernet_kernels.ops.fast_paths import sdpa_attention

        return lambda: sdpa_attention(q, k, v, rh, rw, scale)  # what ops.attention runs

    def run():
        with sk.backend(op_backend(backend)):
            return torch.ops.supernet_kernels.attention(q, k, v, rh, rw, scale)[0]

    return run


def op_backend(backend: str) -> str:
    """The supernet_kernels backend of a row ("auto" for sdpa: it does not use the op)."""
    fixed = {"reference": "torch", "triton": "triton", "triton_norel": "triton", "sdpa": "auto"}
    return fixed.get(backend, backend.removesuffix("_norel"))


def row_has_rel(backend: str) -> bool:
    return backend != "sdpa" and not backend.endswith("_norel")


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    o, r = out.float(), ref.float()
    return float((o - r).abs().max() / r.abs().max().clamp_min(1e-30))


def run_shape(shape: Shape, dname: str, args, gpu: bool, ceilings, env, run_id) -> list[dict]:
    dtype = DTYPES[dname]
    device = torch.device("cuda" if gpu else "cpu")
    scale = shape.d**-0.5
    settings = H.BenchSettings(warmup_ms=args.warmup_ms, rep_ms=args.rep_ms)
    passes = ("fwd",) if (args.quick or not gpu) else ("fwd", "bwd")
    peak = ceilings.peak_flops.get("bfloat16") if ceilings else None
    records = []
    refs: dict[bool, torch.Tensor] = {}
    rows = (*BACKENDS, *registered_rows())
    for backend in ("reference", *[b for b in rows if b != "reference"]):
        rel = row_has_rel(backend)
        base = dict(
            env, run_id=run_id, kind="attention", bench="attention", shape=shape.name,
            dtype=dname, backend=backend, rel=rel, B=shape.b, H=shape.h, T=shape.t, d=shape.d,
        )  # fmt: skip
        if backend.startswith("triton") and args.triton_reason:
            for p in passes:
                records.append(dict(base, **{"pass": p}, status="skipped",
                                    reason=args.triton_reason))  # fmt: skip
            continue
        try:
            inputs = make_inputs(shape, dtype, device, rel)
            fwd = runner(backend, inputs, scale)
            with torch.no_grad():
                out = fwd()
            if gpu:
                torch.cuda.synchronize()
            # correctness: against the reference with rel pos; sdpa / triton_norel against the
            # reference op without rel pos (computed once)
            if backend == "reference":
                refs[True] = out
                err = None
            else:
                if not rel and False not in refs:
                    with torch.no_grad():
                        refs[False] = runner("reference", (*inputs[:3], None, None), scale)()
                err = rel_error(out, refs[rel])
            del out
        except Exception as exc:  # noqa: BLE001 - the reason is the result
            traceback.print_exc(limit=2)
            for p in passes:
                records.append(dict(base, **{"pass": p}, status="error",
                                    reason=f"{type(exc).__name__}: {exc}"[:400]))  # fmt: skip
            continue
        status = "ok" if err is None or err <= TOL else "mismatch"
        for p in passes:
            rec = dict(base, **{"pass": p}, rel_err=err, status=status, flops=flops(shape, p))
            try:
                rec["median_us"] = time_pass(p, backend, shape, dtype, device, scale, gpu,
                                             settings, fwd)  # fmt: skip
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc(limit=2)
                rec.update(status="error", reason=f"{type(exc).__name__}: {exc}"[:400])
                records.append(rec)
                continue
            us = rec["median_us"]
            rec["tflops"] = H.tflops(rec["flops"], us * 1e-6) if us else None
            rec["pct_bf16_peak"] = (
                100 * rec["flops"] / (us * 1e-6) / peak if (peak and us and gpu) else None
            )
            rec["timing_method"] = "do_bench_median" if gpu else "cpu_perf_counter_median"
            records.append(rec)
            print(
                f"[attention] {shape.name} B={shape.b} T={shape.t} {dname} {p} {backend}: "
                f"{us:.1f} us, {rec['tflops']:.2f} TFLOP/s"
                + (f" ({rec['pct_bf16_peak']:.0f}% bf16 peak)" if rec["pct_bf16_peak"] else "")
                + ("" if err is None else f", rel_err {err:.1e}"),
                flush=True,
            )
        if gpu:
            torch.cuda.empty_cache()
    return records


def _time(fn, gpu: bool, settings) -> float:
    """Median microseconds of one call."""
    if gpu:
        from triton.testing import do_bench

        return 1e3 * do_bench(
            fn, warmup=settings.warmup_ms, rep=settings.rep_ms, return_mode="median"
        )
    return H.bench_cpu(fn, warmup=1, repeats=3).median_us


def time_pass(p, backend, shape, dtype, device, scale, gpu, settings, fwd) -> float:
    if p == "fwd":
        with torch.no_grad():
            return _time(fwd, gpu, settings)
    rel = row_has_rel(backend)
    inputs = make_inputs(shape, dtype, device, rel, grad=True)
    f = runner(backend, inputs, scale)
    leaves = [t for t in inputs if t is not None]
    g_out = torch.randn(shape.b, shape.h, shape.t, shape.d, device=device, dtype=dtype)

    import supernet_kernels as sk

    def fwd_bwd():  # the backward op picks its backend when it runs: inside the block
        with sk.backend(op_backend(backend)):
            torch.autograd.grad(f(), leaves, g_out)

    with torch.no_grad():
        t_fwd = _time(f, gpu, settings)
    return max(_time(fwd_bwd, gpu, settings) - t_fwd, 0.0)


# Forward tile sweep (--sweep): (BLOCK_M, BLOCK_N, num_warps, num_stages, key_grid); the first
# row is the first H100 run's configuration (2026-11-26), gather bias.
SWEEP = (
    (64, 64, 4, 3, False),
    (64, 64, 4, 3, True),
    (128, 64, 8, 3, True),
    (128, 64, 4, 3, True),
    (128, 128, 8, 3, True),
    (128, 64, 8, 4, True),
)


def sweep(args, ceilings, env, run_id, t0) -> list[dict]:
    """The Triton forward with rel pos (and without, key_grid off) at each SWEEP config, bf16,
    on the quick shapes: median us, % of the bf16 peak, error against the reference."""
    from supernet_kernels.kernels import triton_attention as ta

    device = torch.device("cuda")
    peak = ceilings.peak_flops.get("bfloat16") if ceilings else None
    settings = H.BenchSettings(warmup_ms=args.warmup_ms, rep_ms=args.rep_ms)
    records = []
    for shape in QUICK_SHAPES:
        for rel in (True, False):
            q, k, v, rh, rw = make_inputs(shape, torch.bfloat16, device, rel)
            scale = shape.d**-0.5
            with torch.no_grad():
                ref = runner("reference", (q, k, v, rh, rw), scale)()
            seen = set()
            for bm, bn, warps, stages, kg in SWEEP:
                kg = kg and rel  # without the bias: the tiles alone
                if (bm, bn, warps, stages, kg) in seen or (not rel and shape.name != "global"):
                    continue
                seen.add((bm, bn, warps, stages, kg))
                if args.time_budget_s and time.perf_counter() - t0 > args.time_budget_s:
                    return records
                tiles = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
                rec = dict(
                    env, run_id=run_id, kind="attention_sweep", bench="attention",
                    shape=shape.name, dtype="bfloat16", rel=rel, B=shape.b, H=shape.h,
                    T=shape.t, d=shape.d, key_grid=kg, **tiles, flops=flops(shape, "fwd"),
                )  # fmt: skip
                try:
                    fwd = functools.partial(
                        ta.attention_fwd, q, k, v, rh, rw, scale, tiles=tiles, key_grid=kg
                    )
                    err = rel_error(fwd()[0], ref)
                    us = _time(fwd, True, settings)
                    rec.update(status="ok" if err <= TOL else "mismatch", rel_err=err,
                               median_us=us, tflops=H.tflops(rec["flops"], us * 1e-6),
                               pct_bf16_peak=100 * rec["flops"] / (us * 1e-6) / peak
                               if peak else None)  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory
                    rec.update(status="error", reason=f"{type(exc).__name__}: {exc}"[:300])
                records.append(rec)
                pct = rec.get("pct_bf16_peak")
                print(f"[sweep] {shape.name} rel={int(rel)} {bm}x{bn} w{warps} s{stages} "
                      f"kg={int(kg)}: {rec['status']} "
                      + (f"{rec['median_us']:.1f} us, {pct:.1f}% bf16 peak, "
                         f"rel_err {rec['rel_err']:.1e}" if rec["status"] != "error"
                         else rec["reason"]), flush=True)  # fmt: skip
            torch.cuda.empty_cache()
    return records


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="GPU: fwd only (~30 s)")
    mode.add_argument("--smoke", action="store_true", help="CPU, tiny shapes")
    p.add_argument("--dtypes", default="bfloat16,float16")
    p.add_argument("--out", type=Path, default=H.RESULTS_DIR / "attention.jsonl",
                   help="JSONL file the records are appended to")  # fmt: skip
    p.add_argument("--summary-json", type=Path, default=None)
    p.add_argument("--time-budget-s", type=float, default=0.0, help="no new shapes after this")
    p.add_argument("--warmup-ms", type=int, default=25)
    p.add_argument("--rep-ms", type=int, default=100)
    p.add_argument("--sweep", action="store_true", help="GPU: also sweep the forward's tiles")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    gpu = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if gpu else "cpu")
    args.triton_reason = None
    if not gpu:
        # The Triton interpreter runs the kernels on CPU tensors; it must be on before the
        # kernels are defined (supernet_kernels imports them lazily).
        os.environ.setdefault("TRITON_INTERPRET", "1")
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        try:
            import triton  # noqa: F401
        except ImportError:
            args.triton_reason = "Triton is not installed: triton rows skipped on the CPU"
        if os.environ.get("TRITON_INTERPRET") != "1":
            args.triton_reason = "TRITON_INTERPRET is not 1: triton rows skipped on the CPU"
        if args.triton_reason is None:
            from supernet_kernels import backends

            args.triton_reason = backends.unavailable_reason("triton", torch.device("cpu"))
        print("[attention] CPU (no GPU or --smoke): tiny shapes, timings are not meaningful"
              + (f"; {args.triton_reason}" if args.triton_reason else
                 "; triton under TRITON_INTERPRET=1"))  # fmt: skip
    import supernet_kernels  # noqa: F401 - registers torch.ops.supernet_kernels

    env = H.environment(device)
    run_id = f"{env['date']}-{os.getpid()}-attention"
    ceilings = None
    if gpu:
        ceilings, env = H.report_ceilings(device, env)
    shapes = SMOKE_SHAPES if not gpu else (QUICK_SHAPES if args.quick else FULL_SHAPES)
    dtypes = [d for d in args.dtypes.split(",") if d]
    records: list[dict] = []
    not_run = 0
    try:
        for dname in dtypes:
            for shape in shapes:
                if args.time_budget_s and time.perf_counter() - t0 > args.time_budget_s:
                    not_run += 1
                    continue
                records += run_shape(shape, dname, args, gpu, ceilings, env, run_id)
        if gpu and args.sweep:
            records += sweep(args, ceilings, env, run_id, t0)
    except KeyboardInterrupt:
        print("[attention] interrupted: writing the records measured so far", flush=True)
    target = evaluate_target(records)
    path = H.append_results(args.out, records)
    print(R.format_attention(records))
    if gpu:
        v = target["value"]
        shown = "-" if v is None else f"{v:.1f}%"
        print(f"\n[attention] {R.verdict(target['pass'])} {target['target']}: {shown}")
    bad = [r for r in records if r.get("status") in ("error", "mismatch")]
    for r in bad:
        print(f"[attention] {r['status'].upper()}: {r.get('backend', r.get('kind'))} "
              f"{r['shape']} {r['dtype']} {r.get('pass', 'fwd')}: "
              f"{r.get('reason') or r.get('rel_err')}")  # fmt: skip
    print(f"[attention] {len(records)} records appended to {path} in "
          f"{time.perf_counter() - t0:.1f} s; shapes not run (budget): {not_run}")  # fmt: skip
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "env": env, "records": len(records), "not_run": not_run, "target": target,
            "bad": [{k: r.get(k) for k in ("backend", "shape", "dtype", "pass", "status",
                                            "reason", "rel_err")} for r in bad],
            "us": {f"{r['shape']}/b{r['B']}/{R.short_dtype(r['dtype'])}/{r['pass']}/"
                   f"{r['backend']}": r.get("median_us") for r in records},
            "pct_bf16_peak": {f"{r['shape']}/b{r['B']}/{R.short_dtype(r['dtype'])}/{r['pass']}/"
                              f"{r['backend']}": r.get("pct_bf16_peak") for r in records
                              if r.get("pct_bf16_peak") is not None},
        }  # fmt: skip
        args.summary_json.write_text(json.dumps(H.jsonable(summary), indent=1, sort_keys=True))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
