"""timm Swin window attention computing through ``torch.ops.supernet_kernels.attention``.

:class:`SKSwinAttention` replaces ``timm.models.swin_transformer.WindowAttention`` (exactly that
class: subclasses may change the forward). :func:`~supernet_kernels.supernet.convert` swaps it in
(``attention="ours"``, the default) through
:func:`~supernet_kernels.supernet.attention.swap_attention`; extracted subnets keep it and
:func:`~supernet_kernels.supernet.load` puts it back.

Like the ViT / SAM modules, ``from_module(m)`` takes the original's submodules, parameters
(``relative_position_bias_table``) and buffers (``relative_position_index``, non-persistent) by
reference, in the original's order, so the state_dict keys are unchanged.

The forward is timm's, with the attention in the op:

* the relative-position bias (nH, N, N) is gathered from the table once per forward (an index
  into a parameter: it stays differentiable, and the table gets its gradient through the op's
  bias gradient);
* with the shifted-window mask (nW, N, N) (0 / -100, from ``SwinTransformerBlock``) the bias
  becomes (nW, nH, N, N) = rel-pos bias + mask, which the op adds to batch row b as
  bias[b % nW] (timm batches the windows as B * nW with window index b % nW); without a mask
  the (1, nH, N, N) bias is a view of the gathered table, shared by every row.

Neither the (B * nW, nH, N, N) bias nor the scores are materialized on the Triton backend (timm's
fused path expands the mask to the former). Attention dropout needs the probabilities, so in
training with ``attn_drop.p > 0`` it runs timm's own computation (SDPA with the bias as mask).

Elastic heads are not implemented (all heads are used): the module has the common elastic
interface with one choice (``set_active(heads=num_heads)``), so callers need no special case.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _window_attention_cls():
    try:
        from timm.models.swin_transformer import WindowAttention
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    return WindowAttention


class SKSwinAttention(nn.Module):
    """timm Swin ``WindowAttention`` computing through ``supernet_kernels.ops.attention``."""

    def __init__(self) -> None:  # use from_module
        super().__init__()
        self.dim = 1
        self.num_heads = 1
        self.scale = 1.0
        self.window_size: tuple[int, int] = (1, 1)
        self.window_area = 1

    @classmethod
    def from_module(cls, m: nn.Module) -> SKSwinAttention:
        """Take ``m``'s (a timm ``WindowAttention``) submodules, parameters and buffers by
        reference."""
        att = _window_attention_cls()
        if att is None or type(m) is not att:
            raise TypeError(
                f"SKSwinAttention.from_module: expected timm WindowAttention, got {type(m)}"
            )
        new = cls()
        new.dim = int(m.dim)
        new.num_heads = int(m.num_heads)
        new.scale = float(m.scale)
        new.window_size = tuple(int(w) for w in m.window_size)
        new.window_area = int(m.window_area)
        for name, child in m._modules.items():
            new._modules[name] = child
        for name, p in m._parameters.items():
            new._parameters[name] = p
        for name, b in m._buffers.items():
            new._buffers[name] = b
        new._non_persistent_buffers_set = set(m._non_persistent_buffers_set)
        new.train(m.training)
        return new

    def set_active(self, *, heads: int) -> None:
        """The one choice: all ``num_heads`` heads (the relative-position table is per head)."""
        if heads != self.num_heads or isinstance(heads, bool):
            raise ValueError(
                f"SKSwinAttention.set_active: heads must be the module's {self.num_heads} "
                f"(elastic heads are not implemented for Swin), got {heads!r}"
            )

    def active_choice(self) -> dict:
        return {"heads": self.num_heads}

    def choices(self) -> list[dict]:
        return [{"heads": self.num_heads}]

    def rel_pos_bias(self) -> torch.Tensor:
        """(nH, N, N): the table gathered by the index (a differentiable function of the table;
        a strided view, no copy beyond the gather)."""
        n = self.window_area
        table = self.relative_position_bias_table
        return table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, _ = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B * nW, nH, N, d)
        bias = self.rel_pos_bias().unsqueeze(0)  # (1, nH, N, N)
        if mask is not None:
            bias = bias + mask.unsqueeze(1).to(bias.dtype)  # (nW, nH, N, N)
        bias = bias.to(q.dtype)
        drop = self.attn_drop.p if self.training else 0.0
        if drop > 0:
            # Attention dropout is outside the op: timm's own (fused) computation.
            G = bias.shape[0]
            attn_mask = bias.unsqueeze(0).expand(B_ // G, -1, -1, -1, -1)
            attn_mask = attn_mask.reshape(-1, self.num_heads, N, N)
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=drop, scale=self.scale
            )
        else:
            x = torch.ops.supernet_kernels.attention(q, k, v, None, None, self.scale, bias)[0]
        x = x.transpose(1, 2).reshape(B_, N, -1)
        x = self.proj(x)
        return self.proj_drop(x)

    def set_window_size(self, window_size) -> None:
        """timm's ``WindowAttention.set_window_size`` (resizes the table, rebuilds the index),
        so ``SwinTransformer.set_input_size`` keeps working after conversion."""
        _window_attention_cls().set_window_size(self, window_size)

    def init_non_persistent_buffers(self) -> None:
        """timm's: rebuild ``relative_position_index`` (e.g. after loading on meta)."""
        _window_attention_cls()._init_buffers(self)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, "
            "op=supernet_kernels"
        )
