"""Constraint-aware evolutionary search (OFA / FLORA style) over per-layer choices.

Algorithm (all randomness from one ``random.Random(seed)``, so a seed gives one history):

1. Initial population: ``population`` distinct feasible candidates, each drawn uniformly per
   gene (:meth:`SearchSpace.sample`).
2. Each generation: the ``parents`` best evaluated members of the population survive; the rest
   of the new population is ``mutation_ratio`` mutated parents (each gene redrawn with
   probability ``mutate_prob``) and crossovers of two distinct parents (uniform per gene).
3. Constraint handling, for every candidate: its costs are computed first (a profile, cached);
   a candidate over budget is redrawn up to ``resample`` times, then *repaired*: randomly
   chosen genes move one choice down (one gene when the violation is small, more when it is
   large: a share of the genes of violation / 4, at most a quarter; every cost is
   non-increasing in each gene) until it fits. The smallest subnet (``min_config``) fits
   (checked up front), so repair ends.
   A candidate already evaluated (same config hash) is redrawn, so each evaluation is new.
   Over-budget candidates are never evaluated nor returned.
4. A candidate whose evaluation raises is recorded with status ``"fail"`` and takes no part in
   selection; the search goes on.

``n_trials`` (optional) caps the total number of evaluations.
"""

from __future__ import annotations

import functools
import random
import sys
import time

from .objectives import Problem
from .results import make_row
from .space import SearchSpace, config_hash


