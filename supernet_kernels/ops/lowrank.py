"""The sliced low-rank GEMM op: ``torch.ops.supernet_kernels.lowrank_linear``.

    y = x @ v[:rank].T @ u[:n, :rank].T + bias[:n],   n = out_features or u.shape[0]

u is (N_max, R_max), v is (R_max, K), x is (..., K). Every slice is a strided view read in
place; v may itself be a column slice of a wider matrix (elastic input width). Gradients reach
x, u, v and bias, and are zero outside the active slices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends, registry

OP = "supernet_kernels::lowrank_linear"
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _is_int(value) -> bool:
    return isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool)


def check_lowrank_args(x, u, v, rank, out_features, bias) -> int:
    """Validate the arguments; return n. Errors name the argument and what was expected."""
    for name, t in (("x", x), ("u", u), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"lowrank_linear: {name} must be a torch.Tensor, got {type(t).__name__}"
            )
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(
            f"lowrank_linear: bias must be a torch.Tensor or None, got {type(bias).__name__}"
        )
    if x.dtype not in _FLOATS:
        raise TypeError(f"lowrank_linear: x must be a floating-point tensor, got {x.dtype}")
    named = [("u", u), ("v", v)] + ([("bias", bias)] if bias is not None else [])
    for name, t in named:
        if t.dtype != x.dtype:
            raise TypeError(
                f"lowrank_linear: {name} has dtype {t.dtype}, expected x's dtype {x.dtype}"
            )
        if t.device != x.device:
            raise ValueError(
                f"lowrank_linear: {name} is on {t.device}, expected x's device {x.device}"
            )
    if u.dim() != 2:
        raise ValueError(
            f"lowrank_linear: u must be 2-D (N_max, R_max), got shape {tuple(u.shape)}"
        )
    if v.dim() != 2:
        raise ValueError(f"lowrank_linear: v must be 2-D (R_max, K), got shape {tuple(v.shape)}")
    if x.dim() < 1:
        raise ValueError("lowrank_linear: x must have at least one dimension (..., K)")
    if x.shape[-1] != v.shape[1]:
        raise ValueError(
            f"lowrank_linear: x has {x.shape[-1]} features in its last dimension but v has "
            f"{v.shape[1]} columns (K); they must match"
        )
    if not _is_int(rank):
        raise TypeError(f"lowrank_linear: rank must be an int, got {type(rank).__name__}")
    r_max = min(u.shape[1], v.shape[0])
    if rank < 1 or rank > r_max:
        raise ValueError(
            f"lowrank_linear: rank must be in 1..{r_max} (u has {u.shape[1]} columns, v has "
            f"{v.shape[0]} rows), got {rank}"
        )
    if out_features is None:
        n = u.shape[0]
    else:
        if not _is_int(out_features):
            raise TypeError(
                "lowrank_linear: out_features must be an int or None, "
                f"got {type(out_features).__name__}"
            )
        if out_features < 1 or out_features > u.shape[0]:
            raise ValueError(
                f"lowrank_linear: out_features must be in 1..{u.shape[0]} (rows of u), "
                f"got {out_features}"
            )
        n = out_features
    if bias is not None and (bias.dim() != 1 or bias.shape[0] < n):
        raise ValueError(
            f"lowrank_linear: bias must be 1-D with at least {n} elements, "
            f"got shape {tuple(bias.shape)}"
        )
    return n


def lowrank_linear_reference(x, u, v, rank, out_features=None, bias=None):
    """The pure-PyTorch definition: two matmuls on slices (the CPU path and the test reference)."""
    n = u.shape[0] if out_features is None else out_features
    t = F.linear(x, v[:rank])
    return F.linear(t, u[:n, :rank], bias[:n] if bias is not None else None)


def _triton_impl(x2, u, v, rank, n, bias):
    from ..kernels import triton_lowrank as tk

    return tk.lowrank_linear(x2, u, v, rank, n, bias)


# ------------------------------------------------------------------ registered implementations
# Each has the op's signature (x any leading dims; out_features None = all rows of u).


@registry.register("lowrank_linear", "torch", kernel=False, reference=True)
def _torch_impl(x, u, v, rank, out_features=None, bias=None):
    """The definition, two matmuls on the slices in x's dtype: the CPU path and oracle."""
    return lowrank_linear_reference(x, u, v, rank, out_features, bias)


