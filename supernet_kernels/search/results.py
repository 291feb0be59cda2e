"""Search results: the Pareto front, the best member within budget, the history; JSON / CSV /
plot outputs (written atomically) and export of a member as a standalone subnet file.

A *member* (a row of ``history`` / ``front``) is a JSON-serializable dict::

    {"index": 12, "config": {...}, "config_hash": "9f1c...", "metric": 0.93,
     "bitops": ..., "macs": ..., "params": ..., "weight_bytes": ...,
     "latency_pred": ... | None, "latency": ... | None,
     "feasible": True, "status": "ok", "error": None}

``status`` is ``"ok"`` (evaluated), ``"fail"`` (the evaluation raised; ``error`` says what),
``"infeasible"`` (over budget, not evaluated: Optuna trials only; evolution never keeps such
candidates) or ``"running"`` (an Optuna trial still running, or left running by a killed
worker). Costs a search did not compute are None.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_replace, atomic_write_json
from .objectives import COSTS

FORMAT = "sk-search-v1"
CSV_FIELDS = ("index", "metric", *COSTS, "feasible", "status", "config_hash", "config")


def make_row(index, config, costs: dict | None, metric, *, feasible, status, error=None) -> dict:
    from .space import config_hash

    row: dict[str, Any] = {
        "index": index,
        "config": config,
        "config_hash": config_hash(config) if config is not None else None,
        "metric": metric,
    }
    for c in COSTS:
        row[c] = (costs or {}).get(c)
    row.update(feasible=feasible, status=status, error=error)
    return row


def pareto_front(rows: list[dict], cost: str) -> list[dict]:
    """Members not dominated on (metric: higher is better, ``cost``: lower is better) among the
    feasible evaluated rows; one per config; sorted by cost ascending."""
    seen: dict[str, dict] = {}
    for r in rows:
        if r["status"] == "ok" and r["feasible"] and r["config_hash"] not in seen:
            seen[r["config_hash"]] = r
    cands = sorted(seen.values(), key=lambda r: (r[cost], -r["metric"], r["index"]))
    front, best = [], float("-inf")
    for r in cands:
        if r["metric"] > best:
            front.append(r)
            best = r["metric"]
    return front


def best_member(rows: list[dict], cost: str) -> dict | None:
    """The feasible evaluated row with the highest metric (ties: lower cost, then earlier)."""
    ok = [r for r in rows if r["status"] == "ok" and r["feasible"]]
    if not ok:
        return None
    return min(ok, key=lambda r: (-r["metric"], r[cost], r["index"]))


@dataclass
class SearchResult:
    """What :func:`supernet_kernels.search.search` returns.

    Attributes:
        front: Pareto members (metric vs ``objective``), cheapest first.
        best: the member with the best metric within the budget (None if none succeeded).
        history: every candidate in order (evaluated, failed, infeasible).
        objective: the cost name of the front's x axis.
        budget: the constraints as text with their absolute limits.
        algorithm: "evolution", "nsga2" or "tpe".
        info: extra facts (study name / storage, seed, dense and min_config costs, ...).
    """

    history: list[dict]
    objective: str
    budget: list[dict] = field(default_factory=list)
    algorithm: str = "evolution"
    info: dict = field(default_factory=dict)

    @property
    def front(self) -> list[dict]:
        return pareto_front(self.history, self.objective)

    @property
    def best(self) -> dict | None:
        return best_member(self.history, self.objective)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "algorithm": self.algorithm,
            "objective": self.objective,
            "budget": self.budget,
            "info": self.info,
            "best": self.best,
            "front": self.front,
            "history": self.history,
        }

    def to_json(self, path: str | os.PathLike) -> Path:
        """Everything (front, best, history, budget, info) as one JSON file, atomically."""
        return atomic_write_json(path, _finite(self.to_dict()))

    def to_csv(self, path: str | os.PathLike, which: str = "front") -> Path:
        """The front (``which="front"``) or the history (``"history"``) as CSV, one member a
        row, its config as a JSON string in the last column; written atomically."""
        if which not in ("front", "history"):
            raise ValueError(f'to_csv: which must be "front" or "history", got {which!r}')
        rows = self.front if which == "front" else self.history
        path = Path(path)
        with atomic_replace(path) as (fd, _), os.fdopen(fd, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_FIELDS)
            for r in rows:
                w.writerow(
                    [
                        json.dumps(r["config"], sort_keys=True)
                        if k == "config"
                        else ("" if r.get(k) is None else r.get(k))
                        for k in CSV_FIELDS
                    ]
                )
            f.flush()
            os.fsync(f.fileno())
        return path

    def plot(self, path: str | os.PathLike, x: str | None = None, title: str | None = None):
        """Metric vs cost ``x`` (default: the objective): every evaluated member in grey, the
        front as a line, the best as a star, budget limits on ``x`` as dashed lines. Written
        atomically through a bare ``Figure`` (Agg canvas; pyplot's backend is untouched); the
        format follows the suffix (png, pdf, svg)."""
        from matplotlib.figure import Figure  # no pyplot: the user's backend is untouched

        x = x or self.objective
        if x not in COSTS:
            raise ValueError(f"plot: x must be one of {list(COSTS)}, got {x!r}")
        ok = [r for r in self.history if r["status"] == "ok" and r.get(x) is not None]
        front = [r for r in pareto_front(self.history, x) if r.get(x) is not None]
        fig = Figure(figsize=(6, 4.2))
        ax = fig.add_subplot(1, 1, 1)
        ax.scatter(
            [r[x] for r in ok],
            [r["metric"] for r in ok],
            s=14,
            c=["0.6" if r["feasible"] else "tab:red" for r in ok],
            label="evaluated",
        )
        if front:
            ax.plot(
                [r[x] for r in front],
                [r["metric"] for r in front],
                "o-",
                color="tab:blue",
                label="Pareto front",
            )
        best = self.best
        if best is not None and best.get(x) is not None:
            ax.plot([best[x]], [best["metric"]], "*", ms=14, color="tab:orange", label="best")
        for b in self.budget:
            if b["cost"] == x and b.get("limit") is not None:
                ax.axvline(b["limit"], ls="--", color="k", lw=1, label=f"budget: {b['text']}")
        ax.set_xlabel(x)
        ax.set_ylabel("metric (higher is better)")
        ax.set_title(title or f"{self.algorithm}: metric vs {x}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        fmt = path.suffix[1:].lower() or "png"
        with atomic_replace(path) as (fd, _), os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=120)
        return path

    def __repr__(self) -> str:
        b = self.best
        return (
            f"SearchResult(algorithm={self.algorithm!r}, objective={self.objective!r}, "
            f"evaluated={sum(r['status'] == 'ok' for r in self.history)}, "
            f"front={len(self.front)}, best_metric={None if b is None else b['metric']})"
        )


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def export_front_member(supernet, member, path: str | os.PathLike) -> Path:
    """Extract ``member``'s subnet and save it with :func:`supernet_kernels.save`.

    ``member``: a row of ``result.front`` / ``result.history`` / ``result.best``, a config
    dict, or a :class:`SearchResult` (its ``best``). Returns the written path; load it back
    with :func:`supernet_kernels.load`.
    """
    from ..supernet import save

    if isinstance(member, SearchResult):
        member = member.best
        if member is None:
            raise ValueError("export_front_member: the result has no successful member")
    if not isinstance(member, dict):
        raise TypeError(
            f"export_front_member: expected a front member or a config, got {type(member).__name__}"
        )
    cfg = member["config"] if "config" in member and "metric" in member else member
    if cfg is None:
        raise ValueError("export_front_member: this member has no config")
    return save(supernet.extract(cfg), path)
