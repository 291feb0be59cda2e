"""The sliced low-rank GEMM op: every backend against float64, odd shapes, every dtype."""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import DTYPES, assert_matches, backend_params, rel_err, stable_seed

import supernet_kernels as sk
from supernet_kernels.ops.lowrank import lowrank_linear_reference

# (lead dims, K, N_max, R_max, rank, out_features): M = 1, sizes not multiples of 16, rank 1,
# rank = R_max, a narrowed output, several leading dimensions.
SHAPES = [
    ((1,), 13, 11, 7, 3, 9),
    ((37,), 40, 70, 20, 17, None),
    ((2, 3), 24, 33, 16, 1, 5),
    ((19,), 48, 20, 48, 48, None),
    ((65,), 31, 97, 29, 29, 96),
]


def _factors(lead, k, n_max, r_max, dtype, device, gen):
    kw = {"dtype": dtype, "device": device}
    x = torch.randn(*lead, k, generator=gen).to(**kw)
    u = (torch.randn(n_max, r_max, generator=gen) / r_max**0.5).to(**kw)
    v = (torch.randn(r_max, k, generator=gen) / k**0.5).to(**kw)
    b = torch.randn(n_max, generator=gen).to(**kw)
    return x, u, v, b


def _check(device, be, x, u, v, rank, n, bias, what):
    ref64 = lowrank_linear_reference(
        x.double(), u.double(), v.double(), rank, n, bias.double() if bias is not None else None
    )
    torch_out = lowrank_linear_reference(x, u, v, rank, n, bias)
    with sk.backend(be):
        out = sk.ops.lowrank_linear(x, u, v, rank, n, bias)
    assert out.device.type == device
    assert_matches(out, ref64, torch_out, what)


