"""``FakeQuantLinear``: an ``nn.Linear`` whose forward uses the fake-quantized weight (and,
with ``act_bits=8``, per-token int8 fake-quantized activations, the definition of the
``quant_linear`` op's A8 path); ``to_quant_linear()`` gives the deployable ``QuantLinear``.
The numerics (:class:`~supernet_kernels.quant.fake.LSQWeightQuantizer`, the fake quantizers)
are in :mod:`supernet_kernels.quant.fake`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.fake import LSQWeightQuantizer, fake_quantize_activations_int8
from .quant import QuantLinear


class FakeQuantLinear(nn.Linear):
    """An ``nn.Linear`` trained through fake quantization (quantization-aware training).

    The float weight is kept as the parameter (the "latent" weight); forward uses
    ``weight_quantizer(weight)``, an :class:`LSQWeightQuantizer`. With ``act_bits=8`` the input
    is fake-quantized per token to int8 as well. ``to_quant_linear()`` exports the packed layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bits: int = 4,
        group_size: int | None = 128,
        act_bits: int = 16,
        symmetric: bool = False,
        clip_search: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if act_bits not in (8, 16):
            raise ValueError(f"FakeQuantLinear: act_bits must be 8 or 16, got {act_bits!r}")
        self.act_bits = act_bits
        self.weight_quantizer = LSQWeightQuantizer(
            self.weight, bits, group_size, symmetric, clip_search
        )

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int = 4,
        group_size: int | None = 128,
        act_bits: int = 16,
        symmetric: bool = False,
        clip_search: bool = False,
    ) -> FakeQuantLinear:
        w = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            bits,
            group_size,
            act_bits,
            symmetric,
            clip_search,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(w)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        # Re-initialize the scales from the copied weight.
        layer.weight_quantizer = LSQWeightQuantizer(
            layer.weight, bits, group_size, symmetric, clip_search
        ).to(w.device)
        return layer

    @property
    def bits(self) -> int:
        return self.weight_quantizer.bits

    @property
    def group_size(self) -> int:
        return self.weight_quantizer.group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_quantizer(self.weight).to(x.dtype)
        if self.act_bits == 8:
            x = fake_quantize_activations_int8(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)

    def to_quant_linear(self):
        """The deployable :class:`~supernet_kernels.nn.QuantLinear` (same codes, scales, zero
        points and bias)."""
        qw = self.weight_quantizer.export(self.weight)
        bias = None if self.bias is None else self.bias.detach()
        return QuantLinear.from_qweight(qw, bias, self.act_bits)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, bits={self.bits}, group_size={self.group_size}, "
            f"act_bits={self.act_bits}, symmetric={self.weight_quantizer.symmetric}"
        )
