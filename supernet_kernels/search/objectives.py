"""Costs of subnets (cached by config hash) and budgets on them.

Cost names
----------
* ``"bitops"``, ``"macs"``, ``"params"``, ``"weight_bytes"``: one
  :func:`supernet_kernels.cost.profile` of the supernet at the config (counted under
  FakeTensorMode: no arithmetic, milliseconds for a small model), at the config's resolution.
* ``"latency_pred"``: ``LatencyTable.predict(config, model=supernet)`` (needs ``latency_table``;
  ms).
* ``"latency"``: measured, ``LatencyTable.measure`` of the extracted subnet on ``device`` (ms;
  slow and noisy, so computed only when the objective or the budget names it, and excluded from
  the determinism guarantee).

Budgets
-------
``budget`` is ``None`` (no constraint), a number (``objective <= number``), a string, a dict
``{cost: limit}`` or a list of strings. A string is one or more clauses joined by ``and`` or
``,``; a clause is ``[cost <=] limit`` where limit is a number (``2.5e9``), ``F * dense``,
``dense * F``, ``F * max`` or a percentage ``F% dense``::

    "bitops <= 0.05 * dense"
    "macs <= 0.5 * dense and params <= 2e6"
    "macs >= 0.4 * dense and macs <= 0.45 * dense"     # a window (lower bound: >=)
    {"weight_bytes": 4e6, "latency_pred": "0.6 * max"}
    0.25e9                       # objective <= 0.25e9

``dense`` is the original, unfactorized model at 16 bits (each ElasticLinear profiled as the
``nn.Linear`` it came from, all blocks, the largest resolution) for the profile costs; for the
latency costs it is the largest subnet (``max``, ``supernet.max_config()``), since no table
entry exists for an unfactorized layer. ``max`` is always ``supernet.max_config()``'s cost
(for factorized layers at full rank that exceeds dense: r (n + k) > n k).
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .space import config_hash

PROFILE_COSTS = ("bitops", "macs", "params", "weight_bytes")
COSTS = (*PROFILE_COSTS, "latency_pred", "latency")


def _check_cost(name: str, where: str = "objective") -> str:
    if name not in COSTS:
        raise ValueError(f"{where}: unknown cost {name!r} (expected one of {list(COSTS)})")
    return name


# --------------------------------------------------------------------------- inputs
def input_at(example_input, resolution: int | None):
    """``example_input`` resized to ``resolution`` x ``resolution`` (a shape tuple's last two
    sizes replaced, a 4-D image tensor bilinearly resized; other inputs as they are)."""
    if resolution is None:
        return example_input
    if isinstance(example_input, torch.Size | tuple | list) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in example_input
    ):
        dims = list(example_input)
        if len(dims) >= 3:
            dims[-2:] = [resolution, resolution]
        return tuple(dims)
    if isinstance(example_input, torch.Tensor):
        return _resize(example_input, resolution)
    if isinstance(example_input, tuple | list) and example_input:
        first = example_input[0]
        if isinstance(first, torch.Tensor):
            return (_resize(first, resolution), *example_input[1:])
    return example_input


def _resize(x: torch.Tensor, r: int) -> torch.Tensor:
    if x.dim() != 4 or tuple(x.shape[-2:]) == (r, r):
        return x
    return F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- cost model
class CostModel:
    """Costs of configs of one supernet, cached by config hash.

    Args:
        supernet: the :class:`~supernet_kernels.Supernet`.
        example_input: as for :func:`~supernet_kernels.cost.profile` (a shape such as
            ``(1, 3, 224, 224)`` or a tensor); resized to each config's resolution.
        latency_table: a :class:`~supernet_kernels.cost.LatencyTable` (or a path to one) for
            ``"latency_pred"``.
        device: where ``"latency"`` is measured (default: CUDA if available, else CPU).
        base_bits: as for ``profile``.
        cache: keep computed costs (by config hash).
    """

    def __init__(
        self,
        supernet,
        example_input,
        *,
        latency_table=None,
        device=None,
        base_bits: int = 16,
        cache: bool = True,
    ):
        from ..cost import LatencyTable

        self.supernet = supernet
        self.example_input = example_input
        if latency_table is not None and not isinstance(latency_table, LatencyTable):
            latency_table = LatencyTable.load(latency_table)
        self.latency_table = latency_table
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.base_bits = base_bits
        self.cache_enabled = cache
        self._cache: dict[str, dict[str, float]] = {}
        self._dense: dict[str, float] | None = None
        self.n_profiles = 0

    def available(self) -> tuple[str, ...]:
        return tuple(c for c in COSTS if c != "latency_pred" or self.latency_table is not None)

    def costs(self, config: dict, names=PROFILE_COSTS) -> dict[str, float]:
        """The costs ``names`` of ``config`` (a full, valid config)."""
        key = config_hash(config)
        have = self._cache.get(key, {}) if self.cache_enabled else {}
        need = [n for n in names if n not in have]
        out = dict(have)
        if any(n in PROFILE_COSTS for n in need):
            out.update(self._profile(config))
        if "latency_pred" in need:
            if self.latency_table is None:
                raise ValueError(
                    'cost "latency_pred" needs a LatencyTable: search(..., latency_table=...)'
                )
            out["latency_pred"] = float(self.latency_table.predict(config, model=self.supernet))
        if "latency" in need:
            out["latency"] = self._measure(config)
        if self.cache_enabled:
            self._cache[key] = out
        return {n: out[n] for n in names}

    def _profile(self, config: dict) -> dict[str, float]:
        from ..cost import profile

        self.n_profiles += 1
        p = profile(
            self.supernet,
            input_at(self.example_input, config.get("resolution")),
            config=config,
            base_bits=self.base_bits,
        )
        return {
            "bitops": p.total_bitops,
            "macs": p.total_macs,
            "params": p.total_params,
            "weight_bytes": p.total_weight_bytes,
        }

    def _measure(self, config: dict) -> float:
        from ..cost import LatencyTable

        sub = self.supernet.extract(config).to(self.device).eval()
        inp = input_at(self.example_input, config.get("resolution"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(LatencyTable.measure(sub, inp, self.device))

    # ----------------------------------------------------------------- references
    def reference(self, which: str, name: str) -> float:
        """``dense`` or ``max`` cost ``name`` (module doc)."""
        if which == "max" or name not in PROFILE_COSTS:
            return self.costs(self.supernet.max_config(), (name,))[name]
        if self._dense is None:
            self._dense = self._dense_costs()
        return self._dense[name]

    def _dense_costs(self) -> dict[str, float]:
        from ..cost import profile

        try:
            model = dense_copy(self.supernet)
            r = self.supernet.space["resolution"]
            inp = input_at(self.example_input, r[-1] if r else None)
            if isinstance(inp, torch.Tensor):
                inp = tuple(inp.shape)
            p = profile(model, inp, base_bits=self.base_bits)
            return {
                "bitops": p.total_bitops,
                "macs": p.total_macs,
                "params": p.total_params,
                "weight_bytes": p.total_weight_bytes,
            }
        except Exception as exc:  # pragma: no cover - depends on exotic models
            warnings.warn(
                f"search: could not profile the dense model ({exc!r}); 'dense' budgets use the "
                "largest subnet (max_config) instead",
                stacklevel=3,
            )
            return self.costs(self.supernet.max_config(), PROFILE_COSTS)


def dense_copy(supernet) -> nn.Module:
    """A meta-device float16 copy of the supernet's model with every ElasticLinear back to a
    plain ``nn.Linear`` and every block kept: the original model's shapes at 16 bits (so weight
    bytes are 2 per parameter), for counting only."""
    from ..nn.elastic import ElasticBlock

    model = supernet.model
    memo: dict[int, Any] = {}
    half = torch.float16
    for el in supernet.elastic_linears().values():
        memo[id(el)] = nn.Linear(
            el.in_features, el.out_features, bias=el.bias is not None, device="meta", dtype=half
        )
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in memo:
            dtype = half if t.is_floating_point() else t.dtype
            meta = torch.empty_like(t, device="meta", dtype=dtype)
            memo[id(t)] = (
                nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
            )
    out = copy.deepcopy(model, memo)
    for m in list(out.modules()):
        if isinstance(m, ElasticBlock):
            m.set_active(True)
        m._modules.pop("attn_quant", None)  # the attention matmuls at 16 bits, as dense
    return out


# --------------------------------------------------------------------------- budgets
@dataclass
class Constraint:
    cost: str
    factor: float | None  # limit = factor * reference(ref, cost) when ref is not None
    ref: str | None  # "dense", "max" or None (absolute)
    value: float | None  # absolute limit (ref None)
    text: str
    limit: float | None = None  # resolved
    op: str = "<="  # "<=" (an upper bound) or ">=" (a lower bound: FLORA's FLOPs window)

    def describe(self) -> str:
        lim = f"{self.limit:.6g}" if self.limit is not None else "?"
        return (
            f"{self.text} ({self.cost} {self.op} {lim})"
            if self.ref
            else f"{self.cost} {self.op} {lim}"
        )


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _parse_limit(text: str, where: str) -> tuple[float | None, str | None, float | None]:
    s = text.strip().lower()
    m = re.fullmatch(rf"({_NUM})", s)
    if m:
        return None, None, float(m.group(1))
    m = re.fullmatch(rf"({_NUM})\s*(%)?\s*(?:\*|of)?\s*(dense|max)", s)
    if m:
        f = float(m.group(1)) / (100 if m.group(2) else 1)
        return f, m.group(3), None
    m = re.fullmatch(rf"(dense|max)\s*\*\s*({_NUM})", s)
    if m:
        return float(m.group(2)), m.group(1), None
    m = re.fullmatch(r"(dense|max)", s)
    if m:
        return 1.0, m.group(1), None
    raise ValueError(
        f"{where}: cannot read the limit {text!r} (expected a number, 'F * dense', "
        "'F * max' or 'F% dense')"
    )


def parse_budget(budget, objective: str) -> list[Constraint]:
    """Constraints of a budget (module doc); limits are resolved later (:func:`resolve`)."""
    if budget is None:
        return []
    if isinstance(budget, bool):
        raise ValueError(f"budget: expected a number, string, dict or list, got {budget!r}")
    if isinstance(budget, int | float):
        return [Constraint(objective, None, None, float(budget), f"{objective} <= {budget}")]
    if isinstance(budget, dict):
        out = []
        for cost, lim in budget.items():
            _check_cost(cost, "budget")
            if isinstance(lim, int | float) and not isinstance(lim, bool):
                out.append(Constraint(cost, None, None, float(lim), f"{cost} <= {lim}"))
            else:
                f, ref, v = _parse_limit(str(lim), f"budget.{cost}")
                out.append(Constraint(cost, f, ref, v, f"{cost} <= {lim}"))
        return out
    if isinstance(budget, list | tuple):
        return [c for b in budget for c in parse_budget(b, objective)]
    if not isinstance(budget, str):
        raise ValueError(f"budget: expected a number, string, dict or list, got {budget!r}")
    out = []
    for clause in re.split(r"\s*(?:\band\b|,|&&?)\s*", budget.strip()):
        if not clause:
            continue
        m = re.fullmatch(r"\s*([a-z_]+)\s*(<=?|>=?)\s*(.+)", clause, flags=re.IGNORECASE)
        op = "<="
        if m and m.group(1).lower() not in ("dense", "max"):
            cost, rhs = m.group(1).lower(), m.group(3)
            op = ">=" if m.group(2).startswith(">") else "<="
        else:
            cost, rhs = objective, clause
        _check_cost(cost, f"budget {budget!r}")
        f, ref, v = _parse_limit(rhs, f"budget {budget!r}")
        out.append(Constraint(cost, f, ref, v, clause.strip(), op=op))
    if not out:
        raise ValueError(f"budget: {budget!r} holds no constraint")
    return out


def resolve(constraints: list[Constraint], model: CostModel) -> list[Constraint]:
    """Fill in each constraint's absolute ``limit``."""
    for c in constraints:
        c.limit = c.value if c.ref is None else c.factor * model.reference(c.ref, c.cost)
    return constraints


