"""The search space and configs of a supernet: the typed :class:`Space` and :class:`Config`
(versioned ``to_dict`` / ``from_dict``; plain dicts of the shape below, as older files and
studies hold them, load too), every check of a space or a config, configs at the extremes and
at random, search genes and their repair (the only home of these rules:
:class:`~supernet_kernels.supernet.Supernet`, :func:`convert`, the search and the recipes call
them), and the one config hash (:func:`config_hash`). The default space and the merge of the
user's overrides are in :mod:`.default_space`.

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
import hashlib
import json
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

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


def _mlp_width(hidden: int, f: float) -> int:
    """The width of fraction ``f`` of a hidden size (a multiple of 8 from 64 units up)."""
    w = hidden * f
    w = round(w / 8) * 8 if hidden >= 64 else round(w)
    return min(hidden, max(1, int(w)))


def _mlp_widths(hidden: int) -> list[int]:
    return sorted({_mlp_width(hidden, f) for f in MLP_FRACTIONS})


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


# --------------------------------------------------------------------------- config hash
def _plain(config) -> Any:
    return config.as_plain() if isinstance(config, Config | Space) else config


def _canonical(config) -> str:
    return json.dumps(_plain(config), sort_keys=True, separators=(",", ":"))


def config_hash(config) -> str:
    """The hash of a config (or a space; a dict, :class:`Config` or :class:`Space`): 16 hex
    digits of SHA-256 of its canonical JSON (sorted keys, no spaces). The one key of a config
    in the trainer's logs, the search's caches and Optuna studies. Files written before this
    function existed hold :func:`legacy_config_hashes`; :func:`hash_matches` accepts both."""
    return hashlib.sha256(_canonical(config).encode()).hexdigest()[:16]


def legacy_config_hashes(config) -> dict[str, str]:
    """The hashes earlier versions wrote for ``config``: the trainer's logs (``"sha256-12"``: 12
    hex digits of SHA-256 of ``json.dumps(sort_keys=True)``) and the search's caches, Optuna
    trials and space fingerprints (``"sha1-16"``: 16 hex digits of SHA-1 of the canonical
    JSON)."""
    plain = _plain(config)
    return {
        "sha256-12": hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:12],
        "sha1-16": hashlib.sha1(_canonical(plain).encode()).hexdigest()[:16],
    }


def hash_matches(h: str, config) -> bool:
    """Whether ``h`` is the hash of ``config`` now or as an earlier version wrote it."""
    return h == config_hash(config) or h in legacy_config_hashes(config).values()


def resolve_hash(h: str, configs: Iterable) -> Any:
    """The config among ``configs`` whose hash (current or legacy) is ``h``; None if none is."""
    return next((c for c in configs if hash_matches(h, c)), None)


# --------------------------------------------------------------------------- typed forms
def _check_version(cls, data: Mapping) -> dict:
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__}.from_dict: expected a dict, got {type(data).__name__}")
    d = dict(data)
    v = d.pop("version", None)  # no version: written before versions, the same shape
    if v is not None and (not _is_int(v) or not 1 <= v <= cls.VERSION):
        raise ValueError(
            f"{cls.__name__}.from_dict: version {_show(v)} is not supported (this library "
            f"reads versions 1..{cls.VERSION}; a newer library wrote it?)"
        )
    return d


def _split_sections(cls, d: dict, known: tuple[str, ...]) -> tuple[dict, dict]:
    """(the known sections, further sections a supernet adds such as ``act_bits``)."""
    extra = {}
    for k in list(d):
        if k in known:
            continue
        if not isinstance(k, str) or not isinstance(d[k], Mapping):
            raise ValueError(f"{cls.__name__}.from_dict: {k!r}: expected a dict section")
        extra[k] = copy.deepcopy(dict(d.pop(k)))
    for k in known:
        if k != "resolution" and k in d and not isinstance(d[k], Mapping):
            raise ValueError(
                f"{cls.__name__}.from_dict: {k}: expected a dict, got {type(d[k]).__name__}"
            )
    return d, extra


def _check_choice_lists(d: dict, extra: dict) -> None:
    """Every dimension of a space is a non-empty list of choices (what the model allows is
    :func:`_check_space`'s, at conversion)."""

    def check(where: str, v) -> None:
        if not isinstance(v, list | tuple) or not v:
            raise ValueError(f"Space.from_dict: {where}: expected a non-empty list of choices")

    if d["resolution"] is not None:
        check("resolution", d["resolution"])
    for sec in ("depth", "mlp", "heads", *extra):
        for k, v in (extra[sec] if sec in extra else d[sec]).items():
            check(f"{sec}.{k}", v)
    for n, spec in d["linear"].items():
        if not isinstance(spec, Mapping) or set(spec) != set(LINEAR_FIELDS):
            raise ValueError(
                f"Space.from_dict: linear.{n}: expected a dict of {list(LINEAR_FIELDS)}"
            )
        for f in LINEAR_FIELDS:
            check(f"linear.{n}.{f}", spec[f])


@dataclass
class Config:
    """A supernet config (the module doc's shape) as a typed value. ``extra`` holds sections
    a supernet adds (``act_bits`` of a mixed-precision supernet). :meth:`as_plain` is the dict
    ``Supernet.set_active`` takes and older files hold; :meth:`to_dict` adds ``version``."""

    VERSION: ClassVar[int] = 1

    resolution: int | None = None
    depth: dict[str, bool] = field(default_factory=dict)
    mlp: dict[str, int] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)
    linear: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_plain(self) -> dict:
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}
        extra = out.pop("extra")
        return {**out, **extra}

    def to_dict(self) -> dict:
        return {"version": self.VERSION, **self.as_plain()}

    @classmethod
    def from_dict(cls, data: Mapping) -> Config:
        """A config from :meth:`to_dict`'s output or a plain config dict of any version."""
        d, extra = _split_sections(cls, _check_version(cls, data), CONFIG_KEYS)
        return cls(**copy.deepcopy(d), extra=extra)

    def hash(self) -> str:
        return config_hash(self)


