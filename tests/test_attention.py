"""Attention with SAM's decomposed rel-pos bias: every backend against segment-anything's own
formula in float64, gradients, the log-sum-exp output, opcheck, bad inputs, and no T x T tensor
in the Triton path."""

from __future__ import annotations

import pytest
import torch
from helpers.dispatch import LargestTensor
from helpers.numerics import DTYPES, assert_matches, backend_params, rel_err

import supernet_kernels as sk
from supernet_kernels.backends import BackendUnavailable
from supernet_kernels.ops.attention import get_rel_pos

sam = pytest.importorskip("segment_anything.modeling.image_encoder")

OP = torch.ops.supernet_kernels.attention

# name: (B, nH, heads, Tq, Tk, d, hw, (Lh, Lw)). Tables of 2 * size - 1 rows are used as they
# are, other lengths are resized by linear interpolation (get_rel_pos). d = 80 pads to 128.
CASES = {
    "plain_tq13_tk29": (2, 3, None, 13, 29, 16, None, None),
    "window4x4_resized": (2, 2, None, 16, 16, 32, (4, 4), (7, 9)),
    "global8x8_heads2of3": (1, 3, 2, 64, 64, 16, (8, 8), (15, 15)),
    "rect3x5_d80": (1, 2, None, 15, 15, 80, (3, 5), (5, 6)),
    "window7x7": (1, 1, None, 49, 49, 32, (7, 7), (13, 13)),
}
GRAD_CASES = ["plain_tq13_tk29", "window4x4_resized", "global8x8_heads2of3", "rect3x5_d80"]


def _inputs(case, dtype, device, seed=0):
    """q, k, v as SAM makes them (strided views of one qkv tensor), and the tables."""
    B, nH, heads, tq, tk, d, hw, lens = case
    gen = torch.Generator().manual_seed(seed)
    kw = {"dtype": dtype, "device": device}
    if tq == tk:
        qkv = torch.randn(B, tq, 3, nH, d, generator=gen).to(**kw).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
    else:
        q = torch.randn(B, tq, nH, d, generator=gen).to(**kw).transpose(1, 2)
        k = torch.randn(B, tk, nH, d, generator=gen).to(**kw).transpose(1, 2)
        v = torch.randn(B, tk, nH, d, generator=gen).to(**kw).transpose(1, 2)
    tables = {}
    if hw is not None:
        tables = {
            "rel_pos_h": (torch.randn(lens[0], d, generator=gen) * d**-0.5).to(**kw),
            "rel_pos_w": (torch.randn(lens[1], d, generator=gen) * d**-0.5).to(**kw),
            "hw": hw,
        }
    return q, k, v, tables, heads


def sam_oracle(q, k, v, rel_pos_h=None, rel_pos_w=None, hw=None, heads=None):
    """segment-anything's Attention.forward from q, k, v, in float64."""
    q, k, v = (t.double() for t in (q, k, v))
    if heads is not None:
        q, k, v = q[:, :heads], k[:, :heads], v[:, :heads]
    B, nH, tq, d = q.shape
    qf, kf, vf = (t.reshape(B * nH, t.shape[2], d) for t in (q, k, v))
    attn = (qf * d**-0.5) @ kf.transpose(-2, -1)
    if rel_pos_h is not None:
        attn = sam.add_decomposed_rel_pos(attn, qf, rel_pos_h.double(), rel_pos_w.double(), hw, hw)
    return (attn.softmax(dim=-1) @ vf).view(B, nH, tq, d)


