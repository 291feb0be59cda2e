"""The A8 kernel (kernels/triton_quant_a8.py): per-token int8 / fp8 activations times packed,
int8 or fp8 weights, quantizer and product in one launch.

Run through the Triton interpreter on the CPU (TRITON_INTERPRET=1; skipped without it) and
on a GPU where one is present. The reference is the ops' float64 definition of the same
quantized product, so the kernel's only error is its fp32 accumulation and output rounding:
``assert_matches`` holds it to twice torch's own error in the output dtype.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DTYPES, assert_matches, stable_seed

import supernet_kernels as sk
from supernet_kernels.backends import unavailable_reason
from supernet_kernels.ops.quant import (
    fp8_linear_reference,
    int8_linear_reference,
    quant_linear_reference,
)
from supernet_kernels.quant import quantize_weight
from supernet_kernels.quant.packing import unpack
from supernet_kernels.quant.quantize import quantize_activations_int8, quantize_weight_fp8

DEVICES = [
    pytest.param(d, marks=pytest.mark.skip(reason=r)) if r else d
    for d in ("cpu", "cuda")
    for r in [
        "no CUDA GPU"
        if d == "cuda" and not torch.cuda.is_available()
        else unavailable_reason("triton", torch.device(d))
    ]
]


def _gen(*key):
    return torch.Generator().manual_seed(stable_seed("a8", *key))


def _a8():
    from supernet_kernels.kernels import triton_quant_a8

    return triton_quant_a8


def _qcase(m, k, n, group, bits, dtype, device, seed, bias=True):
    gen = _gen(seed)
    q = quantize_weight(torch.randn(n, k, generator=gen), bits, group).to(device)
    x = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, generator=gen).to(device=device, dtype=dtype) if bias else None
    return x, q, b


def _ref(x, q, b):
    args = (q.packed, q.scales, q.zeros, q.bits, q.group_size, q.in_features, 8)
    ref64 = quant_linear_reference(x.double(), *args, None if b is None else b.double())
    return ref64, quant_linear_reference(x, *args, b)


# ----------------------------------------------------------------------------- the layout


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("k,group", [(96, 32), (320, 64), (256, 128), (72, None)])
def test_layout_holds_the_documented_codes(bits, k, group):
    """Byte e of the K tile at t holds codes t + j*E + e at bits [b*j, b*j + b) (3 bits as 4),
    rows padded with code 0 to whole main-loop steps."""
    a8 = _a8()
    q = quantize_weight(torch.randn(5, k, generator=_gen("layout", bits, k)), bits, group)
    g = q.group_size
    tile = a8.tile_for(bits, g, k)
    assert tile is not None
    step = a8.k_step(tile, g, k)
    kpad = -(-k // step) * step
    tiles = a8.to_a8_tiles(q.packed, bits, k, tile, kpad)
    b = 4 if bits == 3 else bits
    cb, e = 8 // b, tile // (8 // b)
    assert tiles.dtype == torch.int8 and tiles.shape == (5, kpad // cb)
    byts = (tiles.to(torch.int32) & 0xFF).view(5, -1, 1, e)  # [tile, 1, e]
    shifts = (torch.arange(cb, dtype=torch.int32) * b).view(1, 1, cb, 1)
    codes = ((byts >> shifts) & (2**b - 1)).reshape(5, kpad)  # [tile, j, e]: t + j*E + e
    want = torch.nn.functional.pad(unpack(q.packed, bits, k).to(torch.int32), (0, kpad - k))
    assert torch.equal(codes, want)


def test_groups_the_kernel_cannot_take_fall_back_exactly():
    """Groups of 16 fit no int8 MMA slice (32 along K): the generic kernel serves them."""
    a8 = _a8()
    assert a8.tile_for(4, 16, 64) is None and a8.tile_for(4, 48, 96) is None
    assert a8.tile_for(4, 32, 96) == 64 and a8.tile_for(2, 128, 4096) == 512
    assert a8.tile_for(8, 4096, 4096) == 128 and a8.tile_for(3, 128, 256) == 256


# ----------------------------------------------------------------------------- numerics


SHAPES = [  # (M, K, N, group): one or two row tiles, several quantizer items, split K, odd N
    (1, 96, 37, 32),
    (16, 128, 33, None),
    (37, 320, 20, 64),
    (5, 256, 19, 128),
    (3, 72, 13, None),  # per channel, K not a multiple of 16
    (5, 192, 9, 96),  # 8 bits: steps of 384 codes; 2-4 bits: the generic kernel
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quant_linear_a8_matches_float64(device, dtype, bits, shape):
    m, k, n, group = shape
    x, q, b = _qcase(m, k, n, group, bits, dtype, device, (shape, bits, str(dtype)))
    ref64, plain = _ref(x, q, b)
    with sk.backend("triton"):
        out = sk.ops.quant_linear(x, q, b, act_bits=8)
    assert out.dtype == dtype and out.shape == (m, n)
    assert_matches(out, ref64, plain, f"W{bits}A8 {dtype} {shape}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,k,n", [(1, 72, 29), (37, 144, 21), (16, 256, 40)])
def test_int8_and_fp8_linear_match_float64(device, dtype, m, k, n):
    gen = _gen("raw8", m, k, n, str(dtype))
    x = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, generator=gen).to(device=device, dtype=dtype)
    w = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8).to(device)
    ws = (torch.rand(n, generator=gen) / 100 + 1e-4).to(device)
    with sk.backend("triton"):
        out = sk.ops.int8_linear(x, w, ws, b)
    want = int8_linear_reference(x.double(), w, ws, b.double())
    assert_matches(out, want, int8_linear_reference(x, w, ws, b), f"int8 {dtype} {m}x{k}x{n}")
    if device == "cuda" and torch.cuda.get_device_capability() < (8, 9):
        return  # float8 tensor cores: sm_89+
    wf, wfs = quantize_weight_fp8(torch.randn(n, k, generator=gen))
    wf, wfs = wf.to(device), wfs.to(device)
    with sk.backend("triton"):
        out = sk.ops.fp8_linear(x, wf, wfs, b)
    want = fp8_linear_reference(x.double(), wf, wfs, b.double())
    assert_matches(out, want, fp8_linear_reference(x, wf, wfs, b), f"fp8 {dtype} {m}x{k}x{n}")


@pytest.mark.parametrize("device", DEVICES)
def test_fused_quantizer_is_exactly_the_definition(device):
    """Through an identity int8 weight with scale 1, y = codes * scale: the codes and scales the
    kernel makes are those of quantize_activations_int8 (ties to even, clamping, zero rows)."""
    k = 64
    x = torch.randn(21, k, generator=_gen("exact")) * 3
    x[2] = 0.0  # a zero row: scale 1, codes 0
    x[3, :8] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 127.0, -127.0, 63.5])  # ties
    x = x.to(device)
    eye = torch.eye(k, dtype=torch.int8, device=device)
    with sk.backend("triton"):
        got = sk.ops.int8_linear(x, eye, torch.ones(k, device=device))
    codes, scale = quantize_activations_int8(x)
    assert torch.equal(got, codes.float() * scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_row_holding_nan_or_inf_comes_out_nan(device, bad):
    x, q, b = _qcase(19, 128, 24, 32, 4, torch.float16, device, ("nan", bad))
    x[5, 17] = bad
    ref64, plain = _ref(x, q, b)
    with sk.backend("triton"):
        out = sk.ops.quant_linear(x, q, b, act_bits=8)
        raw = sk.ops.int8_linear(x, torch.ones(24, 128, dtype=torch.int8, device=device),
                                 torch.ones(24, device=device))  # fmt: skip
    assert out[5].isnan().all() and raw[5].isnan().all()
    keep = torch.arange(19, device=device) != 5
    assert torch.isfinite(out[keep]).all() and torch.isfinite(raw[keep]).all()
    assert_matches(out[keep], ref64[keep], plain[keep], f"rows beside a {bad} row")


@pytest.mark.parametrize("device", DEVICES)
def test_empty_m_and_repeated_calls(device):
    """M = 0 launches nothing; the counters the kernel uses are zero again after each call, so
    calls of other shapes on the same stream see clean counters."""
    from supernet_kernels.kernels.triton_quant import _locks

    x, q, b = _qcase(0, 96, 37, 32, 4, torch.float32, device, "empty")
    with sk.backend("triton"):
        assert sk.ops.quant_linear(x, q, b, act_bits=8).shape == (0, 37)
        outs = []
        for m in (37, 3, 37):
            x, _, _ = _qcase(m, 96, 37, 32, 4, torch.float32, device, "repeat")
            outs.append(sk.ops.quant_linear(x, q, b, act_bits=8))
            assert not _locks(x.device, 1).any()
    assert torch.equal(outs[0], outs[2])


_LAUNCHES = """
import json, sys
sys.path[:0] = [sys.argv[1] + "/benchmarks", sys.argv[1]]
import census_scenarios as scen
scs = [sc for sc in scen.SCENARIOS if sc.implementation == "triton"
       and "triton_quant_a8" in sc.entry[0]]
small = [scen.dataclasses.replace(sc, shapes=tuple(
    s for s in sc.shapes if s["k"] == s["n"] == 4096 and s.get("bits", 4) in (3, 4)))
    for sc in scs]
out = []
for c in scen.record_calls(small):
    out.append(dict(op=c.op, label=c.label, m=c.shape["m"], error=c.error,
                    names=[ln.fn.__name__ for ln in c.launches], torch=c.torch_kernels,
                    weight=[ln.reads_weight for ln in c.launches]))
print(json.dumps(out))
"""


def test_one_launch_per_call_on_the_h100_plan():
    """The launchers as the census reads them (meta tensors, an H100 presented; compiled
    code, so outside the interpreter): one Triton launch that streams the weight and no torch
    kernel per call, at every M, for every op (3-bit weights included)."""
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _LAUNCHES, str(root)], capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {c["op"] for c in calls} == {"quant_linear", "int8_linear", "fp8_linear"}
    assert {c["m"] for c in calls} == {1, 16, 197, 4096}
    for c in calls:
        assert c["error"] is None, c
        assert c["names"] == ["_a8_matmul_kernel"] and c["torch"] == [], c
        assert c["weight"] == [True], c
