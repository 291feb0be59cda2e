"""FLORA: fine-grained low-rank architecture search for vision transformers (Chang et al.,
WACV 2024), as a recipe over :func:`supernet_kernels.supernet.convert` and the trainer.

The recipe, step by step:

1. **Space** (:func:`flora_space`): attention qkv, MLP fc1 and fc2 of every block are factorized
   with rank choices = ratios of min(in, out): {1/8, 2/8, ..., 6/8, 1} for DeiT-B-like models,
   sixths {1/6, ..., 4/6, 1} for DeiT-S (embedding width 384). The ratio just below 1 (7/8, 5/6)
   is left out: a rank-r factorization costs r * (in + out) per token, which for the MLP layers
   (in:out = 1:4) exceeds the dense in * out from r/min(in, out) = 0.8 on, so those choices
   would be bigger than the dense layer. Attention proj stays dense 16-bit. Depth, MLP width and
   resolution are fixed (FLORA searches ranks only).
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
4. **Low-rank-aware sampling** (:class:`FloraSampler`): each step trains one random subnet whose
   rank choice per layer is drawn with probability proportional to 1 / (rank / full rank), so
   the low ranks, which are hurt most by weight sharing, get more updates; the loss is
   distillation from the uncompressed teacher (FLORA's public code).

:func:`train_flora` runs all of it and returns ``(supernet, history)``.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Iterable, Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from ..supernet import Supernet, convert
from ..supernet import families as fam

EIGHTHS = tuple(Fraction(i, 8) for i in (1, 2, 3, 4, 5, 6, 8))
SIXTHS = tuple(Fraction(i, 6) for i in (1, 2, 3, 4, 6))
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

    def sample(self, rng: random.Random, supernet: Supernet) -> dict:
        cfg = supernet.max_config()
        for n, (ranks, probs) in self.choice_weights(supernet).items():
            cfg["linear"][n]["rank"] = rng.choices(ranks, weights=probs)[0]
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


# --------------------------------------------------------------------------- the recipe
def train_flora(
    model: nn.Module,
    train_data,
    *,
    task=None,
    steps: int = 1000,
    lr: float = 1e-4,
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
    **train_kwargs,
) -> tuple[Supernet, dict]:
    """FLORA end to end on ``model`` (a timm ViT / DeiT or any model of nn.Linear layers).

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


__all__ = [
    "EIGHTHS",
    "SIXTHS",
    "FloraSampler",
    "block_groups",
    "distill_score",
    "filter_candidates",
    "flora_space",
    "rank_choices",
    "train_flora",
]
