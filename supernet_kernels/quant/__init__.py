"""Quantization numerics: the packing format, weight and activation quantizers, fake quantization.

This package depends on torch only and sits below the kernels, which read its file format.
Whole-model quantization (``quantize_model``, ``save_quantized``, ``load_quantized``) builds
layers, so it lives above them in :mod:`supernet_kernels.transform`; the names here are
deprecated aliases, resolved on first use so that importing ``quant`` never imports ``nn``.
"""

from .packing import FORMAT, SUPPORTED_BITS, codes_per_word, pack, packed_width, unpack
from .quantize import (
    FP8_MAX,
    QuantizedWeight,
    quantize_activations_fp8,
    quantize_activations_int8,
    quantize_weight,
    quantize_weight_fp8,
    validate_qweight,
)

__all__ = [
    "FORMAT",
    "FP8_MAX",
    "SUPPORTED_BITS",
    "QuantizedWeight",
    "codes_per_word",
    "pack",
    "packed_width",
    "quantize_activations_fp8",
    "quantize_activations_int8",
    "quantize_weight",
    "quantize_weight_fp8",
    "unpack",
    "validate_qweight",
]

_MOVED = ("QuantizeReport", "load_quantized", "quantize_model", "save_quantized")


def __getattr__(name: str):
    if name in _MOVED:
        from .. import transform
        from .model import _warn_moved

        _warn_moved(__name__, name)
        return getattr(transform, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
