"""Search a supernet for the best subnets under a hardware budget.

::

    import supernet_kernels as sk
    from supernet_kernels.search import search, fidelity_evaluator, export_front_member

    supernet = sk.convert(model)                 # (and train it)
    evaluate = fidelity_evaluator(supernet, held_out_images)     # or your own accuracy function
    result = search(supernet, evaluate, (1, 3, 224, 224),
                    objective="bitops", budget="bitops <= 0.3 * dense",
                    algorithm="evolution", population=32, generations=10, seed=0)
    result.best                      # {"config": ..., "metric": ..., "bitops": ..., ...}
    result.front                     # Pareto members (metric vs bitops), cheapest first
    result.to_json("front.json"); result.to_csv("front.csv"); result.plot("front.png")
    export_front_member(supernet, result.best, "subnet.safetensors")  # -> sk.load(...)

``search(supernet, evaluate, example_input, *, objective="bitops", budget=None,
algorithm="evolution", n_trials=None, generations=8, population=16, parents=None,
mutate_prob=0.1, mutation_ratio=0.5, seed=0, storage=None, study_name=None, cache=True,
progress=True, latency_table=None, device=None, extract=False, sampler_kwargs=None,
space=None, mutations=None, crossovers=None, init="uniform", init_bins=9,
out_of_window="repair") -> SearchResult``

* ``space``: a restricted space (choices a subset of ``supernet.space``'s, optional joint genes:
  :class:`.SearchSpace`), e.g. FLORA's filtered space; ``mutations`` ... ``out_of_window``:
  FLORA's evolution (:func:`.evolution.evolution_search`).

* ``evaluate(target) -> float``: the user's metric, higher is better (accuracy, fidelity,
  mIoU). ``target`` is the supernet set to the candidate config (``extract=True``: the
  extracted standalone subnet), called under ``torch.no_grad()``; the supernet's active config
  is restored afterwards. Its input must be at the config's resolution (``config["resolution"]``
  of ``target.active_config()`` / ``target.sk_subnet``) for an elastic-resolution ViT;
  :func:`fidelity_evaluator` handles this itself. A call that raises marks that candidate
  failed (evolution: skipped; Optuna: trial ``FAIL``) and the search goes on; if every call
  fails, RuntimeError chained to the first error.
* ``example_input``: a shape such as ``(1, 3, 224, 224)`` or a tensor, for the cost profile
  (resized to each config's resolution).
* ``objective``: the cost of the front's x axis and of NSGA-II's second objective, one of
  ``"bitops"``, ``"macs"``, ``"params"``, ``"weight_bytes"``, ``"latency_pred"`` (needs
  ``latency_table``), ``"latency"`` (measured on ``device``).
* ``budget``: None, a number (``objective <= number``), ``"bitops <= 0.05 * dense"``,
  ``"macs <= 0.5 * dense and params <= 2e6"``, a window ``"macs >= 0.4 * dense and macs <= 0.5
  * dense"``, a dict ``{cost: limit}``... (see :mod:`.objectives`). A budget no subnet can
  meet raises ValueError naming the smallest achievable cost (``min_config``'s). Over-budget
  candidates are never returned.
* ``algorithm``: ``"evolution"`` (:mod:`.evolution`, uses ``population``, ``generations``,
  ``parents``, ``mutate_prob``, ``mutation_ratio``, optional cap ``n_trials``), ``"nsga2"`` or
  ``"tpe"`` (:mod:`.optuna_search`, use ``n_trials`` (default 64, the study-wide total),
  ``population`` (NSGA-II), ``storage``, ``study_name``). ``storage`` / ``study_name`` are
  Optuna's only: with ``"evolution"`` they are a ValueError.
* ``seed``: the same seed gives the same history and front (evolution; NSGA-II / TPE in a
  single worker), given a deterministic ``evaluate`` and costs (not ``"latency"``).
* ``cache``: reuse costs and metrics of a config seen before (by config hash).

:func:`fidelity_evaluator` is a ready metric when no labels are at hand: agreement of each
subnet with the largest subnet (or a teacher) on a small held-out batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .evolution import evolution_search
from .objectives import COSTS, CostModel, Problem, input_at, parse_budget, resolve
from .optuna_search import optuna_search
from .results import SearchResult, export_front_member, pareto_front
from .space import SearchSpace, config_hash

__all__ = [
    "COSTS",
    "CostModel",
    "SearchResult",
    "SearchSpace",
    "config_hash",
    "export_front_member",
    "fidelity_evaluator",
    "pareto_front",
    "search",
]

ALGORITHMS = ("evolution", "nsga2", "tpe")


def search(
    supernet,
    evaluate: Callable,
    example_input,
    *,
    objective: str = "bitops",
    budget=None,
    algorithm: str = "evolution",
    n_trials: int | None = None,
    generations: int = 8,
    population: int = 16,
    parents: int | None = None,
    mutate_prob: float = 0.1,
    mutation_ratio: float = 0.5,
    seed: int = 0,
    storage=None,
    study_name: str | None = None,
    cache: bool = True,
    progress: bool = True,
    latency_table=None,
    device=None,
    extract: bool = False,
    sampler_kwargs: dict | None = None,
    space: dict | None = None,
    mutations: int | None = None,
    crossovers: int | None = None,
    init: str = "uniform",
    init_bins: int = 9,
    out_of_window: str = "repair",
) -> SearchResult:
    """Search ``supernet`` for the best subnets under ``budget`` (see the module doc).

    ``space``: a restricted space to search (a subset of ``supernet.space``'s choices, with
    optional joint genes, see :class:`.SearchSpace`), e.g. FLORA's filtered space; None
    searches the supernet's. ``mutations``, ``crossovers``, ``init``, ``init_bins``,
    ``out_of_window``: FLORA's evolution (see :func:`.evolution.evolution_search`)."""
    from ..supernet import Supernet

    if not isinstance(supernet, Supernet):
        raise TypeError(f"search: expected a Supernet, got {type(supernet).__name__}")
    if not callable(evaluate):
        raise TypeError("search: evaluate must be a callable (model) -> float")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"search: algorithm must be one of {list(ALGORITHMS)}, got {algorithm!r}")
    if objective not in COSTS:
        raise ValueError(f"search: objective must be one of {list(COSTS)}, got {objective!r}")
    if algorithm == "evolution" and (storage is not None or study_name is not None):
        raise ValueError(
            'search: storage / study_name are for algorithm="nsga2" or "tpe" (Optuna studies); '
            "evolution runs in memory"
        )
    cost_model = CostModel(
        supernet, example_input, latency_table=latency_table, device=device, cache=cache
    )
    constraints = parse_budget(budget, objective)
    wanted = {"bitops", "macs", "params", "weight_bytes", objective}
    wanted |= {c.cost for c in constraints}
    if latency_table is not None:
        wanted.add("latency_pred")
    if "latency_pred" in wanted and latency_table is None:
        raise ValueError('search: the cost "latency_pred" needs latency_table=')
    names = tuple(c for c in COSTS if c in wanted)
    resolve(constraints, cost_model)
    sspace = SearchSpace(supernet, space)
    min_costs = cost_model.costs(sspace.min_config(), names)
    has_lower = any(c.op == ">=" for c in constraints)
    max_costs = cost_model.costs(sspace.max_config(), names) if has_lower else {}
    for c in constraints:
        if c.op == ">=":
            if max_costs[c.cost] < c.limit:
                raise ValueError(
                    f"search: no subnet meets the lower bound {c.text!r} ({c.cost} >= "
                    f"{c.limit:.6g}): the largest subnet has {c.cost} = {max_costs[c.cost]:.6g}"
                )
            continue
        if min_costs[c.cost] > c.limit:
            ref = ""
            if c.ref is not None:
                ratio = min_costs[c.cost] / cost_model.reference(c.ref, c.cost)
                ref = f" = {ratio:.4g} * {c.ref}"
            raise ValueError(
                f"search: no subnet meets the budget {c.text!r} ({c.cost} <= {c.limit:.6g}): "
                f"the smallest subnet (min_config) has {c.cost} = {min_costs[c.cost]:.6g}{ref}"
            )
    problem = Problem(
        supernet, evaluate, cost_model, objective, constraints, names, cache=cache, extract=extract
    )
    info: dict = {"seed": seed, "genes": len(sspace), "min_config_costs": min_costs}
    if algorithm == "evolution":
        history = evolution_search(
            problem,
            sspace,
            population=population,
            generations=generations,
            parents=parents,
            mutate_prob=mutate_prob,
            mutation_ratio=mutation_ratio,
            n_trials=n_trials,
            seed=seed,
            progress=progress,
            mutations=mutations,
            crossovers=crossovers,
            init=init,
            init_bins=init_bins,
            out_of_window=out_of_window,
        )
    else:
        history, extra = optuna_search(
            problem,
            sspace,
            algorithm=algorithm,
            n_trials=64 if n_trials is None else n_trials,
            population=population,
            seed=seed,
            storage=storage,
            study_name=study_name,
            progress=progress,
            sampler_kwargs=sampler_kwargs,
        )
        info.update(extra)
    if problem.first_error is not None and not any(r["status"] == "ok" for r in history):
        raise RuntimeError(
            f"search: every evaluation failed ({problem.n_fail}); the first error: "
            f"{problem.first_error!r}"
        ) from problem.first_error
    budget_rows = [
        {"cost": c.cost, "limit": c.limit, "text": c.text, "ref": c.ref, "factor": c.factor}
        for c in constraints
    ]
    return SearchResult(history, objective, budget_rows, algorithm, info)


