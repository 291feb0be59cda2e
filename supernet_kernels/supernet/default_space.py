"""The search space a model gets: the default space derived from its layout and the user's
overrides merged in (:func:`~supernet_kernels.supernet.convert` calls these; the defaults are
described in :mod:`.space`, which checks the result and owns every other rule)."""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Iterable

from torch import nn

from . import families as fam
from .space import CONFIG_KEYS, LINEAR_FIELDS, RANK_EIGHTHS, _mlp_widths


# --------------------------------------------------------------------------- default space
def _rank_choices(n: int, k: int) -> list[int]:
    full = min(n, k)
    return sorted({max(1, round(full * e / 8)) for e in RANK_EIGHTHS})


def _head_counts(heads: int) -> list[int]:
    """Every head count from half the heads (rounded up) to all: dropping more than half of a
    block's heads is rarely worth it, and a contiguous range lets a search step one head."""
    return list(range(max(1, math.ceil(heads / 2)), heads + 1))


def _linear_default(role: str, lin: nn.Linear) -> dict:
    if role in ("qkv", "fc1", "fc2", "generic"):
        ranks = _rank_choices(lin.out_features, lin.in_features)
        return {"rank": ranks, "w_bits": [16], "a_bits": [16]}
    if role == "proj":
        return {"rank": [None], "w_bits": [4, 8, 16], "a_bits": [16]}
    return {"rank": [None], "w_bits": [16], "a_bits": [16]}


def _default_space(model: nn.Module, lay: fam.Layout, attention: str) -> dict:
    mods = dict(model.named_modules())
    return {
        "resolution": list(lay.resolution["choices"]) if lay.resolution else None,
        "depth": {b: ([False, True] if d else [True]) for b, d in lay.blocks.items()},
        "mlp": {m: _mlp_widths(mods[a].out_features) for m, (a, _) in lay.mlps.items()},
        # The model's own attention reshapes with a fixed head count: elastic with ours only.
        "heads": {
            a: _head_counts(h) if attention == "ours" or fam.FAMILIES[lay.family].own_heads else [h]
            for a, h in lay.heads.items()
        },
        "linear": {n: _linear_default(r, mods[n]) for n, r in lay.roles.items()},
    }


# --------------------------------------------------------------------------- space overrides
def _match(keys: Iterable[str], key: str) -> list[str]:
    if key in keys:
        return [key]
    return [k for k in keys if fnmatch.fnmatchcase(k, key)]


def _find_pair(model: nn.Module, name: str, convertible: dict) -> tuple[str, str]:
    """fc1, fc2 of a user-declared MLP module: its only two convertible linears, in order."""
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"space.mlp.{name}: the model has no module of that name") from None
    lins = [f"{name}.{n}" for n, m in mod.named_modules() if n and isinstance(m, nn.Linear)]
    lins = [n for n in lins if n in convertible]
    if len(lins) != 2:
        raise ValueError(
            f"space.mlp.{name}: an MLP module must hold exactly two convertible nn.Linear "
            f"layers (fc1, fc2); found {lins}"
        )
    a, b = (model.get_submodule(n) for n in lins)
    if a.out_features != b.in_features:
        raise ValueError(
            f"space.mlp.{name}: {lins[0]}.out_features ({a.out_features}) != "
            f"{lins[1]}.in_features ({b.in_features})"
        )
    return lins[0], lins[1]


def _merge_space(space: dict, user, model: nn.Module, lay: fam.Layout) -> dict:
    """The default ``space`` with the user's overrides applied (``lay`` gains user-declared
    MLPs and blocks). Entries name layers exactly or by fnmatch pattern (``*`` matches dots);
    a key matching nothing is an error, except exact module names that declare a new MLP or
    droppable block."""
    if user is None:
        return space
    if not isinstance(user, dict):
        raise ValueError(f"space: expected a dict, got {type(user).__name__}")
    bad = [k for k in user if k not in CONFIG_KEYS]
    if bad:
        raise ValueError(f"space: unknown key {bad[0]!r} (expected one of {list(CONFIG_KEYS)})")
    space = copy.deepcopy(space)
    if "resolution" in user:
        if space["resolution"] is None and user["resolution"] is not None:
            raise ValueError(
                f"space.resolution: this {lay.family} supernet has no elastic resolution "
                "(timm ViT only)"
            )
        if user["resolution"] is not None:
            space["resolution"] = user["resolution"]
        elif lay.resolution is not None:  # fixed at the native resolution
            space["resolution"] = [lay.resolution["native"]]
    for section in ("depth", "mlp", "heads", "linear"):
        entries = user.get(section, {})
        if not isinstance(entries, dict):
            raise ValueError(f"space.{section}: expected a dict, got {type(entries).__name__}")
        for key, value in entries.items():
            where = f"space.{section}.{key}"
            if not isinstance(key, str):
                raise ValueError(f"{where}: keys must be module names (str)")
            hits = _match(space[section], key)
            if not hits and section == "mlp" and "*" not in key:
                lay.mlps[key] = _find_pair(model, key, lay.roles)
                hits = [key]
            elif not hits and section == "depth" and "*" not in key:
                _check_block(model, key, lay)
                lay.blocks[key] = True
                hits = [key]
            if not hits:
                raise ValueError(
                    f"{where}: matches no {section} entry of this {lay.family} supernet "
                    f"(entries are named like {list(space[section])[:4]})"
                )
            for k in hits:
                if section == "linear":
                    if not isinstance(value, dict):
                        raise ValueError(f"{where}: expected a dict of {list(LINEAR_FIELDS)}")
                    unknown = [f for f in value if f not in LINEAR_FIELDS]
                    if unknown:
                        raise ValueError(
                            f"{where}: unknown key {unknown[0]!r} (expected {list(LINEAR_FIELDS)})"
                        )
                    space["linear"][k] = {**space["linear"][k], **value}
                else:
                    space[section][k] = value
    return space


def _check_block(model: nn.Module, name: str, lay: fam.Layout) -> None:
    try:
        model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"space.depth.{name}: the model has no module of that name") from None
    if not name or any(name.startswith(b + ".") or b.startswith(name + ".") for b in lay.blocks):
        raise ValueError(f"space.depth.{name}: droppable blocks may not nest")