def _flat_call(impl_fn):
    def run(x, u, v, rank, out_features=None, bias=None):
        n = u.shape[0] if out_features is None else out_features
        k = x.shape[-1]
        y = impl_fn(x.reshape(x.numel() // k if k else 0, k), u, v, rank, n, bias)
        return y.reshape(*x.shape[:-1], n)

    run.__doc__ = impl_fn.__doc__
    return run


registry.register("lowrank_linear", "triton", kernel=True, doc="our Triton kernels")(
    _flat_call(_triton_impl)
)


@torch.library.custom_op(OP, mutates_args=())
def _lowrank_linear_op(
    x: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    rank: int,
    out_features: int | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    n = check_lowrank_args(x, u, v, rank, out_features, bias)
    k = x.shape[-1]
    m = x.numel() // k if k else 0
    impl = backends.select("lowrank_linear", x.device, x.dtype, m=m, rank=rank, k=k, n=n).impl
    return impl.fn(x, u, v, rank, n, bias)


@_lowrank_linear_op.register_fake
def _(x, u, v, rank, out_features=None, bias=None):
    n = check_lowrank_args(x, u, v, rank, out_features, bias)
    return x.new_empty((*x.shape[:-1], n))


def _setup_context(ctx, inputs, output):
    x, u, v, rank, out_features, bias = inputs
    ctx.rank = rank
    ctx.n = output.shape[-1]
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, u, v, bias)


def _backward(ctx, grad):
    x, u, v, bias = ctx.saved_tensors
    rank, n = ctx.rank, ctx.n
    k = x.shape[-1]
    g2 = grad.reshape(-1, n)
    x2 = x.reshape(-1, k)
    grad_x = grad_u = grad_v = grad_bias = None
    if ctx.needs_input_grad[0]:
        # dL/dx = g @ u[:n,:r] @ v[:r]: itself a sliced low-rank product, with the factors'
        # transposes as (u, v): v.T is (K, R_max), u.T[:, :n] a column slice of (R_max, N_max).
        grad_x = torch.ops.supernet_kernels.lowrank_linear(g2, v.T, u.T[:, :n], rank, None, None)
        grad_x = grad_x.reshape(x.shape)
    if ctx.needs_input_grad[1]:
        t = x2 @ v[:rank].T  # (M, r), recomputed rather than kept from the forward
        grad_u = torch.zeros_like(u)
        grad_u[:n, :rank] = g2.T @ t
    if ctx.needs_input_grad[2]:
        gu = g2 @ u[:n, :rank]  # (M, r)
        grad_v = torch.zeros_like(v)
        grad_v[:rank] = gu.T @ x2
    if ctx.has_bias and ctx.needs_input_grad[5]:
        grad_bias = torch.zeros_like(bias)
        grad_bias[:n] = g2.sum(0)
    return grad_x, grad_u, grad_v, None, None, grad_bias


_lowrank_linear_op.register_autograd(_backward, setup_context=_setup_context)


def lowrank_linear(x, u, v, rank, out_features=None, bias=None):
    """``x @ v[:rank].T @ u[:n, :rank].T + bias[:n]`` with ``n = out_features or u.shape[0]``.

    Args:
        x: (..., K) input.
        u: (N_max, R_max) left factor; only ``u[:n, :rank]`` is read.
        v: (R_max, K) right factor; only ``v[:rank]`` is read. May be a column slice.
        rank: active rank, 1..R_max.
        out_features: active output width n, 1..N_max (default N_max).
        bias: optional (N_max,) bias; ``bias[:n]`` is added.
    """
    check_lowrank_args(x, u, v, rank, out_features, bias)
    return torch.ops.supernet_kernels.lowrank_linear(x, u, v, rank, out_features, bias)
