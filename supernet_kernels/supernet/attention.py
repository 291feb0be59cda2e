"""Drop-in attention modules that compute through ``torch.ops.supernet_kernels.attention``.

:func:`~supernet_kernels.supernet.convert` swaps them in (``attention="ours"``, the default) for
the attention of timm ViT / DeiT blocks and of the segment-anything image encoder; extracted
subnets keep them and :func:`~supernet_kernels.supernet.load` puts them back. Each module:

* is built by ``from_module(m)``, which takes the original's submodules and parameters by
  reference (conversion has already deep-copied the model), so it owns exactly the original's
  parameters under the same names: the state_dict keys are unchanged (extra buffers are
  non-persistent), and a state_dict of the original loads into it and vice versa;
* computes ``softmax(scale * q k^T [+ SAM's decomposed rel-pos bias]) v`` with the op, which on
  the Triton backend never materializes the T x T scores.

:class:`SKViTAttention` replaces ``timm.layers.Attention`` (exactly that class: subclasses may
change the forward). qkv, q_norm / k_norm, the scale-norm, the gate and proj are the original's.
Attention dropout needs the probabilities, so in training with ``attn_drop.p > 0``, or when an
attention mask / ``is_causal`` is given, it runs timm's own computation (SDPA) instead.

:class:`SKSamAttention` replaces segment-anything's ``Attention``. The relative-position
tables ``rel_pos_h`` / ``rel_pos_w`` are the original's parameters. The index tables that
segment-anything's ``get_rel_pos`` rebuilds on the CPU with ``torch.arange`` on every call are
built once, at construction, for the module's ``input_size`` (non-persistent buffers; they
follow ``.to(device)``), so the forward creates no tensors and makes no host syncs (what CUDA
graph capture needs). An input of another size falls back to computing them on the input's
device. A table whose length is not 2 * size - 1 is resized by linear interpolation in the
forward (as segment-anything does; it is a parameter).

timm Swin's ``WindowAttention`` is replaced by
:class:`~supernet_kernels.supernet.swin_attention.SKSwinAttention` (its own file), which passes
the learned relative-position bias plus the shifted-window mask as the op's additive ``bias``.

Elastic heads. Both modules run ``num_heads`` heads of ``head_dim`` channels and read qkv's
output in one of two row layouts, ``qkv_layout``:

* ``"qkv"`` (from ``from_module``): timm / segment-anything's [q heads | k heads | v heads];
* ``"head"``: [head 0: q k v | head 1: q k v | ...], which
  :func:`~supernet_kernels.nn.importance.reorder_heads` makes (:func:`prioritize_heads` calls
  it), best head first.

In the head-major layout the first h heads' q, k and v rows are one prefix of qkv's output, so
a supernet runs h heads by giving its qkv ElasticLinear ``out = 3 * h * head_dim`` (dense,
low-rank and quantized alike), its proj ``in_features = h * head_dim``, and the module
``set_active(heads=h)``: only the active heads' rows are computed, attention runs over h heads, and
proj reads only their columns. The scale stays ``head_dim ** -0.5``; SAM's rel-pos tables
(``(2 * size - 1, head_dim)``) are shared by all heads, so they are used as they are. An
extracted subnet keeps the layout with qkv / proj sliced to h heads (``num_heads = h``).
:func:`head_count` says which modules allow fewer heads: timm's with ``scale_norm`` (a norm
over all heads' channels together) or a gate are kept at all heads.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.importance import HeadImportanceFn, reorder_heads
from ..ops.attention import attention as sk_attention
from .swin_attention import SKSwinAttention

QKV_LAYOUTS = ("qkv", "head")


def _rel_index(size: int, device=None) -> torch.Tensor:
    """segment-anything's relative-coordinate index for q_size == k_size == size:
    idx[i, j] = i - j + size - 1, as int64 (size, size)."""
    r = torch.arange(size, device=device)
    return r[:, None] - r[None, :] + (size - 1)


def _resize(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """``rel_pos`` (L, C) resized to ``length`` rows by linear interpolation (segment-anything's
    get_rel_pos), or itself when L == length."""
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(
        rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=length, mode="linear"
    )
    return resized.reshape(-1, length).permute(1, 0)


def _split_qkv(qkv: torch.Tensor, heads: int, head_dim: int, layout: str):
    """q, k, v as (B, heads, T, head_dim) from qkv's output (B, T, 3 * heads * head_dim), whose
    rows are in ``layout`` order (module doc)."""
    B, T = qkv.shape[0], qkv.shape[1]
    if layout == "head":
        return qkv.reshape(B, T, heads, 3, head_dim).permute(3, 0, 2, 1, 4).unbind(0)
    return qkv.reshape(B, T, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)


class _ElasticHeads:
    """What both attention modules share for elastic heads: the common elastic interface
    (``set_active(heads=h)``, ``active_choice()``, ``choices()``) of every elastic layer."""

    num_heads: int
    head_dim: int
    qkv_layout: str

    def max_heads(self) -> int:
        """The heads qkv's output holds (all of them in a supernet; h in an extracted subnet)."""
        return int(self.qkv.out_features) // (3 * self.head_dim)

    def set_active(self, *, heads: int) -> None:
        """Run ``heads`` heads. The caller sizes qkv's output (3 * heads * head_dim rows, in
        ``qkv_layout`` order) and proj's input (heads * head_dim) to match."""
        name = type(self).__name__
        if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
            raise ValueError(f"{name}.set_active: heads must be an int >= 1, got {heads!r}")
        if heads > self.max_heads():
            raise ValueError(
                f"{name}.set_active: heads {heads} exceeds the module's {self.max_heads()}"
            )
        self.num_heads = heads

    def active_choice(self) -> dict:
        return {"heads": self.num_heads}

    def choices(self) -> list[dict]:
        return [{"heads": h} for h in range(1, self.max_heads() + 1)]

    def set_heads(self, heads: int) -> None:
        """Deprecated: ``set_active(heads=heads)``."""
        warnings.warn(
            f"{type(self).__name__}.set_heads is deprecated; use set_active(heads=...)",
            DeprecationWarning,
            stacklevel=2,
        )
        self.set_active(heads=heads)


