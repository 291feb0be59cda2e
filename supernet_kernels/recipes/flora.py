"""FLORA: fine-grained low-rank architecture search for vision transformers (Chang et al.,
WACV 2024), as a recipe over :func:`supernet_kernels.supernet.convert` and the trainer.

The recipe, step by step:

1. **Space** (:func:`flora_space`): attention qkv, MLP fc1 and fc2 of every block are factorized
   with rank choices = ratios of min(in, out), as published: {1/8, 2/8, ..., 6/8, 1} for
   DeiT-B-like models (no 7/8), sixths {1/6, ..., 5/6, 1} for DeiT-S (embedding width 384). A
   rank whose factors would cost more than the dense layer (r * (in + out) > in * out, e.g.
   5/6 of an MLP layer) runs as one dense weight, so no choice costs more than the original.
   Attention proj stays dense 16-bit. Depth, MLP width and resolution are fixed (FLORA
   searches ranks only).
2. **SVD weight inheritance**: ``convert`` builds each factorized layer from the SVD of its
   weight, components ordered by singular value, so every rank r starts as the best rank-r
   approximation and full rank reproduces the model.
3. **Low-rank-aware candidate filtering** (:func:`filter_candidates`), per block: train briefly
   with only that block's rank choices sampled (every other block at full rank), then score
   each choice of each of the block's layers by its distillation loss against the teacher on
   held-out batches (that layer at the choice, everything else at full rank). The rule (FLORA's
   public code leaves it undocumented; this is ours):

       keep rank r of layer L  iff  loss(L = r) <= (1 + tau) * loss(full rank) + atol

   with tau = 0.5 and atol = 0 by default; full rank is always kept. ``keep=k`` additionally
   caps a layer at its k lowest-loss passing choices (full rank included). The loss is the
   soft-target cross-entropy -sum softmax(t / T) log_softmax(s / T) for logits (2-D outputs),
   the task's distillation loss (SAM: BCE against the teacher's mask probabilities) or the mean
   squared error otherwise (:func:`distill_score`). The soft-target cross-entropy is the KL
   divergence plus the teacher's entropy, so the full-rank loss is not ~0 and a relative
   tolerance is meaningful; with a soft teacher (label smoothing, hard data) the entropy
   dominates and the rule keeps more: lower ``tau`` there. Weights trained during filtering
   are discarded (``restore=True``): filtering only decides the space.
   :func:`filter_triples` is FLORA's own filter (``preset="paper"``): per block, a local
   supernet (only that block's (qkv, fc1, fc2) rank triple sampled, uniformly, the rest at
   full rank) trained on a fraction of the data, every joint triple scored, and the keep rule
   of :class:`~.presets.FloraPreset` (about 30% kept, more among cheap triples) applied; the
   result is a restricted space whose ``joint`` section lists each block's kept triples
   (cheapest first), which :class:`FloraSampler` and :func:`~supernet_kernels.search.search`
   both take.
4. **Low-rank-aware sampling** (:class:`FloraSampler`): each step trains one random subnet whose
   rank choice per layer is drawn with probability proportional to 1 / (rank / full rank), so
   the low ranks, which are hurt most by weight sharing, get more updates; the loss is
   distillation from the uncompressed teacher (FLORA's public code).

:func:`train_flora` runs all of it and returns ``(supernet, history)``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import random
from collections.abc import Iterable, Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from ..supernet import Supernet, convert
from ..supernet import families as fam

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


# --------------------------------------------------------------------------- shared helpers
# (used by all recipes: supersam.py and mplora.py import them from here)
def fixed_space(model: nn.Module, lay: fam.Layout | None = None) -> dict:
    """A ``convert(space=...)`` override fixing every block, MLP width, head count and the
    resolution at their largest (a recipe then adds the dimensions it searches)."""
    lay = lay if lay is not None else fam.layout(model)
    mods = dict(model.named_modules())
    space: dict = {
        "depth": {b: [True] for b in lay.blocks},
        "mlp": {m: [mods[a].out_features] for m, (a, _) in lay.mlps.items()},
        "heads": {a: [h] for a, h in lay.heads.items()},
        "linear": {},
    }
    if lay.resolution is not None:
        space["resolution"] = None
    return space


def batch_inputs(batch):
    """The model input of a batch: the first element of a tuple / list, ``batch["image"]`` (or
    the first tensor) of a dict, the batch itself otherwise."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        if "image" in batch:
            return batch["image"]
        if "images" in batch:
            return batch["images"]
        return next(v for v in batch.values() if isinstance(v, torch.Tensor))
    return batch


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def model_output(model: nn.Module, batch, task=None):
    """``model``'s output on a (collated, prepared) batch: ``task.forward(model, batch)`` on the
    model's device where a task is given, else ``model(batch_inputs(batch))``."""
    dev = _device_of(model)
    if task is not None:
        return task.forward(model, task.to_device(batch, dev))
    return model(_to(batch_inputs(batch), dev))


