#!/usr/bin/env python
"""The quantized linears against fp16 cuBLAS, torch's int4 / int8 / fp8 GEMMs and installed peers.

Every implementation registered for ``quant_linear`` (2/3/4/8-bit packed weights, 16- and 8-bit
activations), ``int8_linear`` and ``fp8_linear`` (W8A8), beside the dense fp16 layer, torch's
``_weight_int4pack_mm`` (bf16, group 128), the bare ``_int_mm`` / ``_scaled_mm`` GEMMs and
bitsandbytes / gemlite where importable; the harness does the rest (``--help``).

    python benchmarks/bench_quant.py --quick --write-dispatch   # ~2 min on an H100
    python benchmarks/bench_quant.py                            # full sweep
    python benchmarks/bench_quant.py --smoke                    # CPU, < 60 s
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(_HERE), str(_HERE.parent)) if p not in sys.path]

import harness as H  # noqa: E402
from harness import Impl, Prepared, Skip  # noqa: E402

from supernet_kernels.cost import formulas as FM  # noqa: E402

NAME, DOC = "quant", __doc__
PEERS = ("int_mm", "scaled_mm", "int4pack", "bnb", "gemlite")
PEER_TOL = 3e-2  # peers round differently (bf16 tinygemm, nf4, their own int8 scales)
PEER_ROTATE = 32  # input sets of peers that build a layer per set (bounded setup time)


def _sweep(name, ms, kns, wcfgs, dtypes=("float16",), acts=(16, 8)) -> H.Sweep:
    # wcfgs: (bits, group_size); None = per-channel
    return H.Sweep(name, dtypes, ms=ms, kns=kns, params={"wcfgs": wcfgs, "acts": acts})


# (K, N): 4096x11008 / 4096x4096 (LLM-style), ViT-B qkv / fc1 / fc2, SAM-L/H-like; the target
# shapes first, so that a time budget cuts the least important ones.
SWEEPS = {
    "full": _sweep(
        "full", (1, 16, 4096, 64, 256, 16384),
        ((4096, 11008), (4096, 4096), (768, 2304), (768, 3072), (3072, 768), (1024, 4096),
         (1280, 5120), (5120, 1280)),
        ((4, 128), (2, 128), (8, None), (3, 128), (8, 128)),
    ),
    "quick": _sweep(
        "quick", (1, 16, 4096), ((4096, 11008), (768, 3072)), ((4, 128), (2, 128), (8, None))
    ),
    "smoke": (_sweep("smoke", (1, 5), ((64, 48),), ((4, 32), (3, 32), (8, None)), ("float32",)),),
}  # fmt: skip


def extra_ceilings(ceilings: H.Ceilings) -> H.Ceilings:
    """The int8 tensor-core peak (torch._int_mm on 8192^3) for the A8 rows' roofline."""
    from triton.testing import do_bench

    n = 8192
    try:
        a = torch.randint(-127, 127, (n, n), device="cuda", dtype=torch.int8)
        b = torch.randint(-127, 127, (n, n), device="cuda", dtype=torch.int8).t()
        ms = do_bench(lambda: torch._int_mm(a, b), warmup=25, rep=100, return_mode="median")
    except Exception:  # noqa: BLE001 - no int8 peak: the A8 rows use twice the fp16 one
        return ceilings
    peaks = {**ceilings.peak_flops, "int8": 2 * n**3 / (ms * 1e-3)}
    return dataclasses.replace(ceilings, peak_flops=peaks)


def _bind(fn, *args, **kwargs):
    return lambda: fn(*args, **kwargs)


