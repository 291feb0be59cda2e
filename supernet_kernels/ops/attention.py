"""Attention with an additive bias: ``torch.ops.supernet_kernels.attention``.

    out = softmax(scale * q k^T + bias) v

with two kinds of bias, alone or together:

* SAM's decomposed relative-position bias, given by its two factors:
  ``rel_h[b, h, i, j // W] + rel_w[b, h, i, j % W]``  (T = H * W);
* an additive bias tensor ``bias[b % G, h, i, j]`` (Swin's learned relative-position bias
  plus its shifted-window mask, or any other (Tq x Tk) bias shared by batch rows).

The op::

    attention(Tensor q, Tensor k, Tensor v, Tensor? rel_h, Tensor? rel_w, float scale,
              Tensor? bias=None) -> (Tensor out, Tensor lse)

takes q (B, nH, Tq, d), k and v (B, nH, Tk, d) in any strides, and optionally the two factors
of SAM's bias, rel_h (B, nH, T, H) and rel_w (B, nH, T, W) (then Tq = Tk = H * W), and
``bias`` (G, nH or 1, Tq, Tk) in q's dtype, any strides, with B a multiple of G: batch row b
adds bias[b % G] (timm's Swin batches windows as B * nW with window index b % nW, so G = nW;
G = 1 for a bias every row shares), and a one-head bias is shared by all heads. It returns
out (B, nH, Tq, d) in q's dtype and lse (B, nH, Tq), the fp32 log-sum-exp of each query's
biased, scaled scores (natural log; like aten's flash-attention op it is the statistic the
backward needs, and it is differentiable). Gradients reach q, k, v, rel_h, rel_w and bias; the
gradient of bias is dS summed over the batch rows of each group (and over the heads for a
one-head bias).

The wrapper :func:`attention` is what layers call: it takes SAM's relative-position tables
(resized by :func:`get_rel_pos` as segment-anything does), builds rel_h / rel_w with two small
einsums (T x H and T x W; the gradient to q and the tables flows through them by ordinary
autograd), takes the first ``heads`` heads as views (elastic heads; a full-heads ``bias``
becomes bias[:, :heads]), and calls the op.

Definition (the reference below, the CPU path): scores, bias and softmax in fp32 (float64 for
float64 inputs); the probabilities are rounded to the input dtype and multiplied by v in that
dtype (fp32 accumulation). This is what flash-attention kernels compute, and more accurate than
segment-anything's Attention, which computes the whole attention map in the input dtype.

Backends: "torch" (the reference, materializing the T x T scores), "triton" (flash-attention
style kernels that never materialize the T x T scores or a (B, nH, T, T) bias: the bias is
read tile by tile; with a Triton backward; see ``kernels/triton_attention.py``); "cuda" has no
kernel and raises BackendUnavailable; "torch_sdpa" (``ops/fast_paths.py``) is torch's SDPA with
the rel-pos term and bias as an additive mask, which the wrapper calls directly (differentiable
by autograd) wherever the registry picks it (``SDPA_FOR_TORCH_BACKEND``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import backends, registry

OP = "supernet_kernels::attention"
BACKWARD_OP = "supernet_kernels::_attention_backward"
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# Where the registry picks "torch_sdpa", the wrapper calls SDPA itself rather than the op (whose
# form must also return the log-sum-exp). False: always go through the op.
SDPA_FOR_TORCH_BACKEND = True


def _is_int(value) -> bool:
    return isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, torch.SymInt, torch.SymFloat)) and not isinstance(
        value, bool
    )


def _check_qkv(q, k, v, where: str) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dtype not in _FLOATS:
        raise TypeError(f"{where}: q must be a floating-point tensor, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{where}: {name} has dtype {t.dtype}, expected q's dtype {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{where}: {name} is on {t.device}, expected q's device {q.device}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(
                f"{where}: {name} must be 4-D (B, nH, T, d), got shape {tuple(t.shape)}"
            )
    for name, t in (("k", k), ("v", v)):
        if t.shape[:2] != q.shape[:2]:
            raise ValueError(
                f"{where}: {name} has (B, nH) = {tuple(t.shape[:2])} but q has "
                f"{tuple(q.shape[:2])}; they must match"
            )
        if t.shape[3] != q.shape[3]:
            raise ValueError(
                f"{where}: {name} has head dim {t.shape[3]} but q has {q.shape[3]}; they must match"
            )
    if v.shape[2] != k.shape[2]:
        raise ValueError(
            f"{where}: v has {v.shape[2]} tokens but k has {k.shape[2]}; they must match"
        )
    if k.shape[2] < 1:
        raise ValueError(f"{where}: k must have at least one token, got shape {tuple(k.shape)}")
    if q.shape[3] < 1:
        raise ValueError(f"{where}: q's head dim must be at least 1, got shape {tuple(q.shape)}")


def _check_bias(bias, q, k, where: str) -> None:
    """bias: None or (G, nH or 1, Tq, Tk) in q's dtype and device, with B a multiple of G."""
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"{where}: bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if bias.dtype != q.dtype:
        raise TypeError(f"{where}: bias has dtype {bias.dtype}, expected q's dtype {q.dtype}")
    if bias.device != q.device:
        raise ValueError(f"{where}: bias is on {bias.device}, expected q's device {q.device}")
    B, nH, tq = q.shape[0], q.shape[1], q.shape[2]
    tk = k.shape[2]
    if bias.dim() != 4 or bias.shape[2:] != (tq, tk) or bias.shape[1] not in (nH, 1):
        raise ValueError(
            f"{where}: bias must be 4-D (G, nH or 1, Tq, Tk) = (G, {nH} or 1, {tq}, {tk}), "
            f"got shape {tuple(bias.shape)}"
        )
    G = bias.shape[0]
    if G < 1 or B % G != 0:
        raise ValueError(
            f"{where}: bias has G = {G} groups but q's batch B = {B} is not a multiple of G "
            "(batch row b uses bias[b % G])"
        )


