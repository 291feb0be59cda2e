"""Quantization core and the quantized matmul ops: packing, quantizers, every backend."""

from __future__ import annotations

import math

import pytest
import torch

import supernet_kernels as sk
from supernet_kernels.ops.quant import int8_linear_reference, quant_linear_reference
from supernet_kernels.quant import (
    codes_per_word,
    pack,
    quantize_activations_int8,
    quantize_weight,
    unpack,
)
from tests.conftest import DTYPES, assert_matches, backend_params, rel_norm, stable_seed

BITS = (2, 3, 4, 8)


def _gen(*key):
    return torch.Generator().manual_seed(stable_seed(*key))


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("k", [1, 9, 10, 31, 96, 320])
def test_pack_round_trip(bits, k):
    codes = torch.randint(0, 2**bits, (7, k), generator=_gen(bits, k))
    packed = pack(codes, bits)
    assert packed.dtype == torch.int32
    assert packed.shape == (7, math.ceil(k / codes_per_word(bits)))
    assert torch.equal(unpack(packed, bits, k).long(), codes)


def test_pack_layout_is_the_documented_one():
    # 4-bit: code i of a word sits at bits [4i, 4i + 4), low bits first.
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15, 9]])
    packed = pack(codes, 4)
    assert packed[0, 0].item() == 0xF7654321 - 2**32  # int32 two's complement
    assert packed[0, 1].item() == 9
    # 3-bit: 10 codes per word, the top two bits unused (zero).
    c3 = torch.full((1, 10), 7)
    assert pack(c3, 3)[0, 0].item() == 2**30 - 1


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: pack(torch.tensor([[4]]), 2), ValueError, r"codes must lie in \[0, 3\]"),
        (lambda: pack(torch.tensor([[-1]]), 4), ValueError, "codes must lie"),
        (lambda: pack(torch.tensor([[1.0]]), 4), TypeError, "integer tensor"),
        (lambda: pack(torch.tensor([[1]]), 5), ValueError, r"bits must be one of \(2, 3, 4, 8\)"),
        (lambda: unpack(torch.zeros(2, 3, dtype=torch.int32), 4, 30), ValueError, "expected 4"),
    ],
)
def test_pack_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------- quantizer


def _sqnr_db(w, wq):
    return 20 * math.log10(w.norm() / (w - wq).norm())


# Minimum SQNR of min-max RTN on Gaussian weights: each bit adds ~6 dB; the constant is the
# loss of the min-max range over a 128-wide group (range ~ 5 sigma), measured here with margin.
SQNR_FLOOR = {2: 5.0, 3: 12.0, 4: 18.0, 8: 41.0}


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", [32, 64, 128, None])
@pytest.mark.parametrize("symmetric", [False, True])
def test_quantizer_error_and_codes(bits, group_size, symmetric):
    w = torch.randn(48, 256, generator=_gen(bits, group_size, symmetric))
    q = quantize_weight(w, bits, group_size, symmetric=symmetric)
    assert int(q.codes().max()) < 2**bits
    g = q.group_size
    assert q.scales.shape == (48, 256 // g) and q.zeros.shape == (48, 256 // g)
    sqnr = _sqnr_db(w, q.dequantize())
    floor = SQNR_FLOOR[bits] - (3.0 if symmetric else 0.0) - (2.0 if group_size is None else 0.0)
    assert sqnr >= floor, f"SQNR {sqnr:.1f} dB < {floor} dB"
    # Every element within half a step of its value (round to nearest), unless clipped.
    err = (q.dequantize() - w).abs().view(48, -1, g)
    assert (err <= q.scales[..., None] / 2 + 1e-6).float().mean() > 0.99


@pytest.mark.parametrize("bits", BITS)
def test_clip_search_never_worse(bits):
    w = torch.randn(32, 128, generator=_gen("clip", bits)) ** 3  # heavy tails: clipping helps
    plain = quantize_weight(w, bits, 32)
    searched = quantize_weight(w, bits, 32, clip_search=True)
    e_plain = (plain.dequantize() - w).pow(2).view(32, 4, 32).sum(-1)
    e_search = (searched.dequantize() - w).pow(2).view(32, 4, 32).sum(-1)
    assert (e_search <= e_plain + 1e-6).all()
    if bits <= 3:  # measured: 0.87x (2-bit), 0.94x (3-bit), 0.97x (4-bit) of the plain error
        assert e_search.sum() < 0.97 * e_plain.sum()


def test_quantizer_bad_input():
    with pytest.raises(ValueError, match="group_size 48 does not divide"):
        quantize_weight(torch.randn(4, 64), 4, 48)
    with pytest.raises(ValueError, match="bits must be one of"):
        quantize_weight(torch.randn(4, 64), 5, 32)
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_weight(torch.full((4, 64), float("nan")), 4, 32)
    with pytest.raises(ValueError, match="2-D"):
        quantize_weight(torch.randn(64), 4, 32)
    with pytest.raises(TypeError, match="floating-point"):
        quantize_weight(torch.ones(4, 64, dtype=torch.int32), 4, 32)


def test_activation_quantizer_rounds_half_to_even():
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.4]])
    q, s = quantize_activations_int8(x)
    assert s.item() == 1.0
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, 3]]
    q0, s0 = quantize_activations_int8(torch.zeros(1, 4))
    assert s0.item() == 1.0 and (q0 == 0).all()


