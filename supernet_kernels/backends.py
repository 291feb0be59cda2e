"""Which implementation runs an op: "auto", "torch" (the reference), "triton", "cuda", or any
implementation registered for the op (:mod:`supernet_kernels.registry`, e.g. "torch_int4pack").

Chosen, in order of precedence, by ``with supernet_kernels.backend(name):``, the environment
variable ``SUPERNET_KERNELS_BACKEND``, or "auto". An explicitly chosen backend that cannot run
the call raises :class:`BackendUnavailable` saying why; "auto" only falls back.

"auto" on a GPU (:func:`select`): the bucket of the dispatch table for this GPU (its own table
where it was measured, else its architecture's, ``configs/dispatch/sm90.json``) ranks the
candidates by recorded time (graph replay where recorded); auto takes the first that is within
1.10x of the dense layer's recorded time, is one of torch's paths or one of our kernels verified
on this architecture (``configs/verified.json``), and supports the call. Where none is, the
dense-equivalent path (dequantize once / multiply the factors once, then cuBLAS); without a
table, the first of torch's fast paths that supports the call. On the CPU "auto" is the
pure-PyTorch reference: the Triton interpreter is a correctness tool, orders of magnitude slower.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import importlib.util
import os
from collections.abc import Iterator

import torch

from . import dispatch, registry
from ._native import cuda_kernels_reason

BACKENDS = ("torch", "triton", "cuda")  # the families; the registry has more names
CHOICES = (*BACKENDS, "auto")
ENV_VAR = "SUPERNET_KERNELS_BACKEND"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Ops written before the registry that call resolve() and branch on "torch"/"triton"/"cuda"
# themselves declare their kernels here (op -> backends); registered ops need not.
LEGACY_KERNELS: dict[str, tuple[str, ...]] = {}


def __getattr__(name: str):
    # KERNELS (op -> our kernels beside torch's paths) is derived from the registry on use, so
    # that importing this module does not import the ops.
    if name == "KERNELS":
        from . import registry

        return {**registry.kernels(), **LEGACY_KERNELS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "supernet_kernels_backend", default=None
)
# Set by supernet_kernels.plan while it runs a model: told of every select() call.
_RECORDER: contextvars.ContextVar = contextvars.ContextVar("supernet_kernels_plan", default=None)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this call here (and says why)."""


def _check_name(name: str, source: str) -> str:
    if name in CHOICES:
        return name
    from . import registry

    if name not in registry.names():
        extra = sorted(registry.names() - set(CHOICES))
        raise ValueError(
            f"{source} must be one of {', '.join(CHOICES)} or an implementation name "
            f"({', '.join(extra)}); got {name!r}"
        )
    return name


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Run the ops inside the block on ``name`` ("torch", "triton", "cuda" or "auto")."""
    token = _current.set(_check_name(name, "backend"))
    try:
        yield
    finally:
        _current.reset(token)


def get_backend() -> str:
    name = _current.get()
    if name is not None:
        return name
    env = os.environ.get(ENV_VAR)
    if env:
        return _check_name(env.strip().lower(), ENV_VAR)
    return "auto"


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _interpreter_broken() -> str | None:
    """None if Triton's CPU interpreter runs a loop over a run-time argument, else why not.

    Triton 3.6's interpreter with recent NumPy (2.4.6 and 2.5.2 seen) fails on
    ``range(0, n, step)`` with a run-time ``n`` (it calls int() on a 1-element array: "only
    0-dimensional arrays can be converted to Python scalars"); seen on the GPU machine,
    2026-11-26. Every kernel of ours loops so, so
    the interpreter is reported unavailable there instead of failing in each op."""
    import numpy as np
    import triton
    import triton.language as tl

    @triton.jit
    def _probe(x_ptr, n):
        acc = 0.0
        for i in range(0, n, 1):
            acc += tl.load(x_ptr + i)
        tl.store(x_ptr, acc)

    try:
        _probe[(1,)](torch.ones(2), 2)
    except Exception as e:  # noqa: BLE001 - any failure means the interpreter cannot run ours
        return (
            f"Triton {triton.__version__}'s CPU interpreter fails with NumPy {np.__version__} "
            f"({type(e).__name__}: {str(e)[:120]})"
        )
    return None


def _triton_reason(device: torch.device) -> str | None:
    if not _has_triton():
        return "Triton is not installed (pip install triton)"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if triton_interpret():
            return _interpreter_broken()
        return "Triton runs on CPU tensors only with TRITON_INTERPRET=1 (the interpreter)"
    return f"Triton kernels do not run on {device.type} tensors"


def unavailable_reason(
    name: str, device: torch.device, dtype: torch.dtype | None = None
) -> str | None:
    """None if backend ``name`` can run on this device and dtype, else the reason (the family
    check; a registered implementation's own ``supports`` says the rest)."""
    if name == "torch" or name.startswith("torch_"):
        return None
    if dtype is not None and dtype not in KERNEL_DTYPES:
        return f"the {name} kernels take float32, float16 or bfloat16, got {dtype}"
    if name == "triton":
        return _triton_reason(device)
    if name == "cuda":
        return cuda_kernels_reason(device)
    raise ValueError(f"unknown backend {name!r}")


def backend_status(device: torch.device | str = "cpu") -> dict[str, tuple[bool, str]]:
    """For each backend: whether it can run on ``device``, and why not."""
    device = torch.device(device)
    out = {}
    for name in BACKENDS:
        reason = unavailable_reason(name, device)
        out[name] = (reason is None, reason or "ok")
    return out


@functools.cache
def _gpu_info(index: int) -> tuple[str, tuple[int, int]]:
    return torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index))