# --------------------------------------------------------------------------- timm ViT
def _timm_attention_cls():
    try:
        from timm.layers.attention import Attention
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    return Attention


class SKViTAttention(_ElasticHeads, nn.Module):
    """timm ``Attention`` computing through ``supernet_kernels.ops.attention``."""

    def __init__(self) -> None:  # use from_module
        super().__init__()
        self.num_heads = 1
        self.head_dim = 1
        self.scale = 1.0
        self.qkv_layout = "qkv"

    @property
    def attn_dim(self) -> int:
        return self.num_heads * self.head_dim

    @classmethod
    def from_module(cls, m: nn.Module) -> SKViTAttention:
        """Take ``m``'s (a ``timm.layers.Attention``) submodules by reference."""
        att = _timm_attention_cls()
        if att is None or type(m) is not att:
            raise TypeError(f"SKViTAttention.from_module: expected timm Attention, got {type(m)}")
        new = cls()
        new.num_heads = int(m.num_heads)
        new.head_dim = int(m.head_dim)
        new.scale = float(m.scale)
        # Same attribute names, order of registration and None-ness as the original.
        for name, child in m._modules.items():
            new._modules[name] = child
        if "gate" not in m._modules:
            new.gate = getattr(m, "gate", None)
        for name, p in m._parameters.items():
            new._parameters[name] = p
        for name, b in m._buffers.items():
            new._buffers[name] = b
        new._non_persistent_buffers_set = set(m._non_persistent_buffers_set)
        new.train(m.training)
        return new

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = _split_qkv(self.qkv(x), self.num_heads, self.head_dim, self.qkv_layout)
        q, k = self.q_norm(q), self.k_norm(k)
        drop = self.attn_drop.p if self.training else 0.0
        aq = _quantized(self)
        if aq is not None and attn_mask is None and not is_causal:
            x = aq.attend(q, k, v, self.scale)
        elif attn_mask is not None or is_causal or drop > 0:
            # Masks and attention dropout are outside the op: timm's own (fused) computation.
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=drop, is_causal=is_causal, scale=self.scale
            )
        else:
            x = sk_attention(q, k, v, scale=self.scale)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        x = self.proj(x)
        return self.proj_drop(x)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"qkv_layout={self.qkv_layout}, op=supernet_kernels"
        )


# --------------------------------------------------------------------------- segment-anything
def _sam_attention_cls():
    try:
        from segment_anything.modeling.image_encoder import Attention
    except ImportError:  # pragma: no cover
        return None
    return Attention