def _leaves(q, k, v, tables):
    """Fresh leaf tensors (q, k, v, rel_pos_h, rel_pos_w) requiring grad, with the kwargs."""
    ts = [q, k, v] + [tables[n] for n in ("rel_pos_h", "rel_pos_w") if n in tables]
    ts = [t.detach().clone().requires_grad_(True) for t in ts]
    kw = {"hw": tables["hw"], "rel_pos_h": ts[3], "rel_pos_w": ts[4]} if tables else {}
    return ts, kw


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("device,be", backend_params("attention"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_segment_anything_float64(device, be, dtype, case):
    q, k, v, tables, heads = _inputs(CASES[case], dtype, device)
    ref64 = sam_oracle(q, k, v, heads=heads, **tables)
    torch_out = sk.ops.attention_reference(q, k, v, heads=heads, **tables)
    with sk.backend(be):
        out = sk.ops.attention(q, k, v, heads=heads, **tables)
    assert out.device.type == device
    assert_matches(out, ref64.to(device), torch_out, f"{be} {dtype} {case}")


def test_get_rel_pos_is_segment_anythings():
    for length, size in ((7, 4), (9, 4), (3, 5), (27, 14), (13, 7)):
        table = torch.randn(length, 8, dtype=torch.float64)
        torch.testing.assert_close(
            get_rel_pos(size, size, table), sam.get_rel_pos(size, size, table), rtol=0, atol=0
        )


LARGE = {
    # ViT-B/16 at 224: 197 tokens (a class token), not a multiple of any tile.
    "vit_197": (1, 1, None, 197, 197, 64, None, None),
    # SAM ViT-B's 14 x 14 windows, tables of 2 * 14 - 1 rows.
    "sam_window14x14": (1, 1, None, 196, 196, 64, (14, 14), (27, 27)),
}


@pytest.mark.parametrize("device,be", backend_params("attention"))
@pytest.mark.parametrize("case", list(LARGE))
def test_large_forward_and_backward_fp16(device, be, case):
    q, k, v, tables, _ = _inputs(LARGE[case], torch.float16, device, seed=197)
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(5)).half().to(device)
    ref_leaves, ref_kw = _leaves(*(t.double() for t in (q, k, v)), _double(tables))
    ref64 = sam_oracle(*ref_leaves[:3], **ref_kw)
    ref64.backward(g.double())
    plain_leaves, plain_kw = _leaves(q, k, v, tables)
    torch_out = sk.ops.attention_reference(*plain_leaves[:3], **plain_kw)
    torch_out.backward(g)
    leaves, kw = _leaves(q, k, v, tables)
    with sk.backend(be):
        out = sk.ops.attention(*leaves[:3], **kw)
        out.backward(g)
    assert_matches(out, ref64.to(device), torch_out, f"{be} {case} out")
    names = ["q", "k", "v", "rel_pos_h", "rel_pos_w"]
    for name, a, b, r in zip(names, leaves, plain_leaves, ref_leaves, strict=False):
        assert_matches(a.grad, r.grad.to(device), b.grad, f"{be} {case} grad {name}")


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("device,be", backend_params("attention"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GRAD_CASES)
def test_gradients_match_float64(device, be, dtype, case):
    """Gradients to q, k, v and both tables, against autograd of segment-anything's formula in
    float64; unused heads get zero gradient."""
    q, k, v, tables, heads = _inputs(CASES[case], dtype, device, seed=1)
    B, tq, d = q.shape[0], q.shape[2], q.shape[3]
    h_used = heads or q.shape[1]
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(B, h_used, tq, d, generator=gen).to(dtype=dtype, device=device)

    ref_leaves, ref_kw = _leaves(*(t.double() for t in (q, k, v)), _double(tables))
    sam_oracle(*ref_leaves[:3], heads=heads, **ref_kw).backward(g.double())
    plain_leaves, plain_kw = _leaves(q, k, v, tables)
    sk.ops.attention_reference(*plain_leaves[:3], heads=heads, **plain_kw).backward(g)
    leaves, kw = _leaves(q, k, v, tables)
    with sk.backend(be):
        sk.ops.attention(*leaves[:3], heads=heads, **kw).backward(g)
    names = ["q", "k", "v", "rel_pos_h", "rel_pos_w"]
    for name, a, b, r in zip(names, leaves, plain_leaves, ref_leaves, strict=False):
        assert_matches(a.grad, r.grad.to(device), b.grad, f"grad {name} {be} {dtype} {case}")
    if heads is not None:
        for t in leaves[:3]:
            assert (t.grad[:, heads:] == 0).all(), "gradient reached an unused head"


def _double(tables):
    return {n: (t.double() if torch.is_tensor(t) else t) for n, t in tables.items()}


@pytest.mark.parametrize("device,be", backend_params("attention"))
@pytest.mark.parametrize("with_rel", [True, False], ids=["rel", "norel"])
def test_op_lse_output_and_its_gradient(device, be, with_rel):
    """The op's second output is the fp32 log-sum-exp of each query's scores; gradients of a
    loss on both outputs reach q, k, v, rel_h and rel_w."""
    gen = torch.Generator().manual_seed(3)
    B, nH, H, W, d = 1, 2, 4, 5, 16
    T = H * W
    ins = [torch.randn(B, nH, T, d, generator=gen) for _ in range(3)]
    if with_rel:
        ins += [torch.randn(B, nH, T, H, generator=gen), torch.randn(B, nH, T, W, generator=gen)]
    else:
        ins += [None, None]
    g_out = torch.randn(B, nH, T, d, generator=gen)
    g_lse = torch.randn(B, nH, T, generator=gen)

    def run(tensors, backend):
        leaves = [t.to(device).requires_grad_(True) if t is not None else None for t in tensors]
        with sk.backend(backend):
            out, lse = OP(*leaves, 0.3)
            ((out * g_out.to(out)).sum() + (lse * g_lse.to(lse)).sum()).backward()
        return [out, lse] + [t.grad for t in leaves if t is not None]

    ref = run([t.double() if t is not None else None for t in ins], "torch")
    plain = run(ins, "torch")
    got = run(ins, be)
    assert got[1].dtype == torch.float32
    for name, a, b, r in zip(
        ["out", "lse", "q", "k", "v", "rel_h", "rel_w"], got, plain, ref, strict=False
    ):
        assert_matches(a, r, b, f"{be} {name}")
    s = ins[0].double() @ ins[1].double().transpose(-2, -1) * 0.3
    if with_rel:
        s = s + (ins[3].double()[..., :, None] + ins[4].double()[..., None, :]).view(B, nH, T, T)
    assert rel_err(got[1], torch.logsumexp(s, -1)) < 1e-6


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(4)
    kw = {"dtype": torch.float64}
    q, k, v = (torch.randn(1, 3, 6, 4, generator=gen, **kw).requires_grad_() for _ in range(3))
    rph = torch.randn(5, 4, generator=gen, **kw).requires_grad_()  # resized to 3 rows
    rpw = torch.randn(4, 4, generator=gen, **kw).requires_grad_()  # resized to 5 rows
    with sk.backend("torch"):
        assert torch.autograd.gradcheck(
            lambda *t: sk.ops.attention(*t, hw=(2, 3), heads=2, scale=0.7), (q, k, v, rph, rpw)
        )
        rh = torch.randn(1, 2, 6, 2, generator=gen, **kw).requires_grad_()
        rw = torch.randn(1, 2, 6, 3, generator=gen, **kw).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda *t: OP(*t, 0.5), (q[:, :2], k[:, :2], v[:, :2], rh, rw)
        )
        assert torch.autograd.gradcheck(
            lambda *t: OP(*t, None, None, 0.5), (q, k[:, :, :5], v[:, :, :5])
        )


# ----------------------------------------------------------------------------- op contract


@pytest.mark.parametrize("device,be", backend_params("attention"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(device, be, dtype):
    gen = torch.Generator().manual_seed(5)
    kw = {"dtype": dtype, "device": device}
    q, k, v = (torch.randn(1, 2, 6, 16, generator=gen).to(**kw) for _ in range(3))
    rh = torch.randn(1, 2, 6, 2, generator=gen).to(**kw)
    rw = torch.randn(1, 2, 6, 3, generator=gen).to(**kw)
    q.requires_grad_(True)
    rh.requires_grad_(True)
    with sk.backend(be):
        torch.library.opcheck(OP.default, (q, k, v, rh, rw, 0.25))
        torch.library.opcheck(OP.default, (q, k[:, :, :5], v[:, :, :5], None, None, 0.25))


@pytest.mark.parametrize("device,be", backend_params("attention"))
def test_empty_batch(device, be):
    q = torch.randn(0, 2, 6, 16, device=device)
    with sk.backend(be):
        out = sk.ops.attention(q, q, q)
    assert out.shape == (0, 2, 6, 16)


def test_cuda_backend_has_no_kernel_yet():
    q = torch.randn(1, 1, 4, 16)
    with sk.backend("cuda"), pytest.raises(BackendUnavailable):
        sk.ops.attention(q, q, q)


def test_triton_never_allocates_t_by_t():
    """Every tensor any torch op creates in the Triton forward and backward (wrapper included)
    has fewer elements than one head's T x T scores."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reason = sk.backends.unavailable_reason("triton", torch.device(device))
    if reason:
        pytest.skip(reason)
    q, k, v, tables, heads = _inputs(CASES["global8x8_heads2of3"], torch.float32, device)
    leaves, kw = _leaves(q, k, v, tables)
    T = q.shape[2]

    with sk.backend("triton"), LargestTensor() as largest:
        sk.ops.attention(*leaves[:3], heads=heads, **kw).sum().backward()
    assert leaves[3].grad is not None and leaves[3].grad.abs().sum() > 0
    assert 0 < largest.numel < T * T, f"a tensor of {largest.numel} elements (T * T = {T * T})"


# ----------------------------------------------------------------------------- bad input


def _ok():
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    return {
        "q": q,
        "k": k,
        "v": v,
        "rel_pos_h": torch.randn(3, 4),
        "rel_pos_w": torch.randn(5, 4),
        "hw": (2, 3),
        "heads": None,
        "scale": None,
    }


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: {**a, "q": [1.0]}, TypeError, "q must be a torch.Tensor"),
        (lambda a: {**a, "q": a["q"].long()}, TypeError, "q must be a floating-point"),
        (lambda a: {**a, "k": a["k"].double()}, TypeError, "k has dtype torch.float64"),
        (lambda a: {**a, "v": a["v"].to("meta")}, ValueError, "v is on meta"),
        (lambda a: {**a, "q": a["q"][0]}, ValueError, r"q must be 4-D \(B, nH, T, d\)"),
        (lambda a: {**a, "k": torch.randn(2, 2, 6, 4)}, ValueError, r"k has \(B, nH\)"),
        (lambda a: {**a, "v": torch.randn(1, 3, 6, 4)}, ValueError, r"v has \(B, nH\)"),
        (lambda a: {**a, "k": torch.randn(1, 2, 6, 5)}, ValueError, "k has head dim 5"),
        (lambda a: {**a, "v": torch.randn(1, 2, 5, 4)}, ValueError, "v has 5 tokens but k has 6"),
        (lambda a: {**a, "heads": 0}, ValueError, r"heads must be in 1\.\.2"),
        (lambda a: {**a, "heads": 3}, ValueError, r"heads must be in 1\.\.2"),
        (lambda a: {**a, "heads": 1.0}, TypeError, "heads must be an int"),
        (lambda a: {**a, "scale": "x"}, TypeError, "scale must be a float"),
        (lambda a: {**a, "hw": None}, ValueError, r"hw=\(H, W\) is required"),
        (lambda a: {**a, "hw": (2, 4)}, ValueError, r"hw = \(2, 4\) gives H \* W = 8"),
        (lambda a: {**a, "hw": (2,)}, TypeError, "hw must be a pair"),
        (lambda a: {**a, "rel_pos_w": None}, ValueError, "rel_pos_h and rel_pos_w must be given"),
        (lambda a: {**a, "rel_pos_h": torch.randn(3, 5)}, ValueError, r"rel_pos_h must be 2-D"),
        (lambda a: {**a, "rel_pos_w": torch.randn(5)}, ValueError, r"rel_pos_w must be 2-D"),
        (lambda a: {**a, "rel_pos_w": torch.randn(5, 4).half()}, TypeError, "rel_pos_w has dtype"),
        (lambda a: {**a, "rel_pos_h": 1.0}, TypeError, "rel_pos_h must be a torch.Tensor"),
        (
            lambda a: {**a, "k": torch.randn(1, 2, 7, 4), "v": torch.randn(1, 2, 7, 4)},
            ValueError,
            "token counts must be equal",
        ),
    ],
)
def test_wrapper_bad_input_is_a_clear_error(mutate, exc, match):
    args = mutate(_ok())
    with pytest.raises(exc, match=match):
        sk.ops.attention(**args)


def _op_ok():
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    return {
        "q": q,
        "k": k,
        "v": v,
        "rel_h": torch.randn(1, 2, 6, 2),
        "rel_w": torch.randn(1, 2, 6, 3),
    }


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: {**a, "rel_w": None}, ValueError, "rel_h and rel_w must be given together"),
        (lambda a: {**a, "rel_h": torch.randn(1, 2, 5, 2)}, ValueError, r"rel_h must be \(B, nH"),
        (lambda a: {**a, "rel_w": torch.randn(2, 6, 3)}, ValueError, r"rel_w must be \(B, nH"),
        (lambda a: {**a, "rel_w": torch.randn(1, 2, 6, 4)}, ValueError, "H \\* W = 8 != 6"),
        (lambda a: {**a, "rel_h": a["rel_h"].half()}, TypeError, "rel_h has dtype"),
        (lambda a: {**a, "rel_w": a["rel_w"].to("meta")}, ValueError, "rel_w is on meta"),
        (
            lambda a: {**a, "k": torch.randn(1, 2, 7, 4), "v": torch.randn(1, 2, 7, 4)},
            ValueError,
            "token counts must be equal",
        ),
        (
            lambda a: {**a, "k": torch.randn(1, 2, 0, 4), "v": torch.randn(1, 2, 0, 4)},
            ValueError,
            "k must have at least one token",
        ),
        (lambda a: {**a, "q": a["q"].int()}, TypeError, "q must be a floating-point"),
        (lambda a: {**a, "v": torch.randn(1, 2, 6, 3)}, ValueError, "v has head dim 3"),
    ],
)
def test_op_bad_input_is_a_clear_error(mutate, exc, match):
    args = mutate(_op_ok())
    with pytest.raises(exc, match=match):
        OP(*args.values(), 0.5)


@pytest.mark.parametrize("device,be", backend_params("attention"))
def test_frozen_bias_factors_still_give_q_k_v_gradients(device, be):
    """rel_h / rel_w not requiring grad: the Triton backward skips their gradients."""
    gen = torch.Generator().manual_seed(6)
    ins = [torch.randn(1, 1, 12, 16, generator=gen).to(device) for _ in range(3)]
    rh = torch.randn(1, 1, 12, 3, generator=gen).to(device)
    rw = torch.randn(1, 1, 12, 4, generator=gen).to(device)

    def grads(backend, dtype):
        leaves = [t.to(dtype).requires_grad_(True) for t in ins]
        with sk.backend(backend):
            OP(*leaves, rh.to(dtype), rw.to(dtype), 0.25)[0].sum().backward()
        return [t.grad for t in leaves]

    ref, plain, got = (
        grads("torch", torch.float64),
        grads("torch", torch.float32),
        grads(be, torch.float32),
    )
    for name, a, b, r in zip("qkv", got, plain, ref, strict=True):
        assert_matches(a, r, b, f"{be} grad {name}")


@pytest.mark.parametrize("device,be", backend_params("attention"))
def test_torch_compile_fullgraph_follows_the_backend(device, be):
    """One graph, compiled under "torch", runs forward and backward on whichever backend is
    chosen when it runs (the backward is an op that resolves its backend itself)."""
    gen = torch.Generator().manual_seed(8)
    ins = [torch.randn(2, 3, 12, 16, generator=gen).to(device) for _ in range(3)]
    ins += [
        torch.randn(5, 16, generator=gen).to(device),
        torch.randn(7, 16, generator=gen).to(device),
    ]

    def f(q, k, v, rph, rpw):
        return sk.ops.attention(q, k, v, rph, rpw, hw=(3, 4), heads=2).square().sum()

    def grads(fn, backend):
        leaves = [t.clone().requires_grad_(True) for t in ins]
        with sk.backend(backend):
            fn(*leaves).backward()
        return [t.grad for t in leaves]

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    grads(compiled, "torch")
    for a, b in zip(grads(compiled, be), grads(f, be), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
