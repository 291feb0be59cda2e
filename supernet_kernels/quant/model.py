"""Deprecated: whole-model quantization moved to :mod:`supernet_kernels.transform`.

The names below resolve there on first use, with a DeprecationWarning: ``quant/`` keeps the
numerics only and never imports ``nn/`` while loading (the transform builds layers, so it sits
above them).
"""

from __future__ import annotations

import warnings

_MOVED = ("MODEL_FORMAT", "QuantizeReport", "load_quantized", "quantize_model", "save_quantized")


def _warn_moved(module: str, name: str) -> None:
    top = ("quantize_model", "save_quantized", "load_quantized")
    also = f" (or supernet_kernels.{name})" if name in top else ""
    warnings.warn(
        f"{module}.{name} is deprecated: use supernet_kernels.transform.{name}{also}",
        DeprecationWarning,
        stacklevel=3,
    )


def __getattr__(name: str):
    if name in _MOVED:
        from .. import transform

        _warn_moved(__name__, name)
        return getattr(transform, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