@dataclass
class Space:
    """A supernet's search space as a typed value, and the only owner of what follows from
    it: configs at the extremes and at random (:meth:`pick`), validation (:meth:`validate`),
    search genes (:meth:`genes`) and repair (:meth:`repair`).

    The sections are the config's with lists of choices (ascending; the last is the largest);
    ``extra`` holds sections a supernet adds (``act_bits``), ``joint`` joint rank choices of a
    restricted search space (:mod:`~supernet_kernels.search.space`). ``limit(name, config)``
    (min(active in, active out) of a linear at a config: its MLP width or head count) binds it
    to a supernet; without one, ranks are not limited. ``family`` and ``head_counts`` (each
    attention module's heads) only word error messages."""

    VERSION: ClassVar[int] = 1

    resolution: list[int] | None = None
    depth: dict[str, list[bool]] = field(default_factory=dict)
    mlp: dict[str, list[int]] = field(default_factory=dict)
    heads: dict[str, list[int]] = field(default_factory=dict)
    linear: dict[str, dict[str, list]] = field(default_factory=dict)
    extra: dict[str, dict[str, list]] = field(default_factory=dict)
    joint: dict[str, dict] = field(default_factory=dict)
    limit: Callable[[str, dict], int] | None = field(default=None, repr=False, compare=False)
    family: str = field(default="generic", repr=False, compare=False)
    head_counts: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    # ----------------------------------------------------------------- (de)serialization
    def as_plain(self) -> dict:
        """The plain dict (``supernet.space``'s shape; what older files and studies hold)."""
        out = {k: copy.deepcopy(getattr(self, k)) for k in CONFIG_KEYS}
        out.update(copy.deepcopy(self.extra))
        if self.joint:
            out["joint"] = copy.deepcopy(self.joint)
        return out

    def to_dict(self) -> dict:
        return {"version": self.VERSION, **self.as_plain()}

    @classmethod
    def from_dict(cls, data: Mapping, **bind) -> Space:
        """A space from :meth:`to_dict`'s output or a plain space dict of any version;
        ``bind``: ``limit``, ``family``, ``head_counts``."""
        d = _check_version(cls, data)
        joint = d.pop("joint", None) or {}
        d, extra = _split_sections(cls, d, CONFIG_KEYS)
        for k in ("depth", "mlp", "heads", "linear"):
            d.setdefault(k, {})
        d.setdefault("resolution", None)
        _check_choice_lists(d, extra)
        sp = cls(**copy.deepcopy(d), extra=extra, joint=copy.deepcopy(dict(joint)), **bind)
        for g, spec in sp.joint.items():
            layers, choices = list(spec["layers"]), [tuple(c) for c in spec["choices"]]
            if not choices or any(len(c) != len(layers) for c in choices):
                raise ValueError(f"space.joint.{g}: each choice needs one rank per layer {layers}")
            sp.joint[g] = {"layers": layers, "choices": choices}
        return sp

    def fingerprint(self) -> str:
        return config_hash(self)

    def _limit(self, name: str, cfg: dict) -> float:
        return self.limit(name, cfg) if self.limit is not None else float("inf")

    # ----------------------------------------------------------------- configs
    def pick(self, choose: Callable[[list], Any]) -> dict:
        """The config ``choose`` (one value from a list of choices) picks per dimension: ranks
        among those valid at the picked MLP width / head count, a_bits among those valid with
        the picked w_bits (extra sections: one value per entry)."""
        cfg = pick_config(self.as_plain(), self._limit, choose)
        for sec, entries in self.extra.items():
            cfg[sec] = {k: choose(v) for k, v in entries.items()}
        return cfg

    def max_config(self) -> dict:
        return self.pick(lambda c: c[-1])

    def min_config(self) -> dict:
        return self.pick(lambda c: c[0])

    def sample_config(self, rng: random.Random | int | None = None) -> dict:
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        return self.pick(rng.choice)

    def validate(self, config, current: dict) -> dict:
        """The full config ``config`` (a dict or :class:`Config`; partial: the rest from
        ``current``) would set; ValueError naming the key path of the first problem (the
        five config sections; a supernet checks the sections it adds)."""
        return validate_config(
            {k: getattr(self, k) for k in CONFIG_KEYS},
            current,
            _plain(config),
            limit=self._limit,
            family=self.family,
            heads=self.head_counts,
        )

    # ----------------------------------------------------------------- search
    def genes(self) -> dict[str, list]:
        """Every dimension as ``{flat name: [choices...]}``, in a fixed order (the names are
        those of :mod:`~supernet_kernels.search.space`); a joint group replaces its layers'
        rank dimensions by one of choice indices (cheapest first)."""
        in_joint = {n for spec in self.joint.values() for n in spec["layers"]}
        dims: list[tuple[str, list]] = []
        if self.resolution:
            dims.append(("resolution", list(self.resolution)))
        for sec in ("depth", "mlp", "heads"):
            dims += [(f"{sec}:{k}", list(c)) for k, c in getattr(self, sec).items()]
        for n, s in self.linear.items():
            for f in LINEAR_FIELDS:
                if not (f == "rank" and n in in_joint):
                    dims.append((f"linear:{n}:{f}", list(s[f])))
        for sec, entries in self.extra.items():
            dims += [(f"{sec}:{k}", list(c)) for k, c in entries.items()]
        dims += [(f"joint:{g}", list(range(len(s["choices"])))) for g, s in self.joint.items()]
        return dict(dims)

    def repair(self, cfg: dict) -> dict:
        """``cfg`` (a full config, changed in place and returned) with the cross-constraints
        repaired instead of rejected: a rank above min(active in, active out) at the chosen
        MLP width or head count becomes the largest allowed rank, and ``a_bits`` 8 with
        ``w_bits`` > 8 becomes ``a_bits`` 16 (or, where 16 is not a choice, ``w_bits`` the
        largest choice <= 8)."""
        for n, c in cfg["linear"].items():
            choices = self.linear[n]
            if c.get("rank") is not None:
                lim = self._limit(n, cfg)
                if c["rank"] > lim:
                    ok = [r for r in choices["rank"] if r <= lim]
                    c["rank"] = ok[-1] if ok else choices["rank"][0]
            if not bits_compatible(c["w_bits"], c["a_bits"]):
                if 16 in choices["a_bits"]:
                    c["a_bits"] = 16
                else:
                    low = [w for w in choices["w_bits"] if w <= 8]
                    if low:
                        c["w_bits"] = low[-1]
        return cfg


# The default space and the merge of overrides moved to .default_space (which imports this
# module); their old names here still resolve.
_MOVED = (
    "_rank_choices", "_head_counts", "_linear_default", "_default_space", "_match",
    "_find_pair", "_merge_space", "_check_block",
)  # fmt: skip


def __getattr__(name: str):
    if name in _MOVED:
        from . import default_space

        return getattr(default_space, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
