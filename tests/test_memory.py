"""Repeated forward passes through every op and layer do not grow memory.

Each case runs a warm-up (caches, lazy imports, the interpreter's kernel cache fill there),
then a bounded loop; between the middle and the end of the loop:

* Python allocations (tracemalloc) must not grow by more than ``PY_TOL`` bytes;
* the resident set (psutil if installed, else /proc/self/statm) must not grow by more than
  ``RSS_TOL``; outputs are sized so that keeping one per iteration would exceed it many times.

The CPU torch backend runs ``ITERS`` iterations; the Triton interpreter a few (it is slow); on
CUDA (skipped here) ``torch.cuda.memory_allocated`` must stay flat. A positive control checks
that the harness does catch a leak of one output per iteration.
"""

from __future__ import annotations

import gc
import os
import tracemalloc

import pytest
import torch

import supernet_kernels as sk
from supernet_kernels.quant import quantize_weight, quantize_weight_fp8

WARMUP = 10
ITERS = 200
PY_TOL = 64 * 1024  # bytes of Python objects over ITERS / 2 iterations
RSS_TOL = 8 * 2**20  # resident-set noise of the allocator (glibc arenas), bytes
# Outputs of the CPU cases are >= 128 KiB: one kept per iteration is >= 12.5 MiB per 100.
OUT_BYTES_MIN = 128 * 1024


def rss_bytes() -> int:
    try:
        import psutil
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return psutil.Process().memory_info().rss


def live_tensors() -> int:
    """Tensors reachable from Python: a list that keeps outputs grows this even when the
    allocator reuses pages that are already resident (then RSS does not move)."""
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


# Allocations of the test runner's own threads are not the op's: under pytest-xdist a worker's
# execnet thread receives and queues test items while a case runs (the first H100 run, 16
# workers, saw 712 KB of growth in one CPU case that is flat alone).
_RUNNER = [tracemalloc.Filter(False, f"*{m}*") for m in ("execnet", "xdist", "_pytest", "pluggy")]


def _traced() -> int:
    """Bytes of live Python allocations, the test runner's own excluded."""
    return sum(
        st.size for st in tracemalloc.take_snapshot().filter_traces(_RUNNER).statistics("filename")
    )


