"""The fused MLP block op: every backend against float64, odd shapes, every dtype, both layer
kinds, gradients, opcheck and bad input."""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import DTYPES, assert_matches, backend_params, stable_seed

import supernet_kernels as sk
from supernet_kernels.ops.lowrank_mlp import lowrank_mlp_reference

# (lead dims, K, H_max, N, R1_max, R2_max, rank1, rank2, hidden, out_features): M = 1, sizes
# not multiples of 16, rank 1, full ranks, an elastic hidden width, a narrowed output.
SHAPES = [
    ((1,), 13, 40, 11, 7, 9, 3, 9, 40, None),
    ((37,), 24, 50, 24, 12, 16, 12, 5, 33, None),
    ((2, 3), 20, 33, 17, 16, 10, 1, 10, 17, 9),
    ((19,), 31, 64, 31, 20, 20, 20, 17, 64, 30),
]
KINDS = ["lowrank-lowrank", "lowrank-dense", "dense-lowrank", "dense-dense"]


def _block(shape, kind, dtype, device, gen, bias=True):
    lead, k, h_max, n_out, r1_max, r2_max, rank1, rank2, hidden, out = shape
    kw = {"dtype": dtype, "device": device}

    def rnd(*s, scale=1.0):
        return (torch.randn(*s, generator=gen) * scale).to(**kw)

    x = rnd(*lead, k)
    fc1_lr, fc2_lr = (part == "lowrank" for part in kind.split("-"))
    fc1 = (
        (rnd(h_max, r1_max, scale=r1_max**-0.5), rnd(r1_max, k, scale=k**-0.5), None, rank1)
        if fc1_lr
        else (None, None, rnd(h_max, k, scale=k**-0.5), 0)
    )
    fc2 = (
        (rnd(n_out, r2_max, scale=r2_max**-0.5), rnd(r2_max, h_max, scale=h_max**-0.5), None, rank2)
        if fc2_lr
        else (None, None, rnd(n_out, h_max, scale=h_max**-0.5), 0)
    )
    b1 = rnd(h_max) if bias else None
    b2 = rnd(n_out) if bias else None
    return (x, *fc1, b1, *fc2, b2, hidden, out, "gelu")


def _double(args):
    return tuple(a.double() if isinstance(a, torch.Tensor) else a for a in args)


def _check(be, args, what):
    ref64 = lowrank_mlp_reference(*_double(args))
    torch_out = lowrank_mlp_reference(*args)
    with sk.backend(be):
        out = torch.ops.supernet_kernels.lowrank_mlp(*args)
    assert out.device == args[0].device
    assert_matches(out, ref64, torch_out, what)


@pytest.mark.parametrize("device,be", backend_params("lowrank_mlp"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_float64(device, be, dtype, shape, kind):
    gen = torch.Generator().manual_seed(stable_seed(shape, kind, str(dtype)))
    args = _block(shape, kind, dtype, device, gen, bias=shape[0] != (2, 3))
    _check(be, args, f"{be} {dtype} {shape} {kind}")


@pytest.mark.parametrize("device,be", backend_params("lowrank_mlp"))
@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "relu"])
def test_activations(device, be, act):
    gen = torch.Generator().manual_seed(stable_seed(act))
    args = list(_block(SHAPES[1], "lowrank-lowrank", torch.float32, device, gen))
    args[-1] = act
    _check(be, tuple(args), f"{be} {act}")


@pytest.mark.parametrize("device,be", backend_params("lowrank_mlp"))
def test_strided_factors_in_place(device, be):
    """Factors as column slices of wider stored matrices and a non-contiguous x."""
    gen = torch.Generator().manual_seed(13)
    args = list(_block(SHAPES[1], "lowrank-lowrank", torch.float32, device, gen))
    x_wide = torch.randn(37, 48, generator=gen).to(device)
    args[0] = x_wide[:, ::2]
    args[1] = torch.randn(50, 20, generator=gen).to(device)[:, 3:15]  # u1 (50, 12)
    assert not args[0].is_contiguous() and not args[1].is_contiguous()
    _check(be, tuple(args), f"{be} strided")