def check_attention_args(q, k, v, rel_h, rel_w, scale, bias=None) -> None:
    """Validate the op's arguments. Errors name the argument and what was expected."""
    where = "attention"
    _check_qkv(q, k, v, where)
    _check_bias(bias, q, k, where)
    for name, t in (("rel_h", rel_h), ("rel_w", rel_w)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(
                f"{where}: {name} must be a torch.Tensor or None, got {type(t).__name__}"
            )
    if (rel_h is None) != (rel_w is None):
        raise ValueError(f"{where}: rel_h and rel_w must be given together (or both None)")
    if not _is_real(scale):
        raise TypeError(f"{where}: scale must be a float, got {type(scale).__name__}")
    if rel_h is None:
        return
    B, nH, tq, _ = q.shape
    tk = k.shape[2]
    for name, t, axis in (("rel_h", rel_h, "H"), ("rel_w", rel_w, "W")):
        if t.dtype != q.dtype:
            raise TypeError(f"{where}: {name} has dtype {t.dtype}, expected q's dtype {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{where}: {name} is on {t.device}, expected q's device {q.device}")
        if t.dim() != 4 or t.shape[:3] != (B, nH, tq) or t.shape[3] < 1:
            raise ValueError(
                f"{where}: {name} must be (B, nH, T, {axis}) = ({B}, {nH}, {tq}, {axis}), "
                f"got shape {tuple(t.shape)}"
            )
    if tq != tk:
        raise ValueError(
            f"{where}: with rel_h / rel_w the query and key token counts must be equal, "
            f"got {tq} (q) and {tk} (k)"
        )
    H, W = rel_h.shape[3], rel_w.shape[3]
    if tk != H * W:
        raise ValueError(
            f"{where}: rel_h has H = {H} and rel_w has W = {W} columns, but H * W = {H * W} "
            f"!= {tk} key tokens"
        )


def _add_bias(s, bias, acc):
    """s (B, nH, Tq, Tk) + bias[b % G] (bias (G, nH or 1, Tq, Tk)), in ``acc``."""
    B, nH, tq, tk = s.shape
    G = bias.shape[0]
    return (s.view(B // G, G, nH, tq, tk) + bias.to(acc)).view(B, nH, tq, tk)


def _scores(q, k, rel_h, rel_w, scale, bias, acc):
    """The (B, nH, Tq, Tk) biased, scaled scores in ``acc``."""
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-2, -1)) * scale
    if rel_h is not None:
        B, nH, T, H = rel_h.shape
        W = rel_w.shape[-1]
        s = (
            s.view(B, nH, T, H, W) + rel_h.to(acc)[..., :, None] + rel_w.to(acc)[..., None, :]
        ).view(B, nH, T, H * W)
    if bias is not None:
        s = _add_bias(s, bias, acc)
    return s


def _reference_core(q, k, v, rel_h, rel_w, scale, bias=None):
    """(out, lse): the materializing definition, the "torch" backend and the test reference."""
    acc = torch.promote_types(q.dtype, torch.float32)
    s = _scores(q, k, rel_h, rel_w, scale, bias, acc)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])
    out = torch.matmul(p.to(v.dtype), v)
    return out, lse.to(torch.promote_types(lse.dtype, torch.float32))


