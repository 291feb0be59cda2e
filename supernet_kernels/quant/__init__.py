"""Quantization: weight quantizers, the packing format, and activation quantization."""

from .packing import FORMAT, SUPPORTED_BITS, codes_per_word, pack, packed_width, unpack
from .quantize import QuantizedWeight, quantize_activations_int8, quantize_weight, validate_qweight

__all__ = [
    "FORMAT",
    "SUPPORTED_BITS",
    "QuantizedWeight",
    "codes_per_word",
    "pack",
    "packed_width",
    "quantize_activations_int8",
    "quantize_weight",
    "unpack",
    "validate_qweight",
]
