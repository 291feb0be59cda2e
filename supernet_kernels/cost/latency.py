"""Measured latency look-up table: per-layer times for each choice, summed to predict a subnet.

A :class:`LatencyTable` holds, for every weight layer of a model (see
:func:`supernet_kernels.cost.profile.is_weight_layer`), the median latency of the layer alone
for each of its choices (for elastic layers: each rank / width / bits setting asked for; other
layers: as they are), run on our kernels with the input shape the layer sees in the model's
forward. Everything that is not a weight layer (norms, attention products, softmax, GELU,
reshapes) is one measured constant, ``other_ms`` = whole forward - sum of its layers.
``predict`` sums the active choices' times and that constant.

Building a table for your GPU
-----------------------------
::

    import torch, supernet_kernels.cost as cost
    model = ...  # your model or Supernet, on the GPU, in the dtype you deploy (e.g. .half())
    table = cost.LatencyTable.build(model, (1, 3, 224, 224), "cuda",
                                    choices={"blocks.0.mlp.fc1": [{"rank": 64}, {"rank": 128}]})
    table.save("latency.json")          # one file can hold tables for several GPUs
    table = cost.LatencyTable.load("latency.json")   # picks this machine's GPU
    ms = table.predict(model)           # or table.predict(config, model=supernet)
    err = cost.compare(ms, cost.LatencyTable.measure(model, (1, 3, 224, 224), "cuda"))

On a GPU each time is the median of ``triton.testing.do_bench`` (``warmup`` / ``reps`` are its
milliseconds), replayed in a CUDA graph when ``use_cuda_graphs`` (``do_bench_cudagraph``), so
that Python and launch overhead do not hide kernel time. On a CPU building works too, with a
warning: the times are CPU times (medians of ``time.perf_counter`` over ``reps`` calls after
``warmup`` calls), useful to test the logic, not to rank subnets for a GPU. The file is JSON
keyed by device name (``torch.cuda.get_device_name()``, or ``"cpu"``), written atomically.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write_json, read_json
from ..timing import time_ms as _time_ms
from .profile import _is_shape, _split_input, is_weight_layer

FORMAT = "supernet-kernels-latency-v1"
STATIC = "static"
_STATE_ATTRS = (
    ("active_rank", "rank"),
    ("active_out_features", "out_features"),
    ("active_in_features", "in_features"),
    ("active_out", "out"),
    ("active_in", "in_features"),
)


# --------------------------------------------------------------------------- choices
def layer_state(m: nn.Module) -> dict[str, Any]:
    """The active choice of a layer as a dict ({} for a static layer). Uses the layer's
    ``active_choice()`` if it has one, else its ``active_*`` attributes and ``cost_bits()``."""
    if callable(getattr(m, "active_choice", None)):
        return dict(m.active_choice())
    state = {key: getattr(m, attr) for attr, key in _STATE_ATTRS if hasattr(m, attr)}
    if callable(getattr(m, "cost_bits", None)):
        w_bits, a_bits = m.cost_bits()
        state.update(w_bits=int(w_bits), a_bits=int(a_bits))
    return state


def choice_key(m: nn.Module) -> str:
    """Canonical string of a layer's active choice: ``"in_features=192,out_features=768,
    rank=64"``, or ``"static"``."""
    state = layer_state(m)
    return ",".join(f"{k}={state[k]}" for k in sorted(state)) or STATIC


def default_choices(m: nn.Module) -> list[dict | None]:
    """Choices measured when none are given: the layer's ``choices()`` (the common elastic
    interface: every elastic layer has it), else the layer as it is (``None``)."""
    if callable(getattr(m, "choices", None)):
        return [dict(c) for c in m.choices()]
    return [None]


def _restore_kwargs(m: nn.Module) -> dict | None:
    """set_active kwargs that restore the layer's current choice (None for static layers)."""
    if not callable(getattr(m, "set_active", None)):
        return None
    if callable(getattr(m, "active_choice", None)):
        return dict(m.active_choice())
    return layer_state(m) or None