class SKSamAttention(_ElasticHeads, nn.Module):
    """segment-anything ``Attention`` computing through the op, relative-position indices
    precomputed (no CPU tensors, no host syncs in the forward)."""

    def __init__(self) -> None:  # use from_module
        super().__init__()
        self._placeholders()

    def _placeholders(self) -> None:
        """The attributes :meth:`from_module` sets, at placeholder values."""
        self.num_heads = 1
        self.head_dim = 1
        self.scale = 1.0
        self.qkv_layout = "qkv"
        self.use_rel_pos = False
        self.input_size: tuple[int, int] | None = None

    @classmethod
    def from_module(cls, m: nn.Module, input_size: tuple[int, int] | None = None) -> SKSamAttention:
        """Take ``m``'s (a segment-anything ``Attention``) layers and tables by reference.
        ``input_size`` (H, W): the token grid the forward will see (default: read off the
        tables, (L + 1) / 2, which is how segment-anything sizes them)."""
        att = _sam_attention_cls()
        if att is None or type(m) is not att:
            raise TypeError(f"SKSamAttention.from_module: expected SAM Attention, got {type(m)}")
        new = cls()
        new._adopt(m, int(m.num_heads), input_size)
        return new

    def _adopt(self, m: nn.Module, num_heads: int, input_size: tuple[int, int] | None) -> None:
        """Take the layers and relative-position tables of ``m`` (segment-anything's or
        transformers' SAM attention: the same attribute names) by reference, and its mode."""
        self.num_heads = num_heads
        self.head_dim = m.qkv.out_features // (3 * num_heads)
        self.scale = float(m.scale)
        self.qkv = m.qkv
        self.proj = m.proj
        self.use_rel_pos = bool(m.use_rel_pos)
        if self.use_rel_pos:
            self.rel_pos_h = m.rel_pos_h
            self.rel_pos_w = m.rel_pos_w
            if input_size is None:
                input_size = ((m.rel_pos_h.shape[0] + 1) // 2, (m.rel_pos_w.shape[0] + 1) // 2)
            self.input_size = (int(input_size[0]), int(input_size[1]))
            dev = m.rel_pos_h.device
            h, w = self.input_size
            self.register_buffer("rel_index_h", _rel_index(h, dev), persistent=False)
            self.register_buffer("rel_index_w", _rel_index(w, dev), persistent=False)
        self.train(m.training)

    def _rel_table(self, rel_pos: torch.Tensor, size: int, index: torch.Tensor) -> torch.Tensor:
        """(size, size, C): get_rel_pos(size, size, rel_pos) with the precomputed index."""
        resized = _resize(rel_pos, 2 * size - 1)
        if index.shape[0] != size:  # another input size: build the index on the device
            index = _rel_index(size, rel_pos.device)
        return resized[index]

    def _heads(self, x: torch.Tensor):
        """q, k, v (B, nH, T, d) of a (B, H, W, C) input, and the decomposed relative-position
        terms rel_h (B, nH, T, H) and rel_w (B, nH, T, W) (None without relative positions)."""
        B, H, W, _ = x.shape
        T, nh = H * W, self.num_heads
        qkv = self.qkv(x).reshape(B, T, -1)
        q, k, v = _split_qkv(qkv, nh, self.head_dim, self.qkv_layout)  # (B, nH, T, d)
        rel_h = rel_w = None
        if self.use_rel_pos:
            d = q.shape[-1]
            Rh = self._rel_table(self.rel_pos_h, H, self.rel_index_h)  # (H, H, d)
            Rw = self._rel_table(self.rel_pos_w, W, self.rel_index_w)  # (W, W, d)
            r_q = q.reshape(B, nh, H, W, d)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, Rh.to(q.dtype)).reshape(B, nh, T, H)
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, Rw.to(q.dtype)).reshape(B, nh, T, W)
        return q, k, v, rel_h, rel_w

    @staticmethod
    def _bias(rel_h, rel_w) -> torch.Tensor | None:
        """The decomposed relative-position bias as one (B, nH, T, T) tensor, rel_h over key
        rows and rel_w over key columns (for the fake-quantized attention, which takes an
        additive bias)."""
        if rel_h is None:
            return None
        B, nh, T, _ = rel_h.shape
        return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, nh, T, T)

    def _out(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The heads' outputs (B, nH, T, d) back to the (B, H, W, C) grid of ``x``, projected."""
        B, H, W, _ = x.shape
        out = out.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, rel_h, rel_w = self._heads(x)
        aq = _quantized(self)
        if aq is not None:
            out = aq.attend(q, k, v, self.scale, self._bias(rel_h, rel_w))
        elif rel_h is not None:
            out = torch.ops.supernet_kernels.attention(q, k, v, rel_h, rel_w, self.scale)[0]
        else:
            out = sk_attention(q, k, v, scale=self.scale)
        return self._out(out, x)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"qkv_layout={self.qkv_layout}, use_rel_pos={self.use_rel_pos}, "
            f"input_size={self.input_size}, op=supernet_kernels"
        )