def measure(fn, warmup: int = WARMUP, iters: int = ITERS) -> dict:
    """Growth of Python allocations, live tensors and RSS over the second half of ``iters``
    calls."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        gc.collect()
        tracemalloc.start()
        try:
            half = iters // 2
            for _ in range(half):
                fn()
            gc.collect()
            py0, rss0, t0 = _traced(), rss_bytes(), live_tensors()
            for _ in range(iters - half):
                fn()
            gc.collect()
            py1, rss1, t1 = _traced(), rss_bytes(), live_tensors()
        finally:
            tracemalloc.stop()
    return {"py": py1 - py0, "rss": rss1 - rss0, "tensors": t1 - t0}


def assert_flat(fn, what: str, iters: int = ITERS, rss: bool = True) -> None:
    m = measure(fn, iters=iters)
    assert m["py"] <= PY_TOL, f"{what}: Python allocations grew by {m['py']} B over {iters} runs"
    assert m["tensors"] <= 0, f"{what}: {m['tensors']} more live tensors after {iters} runs"
    if rss:
        assert m["rss"] <= RSS_TOL, f"{what}: RSS grew by {m['rss'] / 2**20:.1f} MiB"


# ----------------------------------------------------------------------------- cases


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def op_cases():
    """name -> zero-argument callable running one op (outputs >= OUT_BYTES_MIN)."""
    g = _g(1)
    m, k, n = 256, 32, 128
    x = torch.randn(m, k, generator=g)
    u, v, b = torch.randn(n, 24, generator=g), torch.randn(24, k, generator=g), torch.randn(n)
    q4 = quantize_weight(torch.randn(n, k, generator=g), 4, 32)
    w8 = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    s8 = torch.rand(n, generator=g) / 100
    wf8, sf8 = quantize_weight_fp8(torch.randn(n, k, generator=g))
    qa = torch.randn(4, 4, 64, 64, generator=g)  # (B, nH, T, d), T = 8 x 8
    th, tw = torch.randn(15, 64, generator=g) * 0.2, torch.randn(15, 64, generator=g) * 0.2
    return {
        "lowrank_linear": lambda: sk.ops.lowrank_linear(x, u, v, 17, None, b),
        "quant_linear_a16": lambda: sk.ops.quant_linear(x, q4, b),
        "quant_linear_a8": lambda: sk.ops.quant_linear(x, q4, b, act_bits=8),
        "int8_linear": lambda: sk.ops.int8_linear(x, w8, s8, b),
        "fp8_linear": lambda: sk.ops.fp8_linear(x, wf8, sf8, b),
        "attention": lambda: sk.ops.attention(qa, qa, qa),
        "attention_relpos_heads": lambda: sk.ops.attention(qa, qa, qa, th, tw, hw=(8, 8), heads=2),
    }


def layer_cases():
    torch.manual_seed(0)
    x = torch.randn(256, 32)
    lr = sk.nn.LowRankLinear(32, 128, 16)
    elr = sk.nn.ElasticLowRankLinear(32, 160, 32)
    elr.set_active(rank=9, out_features=130, in_features=32)
    dense = sk.nn.ElasticLinear(32, 128, w_bits_choices=(4, 16), a_bits_choices=(8, 16))
    dense_q = sk.nn.ElasticLinear(32, 128, w_bits_choices=(4, 16), a_bits_choices=(8, 16))
    dense_q.set_active(w_bits=4, a_bits=8)
    fact = sk.nn.ElasticLinear(32, 128, rank_choices=(8, 16, 32))
    fact.set_active(rank=8)
    lora = sk.nn.ElasticLinear(32, 128, lora_rank=4)
    ql = sk.nn.QuantLinear.from_linear(torch.nn.Linear(32, 128), bits=4, group_size=32)
    block = sk.nn.ElasticBlock(torch.nn.Sequential(torch.nn.Linear(96, 96)))
    x_block = torch.randn(384, 96)
    cases = {
        "LowRankLinear": lambda: lr(x),
        "ElasticLowRankLinear": lambda: elr(x),
        "ElasticLinear_dense": lambda: dense(x),
        "ElasticLinear_w4a8": lambda: dense_q(x),
        "ElasticLinear_factorized": lambda: fact(x),
        "ElasticLinear_lora": lambda: lora(x),
        "QuantLinear": lambda: ql(x),
        "ElasticBlock": lambda: block(x_block),
    }
    try:
        import timm  # noqa: F401
        from timm.models.vision_transformer import Attention

        from supernet_kernels.supernet.attention import SKViTAttention

        att = SKViTAttention.from_module(Attention(64, num_heads=4))
        xa = torch.randn(4, 65, 64)
        cases["SKViTAttention"] = lambda: att(xa)
    except ImportError:
        pass
    return cases


def _check_sizes(cases):
    for name, fn in cases.items():
        with torch.no_grad():
            out = fn()
        assert out.numel() * out.element_size() >= OUT_BYTES_MIN or name.startswith("SK"), name


OPS = op_cases()
LAYERS = layer_cases()


def test_cases_are_big_enough_to_see_a_leak():
    _check_sizes(OPS)
    _check_sizes(LAYERS)


def test_the_harness_catches_a_leak():
    """Positive control: keeping one output per call shows in both measures."""
    kept = []
    x = torch.randn(256, 128)

    def leaky():
        kept.append(x @ x.T)  # 256 KiB each

    m = measure(leaky, iters=100)
    # RSS alone can miss it: in a long test process the allocator reuses pages that are
    # already resident (seen in CI: +0 B for 12.5 MiB kept), so live tensors are counted too.
    assert m["tensors"] >= 50, m
    kept.clear()


@pytest.mark.parametrize("name", list(OPS))
def test_op_forward_is_flat_torch(name):
    with sk.backend("torch"):
        assert_flat(OPS[name], f"torch {name}")


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_forward_is_flat_torch(name):
    with sk.backend("torch"):
        assert_flat(LAYERS[name], f"torch {name}")


def test_training_step_is_flat_torch():
    """Forward + backward + optimizer step through the ops (autograd graphs are freed)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        sk.nn.ElasticLinear(32, 128, rank_choices=(16,)),
        torch.nn.GELU(),
        sk.nn.LowRankLinear(128, 96, 8),
    )
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(256, 32)

    def step():
        with torch.enable_grad():
            opt.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
            opt.step()

    with sk.backend("torch"):
        assert_flat(step, "train step", iters=100)