def _gpu_name(index: int) -> str:
    return _gpu_info(index)[0]


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@dataclasses.dataclass(frozen=True)
class Choice:
    """What runs a call: the implementation, why, the bucket it came from (or None)."""

    impl: registry.Implementation
    reason: str
    table: str | None = None
    entry: dict | None = None

    @property
    def name(self) -> str:
        return self.impl.name


def _impl_reason(
    impl: registry.Implementation, device, dtype, shape, capability=None, here: bool = True
) -> str | None:
    """None if ``impl`` can run the call, else why. ``here=False``: for a GPU that is named, not
    present (a plan): only the implementation's own conditions and its capability count."""
    family = "triton" if impl.name.startswith("triton") else impl.name
    if here and impl.kernel and family in ("triton", "cuda"):
        reason = unavailable_reason(family, device, dtype)
        if reason is not None:
            return reason
    if impl.kernel and dtype not in KERNEL_DTYPES:
        return f"the {impl.name} kernel takes float32, float16 or bfloat16, got {dtype}"
    if impl.min_capability is not None:
        if capability is None and here and device.type == "cuda":
            capability = torch.cuda.get_device_capability(device)
        if capability is not None and dispatch.capability_tuple(capability) < impl.min_capability:
            need = "".join(map(str, impl.min_capability))
            return f"needs sm_{need} or newer; this GPU is {dispatch.capability_tag(capability)}"
    dev = device if here else torch.device("cuda")
    return impl.reason(dev, dtype, **shape)


def _explicit(op: str, name: str, device, dtype, shape, capability=None, here=True) -> Choice:
    impls = registry.implementations(op)
    if name not in impls:
        raise BackendUnavailable(
            f"{op}: no {name} implementation (it has {', '.join(impls)}); use one of those "
            "or 'auto'"
        )
    reason = _impl_reason(impls[name], device, dtype, shape, capability, here)
    if reason is not None:
        raise BackendUnavailable(f"{op}: backend {name!r} cannot run here: {reason}")
    return Choice(impls[name], f"backend {name!r} was named")


def _fallback(
    op, device, dtype, shape, why: str, entry=None, table=None, capability=None, here=True
) -> Choice:
    """The dense-equivalent path where a table found nothing within the rule, else the first of
    torch's fast paths that supports the call (``registry.fallbacks``), else the reference."""
    paths = list(registry.fallbacks(op))
    dense = registry.dense_equivalent(op)
    if entry is not None and dense is not None:
        paths.insert(0, dense)
    for impl in paths:
        if _impl_reason(impl, device, dtype, shape, capability, here) is None:
            return Choice(impl, why, table, entry)
    return Choice(registry.reference(op), why, table, entry)


def select(
    op: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    gpu: str | None = None,
    capability: tuple[int, int] | str | None = None,
    backend_name: str | None = None,
    **shape,
) -> Choice:
    """The implementation of registered ``op`` that runs this call, and why.

    ``shape`` holds the op's dispatch keys (``m`` first). ``gpu``/``capability`` describe a GPU
    to answer for (the plan); by default the device's own."""
    rec = _RECORDER.get()
    if rec is not None:
        rec(op, device, dtype, shape)
    name = backend_name or get_backend()
    if name != "auto":
        return _explicit(op, name, device, dtype, shape, capability, gpu is None)
    ref = registry.reference(op)
    if gpu is None and device.type != "cuda":
        return Choice(ref, f"on {device.type} auto runs the reference")
    if dtype not in KERNEL_DTYPES:
        return Choice(ref, f"{dtype} runs the reference")
    here = gpu is None
    if gpu is None:
        try:
            gpu, capability = _gpu_info(_device_index(device))
        except Exception as exc:  # noqa: BLE001 - an unreadable GPU falls back, loudly
            dispatch._warn_once(f"cannot read the GPU's name and capability ({exc})")
            return _fallback(op, device, dtype, shape, "GPU unknown; torch's fastest path")
    if here:
        memo_key = (
            op, dtype, gpu, tuple(capability), tuple(sorted(shape.items())),
            os.environ.get("SUPERNET_KERNELS_CONFIG_DIR"),
        )  # fmt: skip
        hit = dispatch.SELECT_MEMO.get(memo_key)
        if hit is not None:
            return hit
        if len(dispatch.SELECT_MEMO) > 4096:  # many distinct shapes: start over
            dispatch.SELECT_MEMO.clear()
        choice = _select_auto(op, device, dtype, gpu, capability, here, shape)
        dispatch.SELECT_MEMO[memo_key] = choice
        return choice
    return _select_auto(op, device, dtype, gpu, capability, here, shape)


