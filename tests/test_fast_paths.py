"""Torch's fast paths (ops/fast_paths.py) against the float64 definition, on the CPU.

What cannot run here: the CUDA variants of the int4 kernel (``_weight_int4pack_mm``, bfloat16
only), ``torch._int_mm`` and ``torch._scaled_mm`` on cuBLASLt, and SDPA's flash/efficient
kernels; their CPU counterparts are what these tests run (same layout conversion, same scales).
"""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import rel_err, stable_seed

import supernet_kernels as sk
from supernet_kernels import registry
from supernet_kernels.ops import fast_paths
from supernet_kernels.ops.quant import quant_linear_reference
from supernet_kernels.quant.quantize import quantize_weight, quantize_weight_fp8

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Relative (Frobenius) error bars for a GEMM in each dtype against float64 at these sizes
# (K <= 320): torch's own in fp16/bf16 is ~5e-4 / 4e-3; the bar is about twice that.
TOL = {torch.float32: 1e-5, torch.float16: 1.5e-3, torch.bfloat16: 1e-2}


def _gen(*key):
    return torch.Generator().manual_seed(stable_seed(*key))


def _qweight(n, k, bits, group, *key):
    g = _gen("w", *key)
    w = torch.randn(n, k, generator=g, dtype=torch.float64).float()
    return quantize_weight(w, bits, group)


def _impl(op, name):
    return registry.get(op, name).fn


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "bits,group,act_bits", [(4, 64, 16), (2, 32, 16), (3, 64, 16), (8, 160, 8), (4, 64, 8)]
)
def test_quant_dequant_and_dense_match_float64(dtype, bits, group, act_bits):
    n, k, m = 37, 320, 5
    qw = _qweight(n, k, bits, group, dtype, bits, group)
    x = torch.randn(2, m, k, generator=_gen("x", dtype, bits)).to(dtype)
    bias = torch.randn(n, generator=_gen("b", dtype)).to(dtype)
    args = (qw.packed, qw.scales, qw.zeros, bits, qw.group_size, k, act_bits, bias)
    # The op's definition in float64 (its CPU reference accumulates in float64).
    ref = quant_linear_reference(x.double(), *args[:-1], bias.double())
    y = _impl("quant_linear", "torch_dequant")(x, *args)
    assert y.dtype == dtype and y.shape == (2, m, n)
    # act_bits=8: the per-token codes of x in dtype and in float64 can differ by one at a
    # rounding boundary; the SQNR of the int8 quantizer (~40 dB) bounds that.
    tol = TOL[dtype] if act_bits == 16 else max(TOL[dtype], 1e-2)
    assert rel_err(y, ref) < tol
    # The dense-equivalent path: the same definition, the weight dequantized once.
    fast_paths.clear_cache()
    y1 = _impl("quant_linear", "torch_dense")(x, *args)
    y2 = _impl("quant_linear", "torch_dense")(x, *args)  # from the cache
    assert rel_err(y1, ref) < tol and torch.equal(y1, y2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [32, 64, 128, 256])
def test_int4pack_matches_float64(dtype, group):
    n, k = 48, 512
    qw = _qweight(n, k, 4, group, dtype, group)
    x = torch.randn(3, k, generator=_gen("x4", dtype, group)).to(dtype)
    bias = torch.randn(n, generator=_gen("b4", dtype)).to(dtype)
    impl = registry.get("quant_linear", "torch_int4pack")
    shape = dict(m=3, bits=4, act_bits=16, group_size=group, k=k, n=n)
    assert impl.reason(x.device, dtype, **shape) is None
    ref = quant_linear_reference(x.double(), qw.packed, qw.scales, qw.zeros, 4, group, k, 16, None)
    ref = ref + bias.double()
    fast_paths.clear_cache()
    y = impl.fn(x, qw.packed, qw.scales, qw.zeros, 4, group, k, 16, bias)
    # torch's kernel keeps scales and zeros in x's dtype: one more rounding than the weight's.
    assert rel_err(y, ref) < 2 * TOL[dtype]
    with sk.backend("torch_int4pack"):  # named by the user: through the op
        y2 = sk.ops.quant_linear(x, qw, bias)
    assert torch.equal(y, y2)


def test_int4pack_supports_states_its_limits():
    impl = registry.get("quant_linear", "torch_int4pack")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    base = dict(m=1, bits=4, act_bits=16, group_size=128, k=4096, n=11008)
    assert impl.reason(cuda, torch.bfloat16, **base) is None
    assert "bfloat16" in impl.reason(cuda, torch.float16, **base)
    assert "4-bit" in impl.reason(cpu, torch.float32, **{**base, "bits": 2})
    assert "group sizes" in impl.reason(cpu, torch.float32, **{**base, "group_size": 96})
    assert "divisible by 16" in impl.reason(cpu, torch.float32, **{**base, "n": 24})
    x = torch.randn(2, 8)
    with sk.backend("torch_int4pack"), pytest.raises(sk.BackendUnavailable, match="4-bit"):
        sk.ops.quant_linear(x, _qweight(4, 8, 2, 8, "lim"), None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [17, 33])
def test_int_mm_and_int8_dequant_match_float64(dtype, m):
    n, k = 40, 96
    w = torch.randn(n, k, generator=_gen("w8", dtype, m))
    scale = w.abs().amax(1) / 127
    weight = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    x = torch.randn(m, k, generator=_gen("x8", dtype, m)).to(dtype)
    bias = torch.randn(n, generator=_gen("b8")).to(dtype)
    ref = sk.ops.int8_linear_reference(x.double(), weight, scale, bias.double())
    impl = registry.get("int8_linear", "torch_int_mm")
    assert impl.reason(x.device, dtype, m=m, k=k, n=n) is None
    assert rel_err(impl.fn(x, weight, scale, bias), ref) < max(TOL[dtype], 1e-2)
    y = _impl("int8_linear", "torch_dequant")(x, weight, scale, bias)
    assert rel_err(y, ref) < max(TOL[dtype], 1e-2)
    y = _impl("int8_linear", "torch_dense")(x, weight, scale, bias)
    assert rel_err(y, ref) < max(TOL[dtype], 1e-2)


