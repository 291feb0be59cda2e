"""Property-based tests of every op on every backend that runs here, against float64.

Each property draws shapes (M = 1, primes, empty leading dimensions), dtypes and the op's own
parameters (ranks and widths, bits / group sizes / activation bits, heads, rel pos), builds the
data from a ``torch.Generator`` seeded by a drawn int, and checks the op with the op tests'
rule (:func:`helpers.numerics.assert_matches`: error against float64 at most twice torch's own in
the same precision, never below the dtype's rounding).

Hypothesis runs with fixed profiles (a fixed seed per property and backend, no example
database), so CI draws the same examples every run and the time is bounded: ``TORCH_RUNS``
examples per property on the torch backend, ``TRITON_RUNS`` on the (slow) Triton interpreter.
"""

from __future__ import annotations

import os
import zlib

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from helpers.numerics import DTYPES, assert_matches, backend_params  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import supernet_kernels as sk  # noqa: E402
from supernet_kernels.ops.attention import attention_reference  # noqa: E402
from supernet_kernels.ops.lowrank import lowrank_linear_reference  # noqa: E402
from supernet_kernels.ops.quant import (  # noqa: E402
    fp8_linear_reference,
    int8_linear_reference,
    quant_linear_reference,
)
from supernet_kernels.quant import quantize_weight, quantize_weight_fp8  # noqa: E402

