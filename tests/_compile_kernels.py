"""Compile every Triton kernel configuration our launchers use, for sm_90, without a GPU.

Run by tests/test_triton_compile.py in a subprocess with TRITON_INTERPRET unset (the CPU
interpreter executes kernels as Python and accepts code the compiler refuses: the second H100
run found a key-grid attention kernel that reused a loop variable's name with another type,
which 237 interpreter tests had passed). The launchers are called on meta tensors with
``JITFunction.run`` replaced by a recorder, so they pick their GPU configurations; each recorded
(kernel, argument types, constexprs, warps, stages) is then compiled to a cubin for
``GPUTarget("cuda", 90, 32)`` with Triton's bundled ptxas. Prints one line per configuration
and exits 1 if any fails.
"""

from __future__ import annotations

import sys
import traceback

import torch
import triton
import triton.runtime.jit as jit
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler import compile as triton_compile

RECORDED: list[tuple] = []


def _record(self, *args, grid, warmup, **kwargs):
    RECORDED.append((self, args, dict(kwargs)))


_TYPES = {
    torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "i8",
    torch.int32: "i32", torch.uint8: "u8", torch.float8_e4m3fn: "fp8e4nv",
}  # fmt: skip


def _sig(v) -> str:
    if isinstance(v, torch.Tensor):
        return "*" + _TYPES[v.dtype]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i64" if abs(v) >= 2**31 else "i32"
    if isinstance(v, float):
        return "fp32"
    raise TypeError(f"unsupported kernel argument {type(v).__name__}")


def _meta(*shape, dtype=torch.float16):
    return torch.empty(*shape, device="meta", dtype=dtype)


def launch_everything() -> None:
    from supernet_kernels.kernels import triton_attention as ta
    from supernet_kernels.kernels import triton_lowrank as tl_
    from supernet_kernels.kernels import triton_quant as tq
    from supernet_kernels.quant.packing import codes_per_word

    tq._device_info = lambda x: ("compile-check-sm90", 132, False)
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        # attention: plain, SAM rel pos on a 64-wide grid (one key row per tile), on 14 x 14
        # windows (several rows per tile), on a grid wider than a tile (gathers), Swin's bias
        for grid_h, grid_w in ((64, 64), (14, 14), (2, 100)):
            t = grid_h * grid_w
            q = _meta(2, 3, t, 64, dtype=dt)
            rh, rw = _meta(2, 3, t, grid_h, dtype=dt), _meta(2, 3, t, grid_w, dtype=dt)
            ta.attention_fwd(q, q, q, rh, rw, 0.125)
            lse = _meta(2, 3, t, dtype=torch.float32)
            ta.attention_bwd(q, q, q, rh, rw, 0.125, q, lse, lse, True)
        q = _meta(6, 3, 49, 80, dtype=dt)
        bias = _meta(3, 3, 49, 49, dtype=dt)
        ta.attention_fwd(q, q, q, None, None, 0.1, bias)
        lse = _meta(6, 3, 49, dtype=torch.float32)
        ta.attention_bwd(q, q, q, None, None, 0.1, q, lse, lse, False, bias, True)
        # low rank: fused (small and large M) and the two-GEMM path (rank > 256)
        from supernet_kernels import tuning

        for m, rank in ((197, 64), (4096, 128), (1, 32)):
            x, u = _meta(m, 768, dtype=dt), _meta(3072, rank, dtype=dt)
            v = _meta(rank, 768, dtype=dt)
            cfg = tuning.default_config(m, rank, False)
            tl_.launch_fused(x, u, v, rank, 3072, _meta(3072, dtype=dt), cfg, 2)
        x, u, v = _meta(300, 768, dtype=dt), _meta(768, 384, dtype=dt), _meta(384, 768, dtype=dt)
        tl_.launch_two_gemm(x, u, v, 384, 768, None, interpret=False)
        if dt == torch.float32:
            continue
        # quantized: every bit-width, A16 and A8, GEMV-like and tiled M; int8 / fp8 W8A8
        for bits in (2, 3, 4, 8):
            k, n, g = 512, 256, 128
            packed = _meta(n, -(-k // codes_per_word(bits)), dtype=torch.int32)
            s = _meta(n, k // g, dtype=torch.float32)
            for m in (1, 48, 4096):
                tq.quant_linear(_meta(m, k, dtype=dt), packed, s, s, bits, g, k, 16, None)
                tq.quant_linear(_meta(m, k, dtype=dt), packed, s, s, bits, g, k, 8, None)
        for wdt in (torch.int8, torch.float8_e4m3fn):
            for m in (1, 4096):
                w, ws = _meta(256, 512, dtype=wdt), _meta(256, dtype=torch.float32)
                tq.raw8_linear(_meta(m, 512, dtype=dt), w, ws, _meta(256, dtype=dt))


def main() -> int:
    jit.JITFunction.run = _record
    launch_everything()
    target = GPUTarget("cuda", 90, 32)
    seen, failed = set(), 0
    for fn, args, kwargs in RECORDED:
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
        signature, constexprs, it = {}, {}, iter(args)
        for p in fn.params:
            if p.is_constexpr:
                signature[p.name] = "constexpr"
                constexprs[p.name] = kwargs[p.name] if p.name in kwargs else next(it)
            else:
                signature[p.name] = _sig(next(it))
        key = (fn.__name__, tuple(signature.items()), tuple(sorted(constexprs.items())),
               tuple(sorted(options.items())))  # fmt: skip
        if key in seen:
            continue
        seen.add(key)
        what = f"{fn.__name__} {options} " + " ".join(
            f"{k}={v}" for k, v in sorted(constexprs.items())
        )
        try:
            triton_compile(ASTSource(fn, signature, constexprs), target=target, options=options)
            print(f"ok   {what}", flush=True)
        except Exception:  # noqa: BLE001 - every failure is reported
            failed += 1
            print(f"FAIL {what}\n{traceback.format_exc(limit=3)}", flush=True)
    print(f"{len(seen)} configurations, {failed} failed (Triton {triton.__version__}, sm_90)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
