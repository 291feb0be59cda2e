"""Lazy loading of the optional native extension ``supernet_kernels._C``.

Nothing here runs at import time. A missing or broken extension is reported with what to do
when a native kernel is asked for, never by crashing the import (bitsandbytes does the same).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class NativeInfo:
    loaded: bool
    error: str | None = None
    has_cuda: bool = False
    cuda_archs: list[int] = field(default_factory=list)


_HOW_TO_BUILD = (
    "build it with `CUDA_HOME=/usr/local/cuda pip install --no-build-isolation -e .` "
    "(see README: needs torch with CUDA and nvcc)"
)


@functools.cache
def native_info() -> NativeInfo:
    try:
        importlib.import_module("supernet_kernels._C")
    except ImportError as exc:  # not built, or built against another torch
        return NativeInfo(loaded=False, error=f"{type(exc).__name__}: {exc}")
    ops = torch.ops.supernet_kernels
    return NativeInfo(
        loaded=True,
        has_cuda=bool(ops._native_has_cuda()),
        cuda_archs=[int(a) for a in ops._native_cuda_arch_list()],
    )


def cuda_kernels_reason(device: torch.device) -> str | None:
    """None if our CUDA kernels can run on ``device``, else why not."""
    info = native_info()
    if not info.loaded:
        return f"the native extension is not available ({info.error}); {_HOW_TO_BUILD}"
    if not info.has_cuda:
        return f"the native extension was built without CUDA kernels; {_HOW_TO_BUILD}"
    if device.type != "cuda":
        return f"our CUDA kernels need CUDA tensors, got device {device}"
    major, minor = torch.cuda.get_device_capability(device)
    cc = 10 * major + minor
    # SASS for cc itself, or PTX/SASS of a lower arch within the same major (binary compatible);
    # the newest arch also carries PTX, which a newer GPU can JIT.
    ok = any(a == cc or (a // 10 == major and a < cc) for a in info.cuda_archs) or (
        info.cuda_archs and cc > max(info.cuda_archs)
    )
    if not ok:
        return (
            f"the native extension has no code for sm_{cc} (compiled for "
            f"{', '.join(f'sm_{a}' for a in info.cuda_archs)}); rebuild with TORCH_CUDA_ARCH_LIST"
        )
    return None