@pytest.mark.parametrize("device,be", backend_params("lowrank_linear"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_matches_float64(device, be, dtype, shape, with_bias):
    lead, k, n_max, r_max, rank, n = shape
    gen = torch.Generator().manual_seed(stable_seed(shape, str(dtype)))
    x, u, v, b = _factors(lead, k, n_max, r_max, dtype, device, gen)
    _check(device, be, x, u, v, rank, n, b if with_bias else None, f"{be} {dtype} {shape}")


@pytest.mark.parametrize("device,be", backend_params("lowrank_linear"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_slices_in_place(device, be, dtype):
    """u a column slice, v a column slice of a wider stored matrix (elastic input width),
    x non-contiguous: all read through their strides."""
    gen = torch.Generator().manual_seed(7)
    x_wide, u_wide, v_wide, b = _factors((23,), 58, 41, 30, dtype, device, gen)
    x = x_wide[:, ::2]  # (23, 29), stride 2
    v = v_wide[:, 5:34]  # (30, 29), row stride 58
    u = u_wide[:, 3:]  # (41, 27)
    assert not x.is_contiguous() and not v.is_contiguous() and not u.is_contiguous()
    _check(device, be, x, u, v, 19, 37, b, f"{be} strided")


@pytest.mark.parametrize("device,be", backend_params("lowrank_linear"))
def test_large_rank_two_gemm_path(device, be):
    """Ranks past the fused kernel's budget take the two-GEMM (Triton) / chunked (CUDA) path."""
    gen = torch.Generator().manual_seed(11)
    x, u, v, b = _factors((9,), 20, 17, 300, torch.float32, device, gen)
    _check(device, be, x, u, v, 290, 15, b, f"{be} rank 290")


@pytest.mark.parametrize("device,be", backend_params("lowrank_linear"))
def test_empty_leading_dimension(device, be):
    gen = torch.Generator().manual_seed(3)
    x, u, v, b = _factors((0,), 16, 8, 4, torch.float32, device, gen)
    with sk.backend(be):
        out = sk.ops.lowrank_linear(x, u, v, 4, None, b)
    assert out.shape == (0, 8)


def _interpreter_or_skip():
    pytest.importorskip("triton")
    if sk.backends.unavailable_reason("triton", torch.device("cpu")):
        pytest.skip("Triton needs TRITON_INTERPRET=1 on the CPU")
    from supernet_kernels.kernels import triton_lowrank as tk

    return tk


# (M, K, N, rank, SMs the plan is made for): the two-phase kernel with one and several K
# slices of t and more output tiles than programs; the persistent kernel with more row tiles
# than programs (each program walks several) and a ragged last tile.
PLANS = [
    (21, 24, 150, 12, 4),
    (21, 100, 150, 12, 64),
    (37, 130, 70, 20, 5),
    (70, 40, 97, 17, 2),
    (67, 33, 50, 29, 3),
]


@pytest.mark.parametrize("case", PLANS, ids=str)
@pytest.mark.parametrize("act", ["none", "gelu", "gelu_tanh", "relu"])
def test_triton_plans_cover_every_tile(case, act):
    """Every tile of both fused kernels is written once (outputs start as NaN-free garbage and
    are compared with the reference), the t reduction sums every K slice exactly once, and the
    two-phase kernel leaves its scratch and counters zero for the next launch."""
    tk = _interpreter_or_skip()
    m, k, n, rank, sms = case
    gen = torch.Generator().manual_seed(m * k + n)
    x, u, v, b = _factors((m,), k, n + 3, rank + 2, torch.float32, "cpu", gen)
    p = tk.plan(m, k, n, rank, sms, interpret=True)
    assert p.kernel == ("persistent" if -(-m // p.block_m) >= sms else "two_phase")
    if p.kernel == "two_phase":
        assert p.k_splits * p.k_per_split >= k > (p.k_splits - 1) * p.k_per_split
    y = tk.launch(x, u, v, rank, n, b, p, act)
    ref = lowrank_linear_reference(x.double(), u.double(), v.double(), rank, n, b.double())
    ref = {
        "none": ref,
        "gelu": torch.nn.functional.gelu(ref),
        "gelu_tanh": torch.nn.functional.gelu(ref, approximate="tanh"),
        "relu": torch.relu(ref),
    }[act]
    assert rel_err(y, ref) < 1e-6
    for buf in tk.SCRATCH._bufs.values():
        assert all(bool((t == 0).all()) for t in buf)


@pytest.mark.parametrize("device,be", backend_params("lowrank_linear"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(device, be, dtype):
    gen = torch.Generator().manual_seed(5)
    x, u, v, b = _factors((6,), 18, 12, 9, dtype, device, gen)
    x.requires_grad_(True)
    with sk.backend(be):
        torch.library.opcheck(
            torch.ops.supernet_kernels.lowrank_linear.default, (x, u, v, 5, 10, b)
        )
        torch.library.opcheck(
            torch.ops.supernet_kernels.lowrank_linear.default, (x, u, v, 9, None, None)
        )


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(1)
    x, u, v, b = _factors((3, 2), 7, 9, 6, torch.float64, "cpu", gen)
    for t in (x, u, v, b):
        t.requires_grad_(True)
    with sk.backend("torch"):
        assert torch.autograd.gradcheck(
            lambda x, u, v, b: sk.ops.lowrank_linear(x, u, v, 4, 8, b), (x, u, v, b)
        )


@pytest.mark.parametrize("device,be", backend_params("lowrank_linear"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradients_match_and_vanish_outside_active_slices(device, be, dtype):
    gen = torch.Generator().manual_seed(2)
    x, u, v, b = _factors((2, 5), 14, 12, 10, dtype, device, gen)
    g = torch.randn(2, 5, 9, generator=gen).to(dtype=dtype, device=device)
    rank, n = 6, 9

    def grads(fn, tensors):
        ts = [t.detach().clone().requires_grad_(True) for t in tensors]
        fn(*ts).backward(g.to(ts[0].dtype))
        return [t.grad for t in ts]

    ref = grads(
        lambda *t: lowrank_linear_reference(*t[:3], rank, n, t[3]),
        [t.double() for t in (x, u, v, b)],
    )
    plain = grads(lambda *t: lowrank_linear_reference(*t[:3], rank, n, t[3]), (x, u, v, b))
    with sk.backend(be):
        got = grads(lambda *t: sk.ops.lowrank_linear(*t[:3], rank, n, t[3]), (x, u, v, b))
    for name, gt, gp, gr in zip("xuvb", got, plain, ref, strict=True):
        assert_matches(gt, gr, gp, f"grad {name} {be} {dtype}")
    gu, gv, gb = got[1], got[2], got[3]
    assert (gu[n:] == 0).all() and (gu[:, rank:] == 0).all(), "grad u outside u[:n, :rank]"
    assert (gv[rank:] == 0).all(), "grad v outside v[:rank]"
    assert (gb[n:] == 0).all(), "grad bias outside bias[:n]"
    assert gu[:n, :rank].abs().sum() > 0 and gv[:rank].abs().sum() > 0


def test_torch_compile_fullgraph_cpu():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = sk.nn.LowRankLinear(24, 18, 6)

        def forward(self, x):
            return torch.relu(self.layer(x)) * 2

    net = Net()
    x = torch.randn(5, 24)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), net(x))


# ----------------------------------------------------------------------------- bad input


def _ok():
    return torch.randn(4, 10), torch.randn(8, 6), torch.randn(6, 10), torch.randn(8)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: {**a, "rank": 0}, ValueError, r"rank must be in 1\.\.6"),
        (lambda a: {**a, "rank": 7}, ValueError, r"rank must be in 1\.\.6"),
        (lambda a: {**a, "rank": 2.0}, TypeError, "rank must be an int"),
        (lambda a: {**a, "rank": True}, TypeError, "rank must be an int"),
        (lambda a: {**a, "out_features": 9}, ValueError, r"out_features must be in 1\.\.8"),
        (lambda a: {**a, "out_features": 0}, ValueError, "out_features"),
        (lambda a: {**a, "x": torch.randn(4, 11)}, ValueError, "x has 11 features"),
        (
            lambda a: {**a, "x": torch.randint(0, 5, (4, 10))},
            TypeError,
            "x must be a floating-point",
        ),
        (lambda a: {**a, "u": a["u"].double()}, TypeError, "u has dtype torch.float64"),
        (lambda a: {**a, "bias": a["bias"].half()}, TypeError, "bias has dtype"),
        (lambda a: {**a, "u": torch.randn(8, 6, 1)}, ValueError, "u must be 2-D"),
        (lambda a: {**a, "v": torch.randn(60)}, ValueError, "v must be 2-D"),
        (lambda a: {**a, "bias": torch.randn(5)}, ValueError, "bias must be 1-D with at least 8"),
        (lambda a: {**a, "x": [[1.0] * 10]}, TypeError, "x must be a torch.Tensor"),
        (lambda a: {**a, "bias": 1.0}, TypeError, "bias must be a torch.Tensor or None"),
    ],
)
def test_bad_input_is_a_clear_error(mutate, exc, match):
    x, u, v, b = _ok()
    args = mutate({"x": x, "u": u, "v": v, "rank": 3, "out_features": None, "bias": b})
    with pytest.raises(exc, match=match):
        sk.ops.lowrank_linear(**args)
    # the registered op itself (as called by layers) checks too, where the schema admits the types
    schema_ok = (
        isinstance(args["x"], torch.Tensor)
        and isinstance(args["bias"], (torch.Tensor, type(None)))
        and type(args["rank"]) is int
    )
    if schema_ok:
        with pytest.raises(exc, match=match):
            torch.ops.supernet_kernels.lowrank_linear(*args.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_device_mismatch_is_a_clear_error():
    x, u, v, b = _ok()
    with pytest.raises(ValueError, match="u is on cuda"):
        sk.ops.lowrank_linear(x, u.cuda(), v, 3, None, b)


def test_device_mismatch_meta():
    x, u, v, b = _ok()
    with pytest.raises(ValueError, match="v is on meta"):
        sk.ops.lowrank_linear(x, u, v.to("meta"), 3, None, b)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "device,be", [p for p in backend_params("lowrank_linear") if p.values[0] == "cuda"]
)
def test_cuda_graph_capture_and_replay(device, be):
    """No host synchronisation and no CPU tensors in the forward: it captures into a CUDA graph
    (at ViT-B batch 1 the model is launch-bound, so end-to-end speed depends on this)."""
    gen = torch.Generator().manual_seed(13)
    x, u, v, b = _factors((197,), 768, 768, 128, torch.float16, device, gen)
    with sk.backend(be):
        sk.ops.lowrank_linear(x, u, v, 64, None, b)  # compile / autotune outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = sk.ops.lowrank_linear(x, u, v, 64, None, b)
    x.copy_(torch.randn(x.shape, generator=gen).to(x))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(
        y, lowrank_linear_reference(x, u, v, 64, None, b), rtol=2e-2, atol=2e-2
    )


@pytest.mark.gpu
@pytest.mark.parametrize(
    "device,be", [p for p in backend_params("lowrank_linear") if p.values[0] == "cuda"]
)
def test_torch_compile_reduce_overhead(device, be):
    layer = sk.nn.LowRankLinear(96, 80, 24).to(device=device, dtype=torch.float16)
    x = torch.randn(3, 96, device=device, dtype=torch.float16)
    with sk.backend(be), torch.no_grad():
        compiled = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):  # warm-up runs, then graph replays
            got = compiled(x)
        want = layer(x)
    torch.testing.assert_close(got, want)


def test_autocast_casts_inputs_to_the_autocast_dtype():
    """Under autocast, fp32 factors meet bf16 activations; the op's autocast rule casts them."""
    layer = sk.nn.LowRankLinear(16, 8, 4)
    x = torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("m", [1, 197, 1024, 4096, 16384, 50000])
@pytest.mark.parametrize("k,n", [(768, 3072), (3072, 768)])
@pytest.mark.parametrize("rank", [32, 64, 128, 256])
def test_gpu_plans_fill_the_gpu_and_compute_t_once(m, k, n, rank):
    """The H100 launch plans: large M runs the persistent kernel (no N split, every row tile's
    t computed by one program), small M the two-phase kernel with at most one program per SM
    (all resident: the in-kernel wait cannot deadlock) and K slices covering K exactly."""
    pytest.importorskip("triton")
    from supernet_kernels.kernels import triton_lowrank as tk

    p = tk.plan(m, k, n, rank, num_sms=132, interpret=False)
    m_tiles = -(-m // p.block_m)
    assert p.block_m % 64 == 0 and p.num_warps == 4 * (p.block_m // 64)  # wgmma warpgroups
    assert p.block_r >= rank and p.block_r & (p.block_r - 1) == 0
    if m >= tk.PERSISTENT_MIN_M:
        assert p.kernel == "persistent"
        assert p.grid == min(m_tiles, (2 if p.block_m == 64 else 1) * 132)
    else:
        assert p.kernel == "two_phase"
        assert 1 <= p.grid <= 132
        assert p.k_per_split % p.block_k == 0
        assert (p.k_splits - 1) * p.k_per_split < k <= p.k_splits * p.k_per_split
        work = max(m_tiles * -(-n // p.block_n), m_tiles * p.k_splits)
        assert p.grid == min(132, work)  # no program without work in the larger phase
