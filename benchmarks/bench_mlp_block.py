#!/usr/bin/env python
"""Benchmark the ViT MLP block y = fc2(GELU(fc1(x))): dense against the fused low-rank op.

At one ViT-B image (M = 197 tokens, 768 -> 3072 -> 768) and at a batch of 8 (M = 1576), for
ranks <= 128 of both linears:

* ``dense``: F.linear, F.gelu, F.linear (cuBLAS; what timm's Mlp runs, three kernels);
* ``torch_lowrank``: the op's pure-PyTorch reference (two GEMMs per linear, plus GELU);
* ``ours``: ``torch.ops.supernet_kernels.lowrank_mlp`` on the Triton backend (one kernel; the
  hidden activations never leave the chip);
* ``ours_2launch``: the same op with the one-launch kernel off (fc1 with GELU in its
  epilogue, then fc2).

Each is timed eagerly (do_bench median) and graph-replayed (many calls captured in one CUDA
graph, replay time per call), beside the per-kernel roofline of ANCHORS (3.5 us per launch +
max(bytes / 3.0 TB/s, FLOPs / 690 TFLOP/s)). Every output is checked against float32 first.

    python benchmarks/bench_mlp_block.py                    # GPU, ~1 min on an H100
    python benchmarks/bench_mlp_block.py --out results.jsonl
    python benchmarks/bench_mlp_block.py --smoke            # CPU, tiny shapes, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

import census_model  # noqa: E402

from supernet_kernels.cost import formulas as FM  # noqa: E402

# The H100's per-launch cost, copy ceiling and fp16 peak: the census's constants (one place).
_H100 = census_model.GPUS["H100"]
LAUNCH_US, BW, PEAK = _H100["launch_us"], _H100["copy_tbs"] * 1e12, _H100["fp16_tflops"] * 1e12
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def kernel_us(byts: float, flops: float) -> float:
    return FM.per_call_roofline_us(
        bytes_moved=byts, flops=flops, copy_bytes_per_s=BW, peak_flops=PEAK, launch_us=LAUNCH_US
    )


def predicted_us(variant: str, m: int, k: int, h: int, r: int, size: int = 2) -> float:
    """The block's per-kernel roofline: each launch 3.5 us + its own bytes or FLOPs
    (cost.formulas.mlp_block_launches)."""
    launches = FM.mlp_block_launches(variant, m=m, k=k, h=h, rank=r, elem=size)
    return sum(kernel_us(byts, flops) for byts, flops in launches)


def make_block(m: int, k: int, h: int, r: int, dtype, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def rnd(*s, scale):
        return (torch.randn(*s, generator=g) * scale).to(dtype=dtype, device=device)

    blk = {
        "x": rnd(m, k, scale=1.0),
        "u1": rnd(h, r, scale=r**-0.5),
        "v1": rnd(r, k, scale=k**-0.5),
        "b1": rnd(h, scale=0.1),
        "u2": rnd(k, r, scale=r**-0.5),
        "v2": rnd(r, h, scale=h**-0.5),
        "b2": rnd(k, scale=0.1),
    }
    # The dense block of the same function (the weights the factors would approximate).
    blk["w1"] = (blk["u1"].float() @ blk["v1"].float()).to(dtype)
    blk["w2"] = (blk["u2"].float() @ blk["v2"].float()).to(dtype)
    return blk


def variants(blk: dict, r: int, h: int) -> dict:
    import supernet_kernels as sk
    from supernet_kernels.ops.lowrank_mlp import lowrank_mlp_reference

    args = (
        blk["x"], blk["u1"], blk["v1"], None, r, blk["b1"],
        blk["u2"], blk["v2"], None, r, blk["b2"], h, None, "gelu",
    )  # fmt: skip

    def dense():
        return F.linear(F.gelu(F.linear(blk["x"], blk["w1"], blk["b1"])), blk["w2"], blk["b2"])

    def torch_lowrank():
        return lowrank_mlp_reference(*args)

    def ours():
        with sk.backend("triton"):
            return torch.ops.supernet_kernels.lowrank_mlp(*args)

    def ours_2launch():  # the same op with the one-launch kernel switched off
        from supernet_kernels.kernels import triton_lowrank_mlp as tkm

        saved, tkm.MAX_FUSED_M = tkm.MAX_FUSED_M, 0
        try:
            return ours()
        finally:
            tkm.MAX_FUSED_M = saved

    return {
        "dense": dense,
        "torch_lowrank": torch_lowrank,
        "ours": ours,
        "ours_2launch": ours_2launch,
    }


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def time_cpu(fn, repeats: int = 5) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def time_gpu(fn, graph_calls: int) -> tuple[float, float | None]:
    """(eager do_bench median us, graph-replayed us per call or None). The warm-up runs on the
    capture stream, so the op's per-stream scratch exists before capture (no memset node)."""
    from triton.testing import do_bench

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
        eager = do_bench(fn, warmup=10, rep=50, return_mode="median") * 1e3
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream):
                for _ in range(graph_calls):
                    fn()
        except Exception as e:  # noqa: BLE001 - an uncapturable variant has no graph number
            print(f"  (graph capture failed: {type(e).__name__}: {e})", file=sys.stderr)
            return eager, None
        graph.replay()
        torch.cuda.synchronize()
        replay = do_bench(graph.replay, warmup=10, rep=50, return_mode="median") * 1e3
    return eager, replay / graph_calls


