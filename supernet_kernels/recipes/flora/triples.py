"""FLORA's own filter (``preset="paper"``): per block, every joint (qkv, fc1, fc2) rank
triple of a locally trained supernet scored, and the preset's keep rule applied
(:func:`filter_triples`, :func:`keep_rule`, :func:`kept_fraction`)."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from ...supernet import Supernet
from ..common import as_batches
from .filtering import _per_block, _score
from .sampling import _factorized


def _per_token_macs(lin, r: int) -> int:
    n, k = lin.in_features, lin.out_features
    return min(n * k, r * (n + k))


def _joint_choices(layers: dict, names: list[str]) -> list[tuple]:
    """Every joint rank choice of a block's layers ``names``."""
    return list(itertools.product(*(layers[n] for n in names)))


def keep_rule(
    triples: Sequence[tuple],
    losses: Sequence[float],
    costs: Sequence[float],
    *,
    cheap: float = 0.45,
    costly: float = 0.15,
    bins: int = 3,
) -> list[tuple]:
    """FLORA-style keep rule (ours; :class:`~.presets.FloraPreset`): sort the triples by cost,
    cut them into ``bins`` bins of equal count, keep in bin i (cheapest first) the
    ceil(f_i * size) lowest-loss triples with f_i going linearly from ``cheap`` to ``costly``;
    the costliest triple (full rank) is always kept. Returns the kept triples, cheapest
    first."""
    if not (len(triples) == len(losses) == len(costs)) or not triples:
        raise ValueError("keep_rule: triples, losses and costs must be non-empty and aligned")
    if bins < 1 or not (0 < costly <= 1 and 0 < cheap <= 1):
        raise ValueError(f"keep_rule: need bins >= 1 and fractions in (0, 1], got {bins}, "
                         f"{cheap}, {costly}")  # fmt: skip
    order = sorted(range(len(triples)), key=lambda i: (costs[i], losses[i]))
    nb = min(bins, len(order))
    kept = {order[-1]}
    for b in range(nb):
        part = order[b * len(order) // nb : (b + 1) * len(order) // nb]
        f = cheap if nb == 1 else cheap + (costly - cheap) * b / (nb - 1)
        k = max(1, math.ceil(f * len(part)))
        kept.update(sorted(part, key=lambda i: losses[i])[:k])
    return [triples[i] for i in sorted(kept, key=lambda i: (costs[i], losses[i]))]


def _fraction(data, fraction: float, seed: int):
    """A random ``fraction`` of a map-style dataset (a Subset), or the data as it is."""
    if fraction >= 1 or not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return data
    n = max(1, round(len(data) * fraction))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:n].tolist()
    return torch.utils.data.Subset(data, idx)


def filter_triples(
    supernet: Supernet,
    task,
    data,
    teacher: nn.Module | None,
    *,
    preset=None,
    heldout=None,
    heldout_batches: int | None = 2,
    steps_per_block: int = 20,
    batch_size: int = 32,
    space: dict | None = None,
    restore: bool = True,
    device=None,
    seed: int = 0,
    **train_kwargs,
):
    """FLORA's block-level candidate filter (module doc, step 3; settings from ``preset``,
    default ``FloraPreset()``): for each block, train a local supernet (the block's joint
    rank choices drawn uniformly, the other blocks at full rank; ``steps_per_block`` steps at
    the preset's ``filter_lr`` on ``filter_train_fraction`` of ``data``, distillation only),
    score every joint choice by :func:`distill_score` on ``heldout_batches`` held-out batches
    (None: the preset's ``filter_val_fraction`` of ``heldout``), and keep by
    :func:`keep_rule`. Weights are restored afterwards (``restore``).

    Returns ``(space, scores)``: the restricted space (the supernet's, plus ``joint``: {block:
    {"layers": [qkv, fc1, fc2], "choices": kept triples, cheapest first}}) and {block: {triple:
    loss}}.
    """
    from ..presets import preset as get_preset

    p = get_preset("flora", preset if preset is not None else "paper")
    space = copy.deepcopy(space if space is not None else supernet.space)
    layers = _factorized(space)
    if not layers:
        raise ValueError("filter_triples: the space has no factorized layer")
    if heldout_batches is None:  # the preset's fraction of the held-out set
        src = heldout if heldout is not None else data
        if not hasattr(src, "__len__"):
            raise ValueError("filter_triples: heldout_batches=None needs a sized held-out set")
        heldout_batches = max(1, math.ceil(p.filter_val_fraction * len(src) / batch_size))
    batches = as_batches(
        heldout if heldout is not None else data, heldout_batches, batch_size, task, seed
    )
    local_data = _fraction(data, p.filter_train_fraction, seed)
    lins = supernet.elastic_linears()
    scores: dict[str, dict[tuple, float]] = {}
    joint: dict[str, dict] = {}

    def score_block(block, names, full_cfg, teacher_outs):
        triples = _joint_choices(layers, names)
        res = {}
        for t in triples:
            cfg = copy.deepcopy(full_cfg)
            for n, r in zip(names, t, strict=True):
                cfg["linear"][n]["rank"] = r
            res[t] = _score(supernet, teacher_outs, batches, cfg, p.temperature, task)
        costs = [sum(_per_token_macs(lins[n], r) for n, r in zip(names, t, strict=True))
                 for t in triples]  # fmt: skip
        kept = keep_rule(
            triples,
            [res[t] for t in triples],
            costs,
            cheap=p.keep_fraction_cheap,
            costly=p.keep_fraction_costly,
            bins=p.keep_bins,
        )
        scores[block] = res
        joint[block] = {"layers": list(names), "choices": [list(t) for t in kept]}
        for i, n in enumerate(names):
            space["linear"][n]["rank"] = sorted({t[i] for t in kept})

    _per_block(
        supernet,
        task,
        local_data,
        teacher,
        layers,
        batches,
        score_block,
        sampler=lambda names: _JointUniform(names, _joint_choices(layers, names)),
        steps_per_block=steps_per_block,
        restore=restore,
        seed=seed,
        lr=p.filter_lr,
        weight_decay=p.weight_decay,
        batch_size=batch_size,
        label_weight=p.label_weight if teacher is not None else 1.0,
        device=device,
        **train_kwargs,
    )
    space["joint"] = joint
    return space, scores


class _JointUniform:
    """Filtering stage of :func:`filter_triples`: one block's joint choice drawn uniformly."""

    def __init__(self, names: list[str], triples: list[tuple]):
        self.names, self.triples = names, triples

    def __call__(self, step, rng, supernet):
        cfg = supernet.max_config()
        for n, r in zip(self.names, rng.choice(self.triples), strict=True):
            cfg["linear"][n]["rank"] = r
        return [cfg]


def kept_fraction(space: dict, supernet: Supernet) -> float:
    """Kept joint choices / all joint choices of a filtered space (over its blocks)."""
    full = supernet.space["linear"]
    kept = total = 0
    for spec in (space.get("joint") or {}).values():
        kept += len(spec["choices"])
        total += math.prod(len(full[n]["rank"]) for n in spec["layers"])
    return kept / total if total else 1.0
