"""What ``auto`` runs for each weight layer and attention of a model, and why.

:func:`plan` runs the model once on ``example_input`` (on the CPU or wherever it lives), records
every op call and every linear layer's shape, and asks the registry what ``auto`` picks for each
on the GPU it describes: the GPU present, or one named (``gpu`` and ``capability``), answered
from the dispatch tables. Every time in a plan is a recorded one (the benchmark's, in the
table), never measured by the plan.

JSON shape (``supernet-kernels plan --json``)::

    {"gpu": ..., "capability": "9.0", "layers": [
        {"name", "op", "shape", "implementation", "reason",
         "times_us": {implementation: time or null}, "dense_us", "slower_than_dense"}]}
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from . import backends, dispatch, registry

_LINEAR_ATTRS = ("in_features", "out_features")


def _is_weight_layer(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in _LINEAR_ATTRS)


def _known_capability(gpu: str) -> str | None:
    """The capability a GPU's own table records, if it has one."""
    from ._io import read_json, slug

    for d in dispatch._config_dirs():
        path = d / "dispatch" / f"{slug(gpu)}.json"
        if path.exists():
            try:
                meta = read_json(path, "dispatch table").get("meta", {})
            except (ValueError, OSError, AttributeError):
                return None
            caps = {m.get("capability") for m in meta.values() if isinstance(m, dict)}
            caps.discard(None)
            return caps.pop() if len(caps) == 1 else None
    return None


def _target(example_input, gpu, capability) -> tuple[str | None, str | None, bool]:
    """(gpu name, capability "X.Y", whether that GPU is the one present)."""
    if gpu is None:
        dev = _first_tensor(example_input).device
        if dev.type == "cuda":
            name, cap = backends._gpu_info(backends._device_index(dev))
            return name, f"{cap[0]}.{cap[1]}", True
        if capability is not None:
            raise ValueError("plan: capability needs gpu (the GPU's name) too")
        return None, None, False
    if not isinstance(gpu, str) or not gpu.strip():
        raise ValueError(f"plan: gpu must be a GPU's name, got {gpu!r}")
    if capability is None:
        capability = _known_capability(gpu)
        if capability is None:
            raise ValueError(
                f"plan: no dispatch table records {gpu!r}'s compute capability; "
                "give capability too (e.g. 9.0 for an H100 or H200, 8.0 for an A100)"
            )
    major, minor = dispatch.capability_tuple(capability)
    return gpu, f"{major}.{minor}", False


def _first_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (list, tuple)):
        for v in x:
            with contextlib.suppress(TypeError):
                return _first_tensor(v)
    if isinstance(x, dict):
        for v in x.values():
            with contextlib.suppress(TypeError):
                return _first_tensor(v)
    raise TypeError("plan: example_input must be a tensor (or hold one)")


