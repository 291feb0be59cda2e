"""The attention op's additive bias (G, nH or 1, Tq, Tk), batch row b reading bias[b % G]: every
backend against an independent float64 formula (forward, lse, gradients of q, k, v and bias),
elastic heads, gradcheck, opcheck, bad inputs, and no (B, nH, T, T) tensor in the Triton path."""

from __future__ import annotations

import pytest
import torch
from helpers.dispatch import LargestTensor
from helpers.numerics import DTYPES, assert_matches, backend_params, rel_err

import supernet_kernels as sk

OP = torch.ops.supernet_kernels.attention

# name: (B, nH, Tq, Tk, d, G, bias heads, hw for SAM's rel pos or None)
CASES = {
    # Swin's shifted windows: 7 x 7 = 49 tokens (not a multiple of any tile), 2 images x 2
    # windows, a bias per window and head.
    "swin49_g2": (4, 2, 49, 49, 16, 2, 2, None),
    # no shift: one bias shared by every row; one head shared by the heads; Tq != Tk.
    "g1_shared_head_tq13_tk29": (3, 3, 13, 29, 16, 1, 1, None),
    # G = B; head dim 80 pads to 128.
    "g_eq_b_d80": (2, 2, 20, 20, 80, 2, 2, None),
    # with SAM's decomposed rel pos in the same call
    "with_rel_pos_3x4": (4, 2, 12, 12, 16, 2, 1, (3, 4)),
}


def _inputs(case, seed=0):
    """fp32 CPU tensors: q, k, v (strided views of one qkv tensor where Tq == Tk), rel_h,
    rel_w (or None), bias (a strided view: transposed last two dims), g_out, g_lse."""
    B, nH, tq, tk, d, G, hb, hw = case
    gen = torch.Generator().manual_seed(seed)
    if tq == tk:
        q, k, v = torch.randn(B, tq, 3, nH, d, generator=gen).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q = torch.randn(B, tq, nH, d, generator=gen).transpose(1, 2)
        k, v = torch.randn(2, B, tk, nH, d, generator=gen).transpose(2, 3).unbind(0)
    bias = (torch.randn(G, hb, tk, tq, generator=gen) * 2).transpose(-2, -1)
    rel_h = rel_w = None
    if hw is not None:
        rel_h = torch.randn(B, nH, tq, hw[0], generator=gen)
        rel_w = torch.randn(B, nH, tq, hw[1], generator=gen)
    g_out = torch.randn(B, nH, tq, d, generator=gen)
    g_lse = torch.randn(B, nH, tq, generator=gen)
    return [q, k, v, rel_h, rel_w, bias], g_out, g_lse


