"""Fake quantization and LSQ: exact agreement with the real packed path, STE gradients, and
LSQ training reducing the quantization error."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.numerics import UNIT_ROUNDOFF, rel_err

from supernet_kernels.nn import QuantLinear
from supernet_kernels.quant import quantize_activations_int8, quantize_weight
from supernet_kernels.quant.fake import (
    FakeQuantLinear,
    LSQWeightQuantizer,
    fake_quantize,
    fake_quantize_activations_int8,
)


def _weight(n=24, k=128, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * k**-0.5).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("group_size", [32, 128, None], ids=lambda g: f"g{g or 'ch'}")
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fake_equals_real_exactly(bits, group_size, symmetric, dtype):
    w = _weight(seed=bits, dtype=dtype)
    qw = quantize_weight(w, bits, group_size, symmetric=symmetric, clip_search=bits < 8)
    fake = fake_quantize(w, qw.scales, qw.zeros, bits, qw.group_size)
    assert fake.dtype == dtype
    assert torch.equal(fake, qw.dequantize(dtype))


def test_fake_equals_real_on_rounding_ties():
    """Values exactly halfway between grid points: both paths round half to even."""
    bits, g = 4, 32
    scales = torch.full((2, 1), 0.25)
    zeros = torch.full((2, 1), 8.0)
    # w / s = k + 0.5 for k = -8..7 (ties), all exactly representable
    ties = (torch.arange(-8, 8, dtype=torch.float32) + 0.5) * 0.25
    w = torch.cat([ties, -ties]).view(1, g).repeat(2, 1)
    fake = fake_quantize(w, scales, zeros, bits, g)
    want = (torch.clamp(torch.round(w / 0.25) + 8, 0, 15) - 8) * 0.25
    assert torch.equal(fake, want)
    # the packed path: same codes
    lsq = LSQWeightQuantizer(w, bits, g)
    with torch.no_grad():
        lsq.scale.copy_(scales)
        lsq.zeros.copy_(zeros)
    assert torch.equal(lsq.export(w).dequantize(), fake)


def test_ste_gradients_to_weight_and_scales():
    w = _weight(8, 64, seed=1).requires_grad_(True)
    qw = quantize_weight(w, 3, 32)
    scales = qw.scales.clone().requires_grad_(True)
    # shrink the scales so some weights fall outside the grid and get clamped
    s_used = scales * 0.6
    out = fake_quantize(w, s_used, qw.zeros, 3, 32)
    out.sum().backward()
    # STE: gradient 1 inside the clamp range, 0 where clamped
    u = w.detach().view(8, 2, 32) / s_used.detach()[..., None] + qw.zeros[..., None]
    inside = ((u >= 0) & (u <= 7)).view(8, 64)  # the unrounded code, LSQ's rule
    assert 0 < (~inside).sum() < inside.sum()
    torch.testing.assert_close(w.grad, inside.float(), rtol=1e-6, atol=1e-6)
    assert scales.grad is not None and torch.isfinite(scales.grad).all()
    assert scales.grad.abs().sum() > 0


def test_lsq_scale_gradient_is_lsq():
    """d fake / d s = round(w/s) - w/s inside the range, (bound - z) outside (Esser et al.,
    eq. 3, with the zero point z), times the LSQ gradient scale 1 / sqrt(G * Qp)."""
    w = _weight(4, 32, seed=2)
    lsq = LSQWeightQuantizer(w, bits=4, group_size=32)
    with torch.no_grad():
        lsq.scale.mul_(0.7)  # some clamping
    out = lsq(w)
    out.sum().backward()
    s = lsq.scale.detach()[..., None]
    z = lsq.zeros[..., None]
    v = w.view(4, 1, 32) / s
    u = v + z  # unrounded code
    d = torch.where(u < 0, -z, torch.where(u > 15, 15 - z, torch.round(v) - v))
    want = d.sum(-1) / math.sqrt(32 * 15)
    assert lsq.grad_scale == pytest.approx(1 / math.sqrt(32 * 15))
    torch.testing.assert_close(lsq.scale.grad, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_lsq_init_and_export_agree(symmetric):
    w = _weight(16, 128, seed=3)
    lsq = LSQWeightQuantizer(w, bits=4, group_size=64, symmetric=symmetric)
    qw = quantize_weight(w, 4, 64, symmetric=symmetric)
    assert torch.equal(lsq.scale.detach(), qw.scales) and torch.equal(lsq.zeros, qw.zeros)
    assert torch.equal(lsq(w), qw.dequantize())
    # after moving the scales, export still matches the fake forward bit for bit
    with torch.no_grad():
        lsq.scale.mul_(torch.empty_like(lsq.scale).uniform_(0.8, 1.1))
    exported = lsq.export(w)
    assert exported.symmetric == symmetric
    assert torch.equal(exported.dequantize(), lsq(w).detach())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_lsq_training_reduces_quantization_mse(bits):
    """A few Adam steps on the step sizes only (weight frozen) lower ||fake(w) - w||^2 below the
    min-max start, which wastes range on each group's extreme values. Yardstick: the per-group
    clipping grid search of quantize_weight (the same zero-point-rounding family); LSQ must win
    at least a third of the reduction that search finds (at 4 bits the room is small: ~7%)."""
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(bits)) * 0.05
    lsq = LSQWeightQuantizer(w, bits=bits, group_size=64)
    mse0 = (lsq(w) - w).pow(2).mean().item()
    mse_clip = (quantize_weight(w, bits, 64, clip_search=True).dequantize() - w).pow(2).mean()
    assert mse_clip < mse0
    opt = torch.optim.Adam(lsq.parameters(), lr=1e-3)
    for _ in range(40):
        opt.zero_grad()
        loss = (lsq(w) - w).pow(2).mean()
        loss.backward()
        opt.step()
    mse = (lsq(w) - w).pow(2).mean().item()
    assert mse < mse0 - (mse0 - mse_clip.item()) / 3, (mse, mse0, mse_clip.item())
    assert torch.equal(lsq.export(w).dequantize(), lsq(w).detach())


def test_fake_quant_activations_match_int8_definition():
    x = torch.randn(3, 7, 64) * 3
    codes, scale = quantize_activations_int8(x)
    assert torch.equal(fake_quantize_activations_int8(x), codes.float() * scale)
    xr = x.clone().requires_grad_(True)
    fake_quantize_activations_int8(xr).sum().backward()
    assert torch.equal(xr.grad, torch.ones_like(x))  # straight through


@pytest.mark.parametrize("act_bits", [16, 8])
def test_fake_quant_linear_matches_quant_linear(act_bits):
    torch.manual_seed(4)
    lin = torch.nn.Linear(128, 40)
    fq = FakeQuantLinear.from_linear(lin, bits=4, group_size=32, act_bits=act_bits)
    with torch.no_grad():  # pretend training moved the step sizes
        fq.weight_quantizer.scale.mul_(0.9)
    q = fq.to_quant_linear()
    assert isinstance(q, QuantLinear) and q.act_bits == act_bits
    assert torch.equal(q.dequantize(torch.float32), fq.weight_quantizer(fq.weight).detach())
    x = torch.randn(6, 128)
    # same weight and activation codes; only the accumulation order differs (fp32 vs fp64)
    e = rel_err(fq(x), q(x))
    assert e < 64 * UNIT_ROUNDOFF[torch.float32] * 128**0.5, e


def test_fake_quant_linear_trains():
    torch.manual_seed(5)
    fq = FakeQuantLinear(64, 16, bits=4, group_size=32, act_bits=8)
    x = torch.randn(8, 64)
    fq(x).square().sum().backward()
    assert fq.weight.grad is not None and fq.weight.grad.abs().sum() > 0
    assert fq.weight_quantizer.scale.grad is not None
    assert fq.bias.grad is not None
    assert "bits=4" in repr(fq) and "act_bits=8" in repr(fq)


def test_half_keeps_lsq_scales_float32():
    torch.manual_seed(6)
    fq = FakeQuantLinear(64, 16, bits=4, group_size=32)
    s = fq.weight_quantizer.scale.detach().clone()
    fq.half()
    assert fq.weight.dtype == torch.float16
    assert fq.weight_quantizer.scale.dtype == torch.float32
    assert torch.equal(fq.weight_quantizer.scale.detach(), s)
    out = fq(torch.randn(3, 64, dtype=torch.float16))
    assert out.dtype == torch.float16
    q = fq.to_quant_linear()
    assert q.scales.dtype == torch.float32 and q.bias.dtype == torch.float16


def test_fake_quantize_argument_checks():
    w = _weight(4, 64)
    qw = quantize_weight(w, 4, 32)
    with pytest.raises(ValueError, match="scales must have shape"):
        fake_quantize(w, qw.scales[:, :1], qw.zeros, 4, 32)
    with pytest.raises(ValueError, match="group_size"):
        fake_quantize(w, qw.scales, qw.zeros, 4, 48)
    lsq = LSQWeightQuantizer(w, 4, 32)
    with pytest.raises(ValueError, match="made for"):
        lsq(w[:2])
