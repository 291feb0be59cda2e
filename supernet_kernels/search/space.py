"""A supernet's search space as a flat dict of categorical choices, and back.

Every dimension of ``supernet.space`` with more than one choice is one categorical *gene*, keyed
by a flat name (also the Optuna parameter name)::

    "resolution"                          -> one of space["resolution"]
    "depth:blocks.3"                      -> False / True
    "mlp:blocks.0.mlp"                    -> an MLP width
    "heads:blocks.0.attn"                 -> a number of attention heads
    "linear:blocks.0.attn.qkv:rank"       -> a rank (int; None for a dense layer)
    "linear:blocks.0.attn.proj:w_bits"    -> weight bits
    "linear:blocks.0.attn.proj:a_bits"    -> activation bits

    "act_bits:blocks.0.attn"              -> a section the supernet adds (mixed precision)
    "joint:blocks.0"                      -> index of a joint choice of several layers' ranks

``SearchSpace(supernet, space=...)`` searches a restricted space (a subset of the supernet's
choices, e.g. FLORA's filtered space). A ``space["joint"]`` entry ``{group: {"layers": [...],
"choices": [[r, ...], ...]}}`` replaces those layers' separate rank genes by one gene, the
index of a choice (listed cheapest first, so index order is cost order).

Dimensions with a single choice are fixed and not genes. Choices keep the space's ascending
order, so a lower index always means a smaller (cheaper) subnet: every cost (MACs, BitOPs,
params, weight bytes, latency) is non-increasing when one gene moves down one step. That is
what :meth:`SearchSpace.shrink` relies on to repair a candidate that breaks a budget.

:meth:`SearchSpace.decode` turns genes into a config and *repairs* the supernet's
cross-constraints instead of rejecting the candidate: a rank above min(active in, active out)
at the chosen MLP width or head count becomes the largest allowed rank, and ``a_bits`` 8 with
``w_bits`` > 8 becomes ``a_bits`` 16 (or, where 16 is not a choice, ``w_bits`` the largest
choice <= 8). The result is checked with ``supernet.validate_config``. Genes are always drawn
from the full choice lists (Optuna requires one fixed distribution per parameter name), repair
happens after.
"""

from __future__ import annotations

import copy
import random
from typing import Any

from ..supernet.space import Space, config_hash, hash_matches

__all__ = ["SearchSpace", "config_hash", "hash_matches"]


