#!/usr/bin/env python
"""Benchmark the quantized linears (quant_linear: 2/3/4/8-bit packed weights, A16 and A8;
int8_linear: W8A8) against fp16 cuBLAS, torch's int8 / fp8 / int4 GEMMs and installed peers.

On a GPU: correctness of ours against quant_linear_reference in fp32 before timing, do_bench
(eager) and CUDA-graph replay (M <= 256) times, TFLOP/s, GB/s, % of measured HBM bandwidth and
roofline, speedup vs fp16 beside the BitOPs ratio, first-call cost, JSONL records, targets and,
with --write-dispatch, dispatch tables. Without a GPU: a tiny CPU smoke run.

    python benchmarks/bench_quant.py --quick --write-dispatch   # ~2 min on an H100
    python benchmarks/bench_quant.py                            # full sweep
    python benchmarks/bench_quant.py --smoke                    # CPU, < 60 s
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

import harness as H  # noqa: E402
import quant_report as R  # noqa: E402
from bench_lowrank import rel_err, usable_backends  # noqa: E402

TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}
PEER_TOL = 3e-2  # peers round differently (bf16 tinygemm, nf4, their own int8 scales)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PEERS = ("int_mm", "scaled_mm", "int4pack", "bnb", "gemlite")
PEER_ROTATE = 32  # input sets for peers that build a layer per set (bounded setup time)


@dataclass(frozen=True)
class Sweep:
    name: str
    ms: tuple[int, ...]
    kns: tuple[tuple[int, int], ...]
    wcfgs: tuple[tuple[int, int | None], ...]  # (bits, group_size); None = per-channel
    acts: tuple[int, ...]
    dtypes: tuple[str, ...]


# (K, N): 4096x11008 / 4096x4096 (LLM-style), ViT-B qkv / fc1 / fc2, SAM-L/H-like. The order
# puts the target shapes first so that a time-budget cut loses the least important ones.
FULL = Sweep(
    "full",
    ms=(1, 16, 4096, 64, 256, 16384),
    kns=((4096, 11008), (4096, 4096), (768, 2304), (768, 3072), (3072, 768),
         (1024, 4096), (1280, 5120), (5120, 1280)),
    wcfgs=((4, 128), (2, 128), (8, None), (3, 128), (8, 128)),
    acts=(16, 8),
    dtypes=("float16",),
)  # fmt: skip
QUICK = Sweep(
    "quick",
    ms=(1, 16, 4096),
    kns=((4096, 11008), (768, 3072)),
    wcfgs=((4, 128), (2, 128), (8, None)),
    acts=(16, 8),
    dtypes=("float16",),
)
SMOKE = Sweep("smoke", (1, 5), ((64, 48),), ((4, 32), (3, 32)), (16, 8), ("float32",))


class Skip(Exception):
    """A baseline that cannot run here; the message is the reason."""


@dataclass
class Api:
    ops: Any = None  # supernet_kernels.ops.quant
    backend: Any = None
    backend_status: Any = None
    write_dispatch_table: Any = None
    quantize_weight: Any = None
    error: str | None = None


def load_api() -> Api:
    """Import the package lazily so a half-written package costs rows, not the whole run."""

    def load():
        import supernet_kernels as sk
        from supernet_kernels.backends import backend_status
        from supernet_kernels.ops import quant
        from supernet_kernels.quant import quantize_weight

        return quant, sk.backend, backend_status, quantize_weight

    got, error, write_dispatch_table = H.import_package(load)
    if error:
        return Api(error=error)
    quant, backend, backend_status, quantize_weight = got
    return Api(quant, backend, backend_status, write_dispatch_table, quantize_weight)


def backend_skips(api: Api, device: torch.device, backends) -> dict[str, str | None]:
    backends = tuple(
        dict.fromkeys(
            b for op in ("quant_linear", "int8_linear") for b in H.op_backends(op, tuple(backends))
        )
    )
    skipped = usable_backends(api, device, backends)
    if "triton" in backends and not skipped.get("triton"):
        try:
            import supernet_kernels.kernels.triton_quant  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            skipped["triton"] = f"kernels.triton_quant not importable: {type(exc).__name__}: {exc}"
    return skipped


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:400]


def _bind(fn, *args, **kwargs):
    """A zero-argument closure over this input set's tensors."""
    return lambda: fn(*args, **kwargs)


