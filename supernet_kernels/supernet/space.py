"""The search space and configs of a supernet: the default space derived from a model, the
user's overrides merged in, and every check of a space or a config (the only home of these
rules; :class:`~supernet_kernels.supernet.Supernet` and :func:`convert` call them).

Config (a plain JSON-serializable dict; this shape is stable)::

    {
      "resolution": 224,                       # timm ViT; None (null) for other families
      "depth": {"blocks.3": true, ...},        # false: the block is skipped (identity)
      "mlp": {"blocks.0.mlp": 1536, ...},      # MLP hidden width
      "heads": {"blocks.0.attn": 6, ...},      # attention heads run (timm ViT / DeiT, SAM)
      "linear": {"blocks.0.attn.qkv": {"rank": 96, "w_bits": 16, "a_bits": 16}, ...},
    }

Names are the original model's module names (a block's linears keep their names when the block
is wrapped). ``rank`` is an int for a factorized (low-rank) layer and None for a dense one. The
search space ``supernet.space`` has the same shape with a list of choices (ascending; the last
is the largest) in place of each value; ``space["resolution"]`` is None where resolution is not
elastic.

Default space (derived from the model; ``space=`` overrides it, see :func:`convert`):

* attention qkv, MLP fc1 / fc2 and generic linears (every linear of a generic model, Swin's
  patch-merging reductions): factorized, ``rank`` in ratios {1/8, 2/8, ..., 8/8} of
  min(in, out) (8/8 = full rank, which reproduces the layer to fp32 rounding), 16-bit;
* attention proj: dense (``rank`` [null]), ``w_bits`` [4, 8, 16], ``a_bits`` [16];
* other linears of a family model (classifier heads, ...): dense, 16-bit, fixed;
* ``a_bits``: [16] everywhere (int8 activations are opt-in: they need w_bits <= 8 and cost
  more accuracy than weight-only quantization);
* MLP width: fractions {0.25, 0.33, 0.5, 0.75, 1} of the hidden size (rounded to a multiple of 8
  when the hidden size is at least 64);
* heads (attention modules of timm ViT / DeiT and SAM, with ``attention="ours"``): every count
  from ceil(H / 2) to H of a module's H heads (DeiT-S 6 heads: [3, 4, 5, 6]; SAM ViT-B 12:
  [6, ..., 12]). The qkv rows of h heads are 3 * h * head_dim and proj reads h * head_dim
  inputs; the scale stays head_dim ** -0.5. Kept at [H] with ``attention="original"`` (the
  model's own attention runs a fixed head count; asking for fewer is an error). timm attention
  with ``scale_norm`` or a gate has no entry (not sliceable per head: it runs all heads);
* depth: every block droppable except the first and the last (timm ViT); per stage for Swin
  (first and last block of each stage kept); SAM also keeps its global-attention blocks;
  a generic model has no depth entries unless ``space=`` declares them;
* resolution (timm ViT): native * {160/224, 192/224, 1}, rounded to multiples of the patch size.

A layer is either factorized or dense, fixed at conversion by its space: ``ElasticLinear`` has no
dense mode in a factorized layer and quantized low-rank is not supported, so a factorized layer
is 16-bit only. To quantize a layer instead, give it ``"rank": [None]`` and ``w_bits`` choices.

``set_active(config)`` validates the whole config first, then applies it (never half-applied).
Partial configs are allowed: entries left out keep their current values. Errors are ValueError
naming the key path, e.g. ``linear.blocks.0.attn.qkv.rank: 999 is not one of [8, 16, 24]``.
Cross-checks: a rank may not exceed min(active in, active out) of its layer (MLP width and head
count included), and a_bits 8 needs w_bits <= 8. ``heads`` values are ints among the module's
choices (``heads.blocks.0.attn: 0 is not one of [2, 3] (the module has 3 heads)``).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ..nn.elastic import A_BITS, W_BITS, bits_compatible
from . import families as fam

CONFIG_KEYS = ("resolution", "depth", "mlp", "heads", "linear")
LINEAR_FIELDS = ("rank", "w_bits", "a_bits")
RANK_EIGHTHS = tuple(range(1, 9))
MLP_FRACTIONS = (0.25, 0.33, 0.5, 0.75, 1.0)
SUBNET_FORMAT = "sk-subnet-v1"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v) -> str:
    return json.dumps(v) if isinstance(v, bool) or v is None else repr(v)


# --------------------------------------------------------------------------- default space
def _rank_choices(n: int, k: int) -> list[int]:
    full = min(n, k)
    return sorted({max(1, round(full * e / 8)) for e in RANK_EIGHTHS})


def _mlp_width(hidden: int, f: float) -> int:
    """The width of fraction ``f`` of a hidden size (a multiple of 8 from 64 units up)."""
    w = hidden * f
    w = round(w / 8) * 8 if hidden >= 64 else round(w)
    return min(hidden, max(1, int(w)))


def _mlp_widths(hidden: int) -> list[int]:
    return sorted({_mlp_width(hidden, f) for f in MLP_FRACTIONS})


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


def _norm_choices(where: str, values, check: Callable[[Any], str | None]) -> list:
    if not isinstance(values, list | tuple) or not values:
        raise ValueError(f"{where}: expected a non-empty list of choices, got {values!r}")
    for v in values:
        problem = check(v)
        if problem:
            raise ValueError(f"{where}: {_show(v)} {problem}")
    nums = sorted({v for v in values if v is not None})
    return nums + ([None] if None in values else [])


def _check_space(space: dict, model: nn.Module, lay: fam.Layout, attention: str) -> dict:
    """Validate and normalize (sorted, deduplicated) every list of choices."""
    mods = dict(model.named_modules())
    out: dict[str, Any] = {"resolution": None, "depth": {}, "mlp": {}, "heads": {}, "linear": {}}
    if space["resolution"] is not None:
        p = lay.resolution["patch"]
        out["resolution"] = _norm_choices(
            "space.resolution",
            space["resolution"],
            lambda v: (
                None
                if _is_int(v) and v > 0 and v % p == 0
                else f"is not a positive multiple of the patch size {p}"
            ),
        )
    for b, vals in space["depth"].items():
        out["depth"][b] = _norm_choices(
            f"space.depth.{b}", vals, lambda v: None if isinstance(v, bool) else "is not a bool"
        )
    for m, vals in space["mlp"].items():
        hidden = mods[lay.mlps[m][0]].out_features
        if isinstance(vals, list | tuple):  # fractions of the hidden size, as the docs give them
            vals = [
                _mlp_width(hidden, v) if isinstance(v, float) and 0 < v <= 1 else v for v in vals
            ]
        out["mlp"][m] = _norm_choices(
            f"space.mlp.{m}",
            vals,
            lambda v, h=hidden: (
                None
                if _is_int(v) and 1 <= v <= h
                else f"is neither a width in 1..{h} nor a fraction in (0, 1] of it"
            ),
        )
    for a, vals in space["heads"].items():
        full = lay.heads[a]
        out["heads"][a] = _norm_choices(
            f"space.heads.{a}",
            vals,
            lambda v, h=full: None if _is_int(v) and 1 <= v <= h else f"is not an int in 1..{h}",
        )
        own = fam.FAMILIES[lay.family].own_heads
        if attention != "ours" and not own and out["heads"][a] != [full]:
            raise ValueError(
                f'space.heads.{a}: fewer heads than the model\'s {full} need attention="ours" '
                f"(the model's own attention runs a fixed head count), got {out['heads'][a]}"
            )
    for n, sp in space["linear"].items():
        lin = mods[n]
        full = min(lin.in_features, lin.out_features)
        where = f"space.linear.{n}"
        ranks = _norm_choices(
            f"{where}.rank",
            sp.get("rank"),
            lambda v, f=full: (
                None
                if v is None or (_is_int(v) and 1 <= v <= f)
                else f"is not null or an int in 1..{f} (min(in, out))"
            ),
        )
        if None in ranks and len(ranks) > 1:
            raise ValueError(
                f"{where}.rank: a layer is either dense ([null]) or factorized (int ranks), "
                f"got {ranks} (ElasticLinear has no dense mode in a factorized layer)"
            )
        w = _norm_choices(
            f"{where}.w_bits",
            sp.get("w_bits"),
            lambda v: None if _is_int(v) and v in W_BITS else f"is not one of {list(W_BITS)}",
        )
        a = _norm_choices(
            f"{where}.a_bits",
            sp.get("a_bits"),
            lambda v: None if _is_int(v) and v in A_BITS else f"is not one of {list(A_BITS)}",
        )
        if ranks != [None] and w != [16]:
            raise ValueError(
                f"{where}.w_bits: a factorized layer (rank choices {ranks}) runs 16-bit only "
                f"(quantized low-rank is not supported), got {w}; give it rank [null] to "
                "quantize it"
            )
        for wb in w:
            if not any(bits_compatible(wb, ab) for ab in a):
                raise ValueError(
                    f"{where}.a_bits: no choice in {a} works with w_bits {wb} (a_bits 8 needs "
                    "w_bits <= 8)"
                )
        out["linear"][n] = {"rank": ranks, "w_bits": w, "a_bits": a}
    # Every MLP width and head count must leave a valid rank for the layers it narrows:
    # (entry, what it is, smallest choice, [(linear, side narrowed, width per choice unit)]).
    narrowed = [
        (f"mlp.{m}", "width", w[0], [(lay.mlps[m][0], "out", 1), (lay.mlps[m][1], "in", 1)])
        for m, w in out["mlp"].items()
    ]
    for a, counts in out["heads"].items():
        sides = [(n, side, unit) for n, side, unit in _head_sides(lay, mods, a)]
        narrowed.append((f"heads.{a}", "head count", counts[0], sides))
    for key, what, smallest, sides in narrowed:
        for lname, side, unit in sides:
            lin = mods[lname]
            ranks = out["linear"][lname]["rank"]
            other = lin.in_features if side == "out" else lin.out_features
            limit = min(other, smallest * unit)
            if ranks != [None] and ranks[0] > limit:
                raise ValueError(
                    f"space.linear.{lname}.rank: the smallest rank {ranks[0]} exceeds "
                    f"min(in, out) = {limit} at the smallest {what} {smallest} of {key}"
                )
    return out


def _head_sides(lay: fam.Layout, mods: dict, a: str) -> list[tuple[str, str, int]]:
    """(linear, side narrowed, width per head) of attention module ``a``: the rows of its q, k,
    v (or fused qkv) linears and the input columns of its output linear, as its family names
    them (:attr:`Family.head_linears`)."""
    qkv, o = fam.FAMILIES[lay.family].head_linears(a)
    h = lay.heads[a]
    return [(n, "out", mods[n].out_features // h) for n in qkv] + [
        (o, "in", mods[o].in_features // h)
    ]


# --------------------------------------------------------------------------- configs
def pick_config(
    space: dict, limit: Callable[[str, dict], int], choose: Callable[[list], Any]
) -> dict:
    """The config that ``choose`` (one value from a list of choices) picks per dimension of
    ``space``: ranks among those valid at the picked MLP width / head count (``limit(name,
    cfg)``: min(active in, active out) of a linear), a_bits among those valid with the picked
    w_bits."""
    sp = space
    cfg: dict[str, Any] = {
        "resolution": choose(sp["resolution"]) if sp["resolution"] else None,
        "depth": {k: choose(v) for k, v in sp["depth"].items()},
        "mlp": {k: choose(v) for k, v in sp["mlp"].items()},
        "heads": {k: choose(v) for k, v in sp["heads"].items()},
        "linear": {},
    }
    for n, s in sp["linear"].items():
        lim = limit(n, cfg)
        ranks = [r for r in s["rank"] if r is None or r <= lim]
        w = choose(s["w_bits"])
        a = choose([x for x in s["a_bits"] if bits_compatible(w, x)])
        cfg["linear"][n] = {"rank": choose(ranks), "w_bits": w, "a_bits": a}
    return cfg


def validate_config(
    space: dict,
    current: dict,
    config: dict,
    *,
    limit: Callable[[str, dict], int],
    family: str,
    heads: dict[str, int],
) -> dict:
    """The full config ``config`` (partial: the rest from ``current``) would set in a supernet
    of ``space``; ValueError naming the key path of the first problem. ``limit(name, cfg)`` is
    min(active in, active out) of a linear at ``cfg``; ``heads`` the head count of each
    attention module (for messages)."""
    if not isinstance(config, dict):
        raise ValueError(f"config: expected a dict, got {type(config).__name__}")
    for k in config:
        if k not in CONFIG_KEYS:
            raise ValueError(f"config: unknown key {k!r} (expected one of {list(CONFIG_KEYS)})")
    sp = space
    new = copy.deepcopy(current)
    if "resolution" in config:
        v = config["resolution"]
        if sp["resolution"] is None:
            if v is not None:
                raise ValueError(
                    f"resolution: this {family} supernet has no elastic resolution "
                    f"(give null), got {_show(v)}"
                )
        elif not _is_int(v) or v not in sp["resolution"]:
            raise ValueError(f"resolution: {_show(v)} is not one of {json.dumps(sp['resolution'])}")
        new["resolution"] = v
    for section, is_ok, what in (
        ("depth", lambda v: isinstance(v, bool), "block"),
        ("mlp", _is_int, "MLP"),
        ("heads", _is_int, "attention module"),
    ):
        entries = config.get(section, {})
        if not isinstance(entries, dict):
            raise ValueError(f"{section}: expected a dict, got {type(entries).__name__}")
        for k, v in entries.items():
            if k not in sp[section]:
                raise ValueError(
                    f"{section}.{k}: unknown {what} (this supernet has "
                    f"{list(sp[section])[:4]}{' ...' if len(sp[section]) > 4 else ''})"
                )
            if not is_ok(v) or v not in sp[section][k]:
                has = f" (the module has {heads[k]} heads)" if section == "heads" else ""
                raise ValueError(
                    f"{section}.{k}: {_show(v)} is not one of {json.dumps(sp[section][k])}{has}"
                )
            new[section][k] = v
    entries = config.get("linear", {})
    if not isinstance(entries, dict):
        raise ValueError(f"linear: expected a dict, got {type(entries).__name__}")
    for n, c in entries.items():
        if n not in sp["linear"]:
            raise ValueError(
                f"linear.{n}: unknown layer (this supernet has {list(sp['linear'])[:4]} ...)"
            )
        if not isinstance(c, dict):
            raise ValueError(f"linear.{n}: expected a dict of {list(LINEAR_FIELDS)}")
        for f, v in c.items():
            if f not in LINEAR_FIELDS:
                raise ValueError(f"linear.{n}: unknown key {f!r} (expected {list(LINEAR_FIELDS)})")
            ok = (v is None or _is_int(v)) if f == "rank" else _is_int(v)
            if not ok or v not in sp["linear"][n][f]:
                raise ValueError(
                    f"linear.{n}.{f}: {_show(v)} is not one of {json.dumps(sp['linear'][n][f])}"
                )
            new["linear"][n][f] = v
    for n, c in new["linear"].items():
        lim = limit(n, new)
        if c["rank"] is not None and c["rank"] > lim:
            raise ValueError(
                f"linear.{n}.rank: {c['rank']} exceeds min(in, out) = {lim} of the layer "
                "at the configured MLP width / head count"
            )
        if not bits_compatible(c["w_bits"], c["a_bits"]):
            raise ValueError(f"linear.{n}.a_bits: 8 needs w_bits <= 8, got w_bits {c['w_bits']}")
    return new
