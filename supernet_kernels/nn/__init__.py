"""Layers. They call only ``torch.ops.supernet_kernels.*``."""

from . import importance
from .elastic import ElasticBlock, ElasticLinear
from .lowrank import ElasticLowRankLinear, LowRankLinear, svd_factors
from .quant import QuantLinear

__all__ = [
    "ElasticBlock",
    "ElasticLinear",
    "ElasticLowRankLinear",
    "LowRankLinear",
    "QuantLinear",
    "importance",
    "svd_factors",
]
