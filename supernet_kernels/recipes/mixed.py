"""A :class:`~supernet_kernels.supernet.Supernet` with searchable activation bits.

:class:`MixedPrecisionSupernet` adds one config section to a converted supernet::

    "act_bits": {"blocks.0.attn.qkv": 8, ..., "blocks.0.attn": 4, ...}

* a linear's entry is the bit-width of its *input* activation, fake-quantized by an
  :class:`~supernet_kernels.quant.fake.LSQActQuantizer` (``input_quant`` child, run by a
  forward pre-hook): 4, 8 or 16 (identity);
* an attention module's entry is the bit-width of the attention matmuls' operands Q, K, V and
  the softmax probabilities P (:class:`~supernet_kernels.supernet.attention.AttnQuant`).

The cost model reads both (:func:`supernet_kernels.cost.profile`: a layer's ``input_quant``
lowers its a_bits; an attention module's ``attn_quant`` puts its q k^T and P v MACs at bits x
bits), the search sees them as genes (``act_bits:<name>``) and ``extract`` keeps them on the
extracted subnet (the linears' quantizers move onto the extracted layers). The quantizers are
fake (training and accuracy); the real int4 / int8 activation kernels are future work, so an
extracted subnet computes in floating point at the quantized values.

Also here (options of the mixed-precision recipe):

* **one LoRA adapter per group of weight bit-widths** (:func:`add_grouped_lora`): a layer holds
  one (lora_a, lora_b) pair per group in ``lora_bank``; applying a config points ``lora_a`` /
  ``lora_b`` at the pair of the layer's w_bits group, so 2-bit and 8-bit subnets do not fight
  over one adapter;
* **learned weight step sizes** (:func:`add_weight_lsq`): per layer and weight bit-width, a
  learned per-output-channel factor exp(g) on the min-max step (LSQ's gradient, scaled by
  1 / sqrt(in * Qp)). A factor, not an absolute step: the min-max step follows the MLP width,
  the LoRA-merged weight and the group layout, so one parameter serves every subnet.
  ``extract`` packs the weight with these learned steps (the subnet computes what the
  supernet did).

The class is applied to a converted supernet in place (:meth:`MixedPrecisionSupernet.extend`)
so that ``convert`` stays the one constructor; a plain ``Supernet`` refuses the section.
"""

from __future__ import annotations

import copy
import functools
import json
import math

import torch
from torch import nn

from ..nn.elastic import ElasticLinear
from ..quant.fake import LSQActQuantizer, grad_scale
from ..supernet import Supernet
from ..supernet.attention import attach_attn_quant

SECTION = "act_bits"


def _quant_input(module: nn.Module, args):
    """Forward pre-hook: the first input through the layer's ``input_quant``."""
    return (module.input_quant(args[0]), *args[1:])


def attach_input_quant(layer: nn.Module, bits_choices) -> LSQActQuantizer:
    """Give ``layer`` an input activation quantizer (``layer.input_quant``) and the hook."""
    layer.input_quant = LSQActQuantizer(bits_choices, signed=True)
    layer.register_forward_pre_hook(_quant_input)
    return layer.input_quant


class MixedPrecisionSupernet(Supernet):
    """A Supernet with the ``act_bits`` section (module doc). Build with :meth:`extend`."""

    _act_space: dict[str, list[int]]

    @classmethod
    def extend(cls, supernet: Supernet, act_bits: dict[str, list[int]]) -> MixedPrecisionSupernet:
        """Turn ``supernet`` (from ``convert``) into a MixedPrecisionSupernet, in place, with
        ``act_bits`` = {linear or attention module name: bit choices}; attaches the
        quantizers. Returns the same object."""
        if not isinstance(supernet, Supernet):
            raise TypeError(f"extend: expected a Supernet, got {type(supernet).__name__}")
        linears = set(supernet.space["linear"])
        attns = set(supernet.space["heads"])
        space = {}
        for n, choices in act_bits.items():
            c = sorted({int(b) for b in choices})
            if not c or any(b not in (2, 3, 4, 8, 16) for b in c):
                raise ValueError(f"act_bits.{n}: choices must be among 2, 3, 4, 8, 16, got {c}")
            if n in linears:
                attach_input_quant(supernet._mod(n), c)
            elif n in attns:
                attach_attn_quant(supernet._mod(n), c)
            else:
                raise ValueError(
                    f"act_bits.{n}: not a linear or attention module of the supernet "
                    "(attention modules need attention='ours')"
                )
            space[n] = c
        supernet.__class__ = cls
        supernet._act_space = space
        supernet._lora_groups = getattr(supernet, "_lora_groups", {})
        supernet._config = supernet.max_config()
        supernet._apply_config(supernet._config)
        return supernet

    @property
    def space(self) -> dict:
        sp = super().space
        sp[SECTION] = copy.deepcopy(self._act_space)
        return sp

    def _pick(self, choose) -> dict:
        cfg = super()._pick(choose)
        cfg[SECTION] = {n: choose(c) for n, c in self._act_space.items()}
        return cfg

    def validate_config(self, config: dict) -> dict:
        if not isinstance(config, dict):
            raise ValueError(f"config: expected a dict, got {type(config).__name__}")
        rest = {k: v for k, v in config.items() if k != SECTION}
        new = super().validate_config(rest)
        entries = config.get(SECTION, {})
        if not isinstance(entries, dict):
            raise ValueError(f"{SECTION}: expected a dict, got {type(entries).__name__}")
        for n, v in entries.items():
            if n not in self._act_space:
                raise ValueError(f"{SECTION}.{n}: unknown layer or attention module")
            if isinstance(v, bool) or not isinstance(v, int) or v not in self._act_space[n]:
                raise ValueError(
                    f"{SECTION}.{n}: {v!r} is not one of {json.dumps(self._act_space[n])}"
                )
            new[SECTION][n] = v
        return new

    def _apply_config(self, cfg: dict) -> None:
        super()._apply_config(cfg)
        for n, b in cfg.get(SECTION, {}).items():
            m = self._mod(n)
            q = m._modules.get("input_quant") or m._modules.get("attn_quant")
            q.set_bits(b)
        for n, groups in getattr(self, "_lora_groups", {}).items():
            el = self._mod(n)
            g = groups[cfg["linear"][n]["w_bits"]]
            el._parameters["lora_a"] = el.lora_bank[2 * g]
            el._parameters["lora_b"] = el.lora_bank[2 * g + 1]

    def _extract(self) -> nn.Module:
        # The extracted linears get copies of their supernet layer's input quantizer.
        patched = []
        for n in self._space["linear"]:
            m = self._mod(n)
            if "input_quant" in m._modules or "w_step" in m._modules:
                m.extract = functools.partial(_extract_with_quant, m)
                patched.append(m)
        try:
            return super()._extract()
        finally:
            for m in patched:
                del m.extract


