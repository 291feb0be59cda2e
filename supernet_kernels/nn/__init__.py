"""Layers. They call only ``torch.ops.supernet_kernels.*``."""

from .lowrank import ElasticLowRankLinear, LowRankLinear, svd_factors

__all__ = ["ElasticLowRankLinear", "LowRankLinear", "svd_factors"]
