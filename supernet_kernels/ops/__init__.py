"""Ops: ``torch.ops.supernet_kernels.*`` registered with torch.library, and their wrappers.

Each op has a schema, a fake implementation (for torch.compile), a pure-PyTorch default that is
the CPU path and the test reference, and Triton and CUDA implementations picked by
:mod:`supernet_kernels.backends`.
"""

from . import fast_paths  # noqa: E402,F401 - registers torch's fast paths
from .attention import attention, attention_reference
from .autocast import register_autocast_rules
from .lowrank import lowrank_linear, lowrank_linear_reference
from .lowrank_mlp import lowrank_mlp, lowrank_mlp_reference
from .quant import (
    fp8_linear,
    fp8_linear_reference,
    int8_linear,
    int8_linear_reference,
    quant_linear,
    quant_linear_reference,
)

register_autocast_rules()  # the ops above exist now

__all__ = [
    "attention",
    "attention_reference",
    "fp8_linear",
    "fp8_linear_reference",
    "int8_linear",
    "int8_linear_reference",
    "lowrank_linear",
    "lowrank_linear_reference",
    "lowrank_mlp",
    "lowrank_mlp_reference",
    "quant_linear",
    "quant_linear_reference",
]