def test_triton_row_quantizer_matches_torch():
    if sk.backends.unavailable_reason("triton", torch.device("cpu")):
        pytest.skip("Triton needs TRITON_INTERPRET=1 on the CPU")
    from supernet_kernels.kernels.triton_quant import quantize_rows

    x = torch.randn(5, 70, generator=_gen("rows"))
    x[1] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5] * 14)  # exact ties
    x[2] = 0.0  # an all-zero row (scale 1)
    q, s = quantize_rows(x)
    q_ref, s_ref = quantize_activations_int8(x)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref[:, 0])
    from supernet_kernels.quant import quantize_activations_fp8

    x[3, :4] = torch.tensor([1e-4, 3e-3, -7e-3, 0.0])  # fp8 subnormals after scaling
    q8, s8 = quantize_rows(x, fp8=True)
    q8_ref, s8_ref = quantize_activations_fp8(x)
    assert torch.equal(q8.float(), q8_ref.float()) and torch.equal(s8, s8_ref[:, 0])


# ----------------------------------------------------------------------------- ops

SHAPES = [  # (lead, K, N, group)
    ((1,), 96, 37, 32),
    ((3, 7), 128, 33, None),
    ((5,), 320, 20, 64),
]


def _qcase(lead, k, n, group, bits, dtype, device, seed):
    gen = _gen(seed)
    w = torch.randn(n, k, generator=gen)
    q = quantize_weight(w, bits, group).to(device)
    x = torch.randn(*lead, k, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, generator=gen).to(device=device, dtype=dtype)
    return x, q, b


def _ref64(x, q, act_bits, bias):
    return quant_linear_reference(
        x.double(), q.packed, q.scales, q.zeros, q.bits, q.group_size, q.in_features, act_bits,
        None if bias is None else bias.double(),
    )  # fmt: skip


