"""The fused MLP block op: ``torch.ops.supernet_kernels.lowrank_mlp``.

    y = fc2(act(fc1(x)))

Each linear is low-rank, ``x @ v[:rank, :k].T @ u[:n, :rank].T``, or dense, ``x @ w[:n, :k].T``
(``weight`` given, ``u`` / ``v`` None, rank 0), with an optional bias. The hidden width is
elastic: fc1 produces the first ``hidden`` units (rows of u1 / w1), fc2 reads as many (columns of
v2 / w2). ``out_features`` narrows fc2's output (default: all rows of u2 / w2). ``act`` is
"gelu" (exact, erf: torch's and timm's default), "gelu_tanh" (timm's GELUTanh,
nn.GELU(approximate="tanh")) or "relu".

The Triton implementation runs a block with both linears low-rank (ranks <= 128, M <= 4096)
as one launch that never writes the hidden activations (kernels/triton_lowrank_mlp.py);
otherwise as two launches back to back, with no host round trip between them: fc1 with the
activation in its epilogue (the pre-activation never reaches memory), then fc2. At one
ViT-B image (M = 197, 768 -> 3072 -> 768) the block is launch-bound: dense, torch runs three
kernels (fc1, GELU, fc2, ~3.5 us each graph-replayed, ANCHORS) on 9.4 MB of weights; at
ranks <= 128 ours runs one on < 2 MB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends, registry

OP = "supernet_kernels::lowrank_mlp"
ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _is_int(value) -> bool:
    return isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool)


def _check_layer(name: str, x, u, v, w, rank, bias) -> tuple[int, int, int]:
    """Validate one linear's arguments; return (rows, cols, max rank) of its weight."""
    where = f"lowrank_mlp: {name}"
    tensors = [(f"{name}_u", u), (f"{name}_v", v), (f"{name}_weight", w), (f"{name}_bias", bias)]
    for tname, t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"lowrank_mlp: {tname} must be a torch.Tensor or None, got {type(t).__name__}"
            )
        if t.dtype != x.dtype:
            raise TypeError(f"lowrank_mlp: {tname} has dtype {t.dtype}, expected x's {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"lowrank_mlp: {tname} is on {t.device}, expected x's {x.device}")
    if not _is_int(rank):
        raise TypeError(f"{where}_rank must be an int, got {type(rank).__name__}")
    if w is not None:
        if u is not None or v is not None:
            raise ValueError(
                f"{where}: give either {name}_weight (dense) or {name}_u and {name}_v "
                "(low-rank), not both"
            )
        if w.dim() != 2:
            raise ValueError(f"{where}_weight must be 2-D (out, in), got {tuple(w.shape)}")
        if rank != 0:
            raise ValueError(f"{where}_rank must be 0 for a dense {name} ({name}_weight given)")
        return w.shape[0], w.shape[1], 0
    if u is None or v is None:
        raise ValueError(
            f"{where}: needs {name}_weight (dense) or both {name}_u and {name}_v (low-rank)"
        )
    if u.dim() != 2:
        raise ValueError(f"{where}_u must be 2-D (out, R_max), got shape {tuple(u.shape)}")
    if v.dim() != 2:
        raise ValueError(f"{where}_v must be 2-D (R_max, in), got shape {tuple(v.shape)}")
    r_max = min(u.shape[1], v.shape[0])
    if not 1 <= rank <= r_max:
        raise ValueError(
            f"{where}_rank must be in 1..{r_max} ({name}_u has {u.shape[1]} columns, "
            f"{name}_v {v.shape[0]} rows), got {rank}"
        )
    return u.shape[0], v.shape[1], r_max


def check_mlp_args(
    x, u1, v1, w1, rank1, b1, u2, v2, w2, rank2, b2, hidden, out_features, act
) -> int:
    """Validate the arguments; return fc2's output width n. Errors name the argument."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"lowrank_mlp: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"lowrank_mlp: x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("lowrank_mlp: x must have at least one dimension (..., K)")
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ValueError(f"lowrank_mlp: act must be one of {ACTIVATIONS}, got {act!r}")
    h1, k1, _ = _check_layer("fc1", x, u1, v1, w1, rank1, b1)
    n2, h2, _ = _check_layer("fc2", x, u2, v2, w2, rank2, b2)
    if x.shape[-1] != k1:
        raise ValueError(
            f"lowrank_mlp: x has {x.shape[-1]} features in its last dimension but fc1 takes "
            f"{k1} ({'fc1_weight' if w1 is not None else 'fc1_v'} columns); they must match"
        )
    if not _is_int(hidden):
        raise TypeError(f"lowrank_mlp: hidden must be an int, got {type(hidden).__name__}")
    if not 1 <= hidden <= min(h1, h2):
        raise ValueError(
            f"lowrank_mlp: hidden must be in 1..{min(h1, h2)} (fc1 has {h1} outputs, fc2 "
            f"{h2} inputs), got {hidden}"
        )
    if out_features is None:
        n = n2
    elif not _is_int(out_features):
        raise TypeError(
            f"lowrank_mlp: out_features must be an int or None, got {type(out_features).__name__}"
        )
    elif not 1 <= out_features <= n2:
        raise ValueError(f"lowrank_mlp: out_features must be in 1..{n2}, got {out_features}")
    else:
        n = out_features
    for bname, b, need in (("fc1_bias", b1, hidden), ("fc2_bias", b2, n)):
        if b is not None and (b.dim() != 1 or b.shape[0] < need):
            raise ValueError(
                f"lowrank_mlp: {bname} must be 1-D with at least {need} elements, "
                f"got shape {tuple(b.shape)}"
            )
    return n


def _activation(h: torch.Tensor, act: str) -> torch.Tensor:
    if act == "gelu":
        return F.gelu(h)
    if act == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    return F.relu(h)


def _linear_reference(x, u, v, w, rank, bias, n: int, k: int):
    b = bias[:n] if bias is not None else None
    if w is not None:
        return F.linear(x, w[:n, :k], b)
    return F.linear(F.linear(x, v[:rank, :k]), u[:n, :rank], b)


def lowrank_mlp_reference(
    x, u1, v1, w1, rank1, b1, u2, v2, w2, rank2, b2, hidden, out_features=None, act="gelu"
):
    """The pure-PyTorch definition (the CPU path and the test reference)."""
    n = (u2 if w2 is None else w2).shape[0] if out_features is None else out_features
    h = _linear_reference(x, u1, v1, w1, rank1, b1, hidden, x.shape[-1])
    return _linear_reference(_activation(h, act), u2, v2, w2, rank2, b2, n, hidden)


def _triton_impl(x2, u1, v1, w1, rank1, b1, u2, v2, w2, rank2, b2, hidden, n, act):
    from ..kernels import triton_lowrank as tk
    from ..kernels import triton_lowrank_mlp as tkm

    if w1 is None and w2 is None and tkm.fits(x2.shape[0], rank1, rank2):
        return tkm.lowrank_mlp(x2, u1, v1, rank1, b1, u2, v2, rank2, b2, hidden, n, act)
    if w1 is None:
        h = tk.lowrank_linear(x2, u1, v1, rank1, hidden, b1, act=act)
    else:
        h = tk.dense_linear(x2, w1[:hidden], b1, act=act)
    if w2 is None:
        return tk.lowrank_linear(h, u2, v2[:, :hidden], rank2, n, b2)
    return tk.dense_linear(h, w2[:n, :hidden], b2)


# ------------------------------------------------------------------ registered implementations
# Each has the op's signature (x any leading dims; out_features resolved by the op).


@registry.register("lowrank_mlp", "torch", kernel=False, reference=True)
def _torch_impl(x, u1, v1, w1, rank1, b1, u2, v2, w2, rank2, b2, hidden, out_features=None,
                act="gelu"):  # fmt: skip
    """The definition: fc1, the activation and fc2 as torch ops (the CPU path and oracle)."""
    return lowrank_mlp_reference(x, u1, v1, w1, rank1, b1, u2, v2, w2, rank2, b2, hidden,
                                 out_features, act)  # fmt: skip


# The same computation as a GPU path (cuBLAS GEMMs on the slices and torch's activation): what
# the unfused block runs, so what auto falls back to where no table covers the fused kernel.
registry.register("lowrank_mlp", "torch_unfused", kernel=False, fallback=0)(_torch_impl)


@registry.register("lowrank_mlp", "triton", kernel=True, doc="our Triton kernels")
def _triton_registered(x, u1, v1, w1, rank1, b1, u2, v2, w2, rank2, b2, hidden, out_features=None,
                       act="gelu"):  # fmt: skip
    """One fused launch where both linears are low-rank and it fits, else two back to back."""
    n = (u2 if w2 is None else w2).shape[0] if out_features is None else out_features
    k = x.shape[-1]
    x2 = x.reshape(x.numel() // k if k else 0, k)
    y = _triton_impl(x2, u1, v1, w1, rank1, b1, u2, v2, w2, rank2, b2, hidden, n, act)
    return y.reshape(*x.shape[:-1], n)


@torch.library.custom_op(OP, mutates_args=())
def _lowrank_mlp_op(
    x: torch.Tensor,
    fc1_u: torch.Tensor | None,
    fc1_v: torch.Tensor | None,
    fc1_weight: torch.Tensor | None,
    fc1_rank: int,
    fc1_bias: torch.Tensor | None,
    fc2_u: torch.Tensor | None,
    fc2_v: torch.Tensor | None,
    fc2_weight: torch.Tensor | None,
    fc2_rank: int,
    fc2_bias: torch.Tensor | None,
    hidden: int,
    out_features: int | None = None,
    act: str = "gelu",
) -> torch.Tensor:
    args = (x, fc1_u, fc1_v, fc1_weight, fc1_rank, fc1_bias)
    args += (fc2_u, fc2_v, fc2_weight, fc2_rank, fc2_bias, hidden)
    n = check_mlp_args(*args, out_features, act)
    k = x.shape[-1]
    m = x.numel() // k if k else 0
    impl = backends.select("lowrank_mlp", x.device, x.dtype, m=m, rank=max(fc1_rank, fc2_rank))
    return impl.impl.fn(*args, n, act)


@_lowrank_mlp_op.register_fake
def _(x, u1, v1, w1, rank1, b1, u2, v2, w2, rank2, b2, hidden, out_features=None, act="gelu"):
    n = check_mlp_args(x, u1, v1, w1, rank1, b1, u2, v2, w2, rank2, b2, hidden, out_features, act)
    return x.new_empty((*x.shape[:-1], n))


_TENSOR_ARGS = (0, 1, 2, 3, 5, 6, 7, 8, 10)  # positions of the (optional) tensor inputs


def _setup_context(ctx, inputs, output):
    ctx.others = {i: v for i, v in enumerate(inputs) if i not in _TENSOR_ARGS}
    ctx.present = [i for i in _TENSOR_ARGS if inputs[i] is not None]
    ctx.save_for_backward(*(inputs[i] for i in ctx.present))


def _backward(ctx, grad):
    """Recomputes the block with the reference under autograd and differentiates it: the
    hidden activations are not kept from the forward (at M = 16384, hidden 3072 they would be
    100 MB per block), and each weight's gradient is zero outside its active slice."""
    saved = dict(zip(ctx.present, ctx.saved_tensors, strict=True))
    wants = [i for i in ctx.present if ctx.needs_input_grad[i]]
    args = []
    for i in range(14):
        if i in ctx.others:
            args.append(ctx.others[i])
        elif i in saved:
            t = saved[i].detach()
            args.append(t.requires_grad_(True) if i in wants else t)
        else:
            args.append(None)
    with torch.enable_grad():
        y = lowrank_mlp_reference(*args)
        got = torch.autograd.grad(y, [args[i] for i in wants], grad) if wants else ()
    grads: list[torch.Tensor | None] = [None] * 14
    for i, g in zip(wants, got, strict=True):
        grads[i] = g
    return tuple(grads)


_lowrank_mlp_op.register_autograd(_backward, setup_context=_setup_context)


def lowrank_mlp(
    x,
    fc1_u=None,
    fc1_v=None,
    fc1_weight=None,
    fc1_rank: int = 0,
    fc1_bias=None,
    fc2_u=None,
    fc2_v=None,
    fc2_weight=None,
    fc2_rank: int = 0,
    fc2_bias=None,
    *,
    hidden: int,
    out_features: int | None = None,
    act: str = "gelu",
):
    """``fc2(act(fc1(x)))`` with low-rank (``u``, ``v``, ``rank``) or dense (``weight``) linears.

    Args:
        x: (..., K) input.
        fc1_u, fc1_v, fc1_rank: fc1 as u1 (H_max, R1) and v1 (R1, K), ``u1[:hidden, :rank]``
            and ``v1[:rank]`` read; or fc1_weight (H_max, K), ``[:hidden]`` read (rank 0).
        fc1_bias: optional (>= hidden,).
        fc2_u, fc2_v, fc2_rank: fc2 as u2 (N, R2) and v2 (R2, H), ``v2[:rank, :hidden]`` read;
            or fc2_weight (N, H), ``[:, :hidden]`` read.
        fc2_bias: optional (>= out,).
        hidden: active hidden width. out_features: fc2's active output width (default N).
        act: "gelu", "gelu_tanh" or "relu".
    """
    args = (x, fc1_u, fc1_v, fc1_weight, fc1_rank, fc1_bias)
    args += (fc2_u, fc2_v, fc2_weight, fc2_rank, fc2_bias, hidden, out_features, act)
    check_mlp_args(*args)
    return torch.ops.supernet_kernels.lowrank_mlp(*args)
