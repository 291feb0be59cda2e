"""Low-rank-aware sampling (step 4 of the recipe): :class:`FloraSampler` draws low ranks
more often, as they suffer most from weight sharing."""

from __future__ import annotations

import copy
import random

from ...supernet import Supernet


def _factorized(space: dict) -> dict[str, list[int]]:
    return {n: list(s["rank"]) for n, s in space["linear"].items() if s["rank"] != [None]}


def _full_ranks(supernet: Supernet) -> dict[str, int]:
    """Full rank of each factorized layer: min(in, out) of its ElasticLinear."""
    out = {}
    for n, lin in supernet.elastic_linears().items():
        if lin.is_factorized:
            out[n] = min(lin.in_features, lin.out_features)
    return out


class FloraSampler:
    """Low-rank-aware sampling: ``num_random`` random subnets per step (FLORA: 1), each layer's
    rank drawn among its choices with probability proportional to (full rank / rank) ** power
    (power 1: 1 / rank ratio). ``space``: the (filtered) space to draw from (default: the
    supernet's); dimensions other than factorized ranks stay at their largest choice.
    ``include_largest`` puts the largest subnet first (for ``distill="largest"``); FLORA
    distills from the uncompressed teacher instead and trains the random subnet only.

    Called as ``sampler(step, rng, supernet) -> list of configs``.
    """

    def __init__(
        self,
        space: dict | None = None,
        num_random: int = 1,
        power: float = 1.0,
        include_largest: bool = False,
    ):
        if num_random < 1:
            raise ValueError(f"FloraSampler: num_random must be >= 1, got {num_random}")
        self.space = copy.deepcopy(space) if space is not None else None
        self.num_random = num_random
        self.power = float(power)
        self.include_largest = include_largest

    def choice_weights(self, supernet: Supernet) -> dict[str, tuple[list[int], list[float]]]:
        """{layer: (ranks, probabilities)} of the draw."""
        space = self.space if self.space is not None else supernet.space
        full = _full_ranks(supernet)
        out = {}
        for n, ranks in _factorized(space).items():
            f = full.get(n, max(ranks))
            w = [(f / r) ** self.power for r in ranks]
            s = sum(w)
            out[n] = (ranks, [x / s for x in w])
        return out

    def joint_weights(self, supernet: Supernet) -> dict[str, tuple[list, list[float]]]:
        """{block: (kept triples, probabilities)} of a filtered space's ``joint`` section:
        FLORA's weight 1 / product of the triple's ratios (to the power ``power``)."""
        space = self.space if self.space is not None else supernet.space
        full = _full_ranks(supernet)
        out = {}
        for g, spec in (space.get("joint") or {}).items():
            choices = [tuple(c) for c in spec["choices"]]
            w = []
            for c in choices:
                prod = 1.0
                for n, r in zip(spec["layers"], c, strict=True):
                    prod *= r / full.get(n, r)
                w.append((1.0 / prod) ** self.power)
            total = sum(w)
            out[g] = (choices, [x / total for x in w])
        return out

    def sample(self, rng: random.Random, supernet: Supernet) -> dict:
        cfg = supernet.max_config()
        space = self.space if self.space is not None else supernet.space
        joint = space.get("joint") or {}
        in_joint = {n for spec in joint.values() for n in spec["layers"]}
        for n, (ranks, probs) in self.choice_weights(supernet).items():
            if n not in in_joint:
                cfg["linear"][n]["rank"] = rng.choices(ranks, weights=probs)[0]
        for g, (choices, probs) in self.joint_weights(supernet).items():
            pick = rng.choices(choices, weights=probs)[0]
            for n, r in zip(joint[g]["layers"], pick, strict=True):
                cfg["linear"][n]["rank"] = r
        return cfg

    def __call__(self, step: int, rng: random.Random, supernet: Supernet) -> list[dict]:
        cfgs = [self.sample(rng, supernet) for _ in range(self.num_random)]
        return ([supernet.max_config()] if self.include_largest else []) + cfgs


class _BlockSampler:
    """Filtering stage: one block's layers at uniformly drawn choices, the rest at full rank."""

    def __init__(self, layers: dict[str, list[int]]):
        self.layers = layers

    def __call__(self, step, rng, supernet):
        cfg = supernet.max_config()
        for n, ranks in self.layers.items():
            cfg["linear"][n]["rank"] = rng.choice(ranks)
        return [cfg]
