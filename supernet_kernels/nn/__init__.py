"""Layers. They call only ``torch.ops.supernet_kernels.*``."""

from .lowrank import ElasticLowRankLinear, LowRankLinear, svd_factors
from .quant import QuantLinear

__all__ = ["ElasticLowRankLinear", "LowRankLinear", "QuantLinear", "svd_factors"]