def as_batches(data, n: int, batch_size: int = 32, task=None, seed: int = 0) -> list:
    """The first ``n`` batches of ``data``: a map-style dataset (a list of samples too) is
    batched in order with ``task.collate``; a DataLoader or any other iterable yields collated
    batches. Each batch goes through ``task.prepare`` with a generator seeded ``seed`` (SAM
    prompts drawn once, reproducibly)."""
    if n < 1:
        raise ValueError(f"as_batches: n must be >= 1, got {n}")
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        collate = getattr(task, "collate", None)
        data = torch.utils.data.DataLoader(
            data, batch_size=batch_size, shuffle=False, collate_fn=collate
        )
    out = []
    for b in data:
        out.append(b)
        if len(out) == n:
            break
    if not out:
        raise ValueError("as_batches: the data is empty")
    prepare = getattr(task, "prepare", None)
    if callable(prepare):
        g = torch.Generator().manual_seed(seed)
        out = [prepare(b, g) for b in out]
    return out


def make_trainer(
    supernet: Supernet,
    task,
    data,
    *,
    sampler=None,
    teacher=None,
    trainable=None,
    optimizer=None,
    eval_data=None,
    device=None,
    **config,
):
    """A :class:`~supernet_kernels.train.Trainer` with ``TrainConfig(**config)``; recipe
    defaults progress=False (keys the installed TrainConfig lacks are an error)."""
    from ..train import TrainConfig, Trainer

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config.setdefault("progress", False)
    unknown = sorted(k for k in config if k not in names)
    if unknown:
        raise TypeError(f"recipes: unknown TrainConfig fields {unknown}")
    return Trainer(
        supernet,
        task,
        data,
        TrainConfig(**config),
        sampler=sampler,
        teacher=teacher,
        trainable=trainable,
        optimizer=optimizer,
        eval_data=eval_data,
        device=device,
    )


# --------------------------------------------------------------------------- sampling
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


# --------------------------------------------------------------------------- filtering
def distill_score(student, teacher, temperature: float = 1.0, task=None) -> torch.Tensor:
    """Loss of a student output against the teacher's, for the filtering rule: for 2-D logits
    the soft-target cross-entropy ``-sum softmax(t / T) * log_softmax(s / T)`` (mean over
    rows; = KL + the teacher's entropy, so the full-rank loss is not ~0 and a relative
    tolerance means something); otherwise ``task.distill_loss`` where the task has one (SAM:
    BCE against the teacher's mask probabilities, also a soft-target cross-entropy), else the
    mean squared error of the first tensors."""
    if isinstance(student, torch.Tensor) and student.dim() == 2:
        p = F.softmax(teacher.float() / temperature, dim=-1)
        return -(p * F.log_softmax(student.float() / temperature, dim=-1)).sum(-1).mean()
    fn = getattr(task, "distill_loss", None)
    if callable(fn):
        return fn(student, teacher, temperature)
    s, t = _first_tensor(student), _first_tensor(teacher)
    return F.mse_loss(s.float(), t.float())


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    for v in out:
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"distill_score: no tensor in the output ({type(out).__name__})")


def block_groups(supernet: Supernet, layers: Iterable[str]) -> dict[str, list[str]]:
    """Factorized layers grouped by the block (a ``depth`` entry of the space) holding them;
    a layer in no block is its own group."""
    blocks = list(supernet.space["depth"])
    groups: dict[str, list[str]] = {}
    for n in layers:
        owner = next((b for b in blocks if n.startswith(b + ".")), n)
        groups.setdefault(owner, []).append(n)
    return groups