def _triton_ok():
    return sk.backends.unavailable_reason("triton", torch.device("cpu")) is None


@pytest.mark.skipif(not _triton_ok(), reason="Triton needs TRITON_INTERPRET=1 on the CPU")
@pytest.mark.parametrize("name", list(OPS))
def test_op_forward_is_flat_triton_interpreter(name):
    """A few iterations under the interpreter: Python allocations only (RSS moves with numpy
    buffers the interpreter allocates per launch; a kept output would still show in Python)."""
    g = _g(2)
    small = {
        "x": torch.randn(9, 64, generator=g),
    }
    x = small["x"]
    u, v = torch.randn(20, 8, generator=g), torch.randn(8, 64, generator=g)
    q4 = quantize_weight(torch.randn(20, 64, generator=g), 4, 32)
    w8 = torch.randint(-127, 128, (20, 64), generator=g, dtype=torch.int8)
    s8 = torch.rand(20, generator=g) / 100
    wf8, sf8 = quantize_weight_fp8(torch.randn(20, 64, generator=g))
    qa = torch.randn(1, 2, 16, 16, generator=g)
    th, tw = torch.randn(7, 16, generator=g), torch.randn(7, 16, generator=g)
    fns = {
        "lowrank_linear": lambda: sk.ops.lowrank_linear(x, u, v, 5, 17),
        "quant_linear_a16": lambda: sk.ops.quant_linear(x, q4),
        "quant_linear_a8": lambda: sk.ops.quant_linear(x, q4, act_bits=8),
        "int8_linear": lambda: sk.ops.int8_linear(x, w8, s8),
        "fp8_linear": lambda: sk.ops.fp8_linear(x, wf8, sf8),
        "attention": lambda: sk.ops.attention(qa, qa, qa),
        "attention_relpos_heads": lambda: sk.ops.attention(qa, qa, qa, th, tw, hw=(4, 4), heads=1),
    }
    with sk.backend("triton"):
        m = measure(fns[name], warmup=2, iters=8)
    assert m["py"] <= PY_TOL, f"triton {name}: Python allocations grew by {m['py']} B"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("be", ["torch", "triton", "cuda"])
def test_cuda_memory_allocated_is_flat(be):
    if sk.backends.unavailable_reason(be, torch.device("cuda")):
        pytest.skip(sk.backends.unavailable_reason(be, torch.device("cuda")))
    g = _g(3)
    dev = "cuda"
    x = torch.randn(256, 96, generator=g).half().to(dev)
    u, v = torch.randn(128, 32).half().to(dev), torch.randn(32, 96).half().to(dev)
    q4 = quantize_weight(torch.randn(128, 96, generator=g), 4, 32).to(dev)
    qa = torch.randn(2, 2, 64, 32, generator=g).half().to(dev)
    fns = [lambda: sk.ops.quant_linear(x, q4)]
    if be != "cuda":  # lowrank_linear has no CUDA C++ kernel
        fns.append(lambda: sk.ops.lowrank_linear(x, u, v, 17))
    if be == "triton":
        fns.append(lambda: sk.ops.attention(qa, qa, qa))
    with sk.backend(be), torch.no_grad():
        for fn in fns:
            for _ in range(WARMUP):
                fn()
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            for _ in range(ITERS):
                fn()
            torch.cuda.synchronize()
            assert torch.cuda.memory_allocated() <= before + 1024
