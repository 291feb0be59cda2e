#!/usr/bin/env python
"""The sliced low-rank linear (y = x @ v[:r].T @ u[:n, :r].T + b) against the dense layer.

Every implementation registered for ``lowrank_linear`` (the reference, torch's two GEMMs on
slices, our kernels) beside dense ``F.linear`` (cuBLAS) on ViT-B / SAM-B shapes; the harness
does the rest (``python benchmarks/bench_lowrank.py --help``).

    python benchmarks/bench_lowrank.py --quick --write-dispatch   # ~2 min on an H100
    python benchmarks/bench_lowrank.py                            # full sweep, ~4 min
    python benchmarks/bench_lowrank.py --smoke                    # CPU, < 60 s
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

_HERE = Path(__file__).resolve().parent
# the harness from any cwd; the package from this checkout even when it is not pip-installed
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

import harness as H  # noqa: E402

from supernet_kernels.cost import formulas as FM  # noqa: E402

NAME, DOC = "lowrank", __doc__

# M: one ViT-B image (197 tokens), SAM-B's 64x64 grid, 4 of those, 64 images. (K, N): attention
# proj, qkv, MLP fc1, fc2. The order puts the target shapes first, so that a time budget cuts
# the least important ones.
SWEEPS = {
    "full": H.Sweep(
        "full", ("float16", "bfloat16"), ms=(197, 4096, 4 * 4096, 197 * 64),
        kns=((768, 768), (768, 2304), (768, 3072), (3072, 768)),
        params={"ranks": (32, 64, 128, 256, 384)},
    ),
    "quick": H.Sweep(
        "quick", ("float16",), ms=(197, 4096, 4 * 4096), kns=((768, 3072), (3072, 768)),
        params={"ranks": (32, 128, 384)},
    ),
    # Triton's interpreter runs every program instance in Python: it gets the tiny shape only.
    "smoke": (
        H.Sweep("smoke", ("float32",), ms=(64,), kns=((96, 80),), params={"ranks": (8, 24)},
                exclude=("triton",)),
        H.Sweep("smoke-interpret", ("float32",), ms=(16,), kns=((32, 48),),
                params={"ranks": (8,)}, only=("torch", "triton")),
    ),
}  # fmt: skip


def add_args(p) -> None:
    p.add_argument("--no-bias", action="store_true")
    p.add_argument(
        "--autotune", action="store_true",
        help="SUPERNET_KERNELS_AUTOTUNE=1 (tuning then counts in the first-call cost)",
    )  # fmt: skip


def configure(ctx: H.Context) -> None:
    if ctx.args.autotune:
        os.environ["SUPERNET_KERNELS_AUTOTUNE"] = "1"


def _bind(fn, *args, **kwargs):
    """A zero-argument closure over one input set's tensors."""
    return lambda: fn(*args, **kwargs)


def implementations(ctx: H.Context, sweep: H.Sweep, group: dict) -> list[H.Impl]:
    """The dense layer, then every registered implementation at every rank. The factors are
    allocated at the sweep's largest rank and sliced per call, as in the supernet (so
    ``u[:, :r]`` is strided); input sets are shared by all rows of the group."""
    dtype, m, k, n = H.DTYPES[group["dtype"]], group["M"], group["K"], group["N"]
    ranks, bias, elem = (
        sweep.params["ranks"],
        not ctx.args.no_bias,
        H.DTYPES[group["dtype"]].itemsize,
    )
    r_max, sets = max(ranks), {}

    def s(i: int) -> dict[str, torch.Tensor]:
        # randn scaled so outputs are O(1): zeros flatter, and fp16 must not overflow
        if i not in sets:

            def rnd(*shape, scale):
                return (torch.randn(*shape, device=ctx.device) * scale).to(dtype)

            sets[i] = dict(
                x=rnd(m, k, scale=1.0), u=rnd(n, r_max, scale=r_max**-0.5),
                v=rnd(r_max, k, scale=k**-0.5), w=rnd(n, k, scale=k**-0.5),
                b=rnd(n, scale=0.1) if bias else None,
            )  # fmt: skip
        return sets[i]

    def f32(t):
        return None if t is None else t.float()

    tol = H.TOLERANCE[group["dtype"]]

    def dense() -> H.Prepared:
        s0 = s(0)
        return H.Prepared(
            lambda i: _bind(F.linear, s(i)["x"], s(i)["w"], s(i)["b"]),
            FM.matmul_flops(m=m, k=k, n=n), FM.dense_bytes(m=m, k=k, n=n, elem=elem, bias=bias),
            ref=F.linear(s0["x"].float(), s0["w"].float(), f32(s0["b"])), tol=tol,
        )  # fmt: skip

    def lowrank(rank: int):
        def prepare() -> H.Prepared:
            from supernet_kernels.ops import lowrank_linear

            s0 = s(0)
            ref = F.linear(F.linear(s0["x"].float(), s0["v"][:rank].float()),
                           s0["u"][:n, :rank].float(), f32(s0["b"]))  # fmt: skip
            return H.Prepared(
                lambda i: _bind(
                    lowrank_linear, s(i)["x"], s(i)["u"], s(i)["v"], rank, out_features=n,
                    bias=s(i)["b"],
                ),
                FM.lowrank_flops(m=m, k=k, n=n, rank=rank),
                FM.lowrank_bytes(m=m, k=k, n=n, rank=rank, elem=elem, bias=bias),
                ref=ref, tol=tol,
                fields={"flops_ratio": FM.lowrank_flops_ratio(k=k, n=n, rank=rank)},
            )  # fmt: skip

        return prepare

    common = {"op": "lowrank_linear", "rank_max": r_max, "bias": bias}
    impls = [H.Impl("dense", "dense", dense, {**common, "op": None, "rank": None})]
    for rank in ranks:
        for b in H.op_backends("lowrank_linear", ctx.args.backends):
            role = H.role_of(b)  # torch_two_gemm, torch_dense: torch's paths, the peers
            impls.append(H.Impl(b, role, lowrank(rank), {**common, "rank": rank}, select=b))
    return impls


if __name__ == "__main__":
    sys.exit(H.main(sys.modules[__name__]))