def run(args) -> list[dict]:
    smoke = args.smoke
    device = torch.device("cpu" if smoke else "cuda")
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("bench_mlp_block: no CUDA GPU; use --smoke for the CPU run")
    k, h = (32, 96) if smoke else (768, 3072)
    ms = (7, 7 * 3) if smoke else (197, 197 * 8)
    ranks = (8,) if smoke else tuple(args.ranks)
    dtype = DTYPES[args.dtype]
    records = []
    for m in ms:
        for r in ranks:
            blk = make_block(m, k, h, r, dtype, device)
            fns = variants(blk, r, h)
            ref = variants({n: t.float() for n, t in blk.items()}, r, h)["torch_lowrank"]()
            base = {"M": m, "K": k, "H": h, "rank": r, "dtype": args.dtype}
            for name, fn in fns.items():
                if smoke and name.startswith("ours") and not _triton_runs_on_cpu():
                    continue
                err = rel_err(fn(), ref)
                ok = err <= TOLERANCE[args.dtype]
                if smoke:
                    eager, replay = time_cpu(fn), None
                else:
                    eager, replay = time_gpu(fn, args.graph_calls)
                rec = dict(
                    base, variant=name, eager_us=eager, graph_us=replay, rel_err=err, ok=ok,
                    predicted_us=predicted_us(name, m, k, h, r, blk["x"].element_size()),
                )  # fmt: skip
                records.append(rec)
    return records


def _triton_runs_on_cpu() -> bool:
    from supernet_kernels import backends

    return backends.unavailable_reason("triton", torch.device("cpu")) is None


def report(records: list[dict]) -> str:
    lines = [
        f"{'M':>5s} {'rank':>4s} {'variant':14s} {'eager us':>9s} {'graph us':>9s} "
        f"{'pred us':>8s} {'x dense (graph)':>15s} {'rel err':>8s}"
    ]
    dense = {(r["M"], r["rank"]): r for r in records if r["variant"] == "dense"}
    for r in records:
        d = dense.get((r["M"], r["rank"]))
        speed = ""
        if d and d["graph_us"] and r["graph_us"]:
            speed = f"{d['graph_us'] / r['graph_us']:.2f}x"
        graph = f"{r['graph_us']:.1f}" if r["graph_us"] else "-"
        lines.append(
            f"{r['M']:5d} {r['rank']:4d} {r['variant']:14s} {r['eager_us']:9.1f} {graph:>9s} "
            f"{r['predicted_us']:8.1f} {speed:>15s} {r['rel_err']:8.1e}"
            + ("" if r["ok"] else "  WRONG")
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes (no GPU needed)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float16")
    p.add_argument("--ranks", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--graph-calls", type=int, default=32)
    p.add_argument("--out", help="append the records (JSON lines) to this file")
    args = p.parse_args(argv)
    if args.smoke and args.dtype == "float16":
        args.dtype = "float32"  # CPU half GEMMs are slow and the interpreter is exact in fp32
    records = run(args)
    print(report(records))
    if args.out:
        with open(args.out, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