def _reference_backward(q, k, v, rel_h, rel_w, scale, g_out, g_lse, bias=None):
    """Gradients of ``_reference_core``, written out (the same dtype flow autograd takes):
    (dq, dk, dv, d rel_h, d rel_w, d bias)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    q32, k32 = q.to(acc), k.to(acc)
    s = _scores(q, k, rel_h, rel_w, scale, bias, acc)
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    p = torch.exp(s - lse)
    p_lp = p.to(v.dtype)
    dv = torch.matmul(p_lp.transpose(-2, -1), g_out)
    dp = torch.matmul(g_out, v.transpose(-2, -1)).to(acc)
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    if g_lse is not None:
        ds = ds + p * g_lse.to(acc)[..., None]
    dq = (torch.matmul(ds, k32) * scale).to(q.dtype)
    dk = (torch.matmul(ds.transpose(-2, -1), q32) * scale).to(k.dtype)
    drh = drw = dbias = None
    if rel_h is not None:
        B, nH, T, H = rel_h.shape
        W = rel_w.shape[-1]
        ds5 = ds.view(B, nH, T, H, W)
        drh = ds5.sum(-1).to(rel_h.dtype)
        drw = ds5.sum(-2).to(rel_w.dtype)
    if bias is not None:
        # d bias[g] = sum over the batch rows b = g (mod G) of dS[b] (and over the heads for a
        # bias with one head).
        B, nH, tq, tk = ds.shape
        G = bias.shape[0]
        db = ds.view(B // G, G, nH, tq, tk).sum(0)
        if bias.shape[1] != nH:
            db = db.sum(1, keepdim=True)
        dbias = db.to(bias.dtype)
    return dq, dk, dv, drh, drw, dbias


def _resolve(q, k, has_rel: bool, has_bias: bool = False) -> str:
    """The implementation for this call. Dispatch keys: m = query tokens per sequence, and
    bh = batch * heads, t_k = key tokens, d = head dim, rel = 1 with SAM's decomposed bias,
    bias = 1 with the additive bias."""
    B, nH, tq, d = q.shape
    return backends.select(
        "attention", q.device, q.dtype, m=tq, bh=B * nH, t_k=k.shape[2], d=d, rel=int(has_rel),
        bias=int(has_bias),
    ).name  # fmt: skip


@registry.register("attention", "torch", kernel=False, reference=True)
def _torch_attention(q, k, v, rel_h, rel_w, scale, bias=None):
    """The definition: fp32 scores and softmax, materializing the T x T scores."""
    return _reference_core(q, k, v, rel_h, rel_w, scale, bias)


@registry.register("attention", "triton", kernel=True)
def _triton_attention(q, k, v, rel_h, rel_w, scale, bias=None):
    """Our flash-attention style Triton kernels (rel-pos and bias read tile by tile)."""
    from ..kernels import triton_attention as ta

    return ta.attention_fwd(q, k, v, rel_h, rel_w, float(scale), bias)


@torch.library.custom_op(OP, mutates_args=())
def _attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor | None,
    rel_w: torch.Tensor | None,
    scale: float,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_attention_args(q, k, v, rel_h, rel_w, scale, bias)
    name = _resolve(q, k, rel_h is not None, bias is not None)
    return registry.get("attention", name).fn(q, k, v, rel_h, rel_w, scale, bias)


@_attention_op.register_fake
def _(q, k, v, rel_h, rel_w, scale, bias=None):
    check_attention_args(q, k, v, rel_h, rel_w, scale, bias)
    B, nH, tq, d = q.shape
    lse_dtype = torch.promote_types(q.dtype, torch.float32)
    return q.new_empty((B, nH, tq, d)), q.new_empty((B, nH, tq), dtype=lse_dtype)


def _setup_context(ctx, inputs, output):
    q, k, v, rel_h, rel_w, scale, bias = inputs
    out, lse = output
    ctx.scale = scale
    ctx.has_rel = rel_h is not None
    ctx.has_bias = bias is not None
    ctx.save_for_backward(q, k, v, rel_h, rel_w, out, lse, bias)


@torch.library.custom_op(BACKWARD_OP, mutates_args=())
def _attention_backward_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor | None,
    rel_w: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    g_out: torch.Tensor,
    g_lse: torch.Tensor | None,
    scale: float,
    need_rel: bool,
    bias: torch.Tensor | None = None,
    need_bias: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The attention op's backward: (dq, dk, dv, d rel_h, d rel_w, d bias); d rel_h and d rel_w
    are empty (0,) tensors without rel pos or when need_rel is False, d bias (the shape of
    bias, reduced over the batch rows of each group and, for a one-head bias, over the heads)
    likewise without a bias or when need_bias is False.

    An op of its own, which picks its backend when it runs (not when torch.compile traces the
    forward): a compiled graph keeps following ``supernet_kernels.backend``, and the traced
    backward goes through the fake implementation. Both backends need only the inputs and
    (out, lse), which every backend's forward produces with the same definition. Double
    backward is not supported."""
    need_rel = need_rel and rel_h is not None
    need_bias = need_bias and bias is not None
    name = _resolve(q, k, rel_h is not None, bias is not None)
    if name != "triton":  # every other implementation's forward is the definition's
        dq, dk, dv, drh, drw, dbias = _reference_backward(
            q, k, v, rel_h, rel_w, scale, g_out, g_lse, bias
        )
    else:
        from ..kernels import triton_attention as ta

        # delta_i = dO_i . O_i - dlse_i: dS = P * (dP - delta) then includes lse's gradient.
        delta = (g_out.to(torch.float32) * out.to(torch.float32)).sum(-1)
        if g_lse is not None:
            delta = delta - g_lse.to(torch.float32)
        dq, dk, dv, drh, drw, dbias = ta.attention_bwd(
            q, k, v, rel_h, rel_w, float(scale), g_out, lse.contiguous(), delta.contiguous(),
            need_rel, bias, need_bias,
        )  # fmt: skip
    if not need_rel:
        drh, drw = q.new_empty((0,)), q.new_empty((0,))
    if not need_bias:
        dbias = q.new_empty((0,))
    return dq, dk, dv, drh, drw, dbias


