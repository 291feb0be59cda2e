"""supernet-kernels: ViT and SAM supernets on sliced low-rank and mixed-bit GPU kernels.

Importing the package never touches CUDA and never requires the native extension or Triton:
both are loaded on first use, and their absence is reported by ``supernet-kernels info``.
"""

from . import (
    nn,
    ops,  # registers torch.ops.supernet_kernels.*
    recipes,  # fills the supernet store's recipe table (see supernet.store.register_recipe)
)
from ._version import __version__
from .backends import BackendUnavailable, backend, backend_status, get_backend
from .compile import capture_cuda_graph, compile
from .planning import plan
from .supernet import Supernet, convert, extract, load, save
from .transform import load_quantized, quantize_model, save_quantized

__all__ = [
    "BackendUnavailable",
    "Supernet",
    "__version__",
    "backend",
    "backend_status",
    "capture_cuda_graph",
    "compile",
    "convert",
    "extract",
    "get_backend",
    "load",
    "load_quantized",
    "nn",
    "ops",
    "plan",
    "recipes",
    "quantize_model",
    "save",
    "save_quantized",
]