# --------------------------------------------------------------------------- fidelity
def fidelity_evaluator(
    supernet, data, teacher=None, *, metric: str = "auto"
) -> Callable[[torch.nn.Module], float]:
    """An ``evaluate`` function: agreement of a subnet's outputs with a reference's on ``data``.

    Args:
        supernet: the supernet being searched (its ``max_config()`` is the default reference).
        data: a small held-out batch: a tensor (images ``(B, 3, H, W)`` at the largest
            resolution) or a tuple of positional inputs. It is resized to each candidate's
            resolution (bilinear) where the resolution is elastic.
        teacher: a reference model (e.g. the original, or a bigger fine-tuned model) instead of
            the largest subnet; called on ``data`` as given.
        metric: ``"top1"`` (fraction of rows whose argmax over the last dim agrees; for
            logits), ``"neg_mse"`` (-MSE / mean square of the reference: 0 is perfect),
            ``"neg_kl"`` (-KL(reference || subnet) of softmaxes over the last dim), or
            ``"auto"``: ``"top1"`` for 2-D outputs (class logits), ``"neg_mse"`` otherwise.

    The reference outputs are computed once, here. Models run in eval mode under no_grad (the
    training flag is restored). The ViTs we convert have no batch norm (LayerNorm only), so a
    subnet needs no batch-norm statistics recalibration before it is evaluated; for a model
    with BatchNorm, recalibrate inside your own ``evaluate`` instead.
    """
    if metric not in ("auto", "top1", "neg_mse", "neg_kl"):
        raise ValueError(
            f'fidelity_evaluator: metric must be "auto", "top1", "neg_mse" or "neg_kl", got '
            f"{metric!r}"
        )
    args = tuple(data) if isinstance(data, tuple | list) else (data,)

    def run(model, resolution):
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                a = input_at(args, resolution) if resolution is not None else args
                out = model(*a)
        finally:
            model.train(was)
        if isinstance(out, tuple | list):
            out = out[0]
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return out.detach().float()

    if teacher is not None:
        ref = run(teacher, None)
    else:
        prev = supernet.active_config()
        cfg = supernet.max_config()
        try:
            supernet.set_active(cfg)
            ref = run(supernet, cfg["resolution"])
        finally:
            supernet.set_active(prev)
    kind = metric if metric != "auto" else ("top1" if ref.dim() == 2 else "neg_mse")
    ref_top = ref.argmax(-1)
    ref_ms = ref.pow(2).mean().clamp_min(1e-30)

    def evaluate(model) -> float:
        res = None
        if hasattr(model, "active_config"):
            res = model.active_config().get("resolution")
        elif isinstance(getattr(model, "sk_subnet", None), dict):
            res = model.sk_subnet.get("resolution")
        out = run(model, res)
        if out.shape != ref.shape:
            raise ValueError(
                f"fidelity_evaluator: output shape {tuple(out.shape)} != reference "
                f"{tuple(ref.shape)}"
            )
        if kind == "top1":
            return (out.argmax(-1) == ref_top).float().mean().item()
        if kind == "neg_kl":
            return -F.kl_div(
                out.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean"
            ).item()
        return -((out - ref).pow(2).mean() / ref_ms).item()

    evaluate.reference = ref
    evaluate.metric = kind
    return evaluate