@_attention_backward_op.register_fake
def _(q, k, v, rel_h, rel_w, out, lse, g_out, g_lse, scale, need_rel, bias=None, need_bias=False):
    def like(t):
        return torch.empty_like(t, memory_format=torch.contiguous_format)

    grads = [like(t) for t in (q, k, v)]
    if need_rel and rel_h is not None:
        grads += [like(rel_h), like(rel_w)]
    else:
        grads += [q.new_empty((0,)), q.new_empty((0,))]
    grads.append(like(bias) if need_bias and bias is not None else q.new_empty((0,)))
    return tuple(grads)


def _backward(ctx, g_out, g_lse):
    q, k, v, rel_h, rel_w, out, lse, bias = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if g_out is None:
        g_out = torch.zeros_like(out)
    need_rel = ctx.has_rel and (needs[3] or needs[4])
    # needs_input_grad has one entry per argument given: 6 when bias was left out.
    need_bias = ctx.has_bias and len(needs) > 6 and needs[6]
    dq, dk, dv, drh, drw, dbias = torch.ops.supernet_kernels._attention_backward(
        q, k, v, rel_h, rel_w, out, lse, g_out, g_lse, float(ctx.scale), need_rel, bias, need_bias
    )
    grads = (dq, dk, dv, drh, drw, None, dbias)[: len(needs)]
    return tuple(g if needs[i] else None for i, g in enumerate(grads))