def _module_name(model: nn.Module, layers: dict[str, nn.Module], name: str) -> str:
    """The module name of a layer named as in a Supernet's config (``blocks.1.attn.qkv``),
    which differs from its module path (``model.blocks.1.block.attn.qkv`` when the block is
    droppable); other names are returned as they are."""
    from ..supernet.supernet import Supernet

    if name in layers or not isinstance(model, Supernet):
        return name
    path = model.module(name)
    return path if path in layers else name


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Outermost weight layers by name (known types and modules with ``cost_bits()``)."""
    out: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if any(name.startswith(k + ".") for k in out) or not name:
            continue
        if is_weight_layer(m):
            out[name] = m
    return out


# --------------------------------------------------------------------------- timing
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _layer_inputs(model: nn.Module, layers: dict[str, nn.Module], example_input):
    """Shape and dtype of each layer's first input in the model's forward (a FakeTensorMode
    pass: nothing computed)."""
    from torch._subclasses import FakeTensorMode

    from .profile import _model_device_dtype

    seen: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    hooks = []
    for name, m in layers.items():

        def pre(mod, args, kwargs=None, name=name):
            x = args[0] if args else next(iter((kwargs or {}).values()))
            seen.setdefault(name, (tuple(x.shape), x.dtype))

        hooks.append(m.register_forward_pre_hook(pre))
    device, dtype = _model_device_dtype(model)
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            args, kwargs = _split_input(example_input, device, dtype)
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _active_in(m: nn.Module, captured: int) -> int:
    for attr in ("active_in_features", "active_in"):
        if hasattr(m, attr):
            return int(getattr(m, attr))
    return captured


@contextlib.contextmanager
def _config_applied(model: nn.Module, config):
    if not callable(getattr(model, "set_active", None)):
        raise TypeError(
            f"LatencyTable: {type(model).__name__} has no set_active(config); pass the Supernet "
            "the config is for"
        )
    previous = model.active_config() if callable(getattr(model, "active_config", None)) else None
    model.set_active(config)
    try:
        yield
    finally:
        if previous is not None:
            model.set_active(previous)


# --------------------------------------------------------------------------- table
@dataclass
class LatencyTable:
    """Per-layer latencies (ms) for each measured choice, plus the rest of the forward."""

    device_name: str
    device_type: str
    layers: dict[str, dict[str, float]]  # layer -> choice key -> ms
    current: dict[str, str]  # layer -> choice key active when the table was built
    other_ms: float
    meta: dict = field(default_factory=dict)

    # ------------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        model: nn.Module,
        example_input,
        device="cuda",
        choices: dict[str, list[dict | None]] | None = None,
        warmup: float = 25,
        reps: float = 100,
        use_cuda_graphs: bool = True,
    ) -> LatencyTable:
        """Measure every weight layer of ``model`` for each choice, and the rest of the forward.

        Args:
            model: a model or Supernet, already on ``device`` in the dtype to be measured.
            example_input: as for :func:`~supernet_kernels.cost.profile` (tensor, tuple / dict
                of tensors, or a shape).
            device: where to measure. A CPU gives CPU times, with a warning.
            choices: layer name -> list of ``set_active`` kwargs to measure (e.g. ``[{"rank":
                32}, {"rank": 64}]``); layers not named use :func:`default_choices`.
            warmup, reps: GPU: milliseconds for ``triton.testing.do_bench``; CPU: numbers of
                calls.
            use_cuda_graphs: replay in a CUDA graph on the GPU.

        Every layer's active choice (and the model's ``active_config()``) is restored after.
        """
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.type == "cpu":
            warnings.warn(
                "LatencyTable.build on CPU: the times are CPU times (time.perf_counter medians), "
                "not GPU kernel times; use such a table to test the logic, build on the GPU you "
                "deploy to for real numbers",
                stacklevel=2,
            )
        for p in model.parameters():
            if p.device.type != device.type:
                raise ValueError(
                    f"LatencyTable.build: the model is on {p.device}, measuring on {device}; "
                    "move it first (model.to(device))"
                )
            break
        layers = weight_layers(model)
        choices = {_module_name(model, layers, k): v for k, v in (choices or {}).items()}
        unknown = sorted(set(choices) - set(layers))
        if unknown:
            raise KeyError(
                f"LatencyTable.build: choices name unknown layers {unknown}; weight layers are "
                f"{sorted(layers)[:8]}{' ...' if len(layers) > 8 else ''}"
            )
        inputs = _layer_inputs(model, layers, example_input)
        table: dict[str, dict[str, float]] = {}
        current = {name: choice_key(m) for name, m in layers.items()}
        model_cfg = (
            model.active_config() if callable(getattr(model, "active_config", None)) else None
        )
        with torch.no_grad():
            try:
                for name, m in layers.items():
                    if name not in inputs:
                        continue  # never runs in this forward (e.g. an inactive block)
                    shape, dtype = inputs[name]
                    restore = _restore_kwargs(m)
                    entry: dict[str, float] = {}
                    try:
                        for choice in choices.get(name) or default_choices(m):
                            if choice is not None:
                                m.set_active(**choice)
                            k_in = _active_in(m, shape[-1])
                            x = torch.randn(*shape[:-1], k_in, device=device, dtype=dtype)
                            entry[choice_key(m)] = _time_ms(
                                lambda m=m, x=x: m(x), device, warmup, reps, use_cuda_graphs
                            )
                    finally:
                        if restore is not None:
                            m.set_active(**restore)
                    table[name] = entry
            finally:
                if model_cfg is not None:
                    model.set_active(model_cfg)
            args, kwargs = _real_inputs(model, example_input, device)
            total = _time_ms(lambda: model(*args, **kwargs), device, warmup, reps, use_cuda_graphs)
        layer_sum = sum(table[n][current[n]] for n in table if current[n] in table[n])
        meta = {
            "torch": torch.__version__,
            "timer": (
                ("do_bench_cudagraph" if use_cuda_graphs else "do_bench")
                if device.type == "cuda"
                else "perf_counter"
            ),
            "warmup": warmup,
            "reps": reps,
            "input_shapes": [list(s) for s, _ in inputs.values()][:1],
            "measured_total_ms": total,
        }
        return cls(
            _device_name(device),
            device.type,
            table,
            {n: current[n] for n in table},
            max(0.0, total - layer_sum),
            meta,
        )

    @staticmethod
    def measure(
        model: nn.Module,
        example_input,
        device="cuda",
        warmup: float = 25,
        reps: float = 100,
        use_cuda_graphs: bool = True,
    ) -> float:
        """The whole forward's median latency (ms), timed as ``build`` times layers."""
        device = torch.device(device)
        with torch.no_grad():
            args, kwargs = _real_inputs(model, example_input, device)
            return _time_ms(lambda: model(*args, **kwargs), device, warmup, reps, use_cuda_graphs)

    # ------------------------------------------------------------------- predict
    def predict(self, config_or_model=None, model: nn.Module | None = None) -> float:
        """Predicted latency (ms): the sum of the active choices' layer times + ``other_ms``.

        ``config_or_model`` is a model / Supernet (its active choices are read), a mapping
        layer name -> choice (a key string as in the table, or ``set_active`` kwargs; layers
        not named keep the choice active at build time), a supernet config (applied to
        ``model`` with ``set_active`` and restored after), or None (the build-time choices).
        """
        if isinstance(config_or_model, nn.Module):
            return self._predict_model(config_or_model)
        if config_or_model is None:
            return self._sum(dict(self.current))
        if isinstance(config_or_model, dict) and set(config_or_model) <= set(self.layers):
            keys = dict(self.current)
            for name, choice in config_or_model.items():
                if isinstance(choice, str):
                    keys[name] = choice
                else:
                    keys[name] = self._key_for(name, dict(choice))
            return self._sum(keys)
        if model is None:
            raise ValueError(
                "LatencyTable.predict: a supernet config needs the model it applies to: "
                "predict(config, model=supernet)"
            )
        with _config_applied(model, config_or_model):
            return self._predict_model(model)

    def _key_for(self, name: str, choice: dict) -> str:
        """Key of a partial choice: the build-time choice of the layer updated with it."""
        base = dict(kv.split("=", 1) for kv in self.current[name].split(",") if "=" in kv)
        base.update({k: str(v) for k, v in choice.items()})
        return ",".join(f"{k}={base[k]}" for k in sorted(base)) or STATIC

    def _predict_model(self, model: nn.Module) -> float:
        layers = weight_layers(model)
        missing = sorted(set(self.layers) - set(layers))
        if missing:
            raise KeyError(
                f"LatencyTable.predict: the model has no layers {missing[:5]}: the table was "
                "built for another model"
            )
        inactive = [
            n + "." for n, m in model.named_modules() if getattr(m, "active", True) is False
        ]
        keys = {}
        for name in self.layers:
            if any((name + ".").startswith(p) for p in inactive):
                continue  # skipped block: costs nothing
            keys[name] = choice_key(layers[name])
        return self._sum(keys)

    def _sum(self, keys: dict[str, str]) -> float:
        total = self.other_ms
        for name, key in keys.items():
            entry = self.layers[name]
            if key not in entry:
                raise KeyError(
                    f"LatencyTable.predict: layer {name!r} has no measurement for choice "
                    f"{key!r}; measured: {sorted(entry)}. Build the table with "
                    f"choices={{{name!r}: [...]}} covering it"
                )
            total += entry[key]
        return total

    # ------------------------------------------------------------------- files
    def to_dict(self) -> dict:
        return {
            "device_type": self.device_type,
            "layers": self.layers,
            "current": self.current,
            "other_ms": self.other_ms,
            "meta": self.meta,
        }

    def save(self, path) -> Path:
        """Write (or add to) a JSON file keyed by device name, atomically. Tables for other
        devices already in the file are kept."""
        path = Path(path)
        tables: dict = {}
        if path.exists():
            try:
                tables = _validate(read_json(path, "latency table"), path)
            except ValueError as exc:
                warnings.warn(f"{exc}; overwriting it", stacklevel=2)
                tables = {}
            tables = {k: v.to_dict() for k, v in tables.items()}
        tables[self.device_name] = self.to_dict()
        return atomic_write_json(path, {"format": FORMAT, "tables": tables})

    @classmethod
    def load(cls, path, device_name: str | None = None) -> LatencyTable:
        """Read a table; ``device_name`` defaults to this machine's GPU (else the file's only
        table, else ``"cpu"``). A corrupt file raises ValueError naming it."""
        path = Path(path)
        tables = _validate(read_json(path, "latency table"), path)
        if device_name is None:
            if torch.cuda.is_available() and torch.cuda.get_device_name() in tables:
                device_name = torch.cuda.get_device_name()
            elif len(tables) == 1:
                device_name = next(iter(tables))
            else:
                device_name = "cpu"
        if device_name not in tables:
            raise KeyError(
                f"latency table {path} has no table for {device_name!r} (it has "
                f"{sorted(tables)}); build one on that device with LatencyTable.build"
            )
        return tables[device_name]