@torch.no_grad()
def _score(supernet, teacher_outs, batches, cfg, temperature, task) -> float:
    supernet.set_active(cfg)
    total = 0.0
    for b, t in zip(batches, teacher_outs, strict=True):
        out = model_output(supernet, b, task)
        t = _to(t, _first_tensor(out).device)  # the trainer may have moved the supernet
        total += float(distill_score(out, t, temperature, task))
    return total / len(batches)


def filter_candidates(
    supernet: Supernet,
    task,
    data,
    teacher: nn.Module | None,
    *,
    heldout=None,
    heldout_batches: int = 2,
    steps_per_block: int = 20,
    tau: float = 0.5,
    atol: float = 0.0,
    keep: int | None = None,
    temperature: float = 1.0,
    lr: float = 1e-4,
    batch_size: int = 32,
    space: dict | None = None,
    restore: bool = True,
    return_scores: bool = False,
    device=None,
    seed: int = 0,
    **train_kwargs,
):
    """Low-rank-aware candidate filtering (see the module doc for the rule).

    Args:
        supernet: a supernet with factorized layers (e.g. ``convert(model, flora_space(model))``).
        task: the trainer task (``ClassificationTask`` ...); data: training data for the short
            per-block runs (the trainer's formats).
        teacher: the uncompressed model; None uses the supernet's largest subnet.
        heldout: held-out data for scoring (a dataset, or a DataLoader / iterable of collated
            batches), ``heldout_batches`` batches of it; None takes them from ``data`` (not
            held out: pass your own).
        steps_per_block: trainer steps per block (0: score the inherited weights as they are).
        tau, atol: the rule's tolerances; keep: cap on choices kept per layer (None: no cap).
        restore: put the supernet's weights and active config back afterwards.
        train_kwargs: more ``TrainConfig`` fields for the per-block runs.

    Returns the filtered space (the supernet's space, each factorized layer's ``rank`` list cut
    to the kept choices), or ``(space, scores)`` with ``return_scores``: scores =
    {layer: {rank: loss}}.
    """
    if tau < 0 or atol < 0:
        raise ValueError(f"filter_candidates: tau and atol must be >= 0, got {tau}, {atol}")
    if keep is not None and keep < 1:
        raise ValueError(f"filter_candidates: keep must be >= 1 or None, got {keep}")
    space = copy.deepcopy(space if space is not None else supernet.space)
    layers = _factorized(space)
    if not layers:
        raise ValueError("filter_candidates: the space has no factorized layer")
    batches = as_batches(
        heldout if heldout is not None else data, heldout_batches, batch_size, task, seed
    )
    saved_state = copy.deepcopy(supernet.state_dict()) if restore else None
    saved_cfg = supernet.active_config()
    was_training = supernet.training
    full_cfg = supernet.max_config()
    scores: dict[str, dict[int, float]] = {}
    try:
        if teacher is not None:
            teacher.eval()
            with torch.no_grad():
                teacher_outs = [model_output(teacher, b, task) for b in batches]
        for gi, (_, names) in enumerate(block_groups(supernet, layers).items()):
            if saved_state is not None:
                supernet.load_state_dict(saved_state)
            if steps_per_block > 0:
                trainer = make_trainer(
                    supernet,
                    task,
                    data,
                    steps=steps_per_block,
                    lr=lr,
                    batch_size=batch_size,
                    sampler=_BlockSampler({n: layers[n] for n in names}),
                    teacher=teacher,
                    distill="teacher" if teacher is not None else "none",
                    device=device,
                    seed=seed + gi,
                    **train_kwargs,
                )
                trainer.train()
            supernet.eval()
            if teacher is None:
                supernet.set_active(full_cfg)
                with torch.no_grad():
                    teacher_outs = [model_output(supernet, b, task) for b in batches]
            base = _score(supernet, teacher_outs, batches, full_cfg, temperature, task)
            for n in names:
                full = max(layers[n])
                res = {full: base}
                for r in layers[n]:
                    if r == full:
                        continue
                    cfg = copy.deepcopy(full_cfg)
                    cfg["linear"][n]["rank"] = r
                    res[r] = _score(supernet, teacher_outs, batches, cfg, temperature, task)
                scores[n] = res
                limit = (1 + tau) * base + atol
                passed = [r for r in layers[n] if r == full or res[r] <= limit]
                if keep is not None and len(passed) > keep:
                    others = sorted((r for r in passed if r != full), key=lambda r: res[r])
                    passed = sorted([full] + others[: keep - 1])
                space["linear"][n]["rank"] = passed
    finally:
        if saved_state is not None:
            supernet.load_state_dict(saved_state)
        supernet.set_active(saved_cfg)
        supernet.train(was_training)
    return (space, scores) if return_scores else space


