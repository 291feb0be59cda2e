"""FLORA's search space: rank choices as ratios of min(in, out) for every qkv, fc1 and fc2
(step 1 of the recipe); the factors start from the SVD of each weight (step 2, done by
``convert``)."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from torch import nn

from ...supernet import families as fam
from ..common import fixed_space

EIGHTHS = tuple(Fraction(i, 8) for i in (1, 2, 3, 4, 5, 6, 8))
SIXTHS = tuple(Fraction(i, 6) for i in (1, 2, 3, 4, 5, 6))
#: Rank ratios by embedding width (DeiT-S: sixths); any other width uses EIGHTHS.
RATIOS_BY_WIDTH = {384: SIXTHS}
FACTORIZED_ROLES = ("qkv", "fc1", "fc2", "generic")


def _embed_width(model: nn.Module) -> int | None:
    w = getattr(model, "embed_dim", None)
    return w if isinstance(w, int) else None


def rank_choices(full: int, ratios: Sequence) -> list[int]:
    """Ranks round(full * ratio) (at least 1), sorted and deduplicated."""
    return sorted({max(1, min(full, round(full * float(r)))) for r in ratios})


def flora_space(model: nn.Module, ratios: Sequence | None = None) -> dict:
    """FLORA's search space for ``model`` as a ``convert(space=...)`` override.

    ``ratios`` (fractions of min(in, out), the last should be 1) default to
    ``RATIOS_BY_WIDTH.get(model.embed_dim, EIGHTHS)``. Factorized: attention qkv and MLP fc1 /
    fc2 (every linear of a generic model); dense 16-bit: attention proj; other linears
    (classifier heads) keep convert's fixed dense 16-bit. Depth, MLP width, attention heads and
    resolution are fixed at full.
    """
    if ratios is None:
        ratios = RATIOS_BY_WIDTH.get(_embed_width(model), EIGHTHS)
    ratios = list(ratios)
    if not ratios or any(not 0 < float(r) <= 1 for r in ratios):
        raise ValueError(f"flora_space: ratios must be in (0, 1], got {ratios}")
    lay = fam.layout(model)
    mods = dict(model.named_modules())
    space = fixed_space(model, lay)
    for name, role in lay.roles.items():
        lin = mods[name]
        if role in FACTORIZED_ROLES:
            full = min(lin.in_features, lin.out_features)
            space["linear"][name] = {
                "rank": rank_choices(full, ratios),
                "w_bits": [16],
                "a_bits": [16],
            }
        elif role == "proj":
            space["linear"][name] = {"rank": [None], "w_bits": [16], "a_bits": [16]}
    return space