def test_reference_is_the_unfused_block():
    """The reference equals the modules it replaces: Linear, GELU, Linear at the active slice."""
    gen = torch.Generator().manual_seed(4)
    x, u1, v1, _, r1, b1, u2, v2, _, r2, b2, hidden, out, act = _block(
        SHAPES[1], "lowrank-lowrank", torch.float64, "cpu", gen
    )
    h = torch.nn.functional.gelu(x @ v1[:r1].T @ u1[:hidden, :r1].T + b1[:hidden])
    want = h @ v2[:r2, :hidden].T @ u2[:, :r2].T + b2
    got = lowrank_mlp_reference(x, u1, v1, None, r1, b1, u2, v2, None, r2, b2, hidden, out, act)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device,be", backend_params("lowrank_mlp"))
def test_empty_leading_dimension(device, be):
    gen = torch.Generator().manual_seed(3)
    args = list(_block(SHAPES[1], "lowrank-lowrank", torch.float32, device, gen))
    args[0] = args[0][:0]
    with sk.backend(be):
        out = torch.ops.supernet_kernels.lowrank_mlp(*args)
    assert out.shape == (0, 24)


@pytest.mark.parametrize("device,be", backend_params("lowrank_mlp"))
@pytest.mark.parametrize("kind", ["lowrank-lowrank", "dense-lowrank"])
def test_opcheck(device, be, kind):
    gen = torch.Generator().manual_seed(5)
    shape = ((6,), 18, 20, 12, 9, 8, 5, 8, 13, None)
    args = list(_block(shape, kind, torch.float32, device, gen))
    args[0].requires_grad_(True)
    with sk.backend(be):
        torch.library.opcheck(torch.ops.supernet_kernels.lowrank_mlp.default, tuple(args))


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind):
    gen = torch.Generator().manual_seed(1)
    shape = ((3, 2), 7, 10, 6, 5, 4, 3, 4, 8, 5)
    args = list(_block(shape, kind, torch.float64, "cpu", gen))
    idx = [i for i in (0, 1, 2, 3, 5, 6, 7, 8, 10) if args[i] is not None]
    tensors = [args[i].requires_grad_(True) for i in idx]

    def fn(*ts):
        a = list(args)
        for i, t in zip(idx, ts, strict=True):
            a[i] = t
        return torch.ops.supernet_kernels.lowrank_mlp(*a)

    with sk.backend("torch"):
        assert torch.autograd.gradcheck(fn, tuple(tensors))


def test_gradients_vanish_outside_active_slices():
    gen = torch.Generator().manual_seed(2)
    args = list(_block(SHAPES[2], "lowrank-lowrank", torch.float32, "cpu", gen))
    for i in (1, 2, 5, 6, 7, 10):
        args[i].requires_grad_(True)
    with sk.backend("torch"):
        torch.ops.supernet_kernels.lowrank_mlp(*args).sum().backward()
    u1, v1, b1, u2, v2, b2 = (args[i] for i in (1, 2, 5, 6, 7, 10))
    rank1, rank2, hidden, out = args[4], args[9], args[11], args[12]
    assert (u1.grad[hidden:] == 0).all() and (u1.grad[:, rank1:] == 0).all()
    assert (v1.grad[rank1:] == 0).all() and (b1.grad[hidden:] == 0).all()
    assert (u2.grad[out:] == 0).all() and (u2.grad[:, rank2:] == 0).all()
    assert (v2.grad[:, hidden:] == 0).all() and (b2.grad[out:] == 0).all()
    assert u1.grad[:hidden, :rank1].abs().sum() > 0 and v2.grad[:rank2, :hidden].abs().sum() > 0


def _good():
    gen = torch.Generator().manual_seed(0)
    return list(_block(SHAPES[1], "lowrank-lowrank", torch.float32, "cpu", gen))