# --------------------------------------------------------------------------- FLORA's filter
def _per_token_macs(lin, r: int) -> int:
    n, k = lin.in_features, lin.out_features
    return min(n * k, r * (n + k))


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
    from .presets import preset as get_preset

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
    saved_state = copy.deepcopy(supernet.state_dict()) if restore else None
    saved_cfg = supernet.active_config()
    was_training = supernet.training
    full_cfg = supernet.max_config()
    scores: dict[str, dict[tuple, float]] = {}
    joint: dict[str, dict] = {}
    try:
        if teacher is not None:
            teacher.eval()
            with torch.no_grad():
                teacher_outs = [model_output(teacher, b, task) for b in batches]
        for gi, (block, names) in enumerate(block_groups(supernet, layers).items()):
            if saved_state is not None:
                supernet.load_state_dict(saved_state)
            triples = list(itertools.product(*(layers[n] for n in names)))
            if steps_per_block > 0:
                trainer = make_trainer(
                    supernet,
                    task,
                    local_data,
                    steps=steps_per_block,
                    lr=p.filter_lr,
                    weight_decay=p.weight_decay,
                    batch_size=batch_size,
                    sampler=_JointUniform(names, triples),
                    teacher=teacher,
                    distill="teacher" if teacher is not None else "none",
                    label_weight=p.label_weight if teacher is not None else 1.0,
                    device=device,
                    seed=seed + gi,
                    **train_kwargs,
                )
                trainer.train()
            supernet.eval()
            if teacher is None:
                supernet.set_active(full_cfg)
                with torch.no_grad():
                    teacher_outs = [model_output(supernet, b, task) for b in batches]
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
    finally:
        if saved_state is not None:
            supernet.load_state_dict(saved_state)
        supernet.set_active(saved_cfg)
        supernet.train(was_training)
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
    from ..search import search
    from .presets import preset as get_preset

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


