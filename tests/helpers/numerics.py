"""Numerics shared by the tests: devices, dtypes, backends, seeds and error measures with
principled tolerances.

Tolerances follow flash-attention's rule: a kernel's error against a float64 reference may be
at most twice that of PyTorch computing the same thing in the same precision, and never has to
beat the format's own rounding (unit roundoff of the dtype).
"""

from __future__ import annotations

import pytest
import torch

from supernet_kernels.backends import BACKENDS, KERNELS, unavailable_reason

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
UNIT_ROUNDOFF = {
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
    torch.float64: 2.0**-53,
}


def stable_seed(*key) -> int:
    """A seed from any printable key, the same in every process (``hash`` of a str is salted
    per process, which would draw different test data on every run)."""
    import zlib

    return zlib.crc32(repr(key).encode()) % 2**31


def backend_params(op: str | None = None):
    """(device, backend) pairs, each skipped with the reason where it cannot run here; with
    ``op``, also skipped where that op has no kernel for the backend (``backends.KERNELS``)."""
    out = []
    for dev in ["cpu", "cuda"]:
        for be in BACKENDS:
            marks = []
            if op is not None and be != "torch" and be not in KERNELS[op]:
                marks.append(pytest.mark.skip(reason=f"{op} has no {be} kernel"))
            elif dev == "cuda" and not torch.cuda.is_available():
                marks.append(pytest.mark.skip(reason="no CUDA GPU"))
            else:
                reason = unavailable_reason(be, torch.device(dev))
                if reason:
                    marks.append(pytest.mark.skip(reason=reason))
            out.append(pytest.param(dev, be, id=f"{dev}-{be}", marks=marks))
    return out


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf if out has NaN/inf where ref is finite."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out64).all() and torch.isfinite(ref64).all():
        return float("inf")
    return ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-300)).item()


def worst(out: torch.Tensor, ref: torch.Tensor, k: int = 3) -> str:
    """Where out and ref differ most: a few indices and values, for failure messages."""
    diff = (
        (out.detach().double().cpu() - ref.detach().double().cpu()).abs().nan_to_num(float("inf"))
    )
    flat = diff.flatten()
    idx = flat.topk(min(k, flat.numel())).indices
    parts = []
    for i in idx.tolist():
        pos = tuple(int(p) for p in torch.unravel_index(torch.tensor(i), diff.shape))
        parts.append(
            f"{pos}: got {out.flatten()[i].item():.6g}, want {ref.flatten()[i].item():.6g}"
        )
    return "; ".join(parts)


def assert_matches(out, ref64, torch_out, what: str = "") -> None:
    """out (kernel) is within 2x torch's own error against the float64 reference."""
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    assert out.dtype == torch_out.dtype, f"{what}: dtype {out.dtype} != {torch_out.dtype}"
    e_torch = rel_err(torch_out, ref64)
    # In float32 both errors sit at a few ulps, where their ratio is rounding noise (a fused
    # kernel sums in another order than torch: 2.1x was seen once in 1000 draws); below four
    # units of roundoff any result is as good as torch's. In fp16 / bf16 the output rounding
    # dominates both errors and the 2x rule holds as it is.
    ulps = 4 if torch_out.dtype == torch.float32 else 1
    tol = 2 * max(e_torch, ulps * UNIT_ROUNDOFF[torch_out.dtype])
    e = rel_err(out, ref64)
    assert e <= tol, (
        f"{what}: rel err {e:.3g} > {tol:.3g} (torch: {e_torch:.3g}); worst: {worst(out, ref64)}"
    )


def rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
