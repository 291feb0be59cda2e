"""Run every CUDA C++ and Triton kernel once on odd shapes, for compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 9 python benchmarks/sanitize_cuda.py

Each call is checked against the op's PyTorch reference too (relative error printed), so a run
that the sanitizer passes but that computes garbage is still caught. Shapes are small and odd
(M = 1 and 37, K and N not multiples of 16 where the kernel allows) because the sanitizer slows
every memory access by orders of magnitude: the point is bounds, not speed.
"""

from __future__ import annotations

import sys

import torch

import supernet_kernels as sk
from supernet_kernels import backends
from supernet_kernels.ops.attention import attention, attention_reference
from supernet_kernels.ops.lowrank import lowrank_linear, lowrank_linear_reference
from supernet_kernels.ops.quant import int8_linear, int8_linear_reference, quant_linear
from supernet_kernels.quant.quantize import quantize_weight


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to sanitize")
        return 0
    g = torch.Generator(device="cuda").manual_seed(0)
    dev = "cuda"
    bad = []

    def check(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
        torch.cuda.synchronize()
        e = rel(out, ref)
        ok = e < tol and torch.isfinite(out).all().item()
        print(f"{'ok ' if ok else 'BAD'} {name}: rel err {e:.2e} (tol {tol:.0e})", flush=True)
        if not ok:
            bad.append(name)

    for be in ("cuda", "triton"):
        reason = backends.unavailable_reason(be, torch.device(dev))
        if reason:
            print(f"skip backend {be}: {reason}")
            continue
        with sk.backend(be):
            for m, k, n, r in ((1, 72, 40, 8), (37, 200, 136, 24)):
                for dt in (torch.float16, torch.bfloat16, torch.float32):
                    x = torch.randn(m, k, device=dev, dtype=dt, generator=g)
                    u = torch.randn(n, r + 3, device=dev, dtype=dt, generator=g) / r**0.5
                    v = torch.randn(r + 3, k, device=dev, dtype=dt, generator=g) / k**0.5
                    b = torch.randn(n, device=dev, dtype=dt, generator=g)
                    y = lowrank_linear(x, u, v, r, n - 5, b[: n - 5])
                    ref = lowrank_linear_reference(
                        x.double(), u.double(), v.double(), r, n - 5, b[: n - 5].double()
                    )
                    check(f"{be} lowrank {dt} m{m} k{k} n{n} r{r}", y, ref, 3e-2)
            for bits in (2, 3, 4, 8):
                m, k, n = 3, 256, 72
                w = torch.randn(n, k, device=dev, generator=g)
                qw = quantize_weight(w, bits, group_size=64)
                x = torch.randn(m, k, device=dev, dtype=torch.float16, generator=g)
                y = quant_linear(x, qw)
                ref = x.double() @ qw.dequantize().double().T
                check(f"{be} quant_linear w{bits}a16 m{m}", y, ref, 3e-2)
            m, k, n = 37, 144, 40
            x = torch.randn(m, k, device=dev, dtype=torch.float16, generator=g)
            w8 = torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8, generator=g)
            s8 = torch.rand(n, device=dev, generator=g) * 0.01 + 1e-3
            try:
                y = int8_linear(x, w8, s8)
                check(f"{be} int8_linear m{m}", y, int8_linear_reference(x, w8, s8), 3e-2)
            except backends.BackendUnavailable as e:
                print(f"skip {be} int8_linear: {e}")
            if be == "triton":
                q, kk, vv = (
                    torch.randn(2, 3, 197, 32, device=dev, dtype=torch.float16, generator=g)
                    for _ in range(3)
                )
                y = attention(q, kk, vv)
                check("triton attention t197", y, attention_reference(q, kk, vv), 3e-2)
    print("sanitize_cuda:", "all ok" if not bad else f"{len(bad)} bad: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
