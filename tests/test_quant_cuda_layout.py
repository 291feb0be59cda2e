"""The CUDA GEMV's weight layout (quant/cuda_layout.py): written from sk-pack-v1, read back with
the kernel's own rules (fragment registers, dequantization fields, spans and groups, in
PyTorch), made once per weight. The kernel itself runs in test_quant_ops on a GPU; its host
emulation is tests/cpp/test_quant_plan.cpp."""

from __future__ import annotations

import pytest
import torch

from supernet_kernels.ops.quant import quant_linear_reference
from supernet_kernels.quant import cuda_layout as cl
from supernet_kernels.quant import pack, quantize_weight, unpack
from tests.conftest import stable_seed

# (N, K, group or None for per-channel): odd N, K padded to whole chunks, several groups a
# chunk (2-bit) and several chunks a group
CASES = [(37, 96, 32), (33, 128, None), (20, 320, 64), (16, 512, 256), (9, 72, None)]


def _gen(*key):
    return torch.Generator().manual_seed(stable_seed(*key))


def _weight(n, k, group, bits, key):
    gen = _gen("cuda_layout", key)
    return quantize_weight(torch.randn(n, k, generator=gen), bits, group), gen


def _supported(bits, k, g):
    return cl.span_for(bits, k, g) != 0