def clone_qweight(qw):
    return dataclasses.replace(
        qw, packed=qw.packed.clone(), scales=qw.scales.clone(), zeros=qw.zeros.clone()
    )


def int8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-channel int8 weight (N, K) and float32 scale (N,)."""
    scale = (w.abs().amax(1) / 127.0).clamp_min(1e-12).float()
    w8 = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return w8.contiguous(), scale.contiguous()


# --------------------------------------------------------------------------- runner


@dataclass
class Group:
    """One (dtype, M, K, N): the master weight, lazily made input sets, record templates."""

    runner: Runner
    dtype: str
    m: int
    k: int
    n: int

    def __post_init__(self):
        self.tdtype = DTYPES[self.dtype]
        self.elem = self.tdtype.itemsize
        self.w = torch.randn(self.n, self.k, device=self.runner.device) * self.k**-0.5
        self.xs: dict[int, torch.Tensor] = {}
        self.flops = R.matmul_flops(m=self.m, k=self.k, n=self.n)

    def x(self, i: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        if i not in self.xs:
            self.xs[i] = torch.randn(self.m, self.k, device=self.runner.device).to(self.tdtype)
        return self.xs[i] if dtype in (None, self.tdtype) else self.xs[i].to(dtype)

    def base(self, kind: str, backend: str, wb: int, ab: int, **kw) -> dict:
        r = self.runner
        m, k, n = self.m, self.k, self.n
        return dict(
            r.env, run_id=r.run_id, dtype=self.dtype, M=m, K=k, N=n, kind=kind, backend=backend,
            w_bits=wb, a_bits=ab, bitops=R.bitops(m=m, k=k, n=n, w_bits=wb, a_bits=ab),
            bitops_ratio=R.bitops_ratio(w_bits=wb, a_bits=ab), **kw,
        )  # fmt: skip


@dataclass
class Runner:
    api: Api
    device: torch.device
    settings: H.BenchSettings
    ceilings: H.Ceilings | None
    env: dict[str, Any]
    run_id: str
    graph_max_m: int
    peers: tuple[str, ...]

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    def measure(
        self, base: dict, factory, nbytes: int | None, flops: int, *, ref=None, tol=None,
        max_rotate: int = H.MAX_ROTATE,
    ):  # fmt: skip
        """First call (+ correctness vs ref), then timing; returns one record.
        factory(i) builds input set i and returns a closure running the op on it."""
        m = base["M"]
        cache: dict[int, Any] = {}

        def fn(i: int):
            if i not in cache:
                cache[i] = factory(i)
            return cache[i]

        try:
            first, out = H.first_call_s(fn(0), self.device)
            err = rel_err(out, ref) if ref is not None else None
            ok = err <= tol if ref is not None else True  # NaN compares False: incorrect
            if self.gpu:
                rot = H.rotation_count(
                    set_bytes=nbytes or H.DEFAULT_L2_BYTES,
                    l2_bytes=H.l2_cache_bytes(self.device),
                    maximum=max_rotate,
                )
                timing, graph = H.bench_gpu(
                    fn, rot, settings=self.settings, cuda_graph=m <= self.graph_max_m
                )
            else:
                reps = 3 if base.get("backend") == "triton" else 20  # the interpreter is slow
                timing, graph = H.bench_cpu(fn(0), warmup=min(reps, 3), repeats=reps), None
        except Skip as exc:
            return dict(base, status="skipped", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - one broken backend must not stop the sweep
            # A baseline that raises is skipped with its reason; one of ours is an error,
            # unless the implementation does not take this call (its supports() said why).
            declined = type(exc).__name__ == "BackendUnavailable"
            status = "error" if R.is_ours(base) and not declined else "skipped"
            return dict(base, status=status, reason=_err(exc))
        finally:
            cache.clear()
        rec = dict(
            base, status="ok" if ok else "incorrect", correct=ok, rel_err=err, tol=tol,
            first_call_ms=first * 1e3, median_us=timing.median_us, timing_method=timing.method,
            n_rotate=timing.n_rotate, graph_us=graph.median_us if graph else None,
            graph_method=graph.method if graph else None, flops=flops, bytes=nbytes,
            tflops=H.tflops(flops, timing.median_s),
        )  # fmt: skip
        if nbytes:
            rec["gbps"] = H.gbps(nbytes, timing.median_s)
        if self.ceilings is not None and nbytes:
            bw = self.ceilings.hbm_bytes_per_s
            if m <= 256:
                rec["pct_hbm"] = 100.0 * nbytes / timing.median_s / bw
            peak_key = "int8" if base["a_bits"] == 8 else base.get("act_dtype", base["dtype"])
            peak = self.ceilings.peak_flops.get(peak_key)
            if peak:
                floor = H.time_floor_s(
                    bytes_moved=nbytes, flops=flops, bw_bytes_per_s=bw, peak_flops=peak
                )
                rec["floor_us"] = floor * 1e6
                rec["pct_roofline"] = H.percent_of_roofline(
                    floor_s=floor, measured_s=timing.median_s
                )
        return rec

    def run_group(self, sweep: Sweep, dtype: str, m: int, k: int, n: int, backends, skipped):
        g = Group(self, dtype, m, k, n)
        wd = g.w.to(g.tdtype)
        dense = self.measure(
            g.base("dense", "dense", 16, 16, op=None, act_dtype=dtype),
            lambda i: _bind(F.linear, g.x(i), wd if i == 0 else wd.clone()),
            R.dense_bytes(m=m, k=k, n=n, elem=g.elem), g.flops,
            ref=F.linear(g.x(0).float(), g.w), tol=TOLERANCE[dtype],
        )  # fmt: skip
        records = [dense]
        qws: dict[tuple, Any] = {}
        for bits, group in sweep.wcfgs:
            try:
                qws[(bits, group)] = self.api.quantize_weight(g.w, bits, group_size=group)
            except Exception as exc:  # noqa: BLE001
                print(f"[bench] quantize_weight({bits}, {group}) failed: {_err(exc)}")
        combos = {(b, a) for b, _ in sweep.wcfgs for a in sweep.acts}
        if self.gpu and self.peers:
            records += peer_records(self, g, qws, combos)
        for (bits, _), qw in qws.items():
            nb = R.quant_bytes(m=m, k=k, n=n, bits=bits, group_size=qw.group_size, elem=g.elem)
            for act in sweep.acts:
                ref = self.api.ops.quant_linear_reference(
                    g.x(0).float(), qw.packed, qw.scales, qw.zeros, bits, qw.group_size, k, act
                )

                def factory(i, qw=qw, act=act):
                    q = qw if i == 0 else clone_qweight(qw)
                    return _bind(self.api.ops.quant_linear, g.x(i), q, act_bits=act)

                for b in H.op_backends("quant_linear", backends):
                    rb = g.base(
                        "ours", b, bits, act, op="quant_linear", group_size=qw.group_size,
                        act_dtype=dtype,
                    )  # fmt: skip
                    records.append(self.run_ours(rb, b, skipped, factory, nb, g.flops, ref))
        if 8 in sweep.acts and any(b == 8 for b, _ in sweep.wcfgs):
            w8, ws = int8_weight(g.w)
            ref = self.api.ops.int8_linear_reference(g.x(0).float(), w8, ws)
            nb = R.int8_bytes(m=m, k=k, n=n, elem=g.elem)

            def factory8(i):
                wi, si = (w8, ws) if i == 0 else (w8.clone(), ws.clone())
                return _bind(self.api.ops.int8_linear, g.x(i), wi, si)

            for b in H.op_backends("int8_linear", backends):
                rb = g.base("ours", b, 8, 8, op="int8_linear", group_size=k, act_dtype=dtype)
                records.append(self.run_ours(rb, b, skipped, factory8, nb, g.flops, ref))

        for r in records:
            if r.get("median_us") and dense.get("median_us"):
                r["dense_us"] = dense["median_us"]
                r["speedup_vs_dense"] = dense["median_us"] / r["median_us"]
            if r.get("graph_us") and dense.get("graph_us"):
                r["dense_graph_us"] = dense["graph_us"]
                r["graph_speedup_vs_dense"] = dense["graph_us"] / r["graph_us"]
        if self.gpu:
            torch.cuda.empty_cache()
        return records

    def run_ours(self, rb, backend, skipped, factory, nb, flops, ref) -> dict:
        if skipped.get(backend):
            return dict(rb, status="skipped", reason=skipped[backend])
        try:
            with self.api.backend(backend):
                return self.measure(rb, factory, nb, flops, ref=ref, tol=TOLERANCE[rb["dtype"]])
        except Exception as exc:  # noqa: BLE001
            # An implementation that does not take this call (its supports() said why).
            status = "skipped" if type(exc).__name__ == "BackendUnavailable" else "error"
            return dict(rb, status=status, reason=_err(exc))


# --------------------------------------------------------------------------- baselines, peers


def peer_records(runner: Runner, g: Group, qws: dict, combos: set) -> list[dict]:
    """torch's bare int8 / fp8 GEMMs (kind 'gemm'), torch's int4 tinygemm and installed peers
    (kind 'peer'), only at the (w_bits, a_bits) the sweep measures. Whatever cannot run here
    is recorded as skipped with the reason."""
    out: list[dict] = []
    m, k, n, dev, td = g.m, g.k, g.n, runner.device, g.tdtype
    want = set(runner.peers)

    def add(name, kind, wb, ab, prep, act_dtype=None):
        if (wb, ab) not in combos:
            return
        rb = g.base(kind, name, wb, ab, op=None, act_dtype=act_dtype or g.dtype)
        try:
            factory, nbytes, ref, extra = prep()
        except Exception as exc:  # noqa: BLE001 - a missing or incompatible peer is a skip
            why = str(exc) if isinstance(exc, Skip) else _err(exc)
            out.append(dict(rb, status="skipped", reason=why))
            return
        # Peers that build a whole layer per input set rotate among at most PEER_ROTATE sets.
        cap = PEER_ROTATE if extra.pop("layer_per_set", False) else H.MAX_ROTATE
        rb.update(extra)
        tol = PEER_TOL if ref is not None else None
        rec = runner.measure(rb, factory, nbytes, g.flops, ref=ref, tol=tol, max_rotate=cap)
        out.append(rec)

    def ref_of(w):
        return F.linear(g.x(0).float(), w.float())

    if "int_mm" in want:
        add("torch_int_mm", "gemm", 8, 8, lambda: _int_mm_prep(g))
    if "scaled_mm" in want:
        add("torch_scaled_mm_fp8", "gemm", 8, 8, lambda: _scaled_mm_prep(g), "float8_e4m3fn")
    if "int4pack" in want:
        add("torch_int4pack", "peer", 4, 16, lambda: _int4pack_prep(g, qws), "bfloat16")
    if "bnb" in want:

        def nf4():
            bnb = _import("bitsandbytes")
            wq, qs = bnb.functional.quantize_4bit(g.w.to(td), blocksize=64, quant_type="nf4")
            wdq = bnb.functional.dequantize_4bit(wq, qs)

            def factory(i):
                wi = wq if i == 0 else wq.clone()
                return _bind(bnb.matmul_4bit, g.x(i), wi.t(), quant_state=qs)

            nb = R.nominal_bytes(m=m, k=k, n=n, bits=4, group_size=None, elem=g.elem)
            return factory, nb + 4 * n * k // 64, ref_of(wdq), {"note": "nf4, blocksize 64"}

        def int8():
            bnb = _import("bitsandbytes")

            def factory(i):
                lin = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, threshold=0.0)
                lin.weight = bnb.nn.Int8Params(
                    g.w.to(td).cpu(), requires_grad=False, has_fp16_weights=False
                )
                return _bind(lin.to(dev), g.x(i))

            nb = R.int8_bytes(m=m, k=k, n=n, elem=g.elem)
            return (
                factory,
                nb,
                ref_of(g.w),
                {"note": "Linear8bitLt, threshold 0", "layer_per_set": True},
            )

        add("bnb_nf4", "peer", 4, 16, nf4)
        add("bnb_int8", "peer", 8, 8, int8)
    if "gemlite" in want:
        for bits in (4, 2):
            add(f"gemlite_w{bits}a16", "peer", bits, 16, lambda b=bits: _gemlite_prep(g, qws, b))
        add("gemlite_a8w8", "peer", 8, 8, lambda: _gemlite_prep(g, qws, 8))
    return out


def _import(name: str):
    try:
        return __import__(name)
    except Exception as exc:  # noqa: BLE001
        raise Skip(f"{name} not importable: {_err(exc)}") from None


def _int_mm_prep(g: Group):
    if g.m <= 16 or g.k % 8 or g.n % 8:
        raise Skip(f"torch._int_mm needs M > 16 and K, N multiples of 8 (M={g.m})")
    from supernet_kernels.quant import quantize_activations_int8

    w8, _ = int8_weight(g.w)

    def factory(i):
        xq = quantize_activations_int8(g.x(i))[0]
        wi = w8 if i == 0 else w8.clone()
        return lambda: torch._int_mm(xq, wi.t())

    nb = g.n * g.k + g.m * g.k + 4 * g.m * g.n  # int8 in, int32 out
    return factory, nb, None, {"note": "bare GEMM on pre-quantized int8 x, int32 out"}


def _scaled_mm_prep(g: Group):
    cap = torch.cuda.get_device_capability(g.runner.device)
    if cap < (8, 9):
        raise Skip(f"fp8 torch._scaled_mm needs sm_89+ (this GPU: sm_{cap[0]}{cap[1]})")
    if g.tdtype == torch.float32:
        raise Skip("fp8 baseline runs for fp16 / bf16 activations only")
    f8 = torch.float8_e4m3fn
    w8 = g.w.to(f8)
    one = torch.ones((), device=g.runner.device, dtype=torch.float32)

    def factory(i):
        x8, wi = g.x(i).to(f8), (w8 if i == 0 else w8.clone())
        return lambda: torch._scaled_mm(x8, wi.t(), scale_a=one, scale_b=one, out_dtype=g.tdtype)

    nb = g.n * g.k + g.m * g.k + g.elem * g.m * g.n
    return factory, nb, None, {"note": "bare fp8 e4m3 GEMM on pre-converted x, tensor scales"}


def _int4pack_prep(g: Group, qws: dict):
    """torch's tinygemm int4 (bf16, group 128). Its packing input changed across versions:
    uint8 (N, K/2) two codes per byte in newer torch, int32 (N, K) codes in older ones."""
    qw = qws.get((4, 128))
    if qw is None:
        raise Skip("needs the 4-bit group-128 weight of the sweep")
    try:
        convert, mm = torch.ops.aten._convert_weight_to_int4pack, torch.ops.aten._weight_int4pack_mm
    except AttributeError as exc:
        raise Skip(f"torch {torch.__version__} has no int4pack ops: {exc}") from None
    codes = qw.codes().to(torch.int32)
    errors = []
    for variant, arg in (
        ("uint8", ((codes[:, ::2] << 4) | codes[:, 1::2]).to(torch.uint8)),
        ("int32", codes.contiguous()),
    ):
        try:
            wp = convert(arg.contiguous(), 8)
            break
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{variant}: {_err(exc)[:150]}")
    else:
        raise Skip("_convert_weight_to_int4pack rejected both layouts: " + "; ".join(errors))
    # tinygemm: w = (q - 8) * scale + zero, so zero = (8 - z) * scale gives (q - z) * scale.
    s, z = qw.scales, qw.zeros
    sz = torch.stack([s.t(), ((8 - z) * s).t()], dim=-1).to(torch.bfloat16).contiguous()
    bf = torch.bfloat16

    def factory(i):
        wi, si = (wp, sz) if i == 0 else (wp.clone(), sz.clone())
        xi = g.x(i, bf)
        return lambda: mm(xi, wi, 128, si)

    ref = F.linear(g.x(0, bf).float(), qw.dequantize())
    nb = R.nominal_bytes(m=g.m, k=g.k, n=g.n, bits=4, group_size=128, elem=2)
    return factory, nb, ref, {"note": f"tinygemm, bf16, group 128, {variant} packing input"}


def _gemlite_prep(g: Group, qws: dict, bits: int):
    if g.tdtype not in (torch.float16, torch.bfloat16):
        raise Skip("gemlite takes fp16 / bf16 activations")
    helper = _import("gemlite.helper").helper
    dev = str(g.runner.device) if g.runner.device.index is not None else "cuda:0"
    if bits == 8:

        def factory(i):
            lin = helper.A8W8_int8_dynamic(device=dev).from_weights(g.w.to(g.tdtype), None)
            return _bind(lin, g.x(i))

        nb = R.int8_bytes(m=g.m, k=g.k, n=g.n, elem=g.elem)
        extra = {"note": "A8W8_int8_dynamic", "layer_per_set": True}
        return factory, nb, F.linear(g.x(0).float(), g.w), extra
    qw = qws.get((bits, 128))
    if qw is None:
        raise Skip(f"needs the {bits}-bit group-128 weight of the sweep")
    codes, td = qw.codes(), g.tdtype

    def factory(i):
        lin = helper.A16Wn(device=dev).from_weights(
            codes.clone(), qw.scales.to(td), qw.zeros.to(td), bits, 128
        )
        return _bind(lin, g.x(i))

    nb = R.nominal_bytes(m=g.m, k=g.k, n=g.n, bits=bits, group_size=128, elem=g.elem)
    ref = F.linear(g.x(0).float(), qw.dequantize())
    return factory, nb, ref, {"note": f"A16Wn W{bits}, group 128", "layer_per_set": True}


def run_sweeps(runner: Runner, sweeps, *, budget_s: float) -> tuple[list[dict], int]:
    def begin_sweep(sweep, backends):
        skipped = backend_skips(runner.api, runner.device, backends)
        for b, why in skipped.items():
            if why:
                print(f"[bench] backend {b!r} skipped ({sweep.name}): {why}")
        return skipped

    def run_group(sweep, backends, skipped, dtype, m, k, n):
        return runner.run_group(sweep, dtype, m, k, n, backends, skipped)

    return H.run_sweeps(sweeps, run_group, budget_s=budget_s, begin_sweep=begin_sweep)


def int8_peak(device: torch.device) -> float | None:
    """Dense int8 tensor-core peak from torch._int_mm on 8192^3 (None if unsupported)."""
    from triton.testing import do_bench

    n = 8192
    try:
        a = torch.randint(-127, 127, (n, n), device=device, dtype=torch.int8)
        b = torch.randint(-127, 127, (n, n), device=device, dtype=torch.int8).t()
        ms = do_bench(lambda: torch._int_mm(a, b), warmup=25, rep=100, return_mode="median")
    except Exception:  # noqa: BLE001
        return None
    return 2 * n**3 / (ms * 1e-3)


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="GPU subset (~2 min on an H100)")
    mode.add_argument("--smoke", action="store_true", help="CPU smoke run, even with a GPU")
    p.add_argument("--write-dispatch", action="store_true", help="derive and write dispatch")
    p.add_argument("--out", type=Path, default=H.RESULTS_DIR, help="folder for quant.jsonl")
    p.add_argument("--summary-json", type=Path, default=None, help="targets/summary here")
    p.add_argument("--time-budget-s", type=float, default=0.0, help="stop new shapes after this")
    p.add_argument(
        "--backends", default="all",
        help="implementations to time, comma list; 'all': every one registered per op "
        "(reference, torch's fast paths, our kernels)",
    )  # fmt: skip
    p.add_argument("--peers", default=",".join(PEERS), help="baselines/peers ('' = none)")
    p.add_argument("--bf16", action="store_true", help="also bfloat16 activations")
    p.add_argument("--warmup-ms", type=int, default=10)
    p.add_argument("--rep-ms", type=int, default=40)
    p.add_argument("--graph-max-m", type=int, default=256, help="CUDA-graph replay for M <= this")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    backends = tuple(b for b in args.backends.split(",") if b)
    gpu = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda") if gpu else torch.device("cpu")
    if gpu:
        sweep = QUICK if args.quick else FULL
        if args.bf16:
            sweep = dataclasses.replace(sweep, dtypes=(*sweep.dtypes, "bfloat16"))
        sweeps = [(sweep, backends)]
    else:
        why = "--smoke" if args.smoke else "no GPU found"
        print(f"[bench] {why}: CPU smoke run (fp32, M {{1, 5}}, K=64, N=48, bits 4/3, group 32)")
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        sweeps = [(SMOKE, backends)]
    peers = tuple(p for p in args.peers.split(",") if p)

    env = H.environment(device)
    run_id = f"{env['date']}-{os.getpid()}"
    ceilings = None
    if gpu:

        def with_int8_peak(ceilings: H.Ceilings) -> H.Ceilings:
            peak8 = int8_peak(device)
            if not peak8:
                return ceilings
            return dataclasses.replace(ceilings, peak_flops={**ceilings.peak_flops, "int8": peak8})

        ceilings, env = H.report_ceilings(
            device, env, extend=with_int8_peak, describe=_err, missing="no % HBM / roofline",
            unit="T(FL)OP/s",
        )  # fmt: skip

    runner = Runner(
        api=load_api(),
        device=device,
        settings=H.BenchSettings(warmup_ms=args.warmup_ms, rep_ms=args.rep_ms),
        ceilings=ceilings,
        env=env,
        run_id=run_id,
        graph_max_m=args.graph_max_m,
        peers=peers,
    )
    if runner.api.error:
        print(f"[bench] {runner.api.error}")
    t0 = time.perf_counter()
    records, not_run = run_sweeps(runner, sweeps, budget_s=args.time_budget_s)
    path = H.append_results(args.out / "quant.jsonl", records)
    print(R.format_table(records))
    print(R.format_baselines(records))
    print(R.format_first_calls(records))
    targets = R.evaluate_targets(records)
    print(R.format_targets(targets))
    if not_run:
        print(f"[bench] time budget: {not_run} (dtype, M, K, N) groups not run")
    print(f"[bench] {len(records)} records appended to {path} in {time.perf_counter() - t0:.1f} s")

    dispatch_paths: list[str] = []
    if args.write_dispatch:
        try:
            dispatch_paths = write_dispatch(runner, records, sweeps, args.out)
        except Exception as exc:  # noqa: BLE001 - the measurements are already saved
            print(f"[bench] --write-dispatch failed: {_err(exc)}")

    bad = [r for r in records if R.is_ours(r) and r.get("status") in ("error", "incorrect")]
    keys = ("backend", "op", "dtype", "M", "K", "N", "w_bits", "a_bits", "status", "reason")
    return H.finish_run(
        bad,
        lambda r: f"{r['op']} W{r['w_bits']}A{r['a_bits']} G={r.get('group_size')} {r['dtype']} "
        f"M={r['M']} K={r['K']} N={r['N']}",
        args.summary_json,
        lambda: dict(
            env=env, sweep=[s.name for s, _ in sweeps], records=len(records),
            groups_not_run=not_run, targets=targets, dispatch=dispatch_paths or None,
            bad=[{k: r.get(k) for k in keys} for r in bad],
        ),
    )  # fmt: skip


def write_dispatch(runner: Runner, records, sweeps, out: Path) -> list[str]:
    if not runner.gpu:
        print("[bench] --write-dispatch ignored: dispatch tables come from GPU measurements only")
        return []
    if runner.api.write_dispatch_table is None:
        print("[bench] --write-dispatch: supernet_kernels.dispatch.write_dispatch_table missing")
        return []
    meta = {
        "source": "benchmarks/bench_quant.py",
        "sweep": [s.name for s, _ in sweeps],
        "criterion": "per (dtype, M bucket, bits, act_bits): every registered implementation's "
        "eager and graph time (geometric mean over the bucket's shapes) and the dense layer's; "
        "ranked by graph time where recorded; pick: the fastest within 1.10x of dense that is "
        "a torch path or a kernel verified on this architecture, else torch_dense",
        **{k: runner.env.get(k) for k in ("gpu", "commit", "date", "torch", "triton", "cuda")},
    }
    cap = "{}.{}".format(*torch.cuda.get_device_capability(runner.device))
    paths = []
    for op, entries in R.derive_dispatch(records, cap).items():
        # The GPU's own table and its architecture's (sm90.json).
        written = runner.api.write_dispatch_table(
            runner.env["gpu"], op, entries, meta, capability=cap
        )
        path = Path(written[0])
        print(f"[bench] dispatch table for {op} ({len(entries)} entries) written to {written}")
        paths.append(str(path))
    if paths:
        # Same file as bench_lowrank's copy (one table per GPU holds every op).
        H.copy_dispatch(paths[-1], out)
    return paths


if __name__ == "__main__":
    sys.exit(main())
