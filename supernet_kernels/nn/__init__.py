"""Layers. They call only ``torch.ops.supernet_kernels.*``."""

from . import importance
from .elastic import ElasticBlock, ElasticLinear
from .fake_quant import FakeQuantLinear
from .lowrank import ElasticLowRankLinear, LowRankLinear, svd_factors
from .quant import QuantLinear

__all__ = [
    "ElasticBlock",
    "ElasticLinear",
    "ElasticLowRankLinear",
    "FakeQuantLinear",
    "LowRankLinear",
    "QuantLinear",
    "importance",
    "svd_factors",
]
