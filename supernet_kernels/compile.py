"""``supernet_kernels.compile``: a checked, warmed-up ``torch.compile`` of a (sub)net for
inference, and CUDA-graph capture.

``compile(module, example_input, mode="reduce-overhead", backend=None)``:

1. puts ``module`` in eval mode;
2. checks that its forward does no host work that breaks CUDA graphs (:func:`find_host_work`):
   no tensor created on another device than the input's (e.g. segment-anything's ``get_rel_pos``
   builds its indices with ``torch.arange`` on the CPU on every call), no copy to the CPU, no
   host sync (``.item()``, ``bool(tensor)``). The check runs the forward once under a
   ``TorchDispatchMode`` on the *meta* device (parameters, buffers and input as meta tensors;
   nothing is computed), so it works on a CPU-only machine too: any tensor an op returns on a
   device other than meta was created off the input's device. Where the forward cannot run on
   meta, it runs the real input and, for a CUDA input, flags CPU results; for a CPU input that
   fallback only flags host syncs. A problem raises RuntimeError naming the ops (``check=False``
   skips the check);
3. returns ``torch.compile(module, fullgraph=True, mode=mode, backend=backend)`` after running
   it on ``example_input`` under ``torch.no_grad()`` (three times on CUDA, so
   "reduce-overhead" has recorded its CUDA graph). Call it under ``torch.no_grad()`` too
   (another grad mode recompiles).

CUDA graphs need CUDA: for a CPU input, ``mode="reduce-overhead"`` falls back to the default mode
with a warning. ``mode`` applies to inductor; with another ``backend`` it is dropped.

``capture_cuda_graph(module, example_input)`` (CUDA input only) checks the module the same way,
warms it up on a side stream, captures one forward into a ``torch.cuda.CUDAGraph`` with static
input / output buffers, and returns a :class:`CUDAGraphRunner`: ``runner(x)`` copies ``x`` into
the static input, replays the graph and returns the static output (overwritten by the next
call: clone it to keep it). ``x`` must have the example's shape, dtype and device.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["CUDAGraphRunner", "capture_cuda_graph", "compile", "find_host_work"]

_SYNC_OPS = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero")


def _is_factory(func) -> bool:
    """A tensor constructor: returns a tensor and takes none (arange, zeros, full, ...)."""
    schema = func._schema
    if not any(isinstance(r.type, torch.TensorType) for r in schema.returns):
        return False
    return not any(
        isinstance(a.type, torch.TensorType)
        or (isinstance(a.type, torch.OptionalType)
            and isinstance(a.type.getElementType(), torch.TensorType))
        or (isinstance(a.type, torch.ListType)
            and "Tensor" in str(a.type.getElementType()))
        for a in schema.arguments
    )  # fmt: skip


class HostWorkRecorder(TorchDispatchMode):
    """Records, for every op the forward dispatches: its name (``ops``), tensor constructors
    (``factories``: op name and the devices of what they made), host syncs (``syncs``), and ops
    that returned a tensor on a device other than ``device`` from inputs all on ``device``
    (``off_device``: where such tensors appear; None: not checked)."""

    def __init__(self, device: torch.device | str | None = None):
        super().__init__()
        self.device = torch.device(device) if device is not None else None
        self.factories: list[tuple[str, tuple[str, ...]]] = []
        self.syncs: list[str] = []
        self.off_device: list[tuple[str, str]] = []
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket._qualified_op_name).replace("::", ".")
        self.ops.append(name)
        tensors = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if name in _SYNC_OPS:
            self.syncs.append(name)
        if _is_factory(func):
            self.factories.append((name, tuple(str(t.device) for t in tensors)))
        if self.device is not None:
            # Only where an off-device tensor appears: ops merely passing one on are not listed.
            ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            if all(t.device.type == self.device.type for t in ins):
                for t in tensors:
                    if t.device.type != self.device.type:
                        self.off_device.append((name, str(t.device)))
                        break
        return out


def _describe(rec: HostWorkRecorder, where: str) -> list[str]:
    problems = []
    for name, dev in rec.off_device:
        kind = "created a tensor" if any(f == name for f, _ in rec.factories) else "returned"
        problems.append(f"{name} {kind} on {dev} ({where})")
    problems += [f"{name}: host sync ({where})" for name in rec.syncs]
    return list(dict.fromkeys(problems))


def _run(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    with torch.no_grad():
        return module(*args, **kwargs)


def find_host_work(module: nn.Module, example_input, *args, **kwargs) -> list[str]:
    """The forward's work that breaks CUDA graphs / stays off the input's device (see the
    module doc); [] when there is none. Runs the forward once on meta tensors (the module is
    not changed), falling back to the real input where meta cannot run it."""
    inputs = (example_input, *args)
    real_dev = next(
        (t.device for t in tree_flatten((inputs, kwargs))[0] if isinstance(t, torch.Tensor)),
        torch.device("cpu"),
    )
    to_meta = lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t  # noqa: E731
    state = {k: to_meta(v) for k, v in module.state_dict(keep_vars=True).items()}
    # state_dict leaves out non-persistent buffers: add them.
    for k, b in module.named_buffers():
        state.setdefault(k, to_meta(b))
    for k, p in module.named_parameters():
        state.setdefault(k, to_meta(p))
    rec = HostWorkRecorder("meta")
    try:
        with torch.no_grad(), rec:
            torch.func.functional_call(
                module, state, tree_map(to_meta, inputs), tree_map(to_meta, kwargs), strict=False
            )
        return _describe(rec, "forward on meta tensors")
    except Exception as exc:  # data-dependent ops, ops without a meta kernel, ...
        problems = _describe(rec, "forward on meta tensors")
        if problems:
            return problems
        meta_error = f"{type(exc).__name__}: {exc}"
    rec = HostWorkRecorder(real_dev if real_dev.type != "cpu" else None)
    with rec:
        _run(module, inputs, kwargs)
    problems = _describe(rec, f"forward on {real_dev}")
    if not problems and real_dev.type == "cpu":
        warnings.warn(
            "supernet_kernels.compile: the forward cannot run on meta tensors "
            f"({meta_error[:200]}); on a CPU input only host syncs were checked",
            stacklevel=3,
        )
    return problems


def _check(module, example_input, where: str) -> None:
    problems = find_host_work(module, example_input)
    if problems:
        shown = "; ".join(problems[:8]) + (" ..." if len(problems) > 8 else "")
        raise RuntimeError(
            f"{where}: the forward does host work that breaks CUDA graphs / fullgraph "
            f"compilation: {shown}. (Converted SAM / ViT supernets use supernet_kernels' "
            "attention, which has none; pass check=False to skip this check.)"
        )


def compile(  # noqa: A001 - the package's public name
    module: nn.Module,
    example_input: torch.Tensor,
    mode: str | None = "reduce-overhead",
    backend: str | Any | None = None,
    *,
    check: bool = True,
    dynamic: bool | None = False,
) -> nn.Module:
    """A ``torch.compile``d (fullgraph) ``module`` for inference, checked and warmed up on
    ``example_input``; see the module doc."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"compile: expected an nn.Module, got {type(module).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(
            f"compile: example_input must be a tensor, got {type(example_input).__name__}"
        )
    module.eval()
    if check:
        _check(module, example_input, "compile")
    on_cuda = example_input.device.type == "cuda"
    if mode in ("reduce-overhead", "max-autotune") and not on_cuda:
        warnings.warn(
            f"supernet_kernels.compile: mode={mode!r} uses CUDA graphs, which need a CUDA "
            "input; compiling with the default mode instead",
            stacklevel=2,
        )
        mode = None
    kw: dict[str, Any] = {"fullgraph": True, "dynamic": dynamic}
    if backend is not None:
        kw["backend"] = backend
    if mode not in (None, "default"):
        if backend in (None, "inductor"):
            kw["mode"] = mode
        else:
            warnings.warn(
                f"supernet_kernels.compile: mode={mode!r} is inductor's; dropped for backend "
                f"{backend!r}",
                stacklevel=2,
            )
    compiled = torch.compile(module, **kw)
    for _ in range(3 if on_cuda else 1):
        _run(compiled, (example_input,), {})
    if on_cuda:
        torch.cuda.synchronize(example_input.device)
    return compiled


class CUDAGraphRunner:
    """Replays a captured forward: ``runner(x)`` -> the static output (see the module doc)."""

    def __init__(self, graph, static_input: torch.Tensor, static_output: Any):
        self.graph = graph
        self.static_input = static_input
        self.static_output = static_output

    def __call__(self, x: torch.Tensor) -> Any:
        if x.shape != self.static_input.shape or x.dtype != self.static_input.dtype:
            raise ValueError(
                f"CUDAGraphRunner: the graph was captured for {tuple(self.static_input.shape)} "
                f"{self.static_input.dtype}, got {tuple(x.shape)} {x.dtype}"
            )
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output


def capture_cuda_graph(
    module: nn.Module, example_input: torch.Tensor, *, warmup: int = 3, check: bool = True
) -> CUDAGraphRunner:
    """Capture ``module``'s forward on ``example_input`` (a CUDA tensor) into a CUDA graph."""
    if not isinstance(example_input, torch.Tensor) or example_input.device.type != "cuda":
        raise ValueError("capture_cuda_graph: example_input must be a CUDA tensor")
    module.eval()
    if check:
        _check(module, example_input, "capture_cuda_graph")
    static_input = example_input.detach().clone()
    side = torch.cuda.Stream(device=example_input.device)
    side.wait_stream(torch.cuda.current_stream(example_input.device))
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(max(1, warmup)):
            module(static_input)
    torch.cuda.current_stream(example_input.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_output = module(static_input)
    torch.cuda.synchronize(example_input.device)
    return CUDAGraphRunner(graph, static_input, static_output)