class SearchSpace:
    """Genes of a :class:`~supernet_kernels.Supernet`'s space (see the module doc); the space's
    dimensions, their order and the repair are :class:`~supernet_kernels.supernet.space.Space`'s.

    Attributes:
        genes: ordered ``{name: [choices...]}`` of the free dimensions (ascending choices).
        fixed: the config values of dimensions with one choice.
    """

    def __init__(self, supernet, space: dict | None = None):
        self.supernet = supernet
        sp = supernet.space if space is None else copy.deepcopy(space)
        self._space = sp
        self.spec = Space.from_dict(
            sp,
            limit=getattr(supernet, "_limit", None),
            family=getattr(supernet, "family", "generic"),
        )
        self.joint = self.spec.joint
        self.extra = list(self.spec.extra)
        self.all_dims = self.spec.genes()
        self.genes = {k: v for k, v in self.all_dims.items() if len(v) > 1}
        self.fingerprint = config_hash(sp)

    def __len__(self) -> int:
        return len(self.genes)

    def matches_fingerprint(self, fingerprint: str) -> bool:
        """Whether a recorded fingerprint is this space's (also as earlier versions hashed)."""
        return hash_matches(fingerprint, self._space)

    # ----------------------------------------------------------------- encode / decode
    def encode(self, config: dict) -> dict[str, Any]:
        """The genes of a full config."""
        flat = {}
        for k in self.genes:
            if k.startswith("joint:"):
                spec = self.joint[k[len("joint:") :]]
                t = tuple(config["linear"][n]["rank"] for n in spec["layers"])
                if t not in spec["choices"]:
                    raise ValueError(f"gene {k}: ranks {t} are not one of the joint choices")
                flat[k] = spec["choices"].index(t)
            else:
                flat[k] = _get(config, k)
        return flat

    def min_config(self) -> dict:
        """The smallest config of this space (every gene at its first choice)."""
        return self.decode({k: c[0] for k, c in self.genes.items()})

    def max_config(self) -> dict:
        """The largest config of this space."""
        return self.decode({})

    def decode(self, genes: dict[str, Any]) -> dict:
        """The valid full config for ``genes`` (missing genes: the largest choice), with the
        cross-constraints repaired (module doc). ValueError if no repair makes it valid."""
        cfg: dict[str, Any] = {
            "resolution": None,
            "depth": {},
            "mlp": {},
            "heads": {},
            "linear": {},
        }
        for sec in self.extra:
            cfg[sec] = {}
        joint_idx = {}
        for k, choices in self.all_dims.items():
            v = genes.get(k, choices[-1]) if k in self.genes else choices[0]
            if v not in choices:
                raise ValueError(f"gene {k}: {v!r} is not one of {choices}")
            if k.startswith("joint:"):
                joint_idx[k[len("joint:") :]] = v
            else:
                _set(cfg, k, v)
        for g, i in joint_idx.items():
            spec = self.joint[g]
            for n, r in zip(spec["layers"], spec["choices"][i], strict=True):
                cfg["linear"].setdefault(n, {})["rank"] = r
        return self.supernet.validate_config(self.spec.repair(cfg))

    # ----------------------------------------------------------------- operators
    def sample(self, rng: random.Random) -> dict[str, Any]:
        """Genes drawn uniformly per dimension."""
        return {k: rng.choice(c) for k, c in self.genes.items()}

    def mutate(self, genes: dict, rng: random.Random, prob: float = 0.1) -> dict[str, Any]:
        """A copy with each gene redrawn uniformly with probability ``prob`` (at least one
        gene is redrawn to a different value where any gene has several choices)."""
        out = dict(genes)
        changed = False
        for k, c in self.genes.items():
            if rng.random() < prob:
                out[k] = rng.choice(c)
                changed = changed or out[k] != genes.get(k)
        if not changed and self.genes:
            k = rng.choice(list(self.genes))
            out[k] = rng.choice([v for v in self.genes[k] if v != genes.get(k)])
        return out

    def crossover(self, a: dict, b: dict, rng: random.Random) -> dict[str, Any]:
        """Uniform crossover: each gene from ``a`` or ``b`` with probability 1/2."""
        return {k: (a[k] if rng.random() < 0.5 else b[k]) for k in self.genes}

    def shrink(self, genes: dict, rng: random.Random, count: int = 1) -> dict[str, Any] | None:
        """A copy with ``count`` randomly chosen genes (at most all that can) each moved one
        choice down (cheaper); None at the minimum. ``genes`` should be those of a decoded
        config (``encode(decode(g))``)."""
        lowerable = [k for k, c in self.genes.items() if c.index(genes[k]) > 0]
        if not lowerable:
            return None
        out = dict(genes)
        for k in rng.sample(lowerable, min(max(1, count), len(lowerable))):
            out[k] = self.genes[k][self.genes[k].index(genes[k]) - 1]
        return out


def _split(key: str) -> list[str]:
    if key == "resolution":
        return ["resolution"]
    section, rest = key.split(":", 1)
    if section == "linear":
        name, field = rest.rsplit(":", 1)
        return [section, name, field]
    return [section, rest]


def _get(cfg: dict, key: str):
    cur: Any = cfg
    for p in _split(key):
        cur = cur[p]
    return copy.deepcopy(cur)


def _set(cfg: dict, key: str, value) -> None:
    parts = _split(key)
    cur = cfg
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
