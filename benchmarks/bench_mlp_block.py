#!/usr/bin/env python
"""The ViT MLP block y = fc2(GELU(fc1(x))): dense against the fused low-rank op.

At one ViT-B image (M = 197 tokens, 768 -> 3072 -> 768) and at a batch of 8 (M = 1576), for
ranks <= 128 of both linears, one group per (M, rank):

* ``dense`` (role dense): F.linear, F.gelu, F.linear (cuBLAS; what timm's Mlp runs, three
  kernels) on the dense weights of the same function;
* ``torch`` (variant ``torch_lowrank``): the op's pure-PyTorch reference (two GEMMs per linear,
  plus GELU);
* ``triton`` (variant ``ours``): ``torch.ops.supernet_kernels.lowrank_mlp`` on the Triton
  backend (one kernel; the hidden activations never leave the chip);
* ``triton_2launch`` (variant ``ours_2launch``): the same op with the one-launch kernel off
  (fc1 with GELU in its epilogue, then fc2).

The harness times each (do_bench median over rotating input sets, and CUDA-graph replay at
every M of this sweep), checks it against float32 first and records it in its schema
(``python benchmarks/bench_mlp_block.py --help``). ``launches`` holds each kernel's (bytes,
FLOPs) from ``cost.formulas.mlp_block_launches``: the per-call roofline of a block is the sum
of its launches' (each 3.5 us + max(bytes / copy ceiling, FLOPs / peak)); ``predicted_us`` is
that sum at the census's H100 constants, as the census predicts it.

    python benchmarks/bench_mlp_block.py                    # GPU, ~1 min on an H100
    python benchmarks/bench_mlp_block.py --out results.jsonl
    python benchmarks/bench_mlp_block.py --smoke            # CPU, tiny shapes, seconds
    python benchmarks/report.py mlp_block results.jsonl     # the tables again
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

import census_model  # noqa: E402
import harness as H  # noqa: E402

from supernet_kernels.cost import formulas as FM  # noqa: E402

NAME, DOC = "mlp_block", __doc__
# Graph replay at every M of the sweep (the block's bars are on graph replay at M = 1576 too).
GRAPH_MAX_M = 4096
DISPATCH = False  # lowrank_mlp has no dispatch table: its op picks the one-launch kernel by M

# The H100's per-launch cost, copy ceiling and fp16 peak: the census's constants (one place).
_H100 = census_model.GPUS["H100"]
LAUNCH_US, BW, PEAK = _H100["launch_us"], _H100["copy_tbs"] * 1e12, _H100["fp16_tflops"] * 1e12

# backend recorded -> (the variant's name in cost.formulas and in earlier records, role)
VARIANTS = {
    "dense": ("dense", "dense"),
    "torch": ("torch_lowrank", "ours"),
    "triton": ("ours", "ours"),
    "triton_2launch": ("ours_2launch", "ours"),
}

SWEEPS = {
    "full": H.Sweep("full", ("float16",), ms=(197, 197 * 8), kns=((768, 3072),),
                    params={"ranks": (32, 64, 128)}),
    "quick": H.Sweep("quick", ("float16",), ms=(197, 197 * 8), kns=((768, 3072),),
                     params={"ranks": (32, 64, 128)}),
    # fp32: CPU half GEMMs are slow and the interpreter is exact in fp32
    "smoke": (H.Sweep("smoke", ("float32",), ms=(7, 21), kns=((32, 96),), params={"ranks": (8,)}),),
}  # fmt: skip


def groups(sweep: H.Sweep):
    """One group per (dtype, M, rank): the dense row of the same function is in each. ``K`` is
    the block's width and ``H`` its hidden width (no ``N``: the census tells these records from
    the low-rank linear's by it)."""
    for dtype in sweep.dtypes:
        for m in sweep.ms:
            for k, h in sweep.kns:
                for r in sweep.params["ranks"]:
                    yield {"dtype": dtype, "M": m, "K": k, "H": h, "rank": r}


def add_args(p) -> None:
    p.add_argument("--ranks", type=int, nargs="+", default=None, help="only these ranks")
    p.add_argument("--graph-calls", type=int, default=32, help="calls per captured graph")


def configure(ctx: H.Context) -> None:
    ctx.settings = dataclasses.replace(ctx.settings, graph_calls=ctx.args.graph_calls)


def kernel_us(byts: float, flops: float) -> float:
    return FM.per_call_roofline_us(
        bytes_moved=byts, flops=flops, copy_bytes_per_s=BW, peak_flops=PEAK, launch_us=LAUNCH_US
    )


def predicted_us(variant: str, m: int, k: int, h: int, r: int, size: int = 2) -> float:
    """The block's per-kernel roofline at the census's H100 constants: each launch 3.5 us +
    its own bytes or FLOPs (cost.formulas.mlp_block_launches)."""
    launches = FM.mlp_block_launches(variant, m=m, k=k, h=h, rank=r, elem=size)
    return sum(kernel_us(byts, flops) for byts, flops in launches)


def make_block(m: int, k: int, h: int, r: int, dtype, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def rnd(*s, scale):
        # randn scaled so outputs are O(1): zeros flatter, and fp16 must not overflow
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
    """Zero-argument closures of every variant on one block, by the variant's name."""
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


def implementations(ctx: H.Context, sweep: H.Sweep, group: dict) -> list[H.Impl]:
    """The four variants on one (dtype, M, rank); input sets (seed = set index) are shared by
    the group's rows, the reference is the op's on float32 copies of set 0."""
    m, k, h, r, dname = group["M"], group["K"], group["H"], group["rank"], group["dtype"]
    if ctx.args.ranks and r not in ctx.args.ranks:
        return []
    dtype, sets = H.DTYPES[dname], {}

    def block(i: int) -> dict:
        if i not in sets:
            sets[i] = make_block(m, k, h, r, dtype, ctx.device, seed=i)
        return sets[i]

    def impl(backend: str) -> H.Impl:
        variant, role = VARIANTS[backend]

        def prepare() -> H.Prepared:
            ref = variants({n: t.float() for n, t in block(0).items()}, r, h)["torch_lowrank"]()
            launches = FM.mlp_block_launches(variant, m=m, k=k, h=h, rank=r, elem=dtype.itemsize)
            return H.Prepared(
                lambda i: variants(block(i), r, h)[variant],
                sum(f for _, f in launches), sum(b for b, _ in launches), ref=ref,
                tol=H.TOLERANCE[dname],
                fields={
                    "launches": [list(x) for x in launches],
                    "predicted_us": predicted_us(variant, m, k, h, r, dtype.itemsize),
                },
            )  # fmt: skip

        fields = {"variant": variant, "op": "lowrank_mlp" if role == "ours" else None}
        select = "triton" if backend.startswith("triton") else None
        return H.Impl(backend, role, prepare, fields, select=select)

    return [impl(b) for b in VARIANTS]


def main(argv=None) -> int:
    return H.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
