"""Autocast rules for our custom ops.

Our ops take one floating dtype for all of their float inputs. Under ``torch.autocast``, a
layer's parameters (fp32) meet activations in the autocast dtype (bf16, say), which the ops
reject; these rules cast the floating inputs to the device's current autocast dtype first, as
autocast does for aten's matmuls. Registered when the ops are imported (no CUDA is touched),
only where an op has no autocast kernel of its own. Quantized ops are left out on purpose:
their scales and zero points must stay float32.
"""

from __future__ import annotations

import torch

AUTOCAST_OPS = ("lowrank_linear", "attention")
_LIB: list = []


def _kernel(op, dev: str, key: str):
    excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

    def cast(v, dtype):
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.device.type == dev:
            return v.to(dtype) if v.dtype != torch.float64 else v
        return v

    def kernel(_keyset, *args, **kwargs):
        dtype = torch.get_autocast_dtype(dev)
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return op(
                *(cast(a, dtype) for a in args), **{k: cast(v, dtype) for k, v in kwargs.items()}
            )

    return kernel


def register_autocast_rules() -> None:
    if _LIB:
        return
    _LIB.append(torch.library.Library("supernet_kernels", "IMPL"))
    for name in AUTOCAST_OPS:
        op = getattr(torch.ops.supernet_kernels, name).default
        for dev in ("cpu", "cuda"):
            key = "Autocast" + torch._C._dispatch_key_for_device(dev)
            if torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), key):
                continue
            _LIB[0].impl(name, _kernel(op, dev, key), key, with_keyset=True)