class AttnQuant(nn.Module):
    """Fake quantization of the attention matmuls' operands (quantization-aware training of a
    mixed-precision supernet): Q, K, V (signed) and the softmax probabilities P (unsigned),
    each an :class:`~supernet_kernels.quant.fake.LSQActQuantizer`, all at ``bits``. Set as the
    ``attn_quant`` child of our attention modules (:func:`attach_attn_quant`); at 16 bits the
    module runs the op as before. Below 16 bits the attention is computed explicitly
    (``softmax(q k^T * scale + bias)`` materialized, P quantized, then ``P v``): the op never
    forms P, so there is nothing to quantize inside it (a quantized attention kernel is future
    work). The cost model counts the module's activation x activation MACs at ``bits`` x
    ``bits`` (:func:`supernet_kernels.cost.profile`)."""

    def __init__(self, bits_choices=(4, 8, 16)):
        super().__init__()
        from ..quant.fake import LSQActQuantizer

        self.q = LSQActQuantizer(bits_choices, signed=True)
        self.k = LSQActQuantizer(bits_choices, signed=True)
        self.v = LSQActQuantizer(bits_choices, signed=True)
        self.p = LSQActQuantizer(bits_choices, signed=False)
        self.bits_choices = self.q.bits_choices

    @property
    def bits(self) -> int:
        return self.q.bits

    def set_bits(self, bits: int) -> None:
        for m in (self.q, self.k, self.v, self.p):
            m.set_bits(bits)

    def attend(self, q, k, v, scale: float, bias=None):
        """Fake-quantized ``softmax(q k^T * scale + bias) v`` (q, k, v: (B, H, T, d))."""
        q, k, v = self.q(q), self.k(k), self.v(v)
        s = (q.float() @ k.float().transpose(-2, -1)) * scale
        if bias is not None:
            s = s + bias.float()
        p = self.p(s.softmax(-1))
        return (p @ v.float()).to(v.dtype)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def attach_attn_quant(attn: nn.Module, bits_choices=(4, 8, 16)) -> AttnQuant:
    """Give one of our attention modules an :class:`AttnQuant` (``attn.attn_quant``)."""
    if not isinstance(attn, SKViTAttention | SKSamAttention):
        raise TypeError(f"attach_attn_quant: expected our attention module, got {type(attn)}")
    attn.attn_quant = AttnQuant(bits_choices)
    return attn.attn_quant


def _quantized(m) -> AttnQuant | None:
    aq = m._modules.get("attn_quant")
    return aq if aq is not None and aq.bits < 16 else None


# --------------------------------------------------------------------------- swapping
ATTENTION_CHOICES = ("ours", "original")


def swap_attention(model: nn.Module, family: str) -> list[str]:
    """Replace, in place, the attention modules of a timm ViT / DeiT ("timm_vit"), a timm Swin
    ("timm_swin") or a SAM image encoder ("sam") with ours; returns the names replaced (other
    families: none)."""
    from .families import FAMILIES  # each family names its attention classes there

    pair = FAMILIES[family].swap_pair() if family in FAMILIES else None
    if pair is None:
        return []
    cls, ours = pair[0](), pair[1]
    if cls is None:  # pragma: no cover
        return []
    return replace_modules(model, (cls,), ours.from_module)


def replace_modules(model: nn.Module, classes: tuple[type, ...], build) -> list[str]:
    """Replace, in place, every submodule of ``model`` whose type is one of ``classes`` (exactly:
    not a subclass) with ``build(module)``; returns the names replaced."""
    done = []
    for pname, parent in list(model.named_modules()):
        for attr, child in list(parent._modules.items()):
            if child is not None and type(child) in classes:
                parent._modules[attr] = build(child)
                done.append(f"{pname}.{attr}" if pname else attr)
    return done


def uses_our_attention(model: nn.Module) -> bool:
    return any(
        isinstance(m, SKViTAttention | SKSamAttention | SKSwinAttention) for m in model.modules()
    )


# --------------------------------------------------------------------------- elastic heads
def head_count(m: nn.Module) -> int | None:
    """The number of heads of an original timm / segment-anything attention module whose heads
    can be elastic once swapped for ours, else None. timm's ``scale_norm`` normalizes over all
    heads' channels together and its gate has a row per channel; neither slices per head, so
    such modules keep all their heads."""
    vit, sam = _timm_attention_cls(), _sam_attention_cls()
    if vit is not None and type(m) is vit:
        plain = isinstance(m.norm, nn.Identity) and getattr(m, "gate", None) is None
        return int(m.num_heads) if plain else None
    if sam is not None and type(m) is sam:
        return int(m.num_heads)
    return None


@torch.no_grad()
def prioritize_heads(
    attn: SKViTAttention | SKSamAttention,
    importance: torch.Tensor | HeadImportanceFn | None = None,
) -> torch.Tensor:
    """Sort ``attn``'s heads by importance (default: magnitude) and make its qkv head-major
    (:func:`~supernet_kernels.nn.importance.reorder_heads`), in place; the module computes the
    same function. Returns the head permutation."""
    if not isinstance(attn, SKViTAttention | SKSamAttention):
        raise TypeError(f"prioritize_heads: expected our attention module, got {type(attn)}")
    if attn.qkv_layout != "qkv":
        raise ValueError("prioritize_heads: the heads were already prioritized (qkv is head-major)")
    perm = reorder_heads(attn.qkv, attn.proj, attn.num_heads, importance)
    attn.qkv_layout = "head"
    return perm