BAD = [
    (0, "not a tensor", TypeError, "x must be a torch.Tensor"),
    (1, torch.zeros(50, 12, dtype=torch.float64), TypeError, "fc1_u has dtype"),
    (2, torch.zeros(12, 23), ValueError, "x has 24 features"),
    (3, torch.zeros(50, 24), ValueError, "either fc1_weight"),
    (2, None, ValueError, "needs fc1_weight"),
    (4, 13, ValueError, "fc1_rank must be in 1..12"),
    (4, 2.0, TypeError, "fc1_rank must be an int"),
    (9, 0, ValueError, "fc2_rank must be in 1..16"),
    (7, torch.zeros(16, 50, 1), ValueError, "fc2_v must be 2-D"),
    (5, torch.zeros(20), ValueError, "fc1_bias must be 1-D with at least 33"),
    (10, torch.zeros(3, 8), ValueError, "fc2_bias must be 1-D"),
    (11, 51, ValueError, "hidden must be in 1..50"),
    (11, 0, ValueError, "hidden must be in 1..50"),
    (12, 25, ValueError, "out_features must be in 1..24"),
    (13, "silu", ValueError, "act must be one of"),
]


@pytest.mark.parametrize("pos,value,exc,match", BAD, ids=[b[3] for b in BAD])
def test_bad_input_is_named(pos, value, exc, match):
    args = _good()
    args[pos] = value
    if exc is ValueError:  # the dispatcher itself rejects arguments of the wrong type
        with pytest.raises(exc, match=match):
            torch.ops.supernet_kernels.lowrank_mlp(*args)
    with pytest.raises(exc, match=match):
        sk.ops.lowrank_mlp(*args[:11], hidden=args[11], out_features=args[12], act=args[13])


def test_dense_layer_takes_rank_zero():
    args = _good()
    args[1], args[2], args[3] = None, None, torch.zeros(50, 24)
    with pytest.raises(ValueError, match="fc1_rank must be 0 for a dense fc1"):
        torch.ops.supernet_kernels.lowrank_mlp(*args)


def test_cuda_backend_is_refused_with_a_reason():
    args = _good()
    if sk.backends.unavailable_reason("cuda", torch.device("cpu")) is not None:
        with sk.backend("cuda"), pytest.raises(sk.backends.BackendUnavailable):
            torch.ops.supernet_kernels.lowrank_mlp(*args)


@pytest.mark.parametrize("one_launch", [True, False], ids=["one-launch", "two-launches"])
@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "relu"])
def test_triton_one_launch_and_two_launch_paths(monkeypatch, one_launch, act):
    """Both low-rank: the one-launch kernel (three phases) where it fits, else fc1 + activation
    then fc2; both match float64, and the one-launch kernel leaves its scratch zero."""
    if sk.backends.unavailable_reason("triton", torch.device("cpu")):
        pytest.skip("Triton needs TRITON_INTERPRET=1 on the CPU")
    from supernet_kernels.kernels import triton_lowrank_mlp as tkm

    if not one_launch:
        monkeypatch.setattr(tkm, "MAX_FUSED_M", 0)
    gen = torch.Generator().manual_seed(stable_seed(act, one_launch))
    args = list(_block(((45,), 40, 70, 30, 9, 12, 7, 12, 61, 29), "lowrank-lowrank",
                       torch.float32, "cpu", gen))  # fmt: skip
    args[-1] = act
    _check("triton", tuple(args), f"{act} one_launch={one_launch}")
    assert tkm.fits(45, 7, 12) == one_launch
    for buf in tkm.SCRATCH._bufs.values():
        assert all(bool((t == 0).all()) for t in buf)


def test_one_launch_plan_fills_the_gpu():
    """H100 parameters: at one image and at batch 8 every phase's items cover the grid's
    programs, at most one per SM (all resident, so the in-kernel waits cannot deadlock)."""
    pytest.importorskip("triton")
    from supernet_kernels.kernels import triton_lowrank_mlp as tkm

    for m in (197, 1576):
        for r in (32, 64, 128):
            bm, bh, bn, bk, br1, br2, warps, _, grid, ks, kper = tkm.plan(
                m, 768, 3072, 768, r, r, 132, False
            )
            m_tiles = -(-m // bm)
            assert bm == 64 and warps == 4 and br1 >= r and br2 >= r
            assert (ks - 1) * kper < 768 <= ks * kper
            assert grid == min(132, m_tiles * max(ks, -(-3072 // bh), -(-768 // bn)))
