"""QuantLinear: outputs against float64 references, dtype safety, state_dict round trips and
refusal of mismatched or corrupt state."""

from __future__ import annotations

import pytest
import torch

import supernet_kernels as sk
from supernet_kernels.nn import QuantLinear
from supernet_kernels.ops import quant_linear_reference
from supernet_kernels.quant import quantize_activations_int8
from tests.conftest import DTYPES, UNIT_ROUNDOFF, assert_matches, backend_params, rel_err

BITS = [2, 3, 4, 8]
GROUPS = [32, 64, 128, None]


def _linear(k, n, dtype=torch.float32, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0, k**-0.5)
        if bias:
            lin.bias.uniform_(-1, 1)
    return lin.to(dtype)


def _reference64(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """Float64 oracle computed independently of the op: dequantized weight in float64, and for
    act_bits=8 the per-token int8 codes of x (exact in float64)."""
    w = layer.qweight.dequantize(torch.float64)
    b = None if layer.bias is None else layer.bias.detach().double()
    if layer.act_bits == 8:
        xq, xs = quantize_activations_int8(x)
        x64 = xq.double() * xs.double()
    else:
        x64 = x.double()
    return torch.nn.functional.linear(x64, w, b)


def _torch_same_precision(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    q = layer.qweight
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return quant_linear_reference(
        x, q.packed, q.scales, q.zeros, q.bits, q.group_size, q.in_features, layer.act_bits, bias
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act_bits", [16, 8])
@pytest.mark.parametrize("group_size", GROUPS, ids=lambda g: f"g{g or 'ch'}")
@pytest.mark.parametrize("bits", BITS, ids=lambda b: f"w{b}")
def test_matches_float64_reference(bits, group_size, act_bits, dtype):
    lin = _linear(256, 48, dtype, seed=bits * 100 + (group_size or 0))
    layer = QuantLinear.from_linear(lin, bits=bits, group_size=group_size, act_bits=act_bits)
    assert layer.bias.dtype == dtype
    x = torch.randn(3, 5, 256).to(dtype)
    out = layer(x)
    assert out.dtype == dtype and out.shape == (3, 5, 48)
    assert_matches(out, _reference64(layer, x), _torch_same_precision(layer, x), "QuantLinear")


@pytest.mark.parametrize("bits", BITS)
def test_weight_error_matches_bit_width(bits):
    """The quantized layer tracks the float layer with the error the bit-width allows: the
    output's relative error is about the weight's (random x spreads it evenly), which shrinks
    roughly 2x per extra bit."""
    lin = _linear(256, 64, seed=bits)
    layer = QuantLinear.from_linear(lin, bits=bits, group_size=64)
    e_w = rel_err(layer.dequantize(torch.float32), lin.weight)
    # min-max RTN, uniform error: rel err ~ range / (2**bits - 1) / sqrt(12) / std < 3 / 2**bits
    assert e_w < 3.0 / 2**bits, e_w
    x = torch.randn(64, 256)
    lin_nobias = lin.weight.detach()
    e_out = rel_err(layer(x) - lin.bias, x @ lin_nobias.T)
    assert e_out < 2 * e_w, (e_out, e_w)


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("act_bits", [16, 8])
@pytest.mark.parametrize("shape", [(1,), (2, 3), (1, 1, 4)], ids=lambda s: "x".join(map(str, s)))
def test_odd_shapes(device, backend, act_bits, shape):
    """in_features 96 with G=32 (3 groups, 3-bit words not filling the row), out 37, M=1 and
    several leading dims."""
    if backend == "cuda" and act_bits == 8:
        pytest.skip("the CUDA backend has no act_bits=8 kernel for packed weights")
    lin = _linear(96, 37, seed=7).to(device)
    layer = QuantLinear.from_linear(lin, bits=3, group_size=32, act_bits=act_bits)
    x = torch.randn(*shape, 96, device=device)
    with sk.backend(backend):
        out = layer(x)
    assert out.shape == (*shape, 37)
    assert_matches(out, _reference64(layer, x), _torch_same_precision(layer, x), "odd shapes")


def test_no_bias_and_gradients():
    lin = _linear(64, 16, bias=False, seed=1)
    layer = QuantLinear.from_linear(lin, bits=4, group_size=32)
    assert layer.bias is None and "bias=False" in repr(layer)
    x = torch.randn(5, 64, requires_grad=True)
    layer(x).square().sum().backward()
    w = layer.dequantize()
    want = 2 * (x.detach() @ w.T) @ w
    torch.testing.assert_close(x.grad, want, rtol=1e-5, atol=1e-5)


def test_bias_gradient_flows():
    layer = QuantLinear.from_linear(_linear(64, 16, seed=2), bits=8, group_size=64)
    x = torch.randn(7, 64)
    layer(x).sum().backward()
    torch.testing.assert_close(layer.bias.grad, torch.full((16,), 7.0))


def test_from_linear_matches_quantize_weight():
    lin = _linear(128, 24, seed=3)
    layer = QuantLinear.from_linear(lin, bits=4, group_size=64, symmetric=True, clip_search=True)
    q = sk.quant.quantize_weight(lin.weight, 4, 64, symmetric=True, clip_search=True)
    assert torch.equal(layer.packed, q.packed)
    assert torch.equal(layer.scales, q.scales) and torch.equal(layer.zeros, q.zeros)
    assert layer.qweight.symmetric and layer.qweight.shape == (24, 128)
    assert torch.equal(layer.dequantize(torch.float32), q.dequantize())
    assert layer.weight_nbytes == q.nbytes


def test_per_channel_group_size():
    lin = _linear(96, 8, seed=4)
    for g in (None, -1):
        layer = QuantLinear.from_linear(lin, bits=8, group_size=g)
        assert layer.group_size == 96 and layer.scales.shape == (8, 1)
        assert "per-channel" in repr(layer)


@pytest.mark.parametrize("conv", ["half", "bfloat16", "double", "to"])
def test_dtype_conversion_keeps_packed_buffers(conv):
    lin = _linear(64, 20, seed=5)
    layer = QuantLinear.from_linear(lin, bits=4, group_size=32)
    scales, zeros, packed = layer.scales.clone(), layer.zeros.clone(), layer.packed.clone()
    if conv == "to":
        layer = layer.to(torch.float16)
        dtype = torch.float16
    else:
        layer = getattr(layer, conv)()
        dtype = {"half": torch.float16, "bfloat16": torch.bfloat16, "double": torch.float64}[conv]
    assert layer.bias.dtype == dtype
    assert layer.packed.dtype == torch.int32 and layer.qmeta.dtype == torch.int64
    assert layer.scales.dtype == torch.float32 and layer.zeros.dtype == torch.float32
    # exact values kept (a round trip through half would have changed the scales)
    assert torch.equal(layer.scales, scales) and torch.equal(layer.zeros, zeros)
    assert torch.equal(layer.packed, packed)
    x = torch.randn(4, 64).to(dtype)
    out = layer(x)
    assert out.dtype == dtype
    tol = 4 * UNIT_ROUNDOFF[dtype] * 64**0.5 + 1e-12
    assert rel_err(out, _reference64(layer, x)) < tol


def test_state_dict_is_tensors_only_and_round_trips_bit_exact():
    lin = _linear(96, 37, seed=6)
    layer = QuantLinear.from_linear(lin, bits=3, group_size=32, act_bits=8, symmetric=True)
    sd = layer.state_dict()
    assert set(sd) == {"packed", "scales", "zeros", "qmeta", "bias"}
    assert all(isinstance(t, torch.Tensor) for t in sd.values())
    assert sd["qmeta"].tolist() == [1, 3, 32, 96, 37, 8, 1]
    fresh = QuantLinear(96, 37, bits=3, group_size=32, act_bits=8, symmetric=True)
    fresh.load_state_dict(sd)
    x = torch.randn(2, 9, 96)
    assert torch.equal(fresh(x), layer(x))


def test_safetensors_round_trip_bit_exact(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    layer = QuantLinear.from_linear(_linear(128, 30, seed=8), bits=2, group_size=64)
    st.save_file(layer.state_dict(), str(tmp_path / "l.safetensors"))
    fresh = QuantLinear(128, 30, bits=2, group_size=64)
    fresh.load_state_dict(st.load_file(str(tmp_path / "l.safetensors")))
    x = torch.randn(5, 128)
    assert torch.equal(fresh(x), layer(x))


@pytest.mark.parametrize(
    "change,match",
    [
        ({"bits": 8}, r"qmeta: .*another QuantLinear configuration: bits=4 \(layer has 8\)"),
        ({"group_size": 64}, r"qmeta: .*group_size=32 \(layer has 64\)"),
        ({"act_bits": 8}, r"qmeta: .*act_bits=16 \(layer has 8\)"),
        ({"symmetric": True}, r"qmeta: .*symmetric=0 \(layer has 1\)"),
    ],
)
def test_load_other_config_refused(change, match):
    src = QuantLinear.from_linear(_linear(128, 16, seed=9), bits=4, group_size=32)
    cfg = {"bits": 4, "group_size": 32, "act_bits": 16, "symmetric": False, **change}
    dst = QuantLinear(128, 16, **cfg)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(RuntimeError, match=match):
        dst.load_state_dict(src.state_dict())
    for k, v in dst.state_dict().items():  # nothing half-loaded
        assert torch.equal(v, before[k]), k


def test_load_corrupt_state_refused():
    src = QuantLinear.from_linear(_linear(128, 16, seed=10), bits=4, group_size=32)
    dst = QuantLinear(128, 16, bits=4, group_size=32)
    cases = {
        "qmeta": (torch.tensor([1, 4, 32], dtype=torch.int64), r"qmeta: corrupt"),
        "qmeta ": (torch.tensor([9, 4, 32, 128, 16, 16, 0]), r"qmeta: .*version 9"),
        "packed": (src.packed.float(), r"packed: expected dtype torch.int32"),
        "scales": (src.scales[:, :2].clone(), r"scales: shape \(16, 2\) does not match"),
        "zeros": (torch.full_like(src.zeros, float("nan")), r"zeros: has NaN"),
    }
    for key, (bad, match) in cases.items():
        sd = dict(src.state_dict())
        sd[key.strip()] = bad
        with pytest.raises(RuntimeError, match=match):
            dst.load_state_dict(sd)
    sd = dict(src.state_dict())
    del sd["qmeta"]
    with pytest.raises(RuntimeError, match="Missing key.*qmeta"):
        dst.load_state_dict(sd)


def test_constructor_validation():
    with pytest.raises(ValueError, match="bits"):
        QuantLinear(64, 8, bits=5)
    with pytest.raises(ValueError, match="act_bits"):
        QuantLinear(64, 8, act_bits=4)
    with pytest.raises(ValueError, match="group_size 48 does not divide"):
        QuantLinear(64, 8, group_size=48)
    with pytest.raises(TypeError, match="nn.Linear"):
        QuantLinear.from_linear(torch.nn.Conv1d(3, 3, 1))


def test_exported_from_package():
    assert sk.nn.QuantLinear is QuantLinear


# ------------------------------------------------------------------ the tile layout held alone
@pytest.mark.parametrize(
    ("bits", "group_size", "k"), [(4, 64, 192), (2, 128, 256), (8, None, 100), (3, 32, 288)]
)
def test_tile_layout_replaces_packed(bits, group_size, k, tmp_path):
    """On the Triton backend the layer keeps the tile layout only (no second copy of the codes),
    gives the same outputs and gradients, and still saves / loads sk-pack-v1."""
    layer = QuantLinear.from_linear(_linear(k, 20, seed=bits), bits=bits, group_size=group_size)
    packed = layer.packed.clone()
    before = layer.state_dict()
    x = torch.randn(2, 3, k, requires_grad=True)
    ref = _reference64(layer, x.detach())
    if sk.backends.unavailable_reason("triton", x.device) is None:
        with sk.backend("triton"):
            out = layer(x)
        assert layer.tile_layout  # switched by the forward that Triton ran
    else:  # no interpreter: the op's reference path reads the tiles (a forward would go back)
        assert layer.use_tile_layout()
        out = torch.ops.supernet_kernels.quant_linear_tiled(
            x, layer.tiles, layer.scales, layer.zeros, bits, layer.group_size, k, layer._tile,
            layer.bias,
        )  # fmt: skip
    assert "packed" not in layer._buffers and layer.tiles.dtype == torch.int16
    assert layer.weight_nbytes == sum(
        t.numel() * t.element_size() for t in (layer.tiles, layer.scales, layer.zeros)
    )
    assert rel_err(out.double(), ref) < 1e-5
    out.square().sum().backward()
    w = layer.qweight.dequantize(torch.float64)
    grad = (2 * ref) @ w
    assert rel_err(x.grad.double(), grad) < 1e-5
    # the state_dict: sk-pack-v1, same keys in the same order, same values
    sd = layer.state_dict()
    assert list(sd) == list(before) and "tiles" not in sd
    for key, value in before.items():
        assert torch.equal(sd[key], value), key
    assert torch.equal(layer.packed, packed)
    fresh = QuantLinear(k, 20, bits=bits, group_size=group_size)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.packed, packed)
    # a file saved from the tile layout loads into a skeleton as before
    model = torch.nn.Sequential(layer)
    path = sk.quant.save_quantized(model, tmp_path / "m.safetensors")
    skeleton = torch.nn.Sequential(torch.nn.Linear(k, 20))
    loaded = sk.quant.load_quantized(skeleton, path)
    assert torch.equal(loaded[0].packed, packed) and not loaded[0].tile_layout
    # loading into a layer in the tile layout returns it to packed
    layer.load_state_dict(before)
    assert not layer.tile_layout and torch.equal(layer._buffers["packed"], packed)


def test_tile_layout_returns_to_packed_for_other_backends():
    layer = QuantLinear.from_linear(_linear(128, 12, seed=3), bits=4, group_size=64)
    packed = layer.packed.clone()
    assert layer.use_tile_layout() and layer.tile_layout
    x = torch.randn(4, 128)
    if sk.backends.unavailable_reason("triton", x.device) is None:
        with sk.backend("auto"):  # auto keeps to Triton at every M once the tiles are held
            for m in (1, 20):
                y = layer(torch.randn(m, 128))
                assert layer.tile_layout and y.shape == (m, 12)
    with sk.backend("torch"):
        out = layer(x)
    assert not layer.tile_layout and torch.equal(layer.packed, packed)
    assert rel_err(out.double(), _reference64(layer, x)) < 1e-5
    # layers the layout cannot take keep packed
    assert QuantLinear(96, 8, bits=3, group_size=32).use_tile_layout()  # 3 bits too
    assert not QuantLinear(96, 8, bits=4, group_size=24).use_tile_layout()  # 24: no slices
    assert not QuantLinear(128, 8, bits=4, group_size=64, act_bits=8).use_tile_layout()


def test_tile_layout_memory_of_a_4096x11008_w4_layer():
    """Bytes of the weight of a 4096 -> 11008 W4 g128 layer: 22.5 MB of codes and 2.8 MB of
    scales and zero points, whichever layout holds the codes (the op's cache on a bare packed
    weight would hold both layouts: 47.9 MB)."""
    layer = QuantLinear(4096, 11008, bits=4, group_size=128, device="meta")
    packed_bytes = layer.weight_nbytes
    codes = layer.packed.numel() * 4
    assert layer.use_tile_layout()
    assert layer.weight_nbytes == packed_bytes == 25_362_432
    assert layer.tiles.numel() * 2 == codes == 22_544_384
