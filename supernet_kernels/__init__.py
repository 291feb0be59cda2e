"""supernet-kernels: weight-sharing supernets for ViT and SAM on sliced low-rank and mixed-bit kernels.

Importing the package never touches CUDA and never requires the native extension or Triton:
both are loaded on first use, and their absence is reported by ``supernet-kernels info``.
"""

from . import ops  # registers torch.ops.supernet_kernels.*
from . import nn
from ._version import __version__
from .backends import BackendUnavailable, backend, backend_status, get_backend

__all__ = [
    "BackendUnavailable",
    "__version__",
    "backend",
    "backend_status",
    "get_backend",
    "nn",
    "ops",
]
