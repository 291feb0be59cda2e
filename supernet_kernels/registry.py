"""The one place that says which implementations each op has.

``ops/<op>.py`` keeps an op's schema, fake, autograd and argument checks; every way of
computing the op (the pure-PyTorch reference, torch's own fast paths, our Triton and CUDA
kernels) registers itself here for that op under a name, with the op's exact signature and a
``supports(device, dtype, **shape)`` that returns None or the reason it cannot run that call::

    @registry.register("quant_linear", "torch_int4pack", kernel=False, supports=_int4_supports)
    def _int4pack(x, packed, scales, zeros, bits, group_size, in_features, act_bits, bias): ...

``shape`` holds the op's dispatch keys (``m`` and e.g. ``bits``/``act_bits``, ``rank``, ``k``,
``n``). ``supports`` looks at the device's type only; ``min_capability`` states what the GPU
must be (checked against the real GPU, or the one a plan is made for). ``fallback`` (lower
first) places a torch path in what ``auto`` runs where no table covers a call.
``kernel=True`` marks our own kernels: ``auto`` runs one only where the test suite passed with
it on the GPU's architecture (``configs/verified.json``). ``dense_equivalent``
marks the path that costs what the dense layer costs (a dequantize-once or a product of the
low-rank factors, then one cuBLAS GEMM); ``auto`` falls back to it where nothing compressed is
within 1.10x of the dense layer. ``backends.KERNELS``, the "no kernel" errors, ``supernet-kernels
info``, the benchmarks and dispatch all read this registry.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import torch

Supports = Callable[..., "str | None"]


def _always(device: torch.device, dtype: torch.dtype, **shape: Any) -> str | None:
    return None


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One way to compute ``op``: ``fn`` has the op's signature."""

    op: str
    name: str
    fn: Callable[..., Any]
    supports: Supports
    kernel: bool
    dense_equivalent: bool = False
    reference: bool = False
    min_capability: tuple[int, int] | None = None
    fallback: int | None = None
    doc: str = ""

    def reason(self, device: torch.device, dtype: torch.dtype, **shape: Any) -> str | None:
        """None if this implementation can run the call, else why not."""
        return self.supports(device, dtype, **shape)


_IMPLS: dict[str, dict[str, Implementation]] = {}
# Modules that register implementations when imported (the ops package imports its own).
_PROVIDERS = ("supernet_kernels.ops",)


def register(
    op: str,
    name: str,
    *,
    kernel: bool,
    supports: Supports | None = None,
    dense_equivalent: bool = False,
    reference: bool = False,
    min_capability: tuple[int, int] | None = None,
    fallback: int | None = None,
    doc: str = "",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as implementation ``name`` of ``op``."""
    if not name.isidentifier():
        raise ValueError(f"implementation name must be an identifier, got {name!r}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        impls = _IMPLS.setdefault(op, {})
        if name in impls and impls[name].fn is not fn:
            raise ValueError(f"{op}: implementation {name!r} is already registered")
        impls[name] = Implementation(
            op, name, fn, supports or _always, kernel, dense_equivalent, reference,
            min_capability, fallback, doc or (fn.__doc__ or "").strip().split("\n")[0],
        )  # fmt: skip
        return fn

    return deco


_loaded = False


def _load() -> None:
    # Every select() of every op call reaches here: import the providers once.
    global _loaded
    if not _loaded:
        for mod in _PROVIDERS:
            importlib.import_module(mod)
        _loaded = True


def ops() -> tuple[str, ...]:
    """Every op with a registered implementation."""
    _load()
    return tuple(sorted(_IMPLS))


def implementations(op: str) -> dict[str, Implementation]:
    """``op``'s implementations by name, in registration order (the reference first)."""
    _load()
    if op not in _IMPLS:
        raise KeyError(f"no registered op {op!r}; registered: {', '.join(sorted(_IMPLS))}")
    return dict(_IMPLS[op])


def get(op: str, name: str) -> Implementation:
    impls = implementations(op)
    if name not in impls:
        raise KeyError(f"{op} has no implementation {name!r}; it has {', '.join(impls)}")
    return impls[name]


def has(op: str, name: str) -> bool:
    _load()
    return name in _IMPLS.get(op, {})


def names() -> set[str]:
    """Every implementation name of every op."""
    _load()
    return {n for impls in _IMPLS.values() for n in impls}


def kernels() -> dict[str, tuple[str, ...]]:
    """op -> names of our own kernels (``backends.KERNELS``)."""
    _load()
    return {
        op: tuple(n for n, i in impls.items() if i.kernel) for op, impls in sorted(_IMPLS.items())
    }


def torch_paths(op: str) -> tuple[Implementation, ...]:
    """The implementations that need no verification (the reference and torch's fast paths)."""
    return tuple(i for i in implementations(op).values() if not i.kernel)


def fallbacks(op: str) -> tuple[Implementation, ...]:
    """The torch paths auto runs where no table covers a call, in order (the reference last)."""
    ranked = sorted(
        (i for i in implementations(op).values() if i.fallback is not None),
        key=lambda i: i.fallback,
    )
    return (*ranked, reference(op))


def reference(op: str) -> Implementation:
    for impl in implementations(op).values():
        if impl.reference:
            return impl
    raise KeyError(f"{op} has no reference implementation")


def dense_equivalent(op: str) -> Implementation | None:
    for impl in implementations(op).values():
        if impl.dense_equivalent:
            return impl
    return None
