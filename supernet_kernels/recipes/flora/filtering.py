"""Low-rank-aware candidate filtering (step 3 of the recipe, ``preset="ours"``): per block,
score each rank choice of each layer by its distillation loss against the teacher and keep
those within a tolerance of full rank (:func:`filter_candidates`)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ...supernet import Supernet
from ..common import _to, as_batches, make_trainer, model_output
from .sampling import _BlockSampler, _factorized


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


def _per_block(
    supernet: Supernet,
    task,
    data,
    teacher: nn.Module | None,
    layers: dict,
    batches: list,
    score_block: Callable,
    *,
    sampler: Callable,
    steps_per_block: int,
    restore: bool,
    seed: int,
    **trainer_kwargs,
) -> None:
    """The loop both filters run: for each block group of ``layers`` (its weights put back
    first when ``restore``), ``steps_per_block`` trainer steps on ``data`` with
    ``sampler(names)`` drawing the subnets (distilled from ``teacher`` where there is one),
    then the supernet in eval mode and ``score_block(block, names, full_cfg, references)``,
    references being what its choices are scored against on ``batches``: the teacher's
    outputs, or without a teacher the largest subnet's after the block's training. Weights
    (``restore``), active config and mode are put back at the end, also on an error."""
    saved_state = copy.deepcopy(supernet.state_dict()) if restore else None
    saved_cfg = supernet.active_config()
    was_training = supernet.training
    full_cfg = supernet.max_config()
    try:
        if teacher is not None:
            teacher.eval()
            with torch.no_grad():
                teacher_outs = [model_output(teacher, b, task) for b in batches]
        for gi, (block, names) in enumerate(block_groups(supernet, layers).items()):
            if saved_state is not None:
                supernet.load_state_dict(saved_state)
            if steps_per_block > 0:
                trainer = make_trainer(
                    supernet,
                    task,
                    data,
                    steps=steps_per_block,
                    sampler=sampler(names),
                    teacher=teacher,
                    distill="teacher" if teacher is not None else "none",
                    seed=seed + gi,
                    **trainer_kwargs,
                )
                trainer.train()
            supernet.eval()
            if teacher is None:
                supernet.set_active(full_cfg)
                with torch.no_grad():
                    teacher_outs = [model_output(supernet, b, task) for b in batches]
            score_block(block, names, full_cfg, teacher_outs)
    finally:
        if saved_state is not None:
            supernet.load_state_dict(saved_state)
        supernet.set_active(saved_cfg)
        supernet.train(was_training)


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
    scores: dict[str, dict[int, float]] = {}

    def score_block(block, names, full_cfg, teacher_outs):
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

    _per_block(
        supernet,
        task,
        data,
        teacher,
        layers,
        batches,
        score_block,
        sampler=lambda names: _BlockSampler({n: layers[n] for n in names}),
        steps_per_block=steps_per_block,
        restore=restore,
        seed=seed,
        lr=lr,
        batch_size=batch_size,
        device=device,
        **train_kwargs,
    )
    return (space, scores) if return_scores else space
