"""transformers' SAM vision attention computing through ``torch.ops.supernet_kernels.attention``,
with elastic heads.

transformers' ``SamVisionAttention`` (and its SDPA subclass ``SamVisionSdpaAttention``, the
default) lay the fused qkv rows out as (3, heads, head_dim) and reshape with
``num_attention_heads``, as segment-anything does, so the model's own module cannot run fewer
heads. :func:`swap` replaces every such module by :class:`SKHFSamAttention`, which:

* is a :class:`~supernet_kernels.supernet.attention.SKSamAttention` (the module
  segment-anything's image encoder gets): the same qkv layouts, ``set_heads``, head
  prioritization (:func:`~supernet_kernels.supernet.attention.prioritize_heads` makes qkv
  head-major, best head first, so h heads are one prefix of qkv's rows and of proj's
  columns), precomputed relative-position indices, attention quantization, and the records
  ``save`` / ``load`` keep for it;
* is also a ``SamVisionAttention``, whose parameter names it keeps (``qkv``, ``proj``,
  ``rel_pos_h``, ``rel_pos_w``: a state_dict of the original loads into it and vice versa), so
  transformers' output capturing (``output_attentions=True``, hooks installed on every
  ``SamVisionAttention``) finds it;
* honours transformers' forward: ``forward(hidden_states, output_attentions=None)`` returns
  ``(hidden_states, attention weights or None)``. The weights, softmax probabilities of shape
  (batch * heads, T, T) as transformers' eager module returns them, are materialized only when
  asked for (the argument, or transformers' output collector asking for "attentions"); then,
  and in training with attention dropout, the attention is computed explicitly (scores,
  softmax in fp32 or float64, dropout, P v). Otherwise the op runs and never forms the T x T
  scores on the Triton backend.

Both of transformers' classes compute the same function (softmax(scale q k^T + decomposed
relative-position bias) v); the eager one takes its softmax in fp32 even for float64 inputs,
the op in float64, so float64 comparisons are exact against the SDPA class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SKSamAttention, _quantized, replace_modules

try:
    from transformers.models.sam.modeling_sam import SamVisionAttention
except ImportError:  # pragma: no cover - only imported for transformers models
    SamVisionAttention = None


def _original_classes() -> tuple[type, ...]:
    """transformers' SAM vision attention classes (eager, and SDPA where it exists)."""
    if SamVisionAttention is None:  # pragma: no cover
        return ()
    from transformers.models.sam import modeling_sam

    sdpa = getattr(modeling_sam, "SamVisionSdpaAttention", None)
    return (SamVisionAttention,) + ((sdpa,) if sdpa is not None else ())


def _eager_cls():
    """The original class the family table names (its SDPA subclass is swapped as well)."""
    return SamVisionAttention


def _weights_requested(flag) -> bool:
    """Whether the caller wants the attention weights: the argument (transformers 4.x layers
    pass it), or transformers' output collector (5.x layers call the module without it and
    read ``output[1]`` through a hook where ``output_attentions=True``)."""
    if flag:
        return True
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # older transformers: the argument says it all
        return False
    collected = _active_collector.get()
    return isinstance(collected, dict) and "attentions" in collected


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


class SKHFSamAttention(SKSamAttention, *((SamVisionAttention,) if SamVisionAttention else ())):
    """transformers ``SamVisionAttention`` computing through the op, heads elastic (module
    doc). Build it with :meth:`from_module`."""

    def __init__(self) -> None:  # use from_module
        # SamVisionAttention.__init__ needs a config and would make fresh parameters: set up
        # the module state only, then what SKSamAttention's constructor sets.
        nn.Module.__init__(self)
        self._placeholders()
        self.dropout = 0.0

    @property
    def num_attention_heads(self) -> int:
        """transformers' name for the number of heads the module runs."""
        return self.num_heads

    @classmethod
    def from_module(cls, m: nn.Module, input_size: tuple[int, int] | None = None):
        """Take ``m``'s (a transformers ``SamVisionAttention`` or its SDPA subclass) layers
        and tables by reference, and its hooks (transformers' output capturing installs them
        once per model). ``input_size``: the token grid the forward will see (default: read
        off the tables, as transformers sizes them: the window, or the whole grid for a
        global layer)."""
        if type(m) not in _original_classes():
            raise TypeError(
                f"SKHFSamAttention.from_module: expected transformers' SamVisionAttention, "
                f"got {type(m).__name__}"
            )
        new = cls()
        new._adopt(m, int(m.num_attention_heads), input_size)
        new.dropout = float(m.dropout)
        for name in _HOOK_DICTS:
            if hasattr(m, name):
                setattr(new, name, type(getattr(m, name))(getattr(m, name)))
        return new

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v, rel_h, rel_w = self._heads(hidden_states)
        B, nh, T, _ = q.shape
        want = _weights_requested(output_attentions)
        drop = self.dropout if self.training else 0.0
        aq = _quantized(self)
        weights = None
        if want or drop > 0:
            # transformers' eager computation: the probabilities are an output (or dropout
            # needs them), so the T x T scores are formed anyway.
            acc = torch.float64 if q.dtype == torch.float64 else torch.float32
            s = (q.to(acc) * self.scale) @ k.to(acc).transpose(-2, -1)
            if rel_h is not None:
                s = s + self._bias(rel_h.to(acc), rel_w.to(acc))
            p = s.softmax(-1).to(q.dtype)
            weights = p.reshape(B * nh, T, T) if want else None
            out = F.dropout(p, drop, training=True) @ v if drop > 0 else p @ v
            if aq is not None:
                out = aq.attend(q, k, v, self.scale, self._bias(rel_h, rel_w))
        elif aq is not None:
            out = aq.attend(q, k, v, self.scale, self._bias(rel_h, rel_w))
        else:
            out = torch.ops.supernet_kernels.attention(q, k, v, rel_h, rel_w, self.scale)[0]
        return self._out(out, hidden_states), weights


def swap(model: nn.Module) -> list[str]:
    """Replace, in place, every transformers SAM vision attention module (eager or SDPA) of
    ``model`` with :class:`SKHFSamAttention`; returns the names replaced."""
    return replace_modules(model, _original_classes(), SKHFSamAttention.from_module)