def violations(constraints: list[Constraint], costs: dict[str, float]) -> dict[str, float]:
    """Per constraint (keyed by cost name): (cost - limit) / limit for an upper bound,
    (limit - cost) / limit for a lower bound; feasible where all <= 0."""
    out: dict[str, float] = {}
    for c in constraints:
        lim = c.limit
        v = costs[c.cost] - lim if c.op == "<=" else lim - costs[c.cost]
        v = v / abs(lim) if lim else v
        out[c.cost] = max(out.get(c.cost, v), v)
    return out


# --------------------------------------------------------------------------- problem
class Problem:
    """What both search engines share: costs, budget check and the user's metric, cached.

    ``evaluate(target) -> float`` is called with the supernet set to the config (or, with
    ``extract=True``, with ``supernet.extract(config)``), under ``torch.no_grad()``; the
    supernet's previous active config is restored afterwards. Metrics are cached by config
    hash (successes only) when ``cache``.
    """

    def __init__(
        self,
        supernet,
        evaluate,
        cost_model: CostModel,
        objective: str,
        constraints: list[Constraint],
        cost_names: tuple[str, ...],
        *,
        cache: bool = True,
        extract: bool = False,
    ):
        self.supernet = supernet
        self.user_evaluate = evaluate
        self.cost_model = cost_model
        self.objective = objective
        self.constraints = constraints
        self.cost_names = cost_names
        self.cache = cache
        self.extract = extract
        self.metrics: dict[str, float] = {}
        self.first_error: BaseException | None = None
        self.n_ok = 0
        self.n_fail = 0

    def costs(self, config: dict) -> dict[str, float]:
        return self.cost_model.costs(config, self.cost_names)

    def violations(self, costs: dict[str, float]) -> dict[str, float]:
        return violations(self.constraints, costs)

    def feasible(self, config: dict) -> bool:
        return all(v <= 0 for v in self.violations(self.costs(config)).values())

    def evaluate(self, config: dict) -> float:
        """The metric of ``config``; exceptions of the user's function propagate (counted)."""
        key = config_hash(config)
        if self.cache and key in self.metrics:
            return self.metrics[key]
        sn = self.supernet
        prev = sn.active_config()
        try:
            sn.set_active(config)
            with torch.no_grad():
                target = sn.extract(config) if self.extract else sn
                value = self.user_evaluate(target)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise TypeError(
                    f"evaluate must return a float (higher is better), got {type(value).__name__}"
                ) from None
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"evaluate returned {value}")
        except Exception as exc:
            self.n_fail += 1
            if self.first_error is None:
                self.first_error = exc
            raise
        finally:
            sn.set_active(prev)
        self.n_ok += 1
        if self.cache:
            self.metrics[key] = value
        return value