def _select_auto(op, device, dtype, gpu, capability, here, shape) -> Choice:
    tag = dispatch.capability_tag(capability)
    dtype_name = str(dtype).removeprefix("torch.")
    m = shape.get("m", 0)
    keys = {k: v for k, v in shape.items() if k != "m"}
    entry, table = dispatch.find_entry(op, gpu, capability, dtype_name, m, **keys)
    if entry is None:
        why = f"no bucket of the {table} fits" if table else f"no dispatch table for {gpu} or {tag}"
        if here and not table:
            dispatch._warn_once(
                f"supernet_kernels: {why}: the ops run torch's fastest paths; measure this GPU "
                "with the benchmarks (--write-dispatch) to use our kernels"
            )
        return _fallback(
            op, device, dtype, shape, f"{why}; torch's fastest path", None, None, capability, here
        )
    impls = registry.implementations(op)
    skipped = []
    for cand in dispatch.ranked(entry):
        impl = impls.get(cand)
        if impl is None:
            skipped.append(f"{cand}: not registered")
            continue
        if impl.reference:  # the oracle, not a GPU path (float32 unpack, T x T scores)
            continue
        if not dispatch.within_rule(entry, cand):
            skipped.append(f"{cand}: over {dispatch.DENSE_SLACK:.2f}x dense")
            continue
        if impl.kernel and not dispatch.is_verified(op, cand, tag):
            skipped.append(f"{cand}: not verified on {tag}")
            continue
        reason = _impl_reason(impl, device, dtype, shape, capability, here)
        if reason is not None:
            skipped.append(f"{cand}: {reason}")
            continue
        how = (
            f"verified on {tag}" if impl.kernel
            else "dense-equivalent path" if impl.dense_equivalent else "torch's path"
        )  # fmt: skip
        rank = f"fastest by {entry.get('rank_by', 'eager')} time" + (
            f" after skipping {'; '.join(skipped)}" if skipped else ""
        )
        return Choice(impl, f"{how}; {rank} in the {table}", table, entry)
    why = "nothing within 1.10x of dense" + (f" ({'; '.join(skipped)})" if skipped else "")
    return _fallback(
        op, device, dtype, shape, f"{why} in the {table}: dense-equivalent path", entry, table,
        capability, here,
    )  # fmt: skip


def resolve(op: str, device: torch.device, dtype: torch.dtype, m: int, **shape: int) -> str:
    """The backend that runs this call of ``op`` (``shape``: the op's dispatch keys).

    Registered ops get the implementation's name (:func:`select`). Ops not in the registry (the
    older style, which branch on "torch"/"triton"/"cuda" themselves) get one of those three:
    the GPU's or architecture's table, verified on this architecture, else "torch"."""
    from . import registry as reg

    if op in reg.ops():
        return select(op, device, dtype, m=m, **shape).name
    name = get_backend()
    if name != "auto":
        if name not in BACKENDS:
            raise BackendUnavailable(f"{op}: has only the backends {', '.join(BACKENDS)}")
        if name != "torch" and name not in LEGACY_KERNELS.get(op, BACKENDS):
            raise BackendUnavailable(f"{op}: no {name} kernel yet")
        reason = unavailable_reason(name, device, dtype)
        if reason is not None:
            raise BackendUnavailable(f"{op}: backend {name!r} cannot run here: {reason}")
        return name
    if device.type != "cuda" or dtype not in KERNEL_DTYPES:
        return "torch"
    try:
        gpu, cap = _gpu_info(_device_index(device))
    except Exception:  # noqa: BLE001
        return "torch"
    dtype_name = str(dtype).removeprefix("torch.")
    entry, _ = dispatch.find_entry(op, gpu, cap, dtype_name, m, **shape)
    for cand in dispatch.ranked(entry) if entry else ():
        if cand == "torch":
            return "torch"
        if (
            cand in BACKENDS
            and dispatch.within_rule(entry, cand)
            and dispatch.is_verified(op, cand, cap)
            and unavailable_reason(cand, device, dtype) is None
        ):
            return cand
    return "torch"