# SK_PROPERTY_SCALE=20 multiplies both (a local soak; CI keeps the fixed profile).
_SCALE = max(1, int(os.environ.get("SK_PROPERTY_SCALE", "1")))
TORCH_RUNS = 25 * _SCALE
TRITON_RUNS = 8 * _SCALE
_BASE = settings(
    deadline=None,
    derandomize=True,  # and an explicit seed per property and backend (see _run)
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _profile(be: str) -> settings:
    return settings(_BASE, max_examples=TORCH_RUNS if be == "torch" else TRITON_RUNS)


def _run(name: str, be: str, prop, **strategies) -> None:
    """Run ``prop(**drawn)`` under the backend's profile, with a fixed seed per (property,
    backend): the same examples every run, other examples on each backend."""
    fixed = zlib.crc32(f"{name}/{be}".encode())
    seed(fixed)(settings(_profile(be))(given(**strategies)(prop)))()


# Backends that can run on the CPU here (CUDA ones are listed and skipped with the reason).

seeds = st.integers(min_value=1, max_value=2**31 - 1)
dtypes = st.sampled_from(DTYPES)
# Leading dimensions: M = 1, primes, several dims, and empty ones (0 rows).
leads = st.one_of(
    st.sampled_from([(1,), (0,), (2, 0), (1, 1), (7,), (13,), (3, 5), (31,)]),
    st.lists(st.sampled_from([0, 1, 2, 3, 5, 7, 11]), min_size=1, max_size=3).map(tuple),
)
primes = st.sampled_from([1, 2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53])
small_ints = st.one_of(primes, st.integers(1, 64))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _to(device, *tensors):
    """The tensors (drawn on the CPU, so a seed gives the same data everywhere) on ``device``,
    None kept."""
    return tuple(None if t is None else t.to(device) for t in tensors)


def _randn(gen, *shape, dtype=torch.float32, scale=1.0):
    """Gaussian data (never all zeros) rounded to ``dtype``."""
    return (torch.randn(*shape, generator=gen) * scale).to(dtype)


# ----------------------------------------------------------------------------- lowrank_linear


def check_lowrank(
    be, seed, dtype, lead, k, n_max, r_max, rank, out_features, v_pad, bias, device="cpu"
):
    gen = _gen(seed)
    x = _randn(gen, *lead, k, dtype=dtype)
    u = _randn(gen, n_max, r_max, dtype=dtype, scale=r_max**-0.5)
    # v is a column slice of a wider stored matrix (elastic input width) when v_pad > 0
    v_wide = _randn(gen, r_max, k + v_pad, dtype=dtype, scale=k**-0.5)
    off = v_pad // 2
    v = v_wide[:, off : off + k]
    b = _randn(gen, n_max, dtype=dtype) if bias else None
    x, u, v, b = _to(device, x, u, v, b)
    n = n_max if out_features is None else out_features
    ref64 = lowrank_linear_reference(
        x.double(), u.double(), v.double(), rank, n, None if b is None else b.double()
    )
    plain = lowrank_linear_reference(x, u, v, rank, n, b)
    with sk.backend(be):
        out = sk.ops.lowrank_linear(x, u, v, rank, out_features, b)
    assert out.shape == (*lead, n)
    what = f"{be} lowrank {dtype} lead={lead} K={k} N_max={n_max} R_max={r_max} r={rank} n={n}"
    assert_matches(out, ref64, plain, what)


@st.composite
def lowrank_cases(draw):
    r_max = draw(small_ints)
    n_max = draw(small_ints)
    return {
        "seed": draw(seeds),
        "dtype": draw(dtypes),
        "lead": draw(leads),
        "k": draw(small_ints),
        "n_max": n_max,
        "r_max": r_max,
        "rank": draw(st.integers(1, r_max)),
        "out_features": draw(st.one_of(st.none(), st.integers(1, n_max))),
        "v_pad": draw(st.sampled_from([0, 0, 3, 8])),
        "bias": draw(st.booleans()),
    }


@pytest.mark.parametrize("device,be", backend_params("lowrank_linear"))
def test_lowrank_linear_property(device, be):
    _run("lowrank", be, lambda case: check_lowrank(be, **case, device=device), case=lowrank_cases())


# ----------------------------------------------------------------------------- quant_linear


def check_quant(be, seed, dtype, lead, k, n, bits, group, act_bits, bias, device="cpu"):
    gen = _gen(seed)
    (w,) = _to(device, torch.randn(n, k, generator=gen))
    q = quantize_weight(w, bits, group)
    x = _randn(gen, *lead, k, dtype=dtype)
    b = _randn(gen, n, dtype=dtype) if bias else None
    x, b = _to(device, x, b)
    args = (q.packed, q.scales, q.zeros, bits, q.group_size, k, act_bits)
    ref64 = quant_linear_reference(x.double(), *args, None if b is None else b.double())
    plain = quant_linear_reference(x, *args, b)
    with sk.backend(be):
        out = sk.ops.quant_linear(x, q, b, act_bits=act_bits)
    assert out.shape == (*lead, n)
    what = f"{be} W{bits}A{act_bits} g={group} {dtype} lead={lead} K={k} N={n}"
    assert_matches(out, ref64, plain, what)


@st.composite
def quant_cases(draw):
    group = draw(st.sampled_from([32, 64, None]))
    if group is None:  # per-channel: any K
        k = draw(small_ints)
    else:  # K a multiple of the group
        k = group * draw(st.integers(1, 4))
    return {
        "seed": draw(seeds),
        "dtype": draw(dtypes),
        "lead": draw(leads),
        "k": k,
        "n": draw(small_ints),
        "bits": draw(st.sampled_from([2, 3, 4, 8])),
        "group": group,
        "act_bits": draw(st.sampled_from([16, 8])),
        "bias": draw(st.booleans()),
    }


@pytest.mark.parametrize("device,be", backend_params("quant_linear"))
def test_quant_linear_property(device, be):
    def prop(case):
        if be == "cuda" and case["act_bits"] == 8:
            return  # no CUDA kernel for packed weights with 8-bit activations
        check_quant(be, **case, device=device)

    _run("quant", be, prop, case=quant_cases())


# ----------------------------------------------------------------------------- int8 / fp8


def check_raw8(be, kind, seed, dtype, lead, k, n, bias, device="cpu"):
    gen = _gen(seed)
    if kind == "int8":
        w = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
        ws = torch.rand(n, generator=gen) / 100 + 1e-4
        op, ref = sk.ops.int8_linear, int8_linear_reference
    else:
        w, ws = quantize_weight_fp8(torch.randn(n, k, generator=gen))
        op, ref = sk.ops.fp8_linear, fp8_linear_reference
    x = _randn(gen, *lead, k, dtype=dtype)
    b = _randn(gen, n, dtype=dtype) if bias else None
    x, w, ws, b = _to(device, x, w, ws, b)
    ref64 = ref(x.double(), w, ws, None if b is None else b.double())
    plain = ref(x, w, ws, b)
    with sk.backend(be):
        out = op(x, w, ws, b)
    assert out.shape == (*lead, n)
    assert_matches(out, ref64, plain, f"{be} {kind}_linear {dtype} lead={lead} K={k} N={n}")


@st.composite
def raw8_cases(draw):
    return {
        "seed": draw(seeds),
        "dtype": draw(dtypes),
        "lead": draw(leads),
        "k": draw(small_ints),
        "n": draw(small_ints),
        "bias": draw(st.booleans()),
    }


@pytest.mark.parametrize("device,be", backend_params("int8_linear"))
def test_int8_linear_property(device, be):
    _run("int8", be, lambda case: check_raw8(be, "int8", **case, device=device), case=raw8_cases())


@pytest.mark.parametrize("device,be", backend_params("fp8_linear"))
def test_fp8_linear_property(device, be):
    _run("fp8", be, lambda case: check_raw8(be, "fp8", **case, device=device), case=raw8_cases())


# ----------------------------------------------------------------------------- attention


def attention_oracle(q, k, v, rel_pos_h=None, rel_pos_w=None, hw=None, heads=None, scale=None):
    """softmax(scale q k^T + bias) v in float64, the bias built as segment-anything builds it
    (its ``add_decomposed_rel_pos``) where it is installed, else by our reference in float64."""
    q, k, v = (t.double() for t in (q, k, v))
    if rel_pos_h is None:
        return attention_reference(q, k, v, heads=heads, scale=scale)
    try:
        from segment_anything.modeling.image_encoder import add_decomposed_rel_pos
    except ImportError:
        return attention_reference(
            q, k, v, rel_pos_h.double(), rel_pos_w.double(), hw, heads, scale
        )
    if heads is not None:
        q, k, v = q[:, :heads], k[:, :heads], v[:, :heads]
    B, nH, T, d = q.shape
    scale = d**-0.5 if scale is None else scale
    qf, kf, vf = (t.reshape(B * nH, t.shape[2], d) for t in (q, k, v))
    attn = (qf * scale) @ kf.transpose(-2, -1)
    attn = add_decomposed_rel_pos(attn, qf, rel_pos_h.double(), rel_pos_w.double(), hw, hw)
    return (attn.softmax(-1) @ vf).view(B, nH, T, d)


def check_attention(
    be, seed, dtype, b, nh, heads, tq, tk, d, hw, lens, scale, layout, device="cpu"
):
    gen = _gen(seed)
    if layout == "qkv" and tq == tk:  # SAM's layout: strided views of one qkv tensor
        qkv = _randn(gen, b, tq, 3, nh, d, dtype=dtype).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
    else:
        q = _randn(gen, b, tq, nh, d, dtype=dtype).transpose(1, 2)
        k = _randn(gen, b, tk, nh, d, dtype=dtype).transpose(1, 2)
        v = _randn(gen, b, tk, nh, d, dtype=dtype).transpose(1, 2)
    tables = {}
    if hw is not None:
        tables = {
            "rel_pos_h": _randn(gen, lens[0], d, dtype=dtype, scale=d**-0.5),
            "rel_pos_w": _randn(gen, lens[1], d, dtype=dtype, scale=d**-0.5),
            "hw": hw,
        }
    q, k, v = _to(device, q, k, v)
    tables = {
        key: (_to(device, t)[0] if isinstance(t, torch.Tensor) else t) for key, t in tables.items()
    }
    ref64 = attention_oracle(q, k, v, heads=heads, scale=scale, **tables)
    plain = attention_reference(q, k, v, heads=heads, scale=scale, **tables)
    with sk.backend(be):
        out = sk.ops.attention(q, k, v, heads=heads, scale=scale, **tables)
    assert out.shape == (b, heads or nh, tq, d)
    what = f"{be} attention {dtype} B={b} nH={nh} heads={heads} Tq={tq} Tk={tk} d={d} hw={hw}"
    assert_matches(out, ref64, plain, what)


@st.composite
def attention_cases(draw):
    nh = draw(st.integers(1, 3))
    rel = draw(st.booleans())
    if rel:
        hw = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        tq = tk = hw[0] * hw[1]
        # 2 * size - 1 rows are used as they are; other lengths are resized
        lens = tuple(
            draw(st.sampled_from([2 * s - 1, 2 * s - 1, max(1, s), 2 * s + 2])) for s in hw
        )
    else:
        hw, lens = None, None
        tq = draw(st.one_of(st.integers(1, 20), st.sampled_from([1, 0])))
        tk = draw(st.one_of(st.just(tq), st.integers(1, 20))) or 1
    return {
        "seed": draw(seeds),
        "dtype": draw(dtypes),
        "b": draw(st.sampled_from([1, 1, 2, 2, 1, 0])),
        "nh": nh,
        "heads": draw(st.one_of(st.none(), st.integers(1, nh))),
        "tq": tq,
        "tk": tk,
        "d": draw(st.sampled_from([1, 3, 8, 16, 17, 32])),
        "hw": hw,
        "lens": lens,
        "scale": draw(st.sampled_from([None, None, 0.3])),
        "layout": draw(st.sampled_from(["qkv", "separate"])),
    }


@pytest.mark.parametrize("device,be", backend_params("attention"))
def test_attention_property(device, be):
    _run(
        "attention",
        be,
        lambda case: check_attention(be, **case, device=device),
        case=attention_cases(),
    )


# ----------------------------------------------------------------------------- found by the soak
# Minimal failing examples found by a longer run (SK_PROPERTY_SCALE=20), kept as explicit tests.


@pytest.mark.xfail(
    strict=True,
    reason="Triton lowrank_linear, float32, rank 1, M = 1: rel err 5.25e-07 > tol 4.77e-07 "
    "(torch 2.23e-07). With rank 1 every output is t * u[:, 0], t = x . v[0] one 23-term dot "
    "product with condition number 74 (cancellation), so t's rounding error is common to all "
    "outputs and amplified 74x for both; the kernel's summation order lands 2.4x torch's. Not a "
    "wrong result (the error is ~9 units of fp32 roundoff); assert_matches' fixed 4-ulp floor "
    "does not account for an ill-conditioned dot product",
)
def test_lowrank_triton_rank1_ill_conditioned_fp32():
    if sk.backends.unavailable_reason("triton", torch.device("cpu")):
        pytest.skip("Triton needs TRITON_INTERPRET=1 on the CPU")
    check_lowrank(
        "triton", seed=393, dtype=torch.float32, lead=(1,), k=23, n_max=41, r_max=23, rank=1,
        out_features=None, v_pad=0, bias=False,
    )  # fmt: skip