def _validate(data, path: Path) -> dict[str, LatencyTable]:
    def bad(why: str):
        return ValueError(f"latency table {path} is corrupt: {why}")

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise bad(f"expected format {FORMAT!r}, got {got!r}")
    tables = data.get("tables")
    if not isinstance(tables, dict):
        raise bad("'tables' must be an object keyed by device name")
    out = {}
    for dev, t in tables.items():
        if not isinstance(t, dict):
            raise bad(f"tables[{dev!r}] must be an object")
        layers, current, other = t.get("layers"), t.get("current"), t.get("other_ms")
        if not isinstance(layers, dict) or not isinstance(current, dict):
            raise bad(f"tables[{dev!r}] needs 'layers' and 'current' objects")
        for name, entry in layers.items():
            if not isinstance(entry, dict) or not entry:
                raise bad(f"tables[{dev!r}].layers[{name!r}] must be a non-empty object")
            for key, ms in entry.items():
                if not _is_time(ms):
                    raise bad(f"tables[{dev!r}].layers[{name!r}][{key!r}] = {ms!r} is not a time")
            if not isinstance(current.get(name), str):
                raise bad(f"tables[{dev!r}].current[{name!r}] is missing")
        if not _is_time(other):
            raise bad(f"tables[{dev!r}].other_ms = {other!r} is not a time")
        meta = t.get("meta", {})
        out[dev] = LatencyTable(
            dev,
            str(t.get("device_type", "cuda")),
            {n: {k: float(v) for k, v in e.items()} for n, e in layers.items()},
            dict(current),
            float(other),
            meta if isinstance(meta, dict) else {},
        )
    return out


def _is_time(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _real_inputs(model: nn.Module, example_input, device: torch.device):
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if _is_shape(example_input):
        return (torch.randn(*example_input, device=device, dtype=dtype),), {}
    return _split_input(example_input, device, dtype)


def compare(predicted: float, measured: float) -> float:
    """Relative error of a prediction: ``|predicted - measured| / measured``."""
    if not (isinstance(measured, (int, float)) and measured > 0):
        raise ValueError(f"compare: measured must be a positive time, got {measured!r}")
    return abs(float(predicted) - float(measured)) / float(measured)