@pytest.mark.parametrize("device,be", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("act_bits", [16, 8])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quant_linear_matches_float64(device, be, dtype, bits, act_bits, shape):
    if be == "cuda" and act_bits == 8:
        pytest.skip("no CUDA kernel for packed weights with 8-bit activations yet")
    lead, k, n, group = shape
    x, q, b = _qcase(lead, k, n, group, bits, dtype, device, (shape, bits, str(dtype)))
    ref = _ref64(x, q, act_bits, b)
    plain = quant_linear_reference(
        x, q.packed, q.scales, q.zeros, bits, q.group_size, k, act_bits, b
    )
    with sk.backend(be):
        out = sk.ops.quant_linear(x, q, b, act_bits=act_bits)
    assert out.shape == (*lead, n) and out.device.type == device
    assert_matches(out, ref, plain, f"{be} W{bits}A{act_bits} {dtype} {shape}")


@pytest.mark.parametrize("device,be", backend_params("int8_linear"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 17])
def test_int8_linear_matches_float64(device, be, dtype, m):
    gen = _gen("int8", m, str(dtype))
    x = torch.randn(m, 72, generator=gen).to(device=device, dtype=dtype)
    w = torch.randint(-127, 128, (29, 72), generator=gen, dtype=torch.int8).to(device)
    ws = (torch.rand(29, generator=gen) / 100).to(device)
    b = torch.randn(29, generator=gen).to(device=device, dtype=dtype)
    ref = int8_linear_reference(x.double(), w, ws, b.double())
    plain = int8_linear_reference(x, w, ws, b)
    with sk.backend(be):
        out = sk.ops.int8_linear(x, w, ws, b)
    assert_matches(out, ref, plain, f"{be} int8_linear {dtype}")


def test_a8_matches_the_fake_quantized_product():
    """act_bits=8 is exactly x quantized per token times the dequantized weight."""
    x, q, b = _qcase((9,), 64, 24, 32, 4, torch.float64, "cpu", "a8")
    xq, xs = quantize_activations_int8(x)
    want = (xq.double() * xs.double()) @ q.dequantize(torch.float64).T + b
    got = sk.ops.quant_linear(x, q, b, act_bits=8)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device,be", backend_params())
@pytest.mark.parametrize("bits", [3, 8])
def test_opcheck(device, be, bits):
    x, q, b = _qcase((6,), 64, 18, 32, bits, torch.float32, device, ("opcheck", bits))
    x.requires_grad_(True)
    acts = [16] if be == "cuda" else [16, 8]
    with sk.backend(be):
        for act in acts:
            args = (x, q.packed, q.scales, q.zeros, bits, 32, 64, act, b)
            torch.library.opcheck(torch.ops.supernet_kernels.quant_linear.default, args)
        if be == "cuda":  # int8_linear has no CUDA C++ kernel (torch's _int_mm serves it)
            return
        w = torch.randint(-127, 128, (18, 64), dtype=torch.int8, device=device)
        ws = torch.rand(18, device=device)
        torch.library.opcheck(torch.ops.supernet_kernels.int8_linear.default, (x, w, ws, b))


@pytest.mark.parametrize("act_bits", [16, 8])
def test_gradients_flow_to_x_and_bias(act_bits):
    x, q, b = _qcase((2, 5), 64, 12, 32, 4, torch.float64, "cpu", ("grad", act_bits))
    x.requires_grad_(True)
    b.requires_grad_(True)
    g = torch.randn(2, 5, 12, dtype=torch.float64)
    sk.ops.quant_linear(x, q, b, act_bits=act_bits).backward(g)
    w = q.dequantize(torch.float64)
    torch.testing.assert_close(x.grad, g @ w)  # straight through the activation quantizer
    torch.testing.assert_close(b.grad, g.sum((0, 1)))


def test_gradcheck_weight_only():
    x, q, b = _qcase((3,), 32, 7, 32, 4, torch.float64, "cpu", "gradcheck")
    x.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, b: sk.ops.quant_linear(x, q, b), (x, b))


def _bad(**changes):
    x, q, b = _qcase((4,), 64, 8, 32, 4, torch.float32, "cpu", "bad")
    args = {"x": x, "packed": q.packed, "scales": q.scales, "zeros": q.zeros, "bits": 4,
            "group_size": 32, "in_features": 64, "act_bits": 16, "bias": b}  # fmt: skip
    args.update({k: (v(args) if callable(v) else v) for k, v in changes.items()})
    return args


@pytest.mark.parametrize(
    "changes,exc,match",
    [
        ({"bits": 5}, ValueError, r"bits must be one of \(2, 3, 4, 8\)"),
        ({"group_size": 48}, ValueError, "group_size 48 must be a positive divisor"),
        ({"act_bits": 4}, ValueError, "act_bits must be 8 or 16"),
        ({"scales": lambda a: a["scales"][:, :1]}, ValueError, r"scales has shape \(8, 1\)"),
        ({"zeros": lambda a: a["zeros"].half()}, TypeError, "zeros must be float32"),
        ({"packed": lambda a: a["packed"].long()}, TypeError, "packed must be int32"),
        ({"packed": lambda a: a["packed"][:, :3]}, ValueError, "packed has 3 words per row"),
        ({"x": lambda a: a["x"][:, :60]}, ValueError, r"x must have shape \(\.\.\., 64\)"),
        ({"x": lambda a: a["x"].int()}, TypeError, "x must be a floating-point"),
        ({"bias": lambda a: a["bias"][:5]}, ValueError, r"bias must have shape \(8,\)"),
        ({"bias": lambda a: a["bias"].double()}, TypeError, "bias must match x's dtype"),
        ({"x": lambda a: a["x"].to("meta")}, ValueError, "x is on meta"),
    ],
)
def test_quant_linear_bad_input(changes, exc, match):
    args = _bad(**changes)
    with pytest.raises(exc, match=match):
        torch.ops.supernet_kernels.quant_linear(*args.values())