def _extract_with_quant(el: ElasticLinear) -> nn.Module:
    sub = _extract_lsq(el) if "w_step" in el._modules else ElasticLinear.extract(el)
    if "input_quant" in el._modules:
        sub.input_quant = copy.deepcopy(el.input_quant)
        sub.register_forward_pre_hook(_quant_input)
    return sub


@torch.no_grad()
def _extract_lsq(el: ElasticLinear) -> nn.Module:
    """ElasticLinear.extract, but a quantized layer packed with the learned step sizes (the
    codes and scales its forward uses), so the subnet computes what the supernet did."""
    if el.is_factorized or el.w_bits >= 16:
        return ElasticLinear.extract(el)
    from ..nn.quant import QuantLinear
    from ..quant.fake import _codes
    from ..quant.packing import pack
    from ..quant.quantize import QuantizedWeight

    w = el._dense_weight().detach()
    n, k = w.shape
    scales, zeros, g = el._quant_params(w)
    q, _, _ = _codes(w, scales, zeros, el.w_bits, g)
    qw = QuantizedWeight(
        packed=pack(q.reshape(n, k).to(torch.int64), el.w_bits),
        scales=scales.detach().float().contiguous(),
        zeros=zeros.float().contiguous(),
        bits=el.w_bits,
        group_size=g,
        shape=(n, k),
    )
    bias = el._active_bias()
    return QuantLinear.from_qweight(qw, None if bias is None else bias.detach(), el.a_bits)


# --------------------------------------------------------------------------- adapters
def add_grouped_lora(supernet: MixedPrecisionSupernet, groups, layers=None) -> list[str]:
    """One LoRA pair per group of weight bit-widths on every layer that already has adapters
    (``add_lora`` first; its pair becomes group 0's). ``groups``: bit sets, e.g. ((8,), (3, 4),
    (2,)); each layer's w_bits choices must each fall in one group. Returns the layers done."""
    groups = [tuple(sorted(g)) for g in groups]
    done = []
    for n, el in supernet.elastic_linears().items():
        if not el.lora_rank or (layers is not None and n not in layers):
            continue
        which = {}
        for b in el.w_bits_choices:
            hit = [i for i, g in enumerate(groups) if b in g]
            if len(hit) != 1:
                raise ValueError(f"add_grouped_lora: w_bits {b} of {n} is in {len(hit)} groups")
            which[b] = hit[0]
        bank = [el.lora_a, el.lora_b]
        for _ in groups[1:]:
            bank += [
                nn.Parameter(el.lora_a.detach().clone()),
                nn.Parameter(el.lora_b.detach().clone()),
            ]
        el.lora_bank = nn.ParameterList(bank)
        supernet._lora_groups[n] = which
        done.append(n)
    supernet._apply_config(supernet.active_config())
    return done


# --------------------------------------------------------------------------- weight LSQ
def _lsq_quant_params(el: ElasticLinear, w: torch.Tensor):
    scales, zeros, g = ElasticLinear._quant_params(el, w)
    gain = el.w_step[str(el.w_bits)][: w.shape[0]]
    qp = 2**el.w_bits - 1
    gain = grad_scale(gain, 1.0 / math.sqrt(w.shape[1] * qp))
    return scales * gain.float().exp(), zeros, g


def add_weight_lsq(supernet: Supernet) -> list[str]:
    """Learned weight step sizes on every quantizable dense layer (module doc); returns the
    layers done. The factors start at 1 (exp(0)): the model starts at min-max rounding."""
    done = []
    for n, el in supernet.elastic_linears().items():
        low = [b for b in el.w_bits_choices if b < 16]
        if el.is_factorized or not low:
            continue
        el.w_step = nn.ParameterDict(
            {str(b): nn.Parameter(torch.zeros(el.out_features, 1)) for b in low}
        )
        el._quant_params = functools.partial(_lsq_quant_params, el)
        done.append(n)
    return done


__all__ = [
    "MixedPrecisionSupernet",
    "add_grouped_lora",
    "add_weight_lsq",
    "attach_input_quant",
]
