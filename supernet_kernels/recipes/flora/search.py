"""Search of a FLORA supernet (restricted space, BitOPs window): :func:`flora_search`."""

from __future__ import annotations

from ...supernet import Supernet


def flora_search(
    supernet: Supernet,
    evaluate,
    example_input,
    *,
    space: dict | None = None,
    window: tuple[float, float] = (0.4, 0.5),
    preset=None,
    seed: int = 0,
    progress: bool = False,
    **overrides,
):
    """FLORA's evolutionary search over ``space`` (a filtered space; default the supernet's)
    for subnets whose FLOPs (MACs) lie in ``window`` = (lower, upper) fractions of the dense
    model, with the preset's settings (20 generations, population 50, top 10, 25 mutations at
    per-block probability 0.2, 25 crossovers, stratified initial population, rejection
    outside the window). ``overrides``: preset fields (e.g. ``generations=2`` for a smoke
    run). Returns the :class:`~supernet_kernels.search.SearchResult`."""
    from ...search import search
    from ..presets import preset as get_preset

    p = get_preset("flora", preset if preset is not None else "paper", **overrides)
    lo, hi = window
    if not 0 <= lo < hi:
        raise ValueError(f"flora_search: window must be (lower, upper) with lower < upper, got "
                         f"{window}")  # fmt: skip
    budget = f"{p.objective} >= {lo} * dense and {p.objective} <= {hi} * dense"
    if lo == 0:
        budget = f"{p.objective} <= {hi} * dense"
    return search(
        supernet,
        evaluate,
        example_input,
        objective=p.objective,
        budget=budget,
        algorithm="evolution",
        generations=p.generations,
        population=p.population,
        parents=p.parents,
        mutate_prob=p.mutate_prob,
        mutations=p.mutations,
        crossovers=p.crossovers,
        init=p.init,
        init_bins=p.init_bins,
        out_of_window=p.out_of_window,
        space=space,
        seed=seed,
        progress=progress,
    )