def test_int8_linear_bad_input():
    x = torch.randn(3, 16)
    w = torch.randint(-127, 128, (5, 16), dtype=torch.int8)
    with pytest.raises(TypeError, match="weight must be a 2-D int8"):
        sk.ops.int8_linear(x, w.float(), torch.rand(5))
    with pytest.raises(TypeError, match=r"weight_scale must be float32 of shape \(5,\)"):
        sk.ops.int8_linear(x, w, torch.rand(4))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 16\)"):
        sk.ops.int8_linear(torch.randn(3, 15), w, torch.rand(5))
    with pytest.raises(TypeError, match="qweight must be a QuantizedWeight"):
        sk.ops.quant_linear(x, w)


# ----------------------------------------------------------------------------- fp8


def test_fp8_quantizers_round_to_nearest():
    from supernet_kernels.quant import FP8_MAX, quantize_activations_fp8, quantize_weight_fp8

    w = torch.randn(16, 40, generator=_gen("fp8w"))
    wq, ws = quantize_weight_fp8(w)
    assert wq.dtype == torch.float8_e4m3fn and ws.shape == (16,)
    assert torch.equal(wq.float().abs().amax(1), torch.full((16,), FP8_MAX))
    # e4m3 keeps 3 mantissa bits: relative error of each element at most 2^-4 (half an ulp),
    # except near zero where subnormal spacing (2^-9 of the scale) dominates.
    deq = wq.float() * ws[:, None]
    assert ((deq - w).abs() <= w.abs() * 2**-4 + ws[:, None] * 2**-10).all()
    xq, xs = quantize_activations_fp8(torch.randn(3, 40, generator=_gen("fp8x")))
    assert xq.dtype == torch.float8_e4m3fn and xs.shape == (3, 1)


def _fp8_params():
    out = []
    for p in backend_params():
        dev, be = p.values
        marks = list(p.marks)
        if be == "cuda":
            marks.append(pytest.mark.skip(reason="fp8_linear has no CUDA C++ kernel"))
        elif (
            dev == "cuda"
            and torch.cuda.is_available()
            and torch.cuda.get_device_capability() < (8, 9)
        ):
            marks.append(pytest.mark.skip(reason="fp8 tensor cores need sm_89+"))
        out.append(pytest.param(dev, be, id=p.id, marks=marks))
    return out


@pytest.mark.parametrize("device,be", _fp8_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 19])
def test_fp8_linear_matches_float64(device, be, dtype, m):
    from supernet_kernels.ops.quant import fp8_linear_reference
    from supernet_kernels.quant import quantize_weight_fp8

    gen = _gen("fp8", m, str(dtype))
    w, ws = quantize_weight_fp8(torch.randn(27, 80, generator=gen))
    w, ws = w.to(device), ws.to(device)
    x = torch.randn(m, 80, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(27, generator=gen).to(device=device, dtype=dtype)
    ref = fp8_linear_reference(x.double(), w, ws, b.double())
    plain = fp8_linear_reference(x, w, ws, b)
    with sk.backend(be):
        out = sk.ops.fp8_linear(x, w, ws, b)
    assert_matches(out, ref, plain, f"{be} fp8_linear {dtype}")
    # and it is close to the unquantized product (fp8: ~3 significant bits per operand)
    exact = x.double() @ (w.double() * ws.double()[:, None]).T + b.double()
    assert ((out.double() - exact).norm() / exact.norm()) < 0.08


def test_fp8_linear_bad_input():
    w = torch.randn(5, 16).to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match="fp8_linear: weight must be a 2-D float8_e4m3fn"):
        sk.ops.fp8_linear(torch.randn(2, 16), w.float(), torch.rand(5))
    with pytest.raises(
        TypeError, match=r"fp8_linear: weight_scale must be float32 of shape \(5,\)"
    ):
        sk.ops.fp8_linear(torch.randn(2, 16), w, torch.rand(5, 1))


def test_gpu_launch_config_of_empty_inputs():
    """M = 0 (an empty batch) with the GPU's configs: split-K has no tiles to divide by (the
    first H100 run raised ZeroDivisionError there; the CPU interpreter's fixed split hid it)."""
    from supernet_kernels.kernels import triton_quant as tq

    for m, n in ((0, 64), (0, 0), (1, 0), (5, 64)):
        cfg = tq.default_config(m, n, 256, 128, num_sms=132, interpret=False)
        assert tq._split_k(m, n, 256, cfg, num_sms=132) >= 1


# ----------------------------------------------------------------------------- tile layout