def evolution_search(
    problem: Problem,
    space: SearchSpace,
    *,
    population: int = 16,
    generations: int = 8,
    parents: int | None = None,
    mutate_prob: float = 0.1,
    mutation_ratio: float = 0.5,
    resample: int = 3,
    n_trials: int | None = None,
    seed: int = 0,
    progress: bool = True,
    mutations: int | None = None,
    crossovers: int | None = None,
    init: str = "uniform",
    init_bins: int = 9,
    out_of_window: str = "repair",
) -> list[dict]:
    """Run the evolution; return the history rows (see :mod:`.results`).

    FLORA's settings (``recipes.presets.FloraPreset``): ``mutations`` and ``crossovers``
    (children per generation of each kind; default: the ``mutation_ratio`` split of
    ``population - parents``) make the next population the children alone, with the
    ``parents`` best of everything evaluated so far as the parent pool (FLORA's ``keep_top_k``);
    ``init="stratified"`` draws the initial population stratified by cost
    (:func:`stratified_sample`); ``out_of_window="reject"`` redraws an infeasible candidate
    (up to 10 * ``resample`` times, then gives up on that child) instead of repairing it,
    which a lower bound (``>=``) needs anyway."""
    if init not in ("uniform", "stratified"):
        raise ValueError(f'evolution: init must be "uniform" or "stratified", got {init!r}')
    if out_of_window not in ("repair", "reject"):
        raise ValueError(
            f'evolution: out_of_window must be "repair" or "reject", got {out_of_window!r}'
        )
    flora_style = mutations is not None or crossovers is not None
    if population < 2:
        raise ValueError(f"evolution: population must be >= 2, got {population}")
    if generations < 0:
        raise ValueError(f"evolution: generations must be >= 0, got {generations}")
    k = parents if parents is not None else max(2, population // 4)
    if not 1 <= k <= population:
        raise ValueError(f"evolution: parents must be in 1..population, got {k}")
    rng = random.Random(seed)
    history: list[dict] = []
    seen: set[str] = set()
    cap = n_trials if n_trials is not None else float("inf")
    t0 = time.time()

    def feasible_candidate(make) -> tuple[dict, dict] | None:
        """(genes, config) of a new feasible candidate from ``make()``, or None."""
        for _ in range(max(1, resample) * 10):
            genes = make()
            cfg = space.decode(genes)
            genes = space.encode(cfg)
            tries = 0
            while not problem.feasible(cfg):
                if out_of_window == "reject":
                    tries += 1
                    if tries > 10 * max(1, resample):
                        return None
                    genes = make()
                elif tries < resample:
                    tries += 1
                    genes = make()
                else:
                    # Far over budget, lower many genes per step (each step costs a profile,
                    # ~2 s for SAM ViT-B at 1024): a share of the lowerable genes that grows
                    # with the violation, capped at a quarter; one gene when close.
                    over = max(problem.violations(problem.costs(cfg)).values())
                    count = max(1, round(len(space.genes) * min(0.25, over / 4)))
                    genes = space.shrink(genes, rng, count)
                    if genes is None:  # at the minimum: cannot happen after the up-front check
                        return None
                cfg = space.decode(genes)
                genes = space.encode(cfg)
            if config_hash(cfg) not in seen:
                return genes, cfg
        return None

    def run(genes: dict, cfg: dict, gen: int) -> dict:
        costs = problem.costs(cfg)
        seen.add(config_hash(cfg))
        try:
            metric, status, err = problem.evaluate(cfg), "ok", None
        except Exception as exc:
            metric, status, err = None, "fail", repr(exc)
        row = make_row(len(history), cfg, costs, metric, feasible=True, status=status, error=err)
        row["generation"] = gen
        history.append(row)
        if progress:
            m = "failed" if metric is None else f"{metric:.4g}"
            print(
                f"[search evolution] gen {gen} #{row['index']}: metric {m}, "
                f"{problem.objective} {costs[problem.objective]:.4g} ({time.time() - t0:.0f}s)",
                file=sys.stderr,
            )
        return {"genes": genes, "row": row}

    if init == "stratified":
        bins = cost_bins(space, problem, init_bins)

        def first():
            return stratified_sample(space, bins, rng)
    else:

        def first():
            return space.sample(rng)

    pop: list[dict] = []
    for _ in range(population * (10 if out_of_window == "reject" else 1)):
        if len(history) >= cap or len(pop) >= population:
            break
        cand = feasible_candidate(first)
        if cand is None:
            if out_of_window == "reject":
                continue
            break
        pop.append(run(*cand, 0))
    if flora_style:
        return _flora_generations(
            problem, space, rng, pop, history, run, feasible_candidate,
            generations=generations, parents=k, mutations=mutations or 0,
            crossovers=crossovers or 0, mutate_prob=mutate_prob, cap=cap,
        )  # fmt: skip

    for gen in range(1, generations + 1):
        if len(history) >= cap:
            break
        good = [p for p in pop if p["row"]["status"] == "ok"]
        good.sort(key=lambda p: (-p["row"]["metric"], p["row"][problem.objective]))
        top = good[:k]
        if not top:  # nothing evaluated successfully yet: keep exploring at random
            children_needed = population
            top_genes = []
        else:
            children_needed = population - len(top)
            top_genes = [p["genes"] for p in top]
        n_mut = round(children_needed * mutation_ratio) if len(top_genes) > 1 else children_needed
        children = []
        for i in range(children_needed):
            if len(history) >= cap:
                break
            if not top_genes:
                kind = "sample"
            else:
                kind = "mutate" if i < n_mut else "crossover"
            make = functools.partial(_child, space, rng, top_genes, kind, mutate_prob)
            cand = feasible_candidate(make)
            if cand is None:
                continue
            children.append(run(*cand, gen))
        pop = top + children
    return history


def _child(space: SearchSpace, rng: random.Random, parents: list, kind: str, prob: float):
    """Genes of one child: a uniform sample, a mutated parent or a crossover of two."""
    if kind == "sample":
        return space.sample(rng)
    if kind == "mutate":
        return space.mutate(rng.choice(parents), rng, prob)
    a, b = rng.sample(parents, 2)
    return space.crossover(a, b, rng)


def _flora_generations(
    problem, space, rng, pop, history, run, feasible_candidate, *, generations, parents,
    mutations, crossovers, mutate_prob, cap,
):  # fmt: skip
    """FLORA's loop: the parent pool is the ``parents`` best of all evaluated candidates; each
    generation is ``mutations`` mutated parents plus ``crossovers`` crossovers of two."""
    evaluated = list(pop)
    for gen in range(1, generations + 1):
        if len(history) >= cap:
            break
        good = [p for p in evaluated if p["row"]["status"] == "ok"]
        good.sort(key=lambda p: (-p["row"]["metric"], p["row"][problem.objective]))
        top = [p["genes"] for p in good[:parents]]
        if not top:
            break
        kinds = ["mutate"] * mutations + (["crossover"] * crossovers if len(top) > 1 else [])
        for kind in kinds:
            if len(history) >= cap:
                break
            make = functools.partial(_child, space, rng, top, kind, mutate_prob)
            cand = feasible_candidate(make)
            if cand is not None:
                evaluated.append(run(*cand, gen))
    return history


def cost_bins(space: SearchSpace, problem: Problem, bins: int) -> dict[str, list[list]]:
    """Per gene, its choices grouped into at most ``bins`` cost bins (equal-width bins of the
    cost with that gene alone at the choice and every other gene at its largest), cheapest
    bin first; empty bins dropped."""
    out: dict[str, list[list]] = {}
    lins = space.supernet.elastic_linears()
    for k, choices in space.genes.items():
        costs = []
        if k.startswith("joint:"):
            # A joint gene has many choices (FLORA keeps ~100 of 343 per block): their
            # per-token MACs min(in * out, r * (in + out)) summed, instead of a profile each.
            spec = space.joint[k[len("joint:") :]]
            for c in choices:
                ranks = zip(spec["layers"], spec["choices"][c], strict=True)
                costs.append(sum(_lowrank_macs(lins[n], r) for n, r in ranks))
        else:
            for c in choices:
                cfg = space.decode({k: c})
                costs.append(problem.costs(cfg)[problem.objective])
        lo, hi = min(costs), max(costs)
        width = (hi - lo) / bins if hi > lo else 1.0
        groups: list[list] = [[] for _ in range(bins)]
        for c, v in zip(choices, costs, strict=True):
            groups[min(bins - 1, int((v - lo) / width))].append(c)
        out[k] = [g for g in groups if g]
    return out


def _lowrank_macs(lin, r: int) -> int:
    n, k = lin.in_features, lin.out_features
    return min(n * k, r * (n + k))


def stratified_sample(space: SearchSpace, bins: dict[str, list[list]], rng: random.Random) -> dict:
    """Genes whose cost level is spread evenly (FLORA's initial population): draw a total bin
    index S uniformly in [0, sum of (bins per gene - 1)], split S over the genes at random
    (each at most its last bin), then pick a choice uniformly inside each gene's bin. A
    uniform draw per gene would concentrate the totals in the middle (central limit), leaving
    the cheap and the costly ends of the window empty."""
    keys = list(bins)
    caps = [len(bins[k]) - 1 for k in keys]
    total = rng.randint(0, sum(caps))
    level = [0] * len(keys)
    open_ = [i for i, c in enumerate(caps) if c > 0]
    for _ in range(total):
        i = rng.choice(open_)
        level[i] += 1
        if level[i] == caps[i]:
            open_.remove(i)
    return {k: rng.choice(bins[k][lv]) for k, lv in zip(keys, level, strict=True)}
