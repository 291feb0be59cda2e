"""Which implementation runs an op: "torch", "triton", "cuda", or "auto".

Chosen, in order of precedence, by ``with supernet_kernels.backend(name):``, the environment
variable ``SUPERNET_KERNELS_BACKEND``, or "auto". An explicitly chosen backend that cannot run
the call raises :class:`BackendUnavailable` saying why; "auto" only falls back.

"auto" picks per device and shape from the dispatch table of the GPU (measured by the
benchmark), and only picks kernels that have passed the test suite on a real GPU
(``configs/verified.json``). On the CPU it is always the pure-PyTorch reference: the Triton
interpreter is a correctness tool, orders of magnitude slower.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
from collections.abc import Iterator

import torch

from . import dispatch
from ._native import cuda_kernels_reason

BACKENDS = ("torch", "triton", "cuda")
CHOICES = (*BACKENDS, "auto")
ENV_VAR = "SUPERNET_KERNELS_BACKEND"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# The kernels each op has beside the PyTorch reference (op -> backends). Choosing a backend
# that is not listed for an op raises BackendUnavailable when the op runs; `supernet-kernels
# info` and the tests read this table.
KERNELS = {
    "attention": ("triton",),
    "lowrank_linear": ("triton",),
    "lowrank_mlp": ("triton",),
    "quant_linear": ("triton", "cuda"),
    "int8_linear": ("triton", "cuda"),
    "fp8_linear": ("triton",),
}

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "supernet_kernels_backend", default=None
)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this call here (and says why)."""


def _check_name(name: str, source: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"{source} must be one of {', '.join(CHOICES)}; got {name!r}")
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
    """None if backend ``name`` can run on this device and dtype, else the reason."""
    if name == "torch":
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
def _gpu_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def resolve(op: str, device: torch.device, dtype: torch.dtype, m: int, **shape: int) -> str:
    """The backend that runs this call of ``op`` (``shape``: the op's dispatch keys)."""
    name = get_backend()
    if name != "auto":
        reason = unavailable_reason(name, device, dtype)
        if reason is not None:
            raise BackendUnavailable(f"{op}: backend {name!r} cannot run here: {reason}")
        return name
    if device.type != "cuda" or dtype not in KERNEL_DTYPES:
        return "torch"
    index = device.index if device.index is not None else torch.cuda.current_device()
    dtype_name = str(dtype).removeprefix("torch.")
    chosen = dispatch.lookup(op, _gpu_name(index), dtype_name, m, **shape)
    if (
        chosen is None
        or chosen == "torch"
        or not dispatch.is_verified(op, chosen)
        or unavailable_reason(chosen, device, dtype) is not None
    ):
        return "torch"
    return chosen
