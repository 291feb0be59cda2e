"""The whole FLORA recipe: :func:`train_flora` (space, filtering, low-rank-aware training)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from ...supernet import Supernet, convert
from ..common import make_trainer
from .filtering import filter_candidates
from .sampling import FloraSampler
from .space import _embed_width, flora_space
from .triples import filter_triples


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
    from ...train import ClassificationTask

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
    supernet, space, scores = _supernet_and_space(
        model,
        ratios,
        space,
        filter,
        lambda supernet: filter_candidates(
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
        ),
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


def _supernet_and_space(model, ratios, space, filter, run_filter):
    """The FLORA supernet of ``model`` at ``ratios`` (all of it trainable, even from a frozen
    model) and the space to train it on: ``space`` where given, else the supernet's own
    without ``filter``, else the filter's (``run_filter(supernet)`` returns (space, scores)).
    Returns ``(supernet, space, scores)``."""
    supernet = convert(model, space=flora_space(model, ratios))
    supernet.requires_grad_(True)
    if space is not None:
        return supernet, copy.deepcopy(space), {}
    if not filter:
        return supernet, supernet.space, {}
    space, scores = run_filter(supernet)
    return supernet, space, scores


def _train_flora_preset(
    model, train_data, *, task, steps, lr, batch_size, ratios, teacher, filter, space,
    filter_steps_per_block, heldout, heldout_batches, num_random, eval_data, device, seed,
    resume, preset, **train_kwargs,
):  # fmt: skip
    from ..presets import preset as get_preset

    p = get_preset("flora", preset)
    if ratios is None:
        ratios = p.ratios_deit_s if _embed_width(model) == 384 else p.ratios_deit_b
    supernet, space, scores = _supernet_and_space(
        model,
        ratios,
        space,
        filter,
        lambda supernet: filter_triples(
            supernet, task, train_data, teacher, preset=p, heldout=heldout,
            heldout_batches=heldout_batches, steps_per_block=filter_steps_per_block,
            batch_size=batch_size, device=device, seed=seed,
        ),
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
