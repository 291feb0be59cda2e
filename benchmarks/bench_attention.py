#!/usr/bin/env python
"""The attention op alone at SAM ViT-B's shapes: ``torch.ops.supernet_kernels.attention`` with
SAM's decomposed relative-position bias against F.scaled_dot_product_attention.

Shapes (heads 12, head dim 64): ``global``, the 64 x 64 token grid of SAM's global blocks at
1024x1024 (T = 4096, batch 1; full mode also batch 4); ``window``, 14 x 14 windows (T = 196,
batch 25: the 64 x 64 grid padded to 70 x 70). Rows per shape and dtype (bf16, fp16):

  reference     the op, backend torch (fp32 T x T scores), with rel pos
  triton        the op, backend triton, with rel pos
  triton_norel  the same without rel pos
  sdpa          F.scaled_dot_product_attention without rel pos (it cannot take the
                decomposed bias): the dense layer every ratio is against
  <name>, <name>_norel   every other implementation registered for the op (torch_sdpa: SDPA
                with the rel-pos term as an additive mask), with and without rel pos

Passes: fwd; full mode also bwd (fwd + bwd through autograd minus fwd; every input takes a
gradient). Each row is checked against the reference first (max |a - b| / max |b| <= 2e-2).
FLOPs count the QK^T and PV matmuls only (cost.formulas.attention_flops); ``pct_bf16_peak`` is
the share of the bf16 peak measured in the run. ``--sweep`` (GPU) also times the Triton
forward at several tile shapes (records of kind ``attention_sweep``).

    python benchmarks/bench_attention.py --quick   # GPU: fwd, both dtypes (~30 s)
    python benchmarks/bench_attention.py           # GPU: + bwd, + global batch 4
    python benchmarks/bench_attention.py --smoke   # CPU: tiny shapes under TRITON_INTERPRET=1
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

if __name__ == "__main__" and ("--smoke" in sys.argv or not torch.cuda.is_available()):
    # The interpreter runs the Triton kernels on CPU tensors; it must be on before they are
    # defined (importing the harness imports the package).
    os.environ.setdefault("TRITON_INTERPRET", "1")
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

import harness as H  # noqa: E402
from harness import Impl, Prepared  # noqa: E402

from supernet_kernels.cost import formulas as FM  # noqa: E402

NAME, DOC = "attention", __doc__
WARMUP_MS, REP_MS = 25, 100
TOL = 2e-2
BACKENDS = ("reference", "triton", "triton_norel", "sdpa")


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
SWEEPS = {
    "full": H.Sweep("full", ("bfloat16", "float16"), params={"shapes": FULL_SHAPES,
                                                            "passes": ("fwd", "bwd")}),
    "quick": H.Sweep("quick", ("bfloat16", "float16"), params={"shapes": QUICK_SHAPES,
                                                              "passes": ("fwd",)}),
    "smoke": (H.Sweep("smoke", ("bfloat16", "float16"), params={"shapes": SMOKE_SHAPES,
                                                               "passes": ("fwd",)}),),
}  # fmt: skip
# Forward tiles of --sweep: (BLOCK_M, BLOCK_N, num_warps, num_stages, key_grid); the first row
# is the first H100 run's configuration (2026-11-26), gather bias.
TILES = (
    (64, 64, 4, 3, False), (64, 64, 4, 3, True), (128, 64, 8, 3, True), (128, 64, 4, 3, True),
    (128, 128, 8, 3, True), (128, 64, 8, 4, True),
)  # fmt: skip


def groups(sweep: H.Sweep):
    for dtype in sweep.dtypes:
        for s in sweep.params["shapes"]:
            yield {"dtype": dtype, "shape": s.name, "B": s.b, "H": s.h, "T": s.t, "d": s.d}


def add_args(p) -> None:
    p.add_argument("--sweep", action="store_true", help="GPU: also sweep the forward's tiles")


def registered_rows() -> tuple[str, ...]:
    """Rows for the registered implementations the base rows do not cover."""
    extra = [n for n in H.op_backends("attention") if n not in ("torch", "triton")]
    return tuple(r for n in extra for r in (n, f"{n}_norel"))


def op_backend(row: str) -> str:
    """The supernet_kernels backend a row runs under ("auto" for sdpa: it does not use the op)."""
    fixed = {"reference": "torch", "triton": "triton", "triton_norel": "triton", "sdpa": "auto"}
    return fixed.get(row, row.removesuffix("_norel"))


def row_has_rel(row: str) -> bool:
    return row != "sdpa" and not row.endswith("_norel")


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    o, r = out.float(), ref.float()
    return float((o - r).abs().max() / r.abs().max().clamp_min(1e-30))


def make_inputs(shape: Shape, dtype, device, rel: bool, grad: bool = False, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(shape.t + shape.b + 1000 * seed)

    def rnd(*size, scale=1.0):
        t = (torch.randn(*size, generator=g) * scale).to(device=device, dtype=dtype)
        return t.requires_grad_(grad)

    b, h, t, d = shape.b, shape.h, shape.t, shape.d
    q, k, v = (rnd(b, h, t, d) for _ in range(3))
    if not rel:
        return q, k, v, None, None
    return q, k, v, rnd(b, h, t, shape.grid, scale=0.5), rnd(b, h, t, shape.grid, scale=0.5)


def forward(row: str, inputs, scale: float):
    """A zero-argument forward of one row on one input set."""
    import torch.nn.functional as F

    q, k, v, rh, rw = inputs
    if row == "sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v, scale=scale)
    if row.removesuffix("_norel") == "torch_sdpa":
        from supernet_kernels.ops.fast_paths import sdpa_attention

        return lambda: sdpa_attention(q, k, v, rh, rw, scale)  # what ops.attention runs
    return lambda: torch.ops.supernet_kernels.attention(q, k, v, rh, rw, scale)[0]


def implementations(ctx: H.Context, sweep: H.Sweep, group: dict) -> list[Impl]:
    shape = Shape(group["shape"], group["B"], group["H"], int(group["T"] ** 0.5), group["d"])
    dtype, scale, elem = (
        H.DTYPES[group["dtype"]],
        group["d"] ** -0.5,
        H.DTYPES[group["dtype"]].itemsize,
    )
    refs: dict[bool, torch.Tensor] = {}

    def ref(rel: bool) -> torch.Tensor:
        if rel not in refs:  # the reference op on input set 0 (same seed as every row's set 0)
            import supernet_kernels as sk

            with torch.no_grad(), sk.backend("torch"):
                refs[rel] = forward(
                    "reference", make_inputs(shape, dtype, ctx.device, rel), scale
                )()
        return refs[rel]

    def row_impl(row: str, pass_: str) -> Impl:
        rel = row_has_rel(row)

        def prepare() -> Prepared:
            def factory(i):
                if pass_ == "fwd":
                    f = forward(row, make_inputs(shape, dtype, ctx.device, rel, seed=i), scale)
                    return lambda: _no_grad(f)
                inputs = make_inputs(shape, dtype, ctx.device, rel, grad=True, seed=i)
                f, leaves = forward(row, inputs, scale), [t for t in inputs if t is not None]
                g_out = torch.randn(shape.b, shape.h, shape.t, shape.d, device=ctx.device).to(dtype)
                return lambda: torch.autograd.grad(f(), leaves, g_out)

            check = pass_ == "fwd" and row != "reference"
            dims = dict(b=shape.b, h=shape.h, t=shape.t, d=shape.d)
            return Prepared(
                factory, FM.attention_flops(**dims, pass_=pass_),
                FM.attention_bytes(**dims, elem=elem, rel=rel),
                ref=ref(rel) if check else None, tol=TOL if check else None, error=rel_error,
                graph=False,
            )  # fmt: skip

        role = "dense" if row == "sdpa" else "ours" if row in BACKENDS else "peer"
        fields = {"kind": "attention", "op": None if row == "sdpa" else "attention", "rel": rel,
                  "pass": pass_}  # fmt: skip
        return Impl(row, role, prepare, fields, select=None if row == "sdpa" else op_backend(row))

    impls = [
        row_impl(r, p) for p in sweep.params["passes"] for r in (*BACKENDS, *registered_rows())
    ]
    if ctx.gpu and ctx.args.sweep and group["dtype"] == "bfloat16" and shape in QUICK_SHAPES:
        impls += tile_impls(ctx, shape, ref)
    return impls


def _no_grad(f):
    with torch.no_grad():
        return f()


def tile_impls(ctx: H.Context, shape: Shape, ref) -> list[Impl]:
    """The Triton forward at each TILES configuration, with rel pos (and, on the global grid,
    without: the tiles alone)."""
    from supernet_kernels.kernels import triton_attention as ta

    out, seen = [], set()
    for rel in (True, False):
        for bm, bn, warps, stages, kg in TILES:
            kg = kg and rel
            if (rel, bm, bn, warps, stages, kg) in seen or (not rel and shape.name != "global"):
                continue
            seen.add((rel, bm, bn, warps, stages, kg))
            tiles = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)

            def prepare(rel=rel, tiles=tiles, kg=kg) -> Prepared:
                def factory(i):
                    q, k, v, rh, rw = make_inputs(shape, torch.bfloat16, ctx.device, rel, seed=i)
                    f = functools.partial(ta.attention_fwd, q, k, v, rh, rw, shape.d**-0.5,
                                          tiles=tiles, key_grid=kg)  # fmt: skip
                    return lambda: f()[0]

                fl = FM.attention_flops(b=shape.b, h=shape.h, t=shape.t, d=shape.d)
                return Prepared(factory, fl, None, ref=ref(rel), tol=TOL, error=rel_error,
                                graph=False)  # fmt: skip

            fields = dict(kind="attention_sweep", op="attention", rel=rel, key_grid=kg, **tiles)
            out.append(Impl(f"triton_{bm}x{bn}w{warps}s{stages}", "tile", prepare, fields))
    return out


def finish_group(ctx: H.Context, records: list[dict]) -> None:
    """bwd rows: fwd + bwd minus the same row's fwd; % of the measured bf16 peak."""
    fwd = {r["backend"]: r["median_us"] for r in records if r.get("pass") == "fwd"
           and r.get("median_us")}  # fmt: skip
    peak = ctx.ceilings.peak_flops.get("bfloat16") if ctx.ceilings else None
    for r in records:
        if r.get("pass") == "bwd" and r.get("median_us") and r["backend"] in fwd:
            r["fwd_bwd_us"] = r["median_us"]
            r["median_us"] = max(r["median_us"] - fwd[r["backend"]], 0.0)
            r["tflops"] = H.tflops(r["flops"], r["median_us"] * 1e-6) if r["median_us"] else None
        if peak and r.get("median_us") and ctx.gpu:
            r["pct_bf16_peak"] = 100 * r["flops"] / (r["median_us"] * 1e-6) / peak


def summary(records: list[dict]) -> dict:
    key = lambda r: f"{r['shape']}/b{r['B']}/{r['dtype']}/{r.get('pass')}/{r['backend']}"  # noqa: E731
    return {
        "us": {key(r): r.get("median_us") for r in records},
        "pct_bf16_peak": {key(r): r["pct_bf16_peak"] for r in records if r.get("pct_bf16_peak")},
    }


if __name__ == "__main__":
    sys.exit(H.main(sys.modules[__name__]))
