"""FLOP formulas for our custom ops, registered with ``torch.utils.flop_counter``.

Importing this module (done by ``import supernet_kernels.cost``, not by ``import
supernet_kernels``) teaches :class:`torch.utils.flop_counter.FlopCounterMode` to count:

* ``supernet_kernels::lowrank_linear``: ``2 * M * rank * (K + n)`` (x @ v[:rank].T is
  M x K x rank, then @ u[:n, :rank].T is M x rank x n), with M the number of rows of x.
* ``supernet_kernels::quant_linear``, ``int8_linear``, ``fp8_linear``: ``2 * M * N * K``, as a
  dense matmul of the same shape (the weight's bit width changes BitOPs, not MACs).
* ``supernet_kernels::attention`` (SAM attention with decomposed relative-position bias):
  q @ k^T plus attn @ v, as torch counts SDPA (adding the bias is not counted).
* ``aten::_scaled_dot_product_flash_attention_for_cpu``: the CPU kernel of
  ``F.scaled_dot_product_attention``, which torch's counter does not know (it would count
  attention as zero on CPU while counting it on CUDA and meta); same formula as torch's for the
  CUDA SDPA kernels (q @ k^T plus attn @ v).

FLOPs count a multiply-add as 2, as FlopCounterMode does; MACs = FLOPs / 2. Biases, the
dequantization of packed weights and activation quantization are not counted, as torch does not
count the bias of ``addmm``.
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_flop_count

# Make sure torch.ops.supernet_kernels.* exist (registering them is what ops/ does on import).
from .. import ops as _ops  # noqa: F401


def _rows(x_shape) -> int:
    return math.prod(x_shape[:-1])


def lowrank_linear_flop(
    x_shape, u_shape, v_shape, rank, out_features=None, bias=None, *, out_shape=None, **kwargs
) -> int:
    """2 * M * rank * (K + n) for ``lowrank_linear(x, u, v, rank, out_features, bias)``."""
    n = u_shape[0] if out_features is None else out_features
    return 2 * _rows(x_shape) * rank * (x_shape[-1] + n)


def quant_linear_flop(
    x_shape,
    packed_shape,
    scales_shape,
    zeros_shape,
    bits,
    group_size,
    in_features,
    act_bits=16,
    bias=None,
    *,
    out_shape=None,
    **kwargs,
) -> int:
    """2 * M * N * K for ``quant_linear``: a dense matmul of the unpacked weight's shape."""
    return 2 * _rows(x_shape) * packed_shape[0] * in_features


def raw8_linear_flop(x_shape, w_shape, scale_shape, bias=None, *, out_shape=None, **kwargs) -> int:
    """2 * M * N * K for ``int8_linear`` / ``fp8_linear`` with weight (N, K)."""
    return 2 * _rows(x_shape) * w_shape[0] * w_shape[1]


def cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """q @ k^T and attn @ v, as torch counts its CUDA SDPA kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _register(packet, formula) -> None:
    if packet not in flop_registry:  # idempotent (module reloads, or torch adding it later)
        register_flop_formula(packet)(formula)


_sk = torch.ops.supernet_kernels
FORMULAS = {
    _sk.lowrank_linear: lowrank_linear_flop,
    _sk.quant_linear: quant_linear_flop,
    _sk.int8_linear: raw8_linear_flop,
    _sk.fp8_linear: raw8_linear_flop,
}
if hasattr(_sk, "attention"):
    FORMULAS[_sk.attention] = cpu_sdpa_flop  # (q, k, v, rel_h, rel_w, scale): same count
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = cpu_sdpa_flop

for _packet, _formula in FORMULAS.items():
    _register(_packet, _formula)