@pytest.mark.parametrize("k", [32, 200, 256, 700])
def test_3bit_tile_layout_is_the_documented_one(k):
    """sk-tiles3-v1: per tile of 16 slices of E codes, 3E int16 words per row: the low two
    bits of slices 0-7 and 8-15 in the 2-bit form, then the high bit of slice j at bit j."""
    from supernet_kernels.quant.packing import tile_codes, to_tiles, unpack_tiles

    tile = 256
    codes = torch.randint(0, 8, (5, k), generator=_gen("tiles3", k))
    words = to_tiles(pack(codes, 3), 3, k, tile)
    c, width = tile_codes(k, 3, tile)
    e = tile // 16
    assert c == 16 and words.dtype == torch.int16 and words.shape == (5, -(-k // tile) * 3 * e)
    assert words.shape[1] == width and width * 16 == 3 * -(-k // tile) * tile  # 3 bits a code
    u = words.to(torch.int64) & 0xFFFF
    for t in range(width // (3 * e)):
        for j in range(16):
            ks = torch.arange(t * tile + j * e, t * tile + (j + 1) * e)
            want = torch.where(ks < k, codes[:, ks.clamp(max=k - 1)], 0)
            part = u[:, t * 3 * e + (j // 8) * e :][:, :e]
            assert torch.equal((part >> (2 * (j % 8))) & 3, want & 3)
            assert torch.equal((u[:, t * 3 * e + 2 * e :][:, :e] >> j) & 1, want >> 2)
    assert torch.equal(unpack_tiles(words, 3, k, tile).long(), codes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bits", BITS)
def test_scale_pairs_are_the_documented_ones(dtype, bits):
    """The 16-bit path's scale pairs: the scale rounded to the activation dtype in the low
    half, zero + magic (exact) in the high half; unfold_scales reads them back."""
    from supernet_kernels.quant.packing import fold_scales, magic_offset, unfold_scales

    q = quantize_weight(torch.randn(7, 96, generator=_gen("pairs", bits)), bits, 32)
    pairs = fold_scales(q.scales, q.zeros, bits, dtype)
    assert pairs.dtype == torch.int32 and pairs.shape == q.scales.shape
    lo = (pairs & 0xFFFF).to(torch.int16).view(dtype)
    hi = (pairs >> 16).to(torch.int16).view(dtype)
    assert torch.equal(lo, q.scales.to(dtype))
    assert torch.equal(hi.float(), q.zeros + magic_offset(bits, dtype))  # exact integers
    s, z = unfold_scales(pairs, bits, dtype)
    assert torch.equal(s, q.scales.to(dtype).float()) and torch.equal(z, q.zeros)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        fold_scales(q.scales, q.zeros, bits, torch.float32)


@pytest.mark.parametrize("bits,tile", [(2, 256), (2, 128), (4, 128), (4, 64), (8, 128), (8, 32)])
@pytest.mark.parametrize("k", [32, 200, 256])
def test_tile_layout_is_the_documented_one(bits, tile, k):
    from supernet_kernels.quant.packing import tile_codes, to_tiles

    codes = torch.randint(0, 2**bits, (5, k), generator=_gen("tiles", bits, tile, k))
    words = to_tiles(pack(codes, bits), bits, k, tile)
    c, width = tile_codes(k, bits, tile)
    assert words.dtype == torch.int16 and words.shape == (5, width)
    e = tile // c
    u = words.to(torch.int64) & 0xFFFF
    for t0 in range(0, width * c, tile):  # word t0 / c + e holds codes t0 + j * e_ + e
        for j in range(c):
            got = (u[:, t0 // c : t0 // c + e] >> (bits * j)) & (2**bits - 1)
            ks = torch.arange(t0 + j * e, t0 + (j + 1) * e)
            want = torch.where(ks < k, codes[:, ks.clamp(max=k - 1)], 0)
            assert torch.equal(got, want)


def _triton_or_skip():
    if sk.backends.unavailable_reason("triton", torch.device("cpu")):
        pytest.skip("Triton needs TRITON_INTERPRET=1 on the CPU")


# Every M regime of the Triton kernels (GEMV <= 16 < 64-wide tiles < 128-wide tiles; several
# row tiles at 130 under the interpreter's 32-row tiles; the exact-integer path up to 16 rows,
# the weight scaled in 16 bits above under the interpreter), every bit-width, each dtype,
# group sizes from 32 to per-channel, odd N and K not a multiple of the tile. The dtype and
# group are cycled over the cases to keep the interpreter's count small while every pair
# appears.
TILED = [
    (m, bits, DTYPES[i % 3], (32, 64, 128, None)[(i // 3) % 4])
    for i, (m, bits) in enumerate((m, b) for m in (1, 5, 16, 17, 33, 130) for b in BITS)
]


@pytest.mark.parametrize("m,bits,dtype,group", TILED, ids=str)
def test_triton_paths_match_float64(m, bits, dtype, group):
    _triton_or_skip()
    from supernet_kernels.kernels import triton_quant as tq

    k, n = (384 if group in (64, 128) else 160), 37
    x, q, b = _qcase((m,), k, n, group, bits, dtype, "cpu", ("tiled", m, bits, str(dtype)))
    assert tq.tile_for(bits, q.group_size, k) is not None  # every bit-width: the tile kernel
    ref = _ref64(x, q, 16, b)
    plain = quant_linear_reference(x, q.packed, q.scales, q.zeros, bits, q.group_size, k, 16, b)
    with sk.backend("triton"):
        out = sk.ops.quant_linear(x, q, b)
    assert_matches(out, ref, plain, f"triton W{bits}A16 M={m} {dtype} g{group}")
    # the quantized product against the unquantized one: the weight's own SQNR, less a margin
    # (the weight is _qcase's first draw from the same seed)
    w = torch.randn(n, k, generator=_gen(("tiled", m, bits, str(dtype))))
    exact = x.double() @ w.double().T + b.double()
    sqnr = 20 * math.log10(exact.norm() / (out.double() - exact).norm())
    assert sqnr >= SQNR_FLOOR[bits] - 3.0, f"output SQNR {sqnr:.1f} dB"


def test_split_k_reduction_leaves_tickets_zero():
    """The one-launch split-K reduction: the last program resets its tile's ticket counter, so
    a second call (graph replay, say) starts from zero and gives the same result."""
    _triton_or_skip()
    from supernet_kernels.kernels import triton_quant as tq

    x, q, b = _qcase((3,), 512, 21, 128, 4, torch.float16, "cpu", "tickets")
    _, split, *_ = tq.tiled_config(3, 21, 512, 128, 4, 4, True)[1:]
    assert tq.tiled_config(3, 21, 512, 128, 4, 4, True)[2] > 1  # split over K
    with sk.backend("triton"):
        y1 = sk.ops.quant_linear(x, q, b)
        y2 = sk.ops.quant_linear(x, q, b)
    assert torch.equal(y1, y2)
    assert int(tq._LOCKS[("cpu", None)].abs().sum()) == 0
    # the generic kernel (8-bit activations) too: the interpreter's config splits K in two
    with sk.backend("triton"):
        y3 = sk.ops.quant_linear(x, q, b, act_bits=8)
        y4 = sk.ops.quant_linear(x, q, b, act_bits=8)
    assert torch.equal(y3, y4)
    assert int(tq._LOCKS[("cpu", None)].abs().sum()) == 0


def test_ticket_buffers_are_per_stream_and_per_capture(monkeypatch):
    """Launches that may run at once never share ticket counters: one buffer per (device,
    stream), and a fresh one per call while a CUDA graph is being captured (owned by the
    graph, never handed to eager calls or to another graph)."""
    from supernet_kernels.kernels import triton_quant as tq

    monkeypatch.setattr(tq, "_LOCKS", {})
    dev = torch.device("cpu")
    where = {"key": ("cuda:0", 1, False)}
    monkeypatch.setattr(tq, "_stream_key", lambda device: where["key"])
    a1, a2 = tq._locks(dev, 8), tq._locks(dev, 8)
    assert a1 is a2 and int(a1.abs().sum()) == 0  # one stream: launches run in order
    where["key"] = ("cuda:0", 2, False)
    b = tq._locks(dev, 8)
    assert b is not a1 and b.data_ptr() != a1.data_ptr()
    where["key"] = ("cuda:1", 1, False)
    assert tq._locks(dev, 8) is not a1  # another device, same stream handle value
    where["key"] = ("cuda:0", 1, True)  # capturing on stream 1
    g1, g2 = tq._locks(dev, 8), tq._locks(dev, 8)
    assert g1 is not g2 and g1 is not a1 and int(g1.abs().sum()) == 0
    assert len(tq._LOCKS) == 3  # capture buffers are not cached
    where["key"] = ("cuda:0", 1, False)
    big = tq._locks(dev, 4096)  # more tiles than the buffer holds: a larger one
    assert big.numel() >= 4096 and tq._locks(dev, 8) is big


def test_tile_layout_follows_in_place_changes():
    _triton_or_skip()
    x, q, _ = _qcase((2,), 128, 9, 64, 4, torch.float32, "cpu", "inplace")
    with sk.backend("triton"):
        y1 = sk.ops.quant_linear(x, q)
        q.packed.copy_(pack(torch.randint(0, 16, (9, 128), generator=_gen("new")), 4))
        y2 = sk.ops.quant_linear(x, q)
    ref = _ref64(x, q, 16, None)
    assert not torch.allclose(y1, y2)
    assert rel_norm(y2, ref) < 1e-5


def test_scale_pairs_follow_in_place_changes():
    """The 16-bit path's scale pairs are made once per weight and dtype, and remade when the
    scales or zero points change in place."""
    _triton_or_skip()
    from supernet_kernels.kernels import triton_quant as tq

    x, q, _ = _qcase((20,), 128, 9, 64, 4, torch.float16, "cpu", "pairs-inplace")
    assert tq.folds_scale(20, torch.float16, True)  # 20 rows: the 16-bit path here
    with sk.backend("triton"):
        y1 = sk.ops.quant_linear(x, q)
        pairs = tq.scale_pairs_of(q.scales, q.zeros, 4, torch.float16)
        assert tq.scale_pairs_of(q.scales, q.zeros, 4, torch.float16) is pairs  # kept
        q.scales.mul_(2.0)
        y2 = sk.ops.quant_linear(x, q)
        q.zeros.copy_(torch.randint(0, 16, q.zeros.shape, generator=_gen("z")).float())
        y3 = sk.ops.quant_linear(x, q)
    assert torch.equal(y2, 2 * y1)  # powers of two: exact
    ref = _ref64(x, q, 16, None)
    plain = quant_linear_reference(x, q.packed, q.scales, q.zeros, 4, 64, 128, 16, None)
    assert_matches(y3, ref, plain, "after zeros changed in place")


def test_gpu_launch_plans_fill_the_gpu():
    """Static properties of the H100 plans (132 SMs): two programs per SM at least where K
    allows it, tiles of the wgmma shapes, one launch (no separate reduction kernel), and
    pipeline stages that fit the shared memory a block may have (227 KB: 232448 bytes)."""
    from supernet_kernels.kernels import triton_quant as tq

    for bits in (2, 3, 4, 8):
        t = tq.tile_for(bits, 128, 4096)
        for m in (1, 16, 48, 4096):
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                plan = tq.tiled_config(m, 11008, 4096, t, bits, 132, False, dtype)
                bm, bn, split, k_split, warps, stages = plan
                programs = -(-11008 // bn) * -(-m // bm) * split
                assert programs >= 2 * 132 and k_split % t == 0 and stages >= 2
                assert split == -(-4096 // k_split)  # no empty K splits
                # staged per K tile: the codes, x^T and at most 8 bytes of scales per row
                # and group (an upper bound: the compiler stages no more than this)
                per_stage = bn * t * bits // 8 + bm * t * dtype.itemsize + bn * 8 * t // 128
                assert stages * per_stage <= 232448, (bits, m, dtype, plan)


# ----------------------------------------------------------------------------- NaN rows


def _nan_row(x):
    x = x.clone()
    x[1, 3] = float("nan")
    return x


@pytest.mark.parametrize("be", ["torch", "triton"])
@pytest.mark.parametrize("op", ["quant_a8", "int8", "fp8"])
def test_nan_row_stays_nan_with_8bit_activations(be, op):
    """A row holding NaN comes out NaN in that row (its per-token scale is NaN, not 1), the
    other rows as without it."""
    if be == "triton":
        _triton_or_skip()
    from supernet_kernels.ops.quant import fp8_linear_reference
    from supernet_kernels.quant import quantize_weight_fp8

    gen = _gen("nan", op)
    x = torch.randn(4, 64, generator=gen)
    if op == "quant_a8":
        q = quantize_weight(torch.randn(24, 64, generator=gen), 4, 32)
        run = lambda t: sk.ops.quant_linear(t, q, act_bits=8)  # noqa: E731
    elif op == "int8":
        w = torch.randint(-127, 128, (24, 64), generator=gen, dtype=torch.int8)
        ws = torch.rand(24, generator=gen) / 100
        run = lambda t: sk.ops.int8_linear(t, w, ws)  # noqa: E731
    else:
        w, ws = quantize_weight_fp8(torch.randn(24, 64, generator=gen))
        run = lambda t: sk.ops.fp8_linear(t, w, ws)  # noqa: E731
    with sk.backend(be):
        clean, dirty = run(x), run(_nan_row(x))
    assert dirty[1].isnan().all()
    keep = torch.tensor([0, 2, 3])
    assert torch.equal(dirty[keep], clean[keep])
    if op == "fp8":
        assert fp8_linear_reference(_nan_row(x), w, ws)[1].isnan().all()


def test_activation_quantizers_mark_nonfinite_rows():
    from supernet_kernels.quant import quantize_activations_fp8

    x = torch.randn(3, 8)
    x[0, 2], x[2, 5] = float("nan"), float("inf")
    for quantize in (quantize_activations_int8, quantize_activations_fp8):
        _, s = quantize(x)
        assert s[0].isnan().all() and s[2].isnan().all() and torch.isfinite(s[1]).all()
    q, _ = quantize_activations_int8(x)
    assert (q[0] == 0).all()  # codes of a NaN row are 0, not undefined conversions


def test_triton_row_quantizer_nan_rows():
    _triton_or_skip()
    from supernet_kernels.kernels.triton_quant import quantize_rows

    x = _nan_row(torch.randn(3, 40, generator=_gen("rowsnan")))
    q, s = quantize_rows(x)
    q_ref, s_ref = quantize_activations_int8(x)
    assert s[1].isnan() and torch.equal(s[[0, 2]], s_ref[[0, 2], 0])
    assert torch.equal(q, q_ref)


def test_tiled_op_opcheck_and_bad_input():
    """quant_linear_tiled (QuantLinear's op in the tile layout): torch.library's checks, the
    float64 reference, and clear errors."""
    from supernet_kernels.kernels import triton_quant as tq
    from supernet_kernels.quant.packing import to_tiles

    x, q, b = _qcase((5,), 128, 18, 64, 4, torch.float32, "cpu", "tiled-op")
    tile = tq.tile_for(4, 64, 128)
    tiles = to_tiles(q.packed, 4, 128, tile)
    x.requires_grad_(True)
    args = (x, tiles, q.scales, q.zeros, 4, 64, 128, tile, b)
    torch.library.opcheck(torch.ops.supernet_kernels.quant_linear_tiled.default, args)
    y = torch.ops.supernet_kernels.quant_linear_tiled(*args)
    assert rel_norm(y.detach(), _ref64(x.detach(), q, 16, b)) < 1e-5
    op = torch.ops.supernet_kernels.quant_linear_tiled
    with pytest.raises(TypeError, match="tiles must be a 2-D int16"):
        op(x, q.packed, q.scales, q.zeros, 4, 64, 128, tile, b)
    with pytest.raises(ValueError, match="no tile layout"):
        op(x, tiles, q.scales, q.zeros, 3, 64, 128, tile, b)
    with pytest.raises(ValueError, match="scales must be float32"):
        op(x, tiles, q.scales[:, :1], q.zeros, 4, 64, 128, tile, b)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 128\)"):
        op(x[:, :64], tiles, q.scales, q.zeros, 4, 64, 128, tile, b)


@pytest.mark.parametrize("op", ["quant_a8", "int8", "fp8"])
def test_fused_activation_quantizer_is_one_launch_and_exact(op, monkeypatch):
    """Up to FUSED_QUANT_MAX_M rows the per-token quantizer runs in the matmul's prologue (no
    quantize_rows launch) and gives bit for bit what the two-launch path gives, NaN rows
    included; above it the quantizer runs as its own pass."""
    _triton_or_skip()
    from supernet_kernels.kernels import triton_quant as tq

    x, q, b = _qcase((5,), 96, 20, 32, 4, torch.float16, "cpu", ("fused", op))
    x[2, 7] = float("nan")
    gen = _gen(("fused-w", op))
    if op == "fp8":
        w = (torch.randn(20, 96, generator=gen) * 50).to(torch.float8_e4m3fn)
    else:
        w = torch.randint(-127, 128, (20, 96), dtype=torch.int8, generator=gen)
    ws = torch.rand(20, generator=gen) + 0.5

    def call(xx):
        if op == "quant_a8":
            return tq.quant_linear(xx, q.packed, q.scales, q.zeros, 4, 32, 96, 8, b)
        return tq.raw8_linear(xx, w, ws, b)

    passes = []
    real = tq.quantize_rows
    monkeypatch.setattr(tq, "quantize_rows", lambda *a, **kw: passes.append(1) or real(*a, **kw))
    fused = call(x)
    assert not passes  # one launch
    monkeypatch.setattr(tq, "FUSED_QUANT_MAX_M", 0)
    separate = call(x)
    assert len(passes) == 1
    assert torch.equal(fused[[0, 1, 3, 4]], separate[[0, 1, 3, 4]])
    assert fused[2].isnan().all() and separate[2].isnan().all()