# --------------------------------------------------------------------------- the recipe
def train_flora(
    model: nn.Module,
    train_data,
    *,
    task=None,
    steps: int = 1000,
    lr: float | None = None,
    batch_size: int = 32,
    ratios: Sequence | None = None,
    teacher: nn.Module | None = None,
    filter: bool = True,
    space: dict | None = None,
    filter_steps_per_block: int = 20,
    heldout=None,
    heldout_batches: int = 2,
    tau: float = 0.5,
    atol: float = 0.0,
    keep: int | None = None,
    temperature: float = 1.0,
    num_random: int = 1,
    eval_data=None,
    device=None,
    seed: int = 0,
    resume: bool = False,
    preset=None,
    **train_kwargs,
) -> tuple[Supernet, dict]:
    """FLORA end to end on ``model`` (a timm ViT / DeiT or any model of nn.Linear layers).

    ``preset="paper"`` (or a :class:`~.presets.FloraPreset`) runs FLORA as published: the
    preset's ratios (DeiT-S sixths for embedding width 384), :func:`filter_triples` (block
    level, joint triples, ``filter_steps_per_block`` steps per block), sampling over the kept
    triples by 1 / product of ratios, distillation alone (``label_weight`` 0), the preset's
    lr, weight decay and minimum lr (explicit arguments still win). Without a preset, the
    historical recipe below.

    Defaults: the space of :func:`flora_space` (``ratios``), teacher = a frozen copy of
    ``model`` (the uncompressed model), ``task`` = ``ClassificationTask()``; filtering with
    ``filter_steps_per_block`` steps per block and the rule of the module doc (tau 0.5,
    atol 0); then ``steps`` training steps (AdamW, lr 1e-4, weight decay 0.05, batch 32),
    each on one subnet from :class:`FloraSampler` over the filtered space, loss = distillation
    from the teacher (``distill="teacher"``, temperature 1). ``train_kwargs``: other
    ``TrainConfig`` fields (warmup_steps, amp, checkpoint_dir, ...); ``resume``: continue from
    ``checkpoint_dir`` (``Trainer.train(resume=True)``). ``space``: a (filtered) space to train
    on, e.g. history["space"] of an earlier run; skips the filtering.

    Returns ``(supernet, history)``: history = {"steps": the trainer's per-step logs,
    "space": the filtered space (search it, e.g. FloraSampler(space) or the search tools),
    "scores": {layer: {rank: loss}} of the filtering (empty without filtering)}.
    """
    from ..train import ClassificationTask

    task = task if task is not None else ClassificationTask()
    if teacher is None:
        teacher = copy.deepcopy(model).requires_grad_(False)
    if preset is not None:
        return _train_flora_preset(
            model, train_data, task=task, steps=steps, lr=lr, batch_size=batch_size,
            ratios=ratios, teacher=teacher, filter=filter, space=space,
            filter_steps_per_block=filter_steps_per_block, heldout=heldout,
            heldout_batches=heldout_batches, num_random=num_random, eval_data=eval_data,
            device=device, seed=seed, resume=resume, preset=preset, **train_kwargs,
        )  # fmt: skip
    lr = 1e-4 if lr is None else lr
    supernet = convert(model, space=flora_space(model, ratios))
    supernet.requires_grad_(True)  # the whole supernet trains, even from a frozen model
    scores: dict = {}
    if space is not None:
        space = copy.deepcopy(space)
    elif not filter:
        space = supernet.space
    else:
        space, scores = filter_candidates(
            supernet,
            task,
            train_data,
            teacher,
            heldout=heldout,
            heldout_batches=heldout_batches,
            steps_per_block=filter_steps_per_block,
            tau=tau,
            atol=atol,
            keep=keep,
            temperature=temperature,
            lr=lr,
            batch_size=batch_size,
            return_scores=True,
            device=device,
            seed=seed,
        )
    trainer = make_trainer(
        supernet,
        task,
        train_data,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        sampler=FloraSampler(space, num_random=num_random),
        teacher=teacher,
        distill="teacher",
        temperature=temperature,
        eval_data=eval_data,
        device=device,
        seed=seed,
        **train_kwargs,
    )
    logs = trainer.train(resume=resume)
    return supernet, {"steps": logs, "space": space, "scores": scores}


def _train_flora_preset(
    model, train_data, *, task, steps, lr, batch_size, ratios, teacher, filter, space,
    filter_steps_per_block, heldout, heldout_batches, num_random, eval_data, device, seed,
    resume, preset, **train_kwargs,
):  # fmt: skip
    from .presets import preset as get_preset

    p = get_preset("flora", preset)
    if ratios is None:
        ratios = p.ratios_deit_s if _embed_width(model) == 384 else p.ratios_deit_b
    supernet = convert(model, space=flora_space(model, ratios))
    supernet.requires_grad_(True)
    scores: dict = {}
    if space is not None:
        space = copy.deepcopy(space)
    elif not filter:
        space = supernet.space
    else:
        space, scores = filter_triples(
            supernet, task, train_data, teacher, preset=p, heldout=heldout,
            heldout_batches=heldout_batches, steps_per_block=filter_steps_per_block,
            batch_size=batch_size, device=device, seed=seed,
        )  # fmt: skip
    train_kwargs.setdefault("weight_decay", p.weight_decay)
    train_kwargs.setdefault("min_lr", p.min_lr)
    train_kwargs.setdefault("label_weight", p.label_weight)
    train_kwargs.setdefault("distill_weight", p.distill_weight)
    trainer = make_trainer(
        supernet,
        task,
        train_data,
        steps=steps,
        lr=p.lr if lr is None else lr,
        batch_size=batch_size,
        sampler=FloraSampler(space, num_random=num_random or p.num_random),
        teacher=teacher,
        distill="teacher",
        temperature=p.temperature,
        eval_data=eval_data,
        device=device,
        seed=seed,
        **train_kwargs,
    )
    logs = trainer.train(resume=resume)
    return supernet, {"steps": logs, "space": space, "scores": scores, "preset": p}


__all__ = [
    "EIGHTHS",
    "SIXTHS",
    "FloraSampler",
    "block_groups",
    "distill_score",
    "filter_candidates",
    "filter_triples",
    "flora_search",
    "flora_space",
    "keep_rule",
    "kept_fraction",
    "rank_choices",
    "train_flora",
]