def int8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-channel int8 weight (N, K) and float32 scale (N,)."""
    scale = (w.abs().amax(1) / 127.0).clamp_min(1e-12).float()
    w8 = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return w8.contiguous(), scale.contiguous()


class Group:
    """One (dtype, M, K, N): the fp32 master weight, its quantized forms, lazy input sets."""

    def __init__(self, ctx: H.Context, group: dict):
        self.ctx, self.dtype = ctx, group["dtype"]
        self.m, self.k, self.n = group["M"], group["K"], group["N"]
        self.td = H.DTYPES[self.dtype]
        self.elem = self.td.itemsize
        self.w = torch.randn(self.n, self.k, device=ctx.device) * self.k**-0.5
        self.flops = FM.matmul_flops(m=self.m, k=self.k, n=self.n)
        self.xs: dict[int, torch.Tensor] = {}
        self.qws: dict = {}

    def x(self, i: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        if i not in self.xs:
            self.xs[i] = torch.randn(self.m, self.k, device=self.ctx.device).to(self.td)
        return self.xs[i] if dtype in (None, self.td) else self.xs[i].to(dtype)

    def qweight(self, bits: int, group: int | None):
        if (bits, group) not in self.qws:
            from supernet_kernels.quant import quantize_weight

            self.qws[(bits, group)] = quantize_weight(self.w, bits, group_size=group)
        return self.qws[(bits, group)]

    def fields(self, wb: int, ab: int, **kw) -> dict:
        m, k, n = self.m, self.k, self.n
        return dict(
            w_bits=wb, a_bits=ab, act_dtype=self.dtype,
            bitops=FM.bitops(m=m, k=k, n=n, w_bits=wb, a_bits=ab),
            bitops_ratio=FM.bitops_ratio(w_bits=wb, a_bits=ab), **kw,
        )  # fmt: skip


def implementations(ctx: H.Context, sweep: H.Sweep, group: dict) -> list[Impl]:
    g = Group(ctx, group)
    m, k, n, tol = g.m, g.k, g.n, H.TOLERANCE[g.dtype]
    acts, wcfgs = sweep.params["acts"], sweep.params["wcfgs"]

    def dense() -> Prepared:
        wd = g.w.to(g.td)
        return Prepared(
            lambda i: _bind(F.linear, g.x(i), wd if i == 0 else wd.clone()), g.flops,
            FM.dense_bytes(m=m, k=k, n=n, elem=g.elem),
            ref=F.linear(g.x(0).float(), g.w), tol=tol,
        )  # fmt: skip

    impls = [Impl("dense", "dense", dense, g.fields(16, 16, op=None))]

    def quant(bits, group_size, act):
        def prepare() -> Prepared:
            from supernet_kernels.ops import quant as Q

            qw = g.qweight(bits, group_size)
            ref = Q.quant_linear_reference(
                g.x(0).float(), qw.packed, qw.scales, qw.zeros, bits, qw.group_size, k, act
            )

            def factory(i):
                q = qw if i == 0 else dataclasses.replace(
                    qw, packed=qw.packed.clone(), scales=qw.scales.clone(), zeros=qw.zeros.clone()
                )  # fmt: skip
                return _bind(Q.quant_linear, g.x(i), q, act_bits=act)

            nb = FM.quant_bytes(m=m, k=k, n=n, bits=bits, group_size=qw.group_size, elem=g.elem)
            return Prepared(factory, g.flops, nb, ref=ref, tol=tol,
                            fields={"group_size": qw.group_size})  # fmt: skip

        return prepare

    for bits, group_size in wcfgs:
        for act in acts:
            for b in H.op_backends("quant_linear", ctx.args.backends):
                fields = g.fields(bits, act, op="quant_linear", group_size=group_size or k)
                impls.append(Impl(b, H.role_of(b), quant(bits, group_size, act), fields, select=b))
    if 8 in acts and any(bits == 8 for bits, _ in wcfgs):
        impls += _raw8_impls(ctx, g, tol)
    if ctx.gpu and ctx.args.peers:
        impls += peer_impls(ctx, g, {(b, a) for b, _ in wcfgs for a in acts})
    return impls


def _raw8_impls(ctx: H.Context, g: Group, tol: float) -> list[Impl]:
    """int8_linear and fp8_linear (per-channel 8-bit weights, per-token 8-bit activations)."""
    from supernet_kernels.ops import quant as Q
    from supernet_kernels.quant import quantize_weight_fp8

    m, k, n = g.m, g.k, g.n

    def raw8(op, make_weight, reference):
        def prepare() -> Prepared:
            w8, ws = make_weight(g.w)
            ref = reference(g.x(0).float(), w8, ws)
            fn = getattr(Q, op)

            def factory(i):
                wi, si = (w8, ws) if i == 0 else (w8.clone(), ws.clone())
                return _bind(fn, g.x(i), wi, si)

            return Prepared(factory, g.flops, FM.int8_bytes(m=m, k=k, n=n, elem=g.elem),
                            ref=ref, tol=tol)  # fmt: skip

        return prepare

    impls = []
    for op, make, ref in (
        ("int8_linear", int8_weight, Q.int8_linear_reference),
        ("fp8_linear", quantize_weight_fp8, Q.fp8_linear_reference),
    ):
        for b in H.op_backends(op, ctx.args.backends):
            fields = g.fields(8, 8, op=op, group_size=k)
            impls.append(Impl(b, H.role_of(b), raw8(op, make, ref), fields, select=b))
    return impls


# --------------------------------------------------------------------------- peers


def peer_impls(ctx: H.Context, g: Group, combos: set) -> list[Impl]:
    """torch's bare int8 / fp8 GEMMs (role gemm), torch's int4 kernel on bf16 x and the
    installed libraries (role peer), at the (w_bits, a_bits) the sweep measures."""
    want, out = set(ctx.args.peers), []

    def add(name, role, wb, ab, prep, act_dtype=None):
        if (wb, ab) in combos:
            fields = g.fields(wb, ab, op=None, act_dtype=act_dtype or g.dtype)
            out.append(Impl(name, role, prep, fields))

    if "int_mm" in want:
        add("torch_int_mm", "gemm", 8, 8, lambda: _int_mm(g))
    if "scaled_mm" in want:
        add("torch_scaled_mm_fp8", "gemm", 8, 8, lambda: _scaled_mm(g), "float8_e4m3fn")
    if "int4pack" in want:
        add("torch_int4pack", "peer", 4, 16, lambda: _int4pack(g), "bfloat16")
    if "bnb" in want:
        add("bnb_nf4", "peer", 4, 16, lambda: _bnb_nf4(g))
        add("bnb_int8", "peer", 8, 8, lambda: _bnb_int8(g))
    if "gemlite" in want:
        for bits in (4, 2):
            add(f"gemlite_w{bits}a16", "peer", bits, 16, lambda b=bits: _gemlite(g, b))
        add("gemlite_a8w8", "peer", 8, 8, lambda: _gemlite(g, 8))
    return out


def _import(name: str):
    try:
        return __import__(name)
    except Exception as exc:  # noqa: BLE001
        raise Skip(f"{name} not importable: {type(exc).__name__}: {exc}"[:300]) from None


def _peer(g: Group, factory, nbytes, ref, note, *, layer_per_set=False) -> Prepared:
    return Prepared(
        factory, g.flops, nbytes, ref=ref, tol=PEER_TOL if ref is not None else None,
        fields={"note": note}, max_rotate=PEER_ROTATE if layer_per_set else H.MAX_ROTATE,
    )  # fmt: skip


def _int_mm(g: Group) -> Prepared:
    if g.m <= 16 or g.k % 8 or g.n % 8:
        raise Skip(f"torch._int_mm needs M > 16 and K, N multiples of 8 (M={g.m})")
    from supernet_kernels.quant import quantize_activations_int8

    w8, _ = int8_weight(g.w)

    def factory(i):
        xq, wi = quantize_activations_int8(g.x(i))[0], (w8 if i == 0 else w8.clone())
        return lambda: torch._int_mm(xq, wi.t())

    nb = FM.raw8_gemm_bytes(m=g.m, k=g.k, n=g.n, out_elem=4)  # int8 in, int32 out
    return _peer(g, factory, nb, None, "bare GEMM on pre-quantized int8 x, int32 out")


def _scaled_mm(g: Group) -> Prepared:
    cap = torch.cuda.get_device_capability(g.ctx.device)
    if cap < (8, 9):
        raise Skip(f"fp8 torch._scaled_mm needs sm_89+ (this GPU: sm_{cap[0]}{cap[1]})")
    if g.td == torch.float32:
        raise Skip("fp8 baseline runs for fp16 / bf16 activations only")
    f8, one = torch.float8_e4m3fn, torch.ones((), device=g.ctx.device)
    w8 = g.w.to(f8)

    def factory(i):
        x8, wi = g.x(i).to(f8), (w8 if i == 0 else w8.clone())
        return lambda: torch._scaled_mm(x8, wi.t(), scale_a=one, scale_b=one, out_dtype=g.td)

    nb = FM.raw8_gemm_bytes(m=g.m, k=g.k, n=g.n, out_elem=g.elem)
    return _peer(g, factory, nb, None, "bare fp8 e4m3 GEMM on pre-converted x, tensor scales")


def _int4pack(g: Group) -> Prepared:
    """torch's tinygemm int4 (bf16, group 128). Its packing input changed across versions:
    uint8 (N, K/2) two codes per byte in newer torch, int32 (N, K) codes in older ones."""
    try:
        convert, mm = torch.ops.aten._convert_weight_to_int4pack, torch.ops.aten._weight_int4pack_mm
    except AttributeError as exc:
        raise Skip(f"torch {torch.__version__} has no int4pack ops: {exc}") from None
    qw = g.qweight(4, 128)
    codes, errors = qw.codes().to(torch.int32), []
    for variant, arg in (
        ("uint8", ((codes[:, ::2] << 4) | codes[:, 1::2]).to(torch.uint8)),
        ("int32", codes.contiguous()),
    ):
        try:
            wp = convert(arg.contiguous(), 8)
            break
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{variant}: {type(exc).__name__}: {exc}"[:150])
    else:
        raise Skip("_convert_weight_to_int4pack rejected both layouts: " + "; ".join(errors))
    # tinygemm: w = (q - 8) * scale + zero, so zero = (8 - z) * scale gives (q - z) * scale.
    s, z, bf = qw.scales, qw.zeros, torch.bfloat16
    sz = torch.stack([s.t(), ((8 - z) * s).t()], dim=-1).to(bf).contiguous()

    def factory(i):
        wi, si = (wp, sz) if i == 0 else (wp.clone(), sz.clone())
        return _bind(mm, g.x(i, bf), wi, 128, si)

    ref = F.linear(g.x(0, bf).float(), qw.dequantize())
    nb = FM.nominal_bytes(m=g.m, k=g.k, n=g.n, bits=4, group_size=128, elem=2)
    return _peer(g, factory, nb, ref, f"tinygemm, bf16, group 128, {variant} packing input")


def _bnb_nf4(g: Group) -> Prepared:
    bnb = _import("bitsandbytes")
    wq, qs = bnb.functional.quantize_4bit(g.w.to(g.td), blocksize=64, quant_type="nf4")
    ref = F.linear(g.x(0).float(), bnb.functional.dequantize_4bit(wq, qs).float())

    def factory(i):
        return _bind(bnb.matmul_4bit, g.x(i), (wq if i == 0 else wq.clone()).t(), quant_state=qs)

    nb = FM.nf4_bytes(m=g.m, k=g.k, n=g.n, elem=g.elem, blocksize=64)
    return _peer(g, factory, nb, ref, "nf4, blocksize 64")


def _bnb_int8(g: Group) -> Prepared:
    bnb = _import("bitsandbytes")

    def factory(i):
        lin = bnb.nn.Linear8bitLt(g.k, g.n, bias=False, has_fp16_weights=False, threshold=0.0)
        lin.weight = bnb.nn.Int8Params(
            g.w.to(g.td).cpu(), requires_grad=False, has_fp16_weights=False
        )
        return _bind(lin.to(g.ctx.device), g.x(i))

    nb = FM.int8_bytes(m=g.m, k=g.k, n=g.n, elem=g.elem)
    ref = F.linear(g.x(0).float(), g.w)
    return _peer(g, factory, nb, ref, "Linear8bitLt, threshold 0", layer_per_set=True)


def _gemlite(g: Group, bits: int) -> Prepared:
    if g.td not in (torch.float16, torch.bfloat16):
        raise Skip("gemlite takes fp16 / bf16 activations")
    helper = _import("gemlite.helper").helper
    dev = str(g.ctx.device) if g.ctx.device.index is not None else "cuda:0"
    if bits == 8:

        def factory8(i):
            lin = helper.A8W8_int8_dynamic(device=dev).from_weights(g.w.to(g.td), None)
            return _bind(lin, g.x(i))

        nb = FM.int8_bytes(m=g.m, k=g.k, n=g.n, elem=g.elem)
        ref = F.linear(g.x(0).float(), g.w)
        return _peer(g, factory8, nb, ref, "A8W8_int8_dynamic", layer_per_set=True)
    qw = g.qweight(bits, 128)

    def factory(i):
        lin = helper.A16Wn(device=dev).from_weights(
            qw.codes().clone(), qw.scales.to(g.td), qw.zeros.to(g.td), bits, 128
        )
        return _bind(lin, g.x(i))

    nb = FM.nominal_bytes(m=g.m, k=g.k, n=g.n, bits=bits, group_size=128, elem=g.elem)
    ref = F.linear(g.x(0).float(), qw.dequantize())
    return _peer(g, factory, nb, ref, f"A16Wn W{bits}, group 128", layer_per_set=True)


if __name__ == "__main__":
    sys.exit(H.main(sys.modules[__name__]))