_attention_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# The wrapper: SAM's relative-position tables, elastic heads.


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """segment-anything's get_rel_pos as a pure function (same math): the (q_size, k_size, C)
    table of embeddings by relative position, ``rel_pos`` (L, C) resized by linear
    interpolation to 2 * max(q_size, k_size) - 1 rows when L differs."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        resized = resized.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        resized = rel_pos
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return resized[relative_coords.long()]


def _prepare(q, k, v, rel_pos_h, rel_pos_w, hw, heads, scale, bias=None):
    """Validate the wrapper's arguments; return (q, k, v, rel_h, rel_w, scale, bias) for the
    op."""
    where = "attention"
    _check_qkv(q, k, v, where)
    _check_bias(bias, q, k, where)
    nH, T, d = q.shape[1], q.shape[2], q.shape[3]
    if heads is not None:
        if not _is_int(heads):
            raise TypeError(f"{where}: heads must be an int or None, got {type(heads).__name__}")
        if heads < 1 or heads > nH:
            raise ValueError(f"{where}: heads must be in 1..{nH} (q's heads), got {heads}")
        q, k, v = q[:, :heads], k[:, :heads], v[:, :heads]
        if bias is not None and bias.shape[1] != 1:
            bias = bias[:, :heads]
    if scale is None:
        scale = d**-0.5
    elif not _is_real(scale):
        raise TypeError(f"{where}: scale must be a float or None, got {type(scale).__name__}")
    elif not math.isfinite(scale):
        raise ValueError(f"{where}: scale must be finite, got {scale}")
    if not isinstance(scale, torch.SymFloat):
        scale = float(scale)
    for name, t in (("rel_pos_h", rel_pos_h), ("rel_pos_w", rel_pos_w)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(
                f"{where}: {name} must be a torch.Tensor or None, got {type(t).__name__}"
            )
    if (rel_pos_h is None) != (rel_pos_w is None):
        raise ValueError(f"{where}: rel_pos_h and rel_pos_w must be given together (or neither)")
    if hw is not None:
        if (
            not isinstance(hw, (tuple, list))
            or len(hw) != 2
            or not all(_is_int(x) and x >= 1 for x in hw)
        ):
            raise TypeError(f"{where}: hw must be a pair of positive ints (H, W), got {hw!r}")
        if hw[0] * hw[1] != T:
            raise ValueError(
                f"{where}: hw = {tuple(hw)} gives H * W = {hw[0] * hw[1]} tokens but q has {T}"
            )
    if rel_pos_h is None:
        return q, k, v, None, None, scale, bias
    if hw is None:
        raise ValueError(f"{where}: hw=(H, W) is required with rel_pos_h / rel_pos_w")
    if k.shape[2] != T:
        raise ValueError(
            f"{where}: with rel_pos_h / rel_pos_w the query and key token counts must be equal, "
            f"got {T} (q) and {k.shape[2]} (k)"
        )
    for name, t in (("rel_pos_h", rel_pos_h), ("rel_pos_w", rel_pos_w)):
        if t.dtype != q.dtype:
            raise TypeError(f"{where}: {name} has dtype {t.dtype}, expected q's dtype {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{where}: {name} is on {t.device}, expected q's device {q.device}")
        if t.dim() != 2 or t.shape[1] != d or t.shape[0] < 1:
            raise ValueError(
                f"{where}: {name} must be 2-D (L, {d}) (q's head dim {d}), "
                f"got shape {tuple(t.shape)}"
            )
    H, W = int(hw[0]), int(hw[1])
    B, nh = q.shape[0], q.shape[1]
    Rh = get_rel_pos(H, H, rel_pos_h)  # (H, H, d)
    Rw = get_rel_pos(W, W, rel_pos_w)  # (W, W, d)
    r_q = q.reshape(B, nh, H, W, d)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, Rh).reshape(B, nh, T, H)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, Rw).reshape(B, nh, T, W)
    return q, k, v, rel_h, rel_w, scale, bias


def attention(
    q, k, v, rel_pos_h=None, rel_pos_w=None, hw=None, heads=None, scale=None, bias=None
):  # fmt: skip
    """softmax(scale * q k^T + SAM's decomposed rel-pos bias + bias) v, without a T x T tensor
    of scores on the Triton backend.

    Args:
        q: (B, nH, Tq, d) queries; k, v: (B, nH, Tk, d). Any strides.
        rel_pos_h, rel_pos_w: SAM's relative-position tables (L, d) (2 * H - 1 rows, else
            resized as segment-anything does), or None for plain attention.
        hw: (H, W) with H * W = T; required with the tables (then Tq = Tk).
        heads: use only the first ``heads`` heads (views; elastic heads). Default: all.
        scale: default d ** -0.5.
        bias: an additive bias (G, nH or 1, Tq, Tk) in q's dtype, any strides, or None. B must
            be a multiple of G; batch row b adds bias[b % G] (Swin: windows batched as B * nW
            with window index b % nW, so G = nW holds the rel-pos bias plus the shift mask).
            A one-head bias is shared by all heads; with ``heads`` a full-heads bias is used as
            bias[:, :heads]. Differentiable (its gradient is reduced over the batch rows of
            each group). Combines with the rel-pos tables.

    Returns:
        (B, heads, Tq, d) in q's dtype.
    """
    q, k, v, rel_h, rel_w, scale, bias = _prepare(
        q, k, v, rel_pos_h, rel_pos_w, hw, heads, scale, bias
    )
    # Under torch.compile the op (opaque to the tracer) picks its implementation when it runs.
    if (
        SDPA_FOR_TORCH_BACKEND
        and not torch.compiler.is_compiling()
        and _resolve(q, k, rel_h is not None, bias is not None) == "torch_sdpa"
    ):
        from .fast_paths import sdpa_attention

        return sdpa_attention(q, k, v, rel_h, rel_w, scale, bias)
    return torch.ops.supernet_kernels.attention(q, k, v, rel_h, rel_w, scale, bias)[0]


def attention_reference(
    q, k, v, rel_pos_h=None, rel_pos_w=None, hw=None, heads=None, scale=None, bias=None
):  # fmt: skip
    """The pure-PyTorch definition of :func:`attention` (materializes the T x T scores)."""
    q, k, v, rel_h, rel_w, scale, bias = _prepare(
        q, k, v, rel_pos_h, rel_pos_w, hw, heads, scale, bias
    )
    return _reference_core(q, k, v, rel_h, rel_w, scale, bias)[0]