def _read_back(lay: cl.CudaGemvWeight, kind: str):
    """(q - z) per (row, column) and the scale applied to it, as the kernel reads them."""
    bits, k, n = lay.bits, lay.in_features, lay.out_features
    lb, sp = cl.layout_bits(bits), cl.span_for(bits, k, lay.group_size)
    kp, kc = cl.k_padded(bits, k), cl.chunk_k(lb)
    tiles = lay.codes.shape[0]
    c, lane, word, bit = cl.slots(lb, sp, kp)
    words = lay.codes.to(torch.int64) & 0xFFFFFFFF
    w = words.view(tiles, -1)[:, ((c * 32 + lane) * 4 + word).reshape(-1)].view(tiles, 16, kp)
    # the dequantizer's field for this bit: shift by a multiple of 8 (fp16) or 4 (bf16), mask
    # at the remaining offset inside the mantissa (10 or 7 bits)
    half, pos = bit // 16, bit % 16
    step = 8 if kind == "fp16" else 4
    shift = pos // step * step if lb < 8 or kind == "fp16" else pos
    off = pos - shift
    room = 10 if kind == "fp16" else 7
    assert bool((off + lb <= room).all()) or (kind == "bf16" and lb == 8)
    q = (w >> (shift + 16 * half)) >> off & (2**lb - 1)
    # groups: one per span (a chunk's spans are groups) or chunk >> shift (groups of chunks)
    j = (torch.arange(kp) % kc) // sp
    chunk = torch.arange(kp) // kc
    if sp < kc:
        grp = chunk * (kc // sp) + j
    else:
        g = lay.group_size
        grp = torch.zeros_like(chunk) if g == k else chunk // (g // kc)
    rr = torch.arange(16)
    p = lay.params[:, grp]  # (tiles, kp, 8, 4)
    s = torch.where(rr[:, None] < 8, p[:, :, rr % 8, 0].transpose(1, 2), 0)
    s = torch.where(rr[:, None] >= 8, p[:, :, rr % 8, 2].transpose(1, 2), s)
    nz = torch.where(rr[:, None] < 8, p[:, :, rr % 8, 1].transpose(1, 2), 0)
    nz = torch.where(rr[:, None] >= 8, p[:, :, rr % 8, 3].transpose(1, 2), nz)
    w_deq = ((q.double() + nz.double()) * s.double()).reshape(tiles * 16, kp)
    return w_deq[:n], q.reshape(tiles * 16, kp)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("kind", ["fp16", "bf16"])
def test_layout_reads_back_the_weight(bits, case, kind):
    n, k, group = case
    g = k if group is None else group
    if not _supported(bits, k, g):
        pytest.skip(f"no CUDA layout for {bits}-bit G={g} K={k}")
    qw, gen = _weight(n, k, group, bits, (case, bits))
    lay = cl.to_cuda_layout(qw.packed, qw.scales, qw.zeros, bits, qw.group_size, k)
    assert lay.codes.dtype == torch.int32 and lay.params.dtype == torch.float32
    assert lay.codes.shape == (-(-n // 16), cl.k_padded(bits, k) // cl.chunk_k(
        cl.layout_bits(bits)) * 128)  # fmt: skip
    w_deq, q = _read_back(lay, kind)
    want_q = torch.zeros_like(q)
    want_q[:n, :k] = unpack(qw.packed, bits, k).to(torch.int64)
    assert torch.equal(q, want_q)  # every code where the kernel looks, padding 0
    gs = qw.group_size
    want_w = (want_q[:n, :k].double().view(n, k // gs, gs) - qw.zeros.double()[..., None]) * (
        qw.scales.double()[..., None]
    )
    assert torch.equal(w_deq[:, :k], want_w.reshape(n, k))
    # the product the kernel forms (x past K is zero) is the op's definition (which rounds
    # the dequantized weight to float32)
    x = torch.randn(3, k, generator=gen, dtype=torch.float64)
    xp = torch.nn.functional.pad(x, (0, w_deq.shape[1] - k))
    ref = quant_linear_reference(x, qw.packed, qw.scales, qw.zeros, bits, qw.group_size, k)
    torch.testing.assert_close(xp @ w_deq.T, ref, rtol=1e-5, atol=1e-5)


def test_layout_is_made_once_and_follows_changes():
    qw, _ = _weight(24, 128, 64, 4, "cache")
    args = (qw.packed, qw.scales, qw.zeros, 4, 64, 128)
    first = cl.cached_layout(*args)
    assert cl.cached_layout(*args) is first  # not per call
    qw.scales.mul_(2)  # in place: rebuilt
    second = cl.cached_layout(*args)
    assert second is not first and torch.equal(second.params[..., 0], 2 * first.params[..., 0])
    qw.packed.copy_(pack(torch.randint(0, 16, (24, 128), generator=_gen("new")), 4))
    third = cl.cached_layout(*args)
    assert third is not second and not torch.equal(third.codes, second.codes)
    other = qw.zeros.clone()  # another tensor in the same place: rebuilt
    assert cl.cached_layout(qw.packed, qw.scales, other, 4, 64, 128) is not third
    key = id(qw.packed)
    del qw, args, first, second, third
    assert key not in cl._CACHE  # dropped with its weight


def test_layout_of_an_empty_weight():
    qw, _ = _weight(1, 64, 32, 4, "empty")
    lay = cl.to_cuda_layout(qw.packed[:0], qw.scales[:0], qw.zeros[:0], 4, 32, 64)
    assert lay.codes.shape == (0, 128) and lay.params.shape == (0, 2, 8, 4)


def test_layout_bad_input_is_clear():
    qw, _ = _weight(8, 192, 96, 4, "bad")
    with pytest.raises(ValueError, match="group sizes below 64"):
        cl.to_cuda_layout(qw.packed, qw.scales, qw.zeros, 4, 96, 192)
    qw, _ = _weight(8, 128, 64, 4, "frac")
    with pytest.raises(ValueError, match="integer zero points"):
        cl.to_cuda_layout(qw.packed, qw.scales, qw.zeros + 0.5, 4, 64, 128)
    with pytest.raises(ValueError, match="integer zero points"):
        cl.to_cuda_layout(qw.packed, qw.scales, qw.zeros + 16, 4, 64, 128)
    assert cl.unsupported_reason(2, 4096, 128) is None
    assert "multiples of 32" in cl.unsupported_reason(2, 4096, 48)


def test_cuda_backend_reports_what_it_cannot_run():
    """The registry's CUDA entry names the calls its layout cannot hold (so auto skips them)."""
    from supernet_kernels import registry

    impl = registry.implementations("quant_linear")["cuda"]
    cpu = torch.device("cpu")
    shape = dict(m=1, bits=4, act_bits=16, group_size=96, k=192, n=8)
    assert "group sizes" in impl.supports(cpu, torch.float16, **shape)
    assert "act_bits=8" in impl.supports(cpu, torch.float16, **dict(shape, act_bits=8))
    assert impl.supports(cpu, torch.float16, **dict(shape, group_size=64)) is None


def test_census_plan_probe_reads_the_gemv_plan(tmp_path):
    """The census's launch plans (benchmarks/census_plan_probe.cpp) come from quant_plan.h:
    the grid, the codes a thread dequantizes per main-loop iteration, the x copy for odd K."""
    import json
    import shutil
    import subprocess
    from pathlib import Path

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    root = Path(__file__).resolve().parents[1]
    exe = tmp_path / "probe"
    subprocess.run([cxx, "-std=c++17", "-O1", f"-I{root / 'csrc'}",
                    str(root / "benchmarks" / "census_plan_probe.cpp"), "-o", str(exe)],
                   check=True, capture_output=True)  # fmt: skip
    calls = "quant_linear 1 4096 11008 4 128\nquant_linear 16 4096 11008 2 128\n"
    calls += "quant_linear 3 96 37 3 32\nquant_linear 1 192 8 4 96\n"
    out = subprocess.run([str(exe)], input=calls, capture_output=True, text=True, check=True)
    plans, cur = [], []
    for line in out.stdout.splitlines():
        d = json.loads(line)
        if d.get("end"):
            plans.append(cur)
            cur = []
        else:
            cur.append(d)
    (w4,), (w2,), (copy, w3), (bad,) = plans
    assert w4["kernel"] == "quant_gemv_kernel<1, 4, 1, 64>" and w4["grid"] == 688
    assert w4["threads"] == 256 and (w4["block_m"], w4["block_n"]) == (8, 16)
    # 4 chunks of 64 columns in flight per warp: 32 codes a 16-byte load, 4 loads per lane
    assert w4["block_n"] * w4["block_k"] / w4["threads"] == 4 * 32
    assert w4["trips"] == 2  # 64 chunks over 8 warps, 4 a trip
    assert w2["kernel"] == "quant_gemv_kernel<1, 2, 2, 128>" and w2["block_m"] == 16
    assert w2["block_n"] * w2["block_k"] / w2["threads"] == 3 * 64
    assert copy["kernel"].startswith("torch:") and w3["kernel"] == "quant_gemv_kernel<1, 4, 1, 32>"
    assert "no CUDA layout" in bad["error"]
