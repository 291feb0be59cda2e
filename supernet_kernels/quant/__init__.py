"""Quantization: weight quantizers, the packing format, and activation quantization."""

from .model import QuantizeReport, load_quantized, quantize_model, save_quantized
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
    "QuantizeReport",
    "QuantizedWeight",
    "codes_per_word",
    "load_quantized",
    "pack",
    "packed_width",
    "quantize_activations_fp8",
    "quantize_activations_int8",
    "quantize_model",
    "quantize_weight",
    "quantize_weight_fp8",
    "save_quantized",
    "unpack",
    "validate_qweight",
]