def oracle(q, k, v, rel_h, rel_w, bias, scale):
    """softmax(scale q k^T + rel pos + bias[b % G]) v and the log-sum-exp, written out
    independently of the op (the bias repeated over the batch and heads)."""
    B, nH, tq, _ = q.shape
    G = bias.shape[0]
    s = q @ k.transpose(-2, -1) * scale
    if rel_h is not None:
        H, W = rel_h.shape[-1], rel_w.shape[-1]
        s = s + (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, nH, tq, H * W)
    s = s + bias.repeat(B // G, nH // bias.shape[1], 1, 1)
    return s.softmax(-1) @ v, torch.logsumexp(s, -1)


def _run(fn, tensors, g_out, g_lse, dtype, device):
    """Outputs and gradients of loss = <out, g_out> + <lse, g_lse> with fresh leaves."""
    leaves = [
        t.to(device=device, dtype=dtype).requires_grad_(True) if t is not None else None
        for t in tensors
    ]
    out, lse = fn(*leaves)
    ((out * g_out.to(out)).sum() + (lse * g_lse.to(lse)).sum()).backward()
    return [out, lse] + [t.grad for t in leaves if t is not None]


@pytest.mark.parametrize("device,be", backend_params("attention"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_bias_forward_and_gradients_match_float64(device, be, dtype, case):
    """out, lse and the gradients of q, k, v, (rel_h, rel_w,) bias: within twice the error of
    the torch reference in the same dtype, against the float64 oracle."""
    tensors, g_out, g_lse = _inputs(CASES[case], seed=len(case))
    scale = 0.3
    ref = _run(lambda *t: oracle(*t, scale), tensors, g_out, g_lse, torch.float64, "cpu")
    with sk.backend("torch"):
        plain = _run(lambda *t: OP(*t[:5], scale, t[5]), tensors, g_out, g_lse, dtype, "cpu")
    with sk.backend(be):
        got = _run(lambda *t: OP(*t[:5], scale, t[5]), tensors, g_out, g_lse, dtype, device)
    names = ["out", "lse", "q", "k", "v"] + (["rel_h", "rel_w"] if len(got) == 8 else [])
    names.append("bias")
    assert got[1].dtype == torch.float32
    assert got[-1].shape == tensors[5].shape
    for name, a, b, r in zip(names, got, plain, ref, strict=True):
        assert_matches(a.cpu(), r, b, f"{be} {dtype} {case} {name}")


@pytest.mark.parametrize("device,be", backend_params("attention"))
def test_wrapper_elastic_heads_slice_the_bias(device, be):
    """heads=2 of 3: a full-heads bias is used as bias[:, :2] (the unused head's slice gets no
    gradient); a one-head bias is shared. Against the oracle in float64."""
    gen = torch.Generator().manual_seed(11)
    B, nH, T, d, G = 4, 3, 10, 16, 2
    q, k, v = (torch.randn(B, nH, T, d, generator=gen) for _ in range(3))
    g = torch.randn(B, 2, T, d, generator=gen)
    for hb in (3, 1):
        bias = torch.randn(G, hb, T, T, generator=gen)

        def run(backend, dtype, bias=bias):
            leaves = [t.to(device, dtype).clone().requires_grad_(True) for t in (q, k, v, bias)]
            with sk.backend(backend):
                out = sk.ops.attention(*leaves[:3], heads=2, scale=0.5, bias=leaves[3])
            (out * g.to(out)).sum().backward()
            return [out] + [t.grad for t in leaves]

        leaves64 = [t.double().requires_grad_(True) for t in (q, k, v, bias)]
        b64 = leaves64[3][:, :2] if hb == 3 else leaves64[3]
        out64 = oracle(*(t[:, :2] for t in leaves64[:3]), None, None, b64, 0.5)[0]
        (out64 * g.double()).sum().backward()
        ref = [out64] + [t.grad for t in leaves64]
        plain, got = run("torch", torch.float32), run(be, torch.float32)
        for name, a, b, r in zip(["out", "q", "k", "v", "bias"], got, plain, ref, strict=True):
            assert_matches(a.cpu(), r, b, f"{be} hb={hb} {name}")
        if hb == 3:
            assert (got[4][:, 2:] == 0).all(), "gradient reached the unused head's bias"
        reference = sk.ops.attention_reference(q, k, v, heads=2, scale=0.5, bias=bias)
        assert rel_err(reference, out64) < 1e-6


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(4)
    kw = {"dtype": torch.float64}
    q, k, v = (torch.randn(4, 2, 5, 3, generator=gen, **kw).requires_grad_() for _ in range(3))
    with sk.backend("torch"):
        for G, hb in ((2, 2), (2, 1), (1, 1), (4, 2)):
            bias = torch.randn(G, hb, 5, 5, generator=gen, **kw).requires_grad_()
            assert torch.autograd.gradcheck(
                lambda *t: OP(*t[:3], None, None, 0.7, t[3]), (q, k, v, bias)
            )
        # with SAM's rel pos in the same call, and through the wrapper with heads
        rh = torch.randn(4, 2, 6, 2, generator=gen, **kw).requires_grad_()
        rw = torch.randn(4, 2, 6, 3, generator=gen, **kw).requires_grad_()
        q6, k6, v6 = (torch.randn(4, 2, 6, 3, generator=gen, **kw).requires_grad_() for _ in "qkv")
        bias = torch.randn(2, 2, 6, 6, generator=gen, **kw).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda *t: OP(*t[:5], 0.5, t[5]), (q6, k6, v6, rh, rw, bias)
        )
        bias3 = torch.randn(2, 2, 5, 5, generator=gen, **kw).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda *t: sk.ops.attention(*t[:3], heads=1, bias=t[3]), (q, k, v, bias3)
        )


# ----------------------------------------------------------------------------- op contract


@pytest.mark.parametrize("device,be", backend_params("attention"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(device, be, dtype):
    gen = torch.Generator().manual_seed(5)
    kw = {"dtype": dtype, "device": device}
    q, k, v = (torch.randn(4, 2, 6, 16, generator=gen).to(**kw) for _ in range(3))
    bias = torch.randn(2, 2, 6, 6, generator=gen).to(**kw).requires_grad_(True)
    bias1 = torch.randn(1, 1, 6, 5, generator=gen).to(**kw).requires_grad_(True)
    q.requires_grad_(True)
    with sk.backend(be):
        torch.library.opcheck(OP.default, (q, k, v, None, None, 0.25, bias))
        torch.library.opcheck(OP.default, (q, k[:, :, :5], v[:, :, :5], None, None, 0.25, bias1))
        torch.library.opcheck(OP.default, (q, k, v, None, None, 0.25), {"bias": bias})


@pytest.mark.parametrize("device,be", backend_params("attention"))
def test_frozen_bias_and_empty_batch(device, be):
    """A bias not requiring grad gets none (the d-bias kernel is skipped); an empty batch gives
    an empty output and a zero bias gradient."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 1, 12, 16, generator=gen).to(device) for _ in range(3))
    bias = torch.randn(2, 1, 12, 12, generator=gen).to(device)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    with sk.backend(be):
        OP(*leaves, None, None, 0.25, bias)[0].sum().backward()
    with sk.backend("torch"):
        ref = [t.double().requires_grad_(True) for t in (q, k, v)]
        OP(*ref, None, None, 0.25, bias.double())[0].sum().backward()
    for a, r in zip(leaves, ref, strict=True):
        assert rel_err(a.grad, r.grad) < 1e-5
    e = torch.randn(0, 2, 6, 16, device=device, requires_grad=True)
    eb = torch.randn(3, 2, 6, 6, device=device, requires_grad=True)
    with sk.backend(be):
        out = sk.ops.attention(e, e, e, bias=eb)
        out.sum().backward()
    assert out.shape == (0, 2, 6, 16)
    assert eb.grad is not None and (eb.grad == 0).all()


def test_autocast_casts_the_bias():
    """Under autocast an fp32 bias meets bf16 activations: the op's autocast rule casts it (the
    wrapper, like its rel-pos tables, wants q's dtype)."""
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 2, 7, 16, generator=gen) for _ in range(3))
    bias = torch.randn(1, 2, 7, 7, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = OP(q.bfloat16(), k.bfloat16(), v.bfloat16(), None, None, 16**-0.5, bias)[0]
    assert out.dtype == torch.bfloat16
    ref = oracle(q.double(), k.double(), v.double(), None, None, bias.double(), 16**-0.5)[0]
    assert rel_err(out, ref) < 2e-2


def test_triton_never_allocates_b_by_h_by_t_by_t():
    """Every tensor any torch op creates in the Triton forward and backward with a bias holds at
    most the bias's own G * H * T * T elements (its gradient), never B * nH * T * T."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reason = sk.backends.unavailable_reason("triton", torch.device(device))
    if reason:
        pytest.skip(reason)
    tensors, _, _ = _inputs(CASES["swin49_g2"])
    leaves = [t.to(device).requires_grad_(True) for t in tensors if t is not None]
    B, nH, T = leaves[0].shape[:3]
    bias = leaves[3]

    with sk.backend("triton"), LargestTensor() as largest:
        sk.ops.attention(*leaves[:3], bias=bias).sum().backward()
    assert bias.grad is not None and bias.grad.abs().sum() > 0
    assert bias.numel() < B * nH * T * T
    assert 0 < largest.numel <= bias.numel(), f"a tensor of {largest.numel} elements"


@pytest.mark.parametrize("device,be", backend_params("attention"))
def test_torch_compile_fullgraph_with_bias(device, be):
    gen = torch.Generator().manual_seed(8)
    ins = [torch.randn(4, 2, 9, 16, generator=gen).to(device) for _ in range(3)]
    ins.append(torch.randn(2, 2, 9, 9, generator=gen).to(device))

    def f(q, k, v, bias):
        return sk.ops.attention(q, k, v, bias=bias).square().sum()

    def grads(fn, backend):
        leaves = [t.clone().requires_grad_(True) for t in ins]
        with sk.backend(backend):
            fn(*leaves).backward()
        return [t.grad for t in leaves]

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for a, b in zip(grads(compiled, be), grads(f, be), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- bad input


def _ok():
    q, k, v = (torch.randn(4, 2, 6, 4) for _ in range(3))
    return {"q": q, "k": k, "v": v, "bias": torch.randn(2, 2, 6, 6)}


BAD = [
    (lambda a: {**a, "bias": a["bias"].double()}, TypeError, "bias has dtype torch.float64"),
    (lambda a: {**a, "bias": a["bias"].to("meta")}, ValueError, "bias is on meta"),
    (lambda a: {**a, "bias": torch.randn(2, 6, 6)}, ValueError, r"bias must be 4-D \(G, nH or 1"),
    (lambda a: {**a, "bias": torch.randn(2, 3, 6, 6)}, ValueError, r"\(G, 2 or 1, 6, 6\)"),
    (lambda a: {**a, "bias": torch.randn(2, 2, 6, 5)}, ValueError, r"got shape \(2, 2, 6, 5\)"),
    (lambda a: {**a, "bias": torch.randn(3, 2, 6, 6)}, ValueError, "B = 4 is not a multiple of G"),
    (lambda a: {**a, "bias": torch.randn(0, 2, 6, 6)}, ValueError, "G = 0 groups"),
]


@pytest.mark.parametrize("mutate,exc,match", BAD)
def test_op_bad_bias_is_a_clear_error(mutate, exc, match):
    a = mutate(_ok())
    with pytest.raises(exc, match=match):
        OP(a["q"], a["k"], a["v"], None, None, 0.5, a["bias"])


@pytest.mark.parametrize("mutate,exc,match", BAD)
def test_wrapper_bad_bias_is_a_clear_error(mutate, exc, match):
    with pytest.raises(exc, match=match):
        sk.ops.attention(**mutate(_ok()))


def test_wrapper_bias_not_a_tensor_and_heads_check_the_full_bias():
    """(The op's schema itself refuses a non-tensor bias.) With heads, the bias is checked
    against q's full head count before it is sliced."""
    a = _ok()
    with pytest.raises(TypeError, match="bias must be a torch.Tensor or None"):
        sk.ops.attention(a["q"], a["k"], a["v"], bias=[1.0])
    with pytest.raises(ValueError, match=r"\(G, 2 or 1, 6, 6\)"):
        sk.ops.attention(
            a["q"], a["k"], a["v"], heads=1, bias=torch.randn(2, 1, 6, 6)[:, [0, 0, 0]]
        )