def test_int_mm_refuses_what_cublaslt_refuses():
    impl = registry.get("int8_linear", "torch_int_mm")
    assert "M > 16" in impl.reason(torch.device("cuda"), torch.float16, m=16, k=64, n=64)
    assert "multiples of 8" in impl.reason(torch.device("cuda"), torch.float16, m=32, k=60, n=64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_mm_and_fp8_dequant_match_float64(dtype):
    n, m, k = 48, 7, 64
    w = torch.randn(n, k, generator=_gen("wf", dtype))
    weight, scale = quantize_weight_fp8(w)
    x = torch.randn(m, k, generator=_gen("xf", dtype)).to(dtype)
    ref = sk.ops.fp8_linear_reference(x.double(), weight, scale)
    # fp8 codes of x in dtype vs float64 can differ at a rounding boundary (e4m3: 2^-4).
    tol = max(TOL[dtype], 2e-2)
    y = _impl("fp8_linear", "torch_scaled_mm")(x, weight, scale, None)
    assert y.dtype == dtype and rel_err(y, ref) < tol
    assert rel_err(_impl("fp8_linear", "torch_dequant")(x, weight, scale, None), ref) < tol
    assert rel_err(_impl("fp8_linear", "torch_dense")(x, weight, scale, None), ref) < tol
    impl = registry.get("fp8_linear", "torch_scaled_mm")
    assert impl.min_capability == (8, 9)
    assert "multiples of 16" in impl.reason(torch.device("cuda"), dtype, m=1, k=72, n=48)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lowrank_paths_match_float64_and_cache_follows_in_place_changes(dtype):
    n_max, r_max, k, m = 29, 12, 40, 6
    g = _gen("lr", dtype)
    x = torch.randn(m, k, generator=g).to(dtype)
    u = torch.randn(n_max, r_max, generator=g).to(dtype)
    v = torch.randn(r_max, k, generator=g).to(dtype)
    bias = torch.randn(n_max, generator=g).to(dtype)
    ref = sk.ops.lowrank_linear_reference(x.double(), u.double(), v.double(), 5, 17, bias.double())
    for name in ("torch_two_gemm", "torch_dense"):
        y = _impl("lowrank_linear", name)(x, u, v, 5, 17, bias)
        assert y.shape == (m, 17) and rel_err(y, ref) < TOL[dtype], name
    fast_paths.clear_cache()
    dense = _impl("lowrank_linear", "torch_dense")
    before = dense(x, u, v, 5, 17, None)
    with torch.no_grad():
        u.mul_(2)  # an optimizer step: the cached product must not be reused
    after = dense(x, u, v, 5, 17, None)
    assert rel_err(after, 2 * before.double()) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_sdpa_with_relpos_mask_matches_float64(dtype, with_bias):
    B, nH, H, W, d = 2, 3, 4, 5, 16
    T = H * W
    g = _gen("att", dtype, with_bias)
    q, k, v = (torch.randn(B, nH, T, d, generator=g).to(dtype) for _ in range(3))
    rph = torch.randn(2 * H - 1, d, generator=g).to(dtype)
    rpw = torch.randn(2 * W - 1, d, generator=g).to(dtype)
    bias = torch.randn(1, nH, T, T, generator=g).to(dtype) if with_bias else None
    ref = sk.ops.attention_reference(
        q.double(), k.double(), v.double(), rph.double(), rpw.double(), (H, W),
        bias=None if bias is None else bias.double(),
    )  # fmt: skip
    with sk.backend("torch_sdpa"):
        y = sk.ops.attention(q, k, v, rph, rpw, (H, W), bias=bias)
    # The mask is rounded to q's dtype (as segment-anything adds its rel-pos term): in bf16
    # that costs about as much as the probabilities' rounding.
    assert y.dtype == dtype and rel_err(y, ref) < 2 * TOL[dtype]
    # The op form (out, lse), which computes lse from the scores.
    out, lse = registry.get("attention", "torch_sdpa").fn(q, k, v, None, None, d**-0.5, None)
    ref_out, ref_lse = registry.get("attention", "torch").fn(
        q.double(), k.double(), v.double(), None, None, d**-0.5, None
    )
    assert rel_err(out, ref_out) < 2 * TOL[dtype] and rel_err(lse, ref_lse) < TOL[dtype]


def test_sdpa_path_is_differentiable():
    B, nH, H, W, d = 1, 2, 3, 3, 8
    T = H * W
    g = _gen("attg")
    q, k, v = (torch.randn(B, nH, T, d, generator=g, requires_grad=True) for _ in range(3))
    rph = torch.randn(2 * H - 1, d, generator=g, requires_grad=True)
    rpw = torch.randn(2 * W - 1, d, generator=g, requires_grad=True)
    with sk.backend("torch_sdpa"):
        y = sk.ops.attention(q, k, v, rph, rpw, (H, W))
    go = torch.randn_like(y)
    grads = torch.autograd.grad(y, (q, k, v, rph, rpw), go)
    ref = sk.ops.attention_reference(q, k, v, rph, rpw, (H, W))
    ref_grads = torch.autograd.grad(ref, (q, k, v, rph, rpw), go)
    for a, b in zip(grads, ref_grads, strict=True):
        assert rel_err(a, b) < 1e-5