class _Recorder:
    def __init__(self, model: nn.Module):
        self.stack: list[str] = []
        self.calls: list[tuple[str, str, torch.dtype, dict]] = []  # (layer, op, dtype, shape)
        self.linears: dict[str, dict] = {}
        self.order: list[str] = []
        self.handles = []
        for name, mod in model.named_modules():
            self.handles.append(mod.register_forward_pre_hook(self._enter(name)))
            self.handles.append(mod.register_forward_hook(self._leave(name, mod)))

    def _enter(self, name):
        def hook(mod, args):
            self.stack.append(name)

        return hook

    def _leave(self, name, mod):
        def hook(m, args, out):
            self.stack.pop()
            if _is_weight_layer(mod) and args and isinstance(args[0], torch.Tensor):
                x = args[0]
                k = x.shape[-1]
                n = out.shape[-1] if isinstance(out, torch.Tensor) else mod.out_features
                if name not in self.order:
                    self.order.append(name)
                self.linears[name] = {"m": x.numel() // max(k, 1), "k": int(k), "n": int(n)}

        return hook

    def __call__(self, op, device, dtype, shape):
        layer = self.stack[-1] if self.stack else "<model>"
        if not any(c[0] == layer and c[1] == op for c in self.calls):
            self.calls.append((layer, op, dtype, dict(shape)))
            if layer not in self.order:
                self.order.append(layer)

    def close(self):
        for h in self.handles:
            h.remove()


def _times(op: str, entry: dict | None) -> dict[str, float | None]:
    return {
        name: dispatch.entry_time(entry, name) if entry else None
        for name in registry.implementations(op)
    }  # noqa: E501


def _layer(name, op, shape, dtype, gpu, capability, present, user_backend) -> dict:
    dev = torch.device("cuda", 0) if gpu else torch.device("cpu")
    call = {k: v for k, v in shape.items()}
    kwargs = {} if present else {"gpu": gpu, "capability": capability}
    try:
        choice = backends.select(op, dev, dtype, backend_name=user_backend, **kwargs, **call)
    except backends.BackendUnavailable as exc:
        return _row(name, op, shape, dtype, None, f"backend {user_backend!r}: {exc}", {}, None)
    entry, table = choice.entry, choice.table
    if entry is None and gpu:
        keys = {k: v for k, v in call.items() if k != "m"}
        entry, table = dispatch.find_entry(
            op, gpu, capability, str(dtype).removeprefix("torch."), call.get("m", 0), **keys
        )
    times = _times(op, entry)
    dense = dispatch.dense_time(entry) if entry else None
    reason = choice.reason
    if entry is not None:
        reason += f"; times: {entry.get('rank_by', 'eager')} times recorded in the {table}" + (
            "" if present else f" (for {gpu}; not measured here)"
        )
    return _row(name, op, shape, dtype, choice.name, reason, times, dense)


def _row(name, op, shape, dtype, impl, reason, times, dense) -> dict:
    picked = times.get(impl) if impl else None
    return {
        "name": name,
        "op": op,
        "shape": {**shape, "dtype": str(dtype).removeprefix("torch.")},
        "implementation": impl,
        "reason": reason,
        "times_us": times,
        "dense_us": dense,
        "slower_than_dense": bool(picked is not None and dense is not None and picked > dense),
    }


def plan(
    model: nn.Module,
    example_input,
    gpu: str | None = None,
    capability: str | tuple[int, int] | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """The implementation ``auto`` runs for every weight layer and attention of ``model``.

    Args:
        model: any module (a converted supernet at its active config, a quantized model...).
        example_input: what ``model(example_input)`` takes (a tensor, or a tuple of arguments).
            It runs once, under ``torch.no_grad()``, where it lives (the CPU is fine).
        gpu, capability: answer for this GPU (name, and compute capability "9.0" unless its
            own table records it) instead of the one present; times come from the tables.
        dtype: the activation dtype to plan for (default float16 on a GPU, else the input's).

    Returns:
        ``{"gpu", "capability", "layers": [...]}`` (module doc). Layers in call order; a weight
        layer that calls none of our ops is a dense ``linear`` (F.linear / cuBLAS).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"plan: model must be a torch.nn.Module, got {type(model).__name__}")
    gpu, cap, present = _target(example_input, gpu, capability)
    x_dtype = _first_tensor(example_input).dtype
    if dtype is None:
        dtype = torch.float16 if gpu else x_dtype
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"plan: dtype must be a torch.dtype, got {dtype!r}")
    user_backend = backends.get_backend()
    rec = _Recorder(model)
    token = backends._RECORDER.set(rec)
    try:
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        # The run only records shapes: on the reference path, whatever backend is chosen.
        with torch.no_grad(), backends.backend("torch"):
            model(*args)
    finally:
        backends._RECORDER.reset(token)
        rec.close()
    layers = []
    for name in rec.order:
        calls = [c for c in rec.calls if c[0] == name]
        for _layer_name, op, _dt, shape in calls:
            layers.append(_layer(name, op, shape, dtype, gpu, cap, present, user_backend))
        if not calls and name in rec.linears:
            layers.append(_row(
                name, "linear", rec.linears[name], dtype, "dense",
                "a dense layer: F.linear (cuBLAS); none of our ops runs here", {}, None,
            ))  # fmt: skip
    return {"gpu": gpu, "capability": cap, "layers": layers}


def format_plan(p: dict[str, Any]) -> str:
    """The plan as a terminal table (the same data as the JSON)."""
    head = f"plan for {p['gpu'] or 'the CPU'}" + (
        f" (sm_{p['capability'].replace('.', '')})" if p["capability"] else ""
    )
    lines = [head, ""]
    cols = ("layer", "op", "shape", "implementation", "us", "dense_us", "flag")
    rows = []
    for lay in p["layers"]:
        shape = ",".join(f"{k}={v}" for k, v in lay["shape"].items() if k != "dtype")
        t = lay["times_us"].get(lay["implementation"]) if lay["implementation"] else None
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        flag = "SLOWER THAN DENSE" if lay["slower_than_dense"] else ""
        rows.append((lay["name"], lay["op"], shape, str(lay["implementation"]), fmt(t),
                     fmt(lay["dense_us"]), flag))  # fmt: skip
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)
    ]  # noqa: E501
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    lines.append("")
    lines.append("why, and every candidate's recorded time (us):")
    for lay in p["layers"]:
        if lay["op"] == "linear":
            continue
        times = ", ".join(
            f"{k}={'-' if v is None else f'{v:.1f}'}" for k, v in lay["times_us"].items()
        )
        lines.append(f"  {lay['name']} [{lay['op']}]: {lay['reason']}")
        lines.append(f"      {times}")
    n_slow = sum(lay["slower_than_dense"] for lay in p["layers"])
    lines.append("")
    lines.append(f"{len(p['layers'])} layers; {n_slow} slower than their dense layer")
    return "\n".join(lines)
