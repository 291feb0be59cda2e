"""SuperSAM: a weight-sharing supernet of the SAM image encoder with elastic depth and MLP width
(layer-wise pruning plus neuron prioritization), as a recipe over ``convert`` and the trainer.

* **Space** (:func:`supersam_space`): blocks 1, 2, 5, 6, 9 of SAM ViT-B (``drop_blocks``;
  any set) may be dropped, each with probability 0.5 in random subnets (``drop_prob``: a
  number or {block: p}); every MLP's hidden width takes SuperSAM's choices {768, 1020, 1536,
  2304, 3072} of 3072, scaled to the model's hidden width (w * hidden / 3072, rounded). All
  linears stay dense 16-bit. (Blocks 2 and 5 are global-attention blocks of SAM ViT-B, which
  ``convert``'s default space keeps; SuperSAM's set drops them too.) The recipe works on any
  model whose blocks are ``blocks.{i}`` (a timm ViT as well as the SAM encoder) and on
  Hugging Face transformers SAM and ViT (block i is the i-th layer, e.g.
  ``vision_encoder.layers.{i}``); for a model with fewer blocks the default set keeps the
  indices that exist, minus the first and the last block. ``heads=True`` (not in the paper,
  whose heads are fixed) also makes every attention's head count elastic (convert's default
  choices, half the heads to all; random subnets draw it uniformly).
* **Neuron prioritization**: before training, every MLP's hidden units are sorted by
  :func:`~supernet_kernels.nn.importance.activation_importance` (|W| times the input activation
  norm, over a few calibration batches), so a width-w prefix keeps the w most important units.
  ``convert(importance="activation", calib_batches=...)`` does the reordering.
* **Sampling** (:class:`SuperSAMSampler`): the sandwich rule, per step the largest subnet, the
  smallest (every droppable block dropped, the smallest widths) and ``num_random`` random ones
  (block b dropped with probability p_b, widths uniform); the largest distills into the rest.

:func:`train_supersam` runs it on a segment-anything ``Sam`` or a transformers ``SamModel``
(:class:`~supernet_kernels.train.hf_sam_task.HFSamSegmentationTask`) and returns
``(supernet, history)``.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable

import torch
from torch import nn

from ..supernet import Supernet, convert
from ..supernet import families as fam
from .common import as_batches, batch_inputs, fixed_space, make_trainer

SAM_VIT_B_DROP = (1, 2, 5, 6, 9)
SAM_MLP_WIDTHS = (768, 1020, 1536, 2304, 3072)  # of SAM ViT-B's hidden 3072
SAM_REF_HIDDEN = 3072


def scaled_widths(hidden: int, widths=SAM_MLP_WIDTHS, ref: int = SAM_REF_HIDDEN) -> list[int]:
    """SuperSAM's widths scaled to ``hidden``: round(w * hidden / ref), in 1..hidden."""
    return sorted({min(hidden, max(1, round(w * hidden / ref))) for w in widths})


def _block_names(lay: fam.Layout) -> list[str]:
    """The model's transformer blocks in order: ``blocks.{i}``, or a transformers model's
    layers."""
    if lay.family in ("hf_sam", "hf_vit"):
        return list(lay.blocks)
    return [b for b in lay.blocks if b.startswith("blocks.")]


def default_drop_blocks(n: int) -> list[int]:
    """SAM ViT-B's set (1, 2, 5, 6, 9) restricted to 1 .. n - 2."""
    return [i for i in SAM_VIT_B_DROP if 0 < i < n - 1]


def supersam_space(
    encoder: nn.Module,
    drop_blocks: Iterable[int] | None = None,
    widths: Iterable[int] = SAM_MLP_WIDTHS,
    ref_hidden: int = SAM_REF_HIDDEN,
    full_width_blocks: Iterable[int] = (),
    heads: bool = False,
) -> dict:
    """SuperSAM's space as a ``convert(space=...)`` override: block i droppable for i in
    ``drop_blocks`` (default :func:`default_drop_blocks`), the rest kept; each MLP's widths =
    ``widths`` of ``ref_hidden`` scaled to its hidden size, plus the full width (the largest
    subnet); the MLPs of ``full_width_blocks`` (paper: block 0) at full width only; every
    linear dense 16-bit; the resolution fixed, and the attention heads unless ``heads``."""
    lay = fam.layout(encoder)
    names = _block_names(lay)
    n = len(names)
    drop = default_drop_blocks(n) if drop_blocks is None else sorted(set(drop_blocks))
    bad = [i for i in drop if not 0 <= i < n]
    if bad:
        raise ValueError(f"supersam_space: drop_blocks {bad} out of range 0..{n - 1}")
    space = fixed_space(encoder, lay)
    for i in drop:
        space["depth"][names[i]] = [False, True]
    if heads:
        del space["heads"]  # convert's default: elastic where the model's attention allows
    mods = dict(encoder.named_modules())
    fixed = {f"{names[i]}.mlp" for i in full_width_blocks if 0 <= i < n}
    for m, (a, _) in lay.mlps.items():
        hidden = mods[a].out_features
        if m in fixed:
            space["mlp"][m] = [hidden]
        else:
            space["mlp"][m] = sorted({*scaled_widths(hidden, tuple(widths), ref_hidden), hidden})
    space["linear"] = {n_: {"rank": [None], "w_bits": [16], "a_bits": [16]} for n_ in lay.roles}
    return space


class SuperSAMSampler:
    """Sandwich sampling with per-block drop probabilities: ``[largest, smallest, random x
    num_random]`` (``sandwich=False``: random ones only). A random subnet drops each droppable
    block b with probability ``drop_prob[b]`` (a number applies to all; default 0.5) and draws
    each MLP width uniformly (``random_full_width=False``, SuperSAM's rule: among the widths
    below full) and each elastic head count uniformly; linears stay at their largest choice
    (SuperSAM's are dense).
    Called as ``sampler(step, rng, supernet)``."""

    def __init__(
        self,
        drop_prob: float | dict[str, float] = 0.5,
        num_random: int = 1,
        sandwich=True,
        random_full_width: bool = True,
    ):
        probs = drop_prob.values() if isinstance(drop_prob, dict) else [drop_prob]
        if any(not 0.0 <= p <= 1.0 for p in probs):
            raise ValueError(f"SuperSAMSampler: drop probabilities must be in [0, 1]: {drop_prob}")
        if num_random < 0:
            raise ValueError(f"SuperSAMSampler: num_random must be >= 0, got {num_random}")
        self.drop_prob = copy.deepcopy(drop_prob)
        self.num_random = num_random
        self.sandwich = sandwich
        self.random_full_width = random_full_width

    def prob(self, block: str) -> float:
        if isinstance(self.drop_prob, dict):
            return float(self.drop_prob.get(block, 0.5))
        return float(self.drop_prob)

    def sample(self, rng: random.Random, supernet: Supernet) -> dict:
        sp = supernet.space
        cfg = supernet.max_config()
        for b, choices in sp["depth"].items():
            if False in choices:
                cfg["depth"][b] = not (rng.random() < self.prob(b))
        for m, widths in sp["mlp"].items():
            if not self.random_full_width and len(widths) > 1:
                widths = widths[:-1]  # SuperSAM: random subnets never draw the full width
            cfg["mlp"][m] = rng.choice(widths)
        for a, counts in sp["heads"].items():
            if len(counts) > 1:
                cfg["heads"][a] = rng.choice(counts)
        return cfg

    def __call__(self, step: int, rng: random.Random, supernet: Supernet) -> list[dict]:
        rand = [self.sample(rng, supernet) for _ in range(self.num_random)]
        if not self.sandwich:
            return rand or [supernet.max_config()]
        return [supernet.max_config(), supernet.min_config()] + rand


def prioritize_neurons(encoder: nn.Module, batches: list) -> dict[str, torch.Tensor]:
    """Sort every MLP's hidden units of ``encoder`` (an nn.Module, before conversion) by
    activation importance over ``batches`` (inputs of the encoder), in place; returns
    {mlp: permutation}. ``train_supersam`` lets ``convert`` do the same thing."""
    from ..nn.importance import activation_importance, reorder_mlp

    lay = fam.layout(encoder)

    def run():
        was = encoder.training
        encoder.eval()
        try:
            for b in batches:
                encoder(b)
        finally:
            encoder.train(was)

    perms = {}
    for m, (a, b) in lay.mlps.items():
        fc1, fc2 = encoder.get_submodule(a), encoder.get_submodule(b)
        perms[m] = reorder_mlp(fc1, fc2, lambda x, y: activation_importance(x, y, run))
    return perms


def encoder_calibration(batches: list, task=None) -> list[torch.Tensor]:
    """Encoder inputs of (collated) data batches: SAM's normalization ``(image * 255 - mean) /
    std`` where the task has ``pixel_mean`` / ``pixel_std`` (SegmentationTask), else the
    batches' images."""
    out = []
    for b in batches:
        x = batch_inputs(b)
        mean, std = getattr(task, "pixel_mean", None), getattr(task, "pixel_std", None)
        if mean is not None and std is not None:
            x = (x * 255.0 - mean.to(x)) / std.to(x)
        out.append(x)
    return out


def train_supersam(
    sam_model: nn.Module,
    train_data,
    *,
    task=None,
    steps: int = 1000,
    lr: float = 1e-4,
    batch_size: int = 4,
    drop_blocks: Iterable[int] | None = None,
    widths: Iterable[int] = SAM_MLP_WIDTHS,
    drop_prob: float | dict[str, float] = 0.5,
    num_random: int = 1,
    calib_batches: int = 4,
    prioritize: bool = True,
    distill: str = "largest",
    eval_data=None,
    device=None,
    seed: int = 0,
    resume: bool = False,
    preset=None,
    heads: bool = False,
    **train_kwargs,
) -> tuple[Supernet, dict]:
    """SuperSAM end to end.

    ``preset="paper"`` (or a :class:`~.presets.SuperSAMPreset`): the published settings, see
    :func:`_paper_settings` (block 0's MLP at full width, random subnets never at full width,
    one optimizer step per subnet, Dice loss alone with the mask decoder trained, no
    distillation); explicit arguments that differ from the defaults still win. Without a
    preset, our defaults below.

    ``sam_model``: a segment-anything ``Sam`` (a copy of its ``image_encoder`` becomes the
    supernet; the task, default ``SegmentationTask(sam_model)``, runs ``sam_model``'s prompt
    encoder and mask decoder on the supernet's embeddings, frozen unless the task trains the
    decoder), a transformers ``SamModel`` (a ``SamVisionModel`` holding a copy of its vision
    encoder becomes the supernet, :func:`~supernet_kernels.supernet.hf.vision_model`; default
    task :class:`~supernet_kernels.train.hf_sam_task.HFSamSegmentationTask`), or any other
    model ``convert`` takes whose blocks are ``blocks.{i}`` or transformers layers (a timm or
    transformers ViT; default task ``ClassificationTask()``). ``heads``: elastic head counts
    as well (see the module doc).
    Defaults: the space of :func:`supersam_space`, neuron prioritization over
    ``calib_batches`` batches of ``train_data``, ``steps`` steps of SuperSAMSampler
    (largest + smallest + 1 random, drop probability 0.5), in-place distillation from the
    largest subnet, AdamW lr 1e-4, batch 4. ``train_kwargs``: other ``TrainConfig`` fields;
    ``resume``: continue from ``checkpoint_dir`` (``Trainer.train(resume=True)``).

    Returns ``(supernet, history)``: the supernet of the encoder (``sam_model`` is untouched),
    history = {"steps": per-step logs, "space": the space}.
    """
    from ..supernet import hf
    from ..train import ClassificationTask, SegmentationTask

    encoder = getattr(sam_model, "image_encoder", None)
    is_sam = encoder is not None
    seg_task = SegmentationTask
    if hf.is_sam_model(sam_model):
        from ..train.hf_sam_task import HFSamSegmentationTask

        encoder, is_sam, seg_task = hf.vision_model(sam_model), True, HFSamSegmentationTask
    if not is_sam:
        encoder = sam_model
    full_width_blocks: tuple = ()
    random_full = True
    p = None
    if preset is not None:
        from .presets import preset as get_preset

        p = get_preset("supersam", preset)
        widths = p.random_widths if tuple(widths) == SAM_MLP_WIDTHS else widths
        full_width_blocks = p.fixed_full_width_blocks
        random_full = p.full_width in p.random_widths
        drop_prob = p.drop_prob if drop_prob == 0.5 else drop_prob
        distill = p.distill if distill == "largest" else distill
        train_kwargs.setdefault("step_per_subnet", p.step_per_subnet)
        if drop_blocks is None and tuple(p.drop_blocks) != SAM_VIT_B_DROP:
            drop_blocks = p.drop_blocks  # (the published set itself: default_drop_blocks
            # keeps the indices a smaller model has)
    if task is None:
        if is_sam and p is not None:
            task = seg_task(
                sam_model,
                train_decoder=p.train_decoder,
                focal_weight=p.focal_weight,
                dice_weight=p.dice_weight,
                iou_weight=p.iou_weight,
            )
        else:
            task = seg_task(sam_model) if is_sam else ClassificationTask()
    space = supersam_space(
        encoder, drop_blocks, widths, full_width_blocks=full_width_blocks, heads=heads
    )
    kw = {}
    if prioritize:
        batches = as_batches(train_data, calib_batches, batch_size, task)
        kw = {"importance": "activation", "calib_batches": encoder_calibration(batches, task)}
    supernet = convert(encoder, space=space, **kw)
    supernet.requires_grad_(True)  # the whole encoder supernet trains
    trainer = make_trainer(
        supernet,
        task,
        train_data,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        sampler=SuperSAMSampler(drop_prob, num_random=num_random, random_full_width=random_full),
        distill=distill,
        eval_data=eval_data,
        device=device,
        seed=seed,
        **train_kwargs,
    )
    logs = trainer.train(resume=resume)
    return supernet, {"steps": logs, "space": supernet.space, "task": task, "preset": p}


def supersam_search(
    supernet: Supernet,
    evaluate,
    example_input,
    *,
    budget=None,
    preset=None,
    n_trials: int | None = None,
    seed: int = 0,
    progress: bool = False,
):
    """SuperSAM's subnet search. The paper drives it with OpenTuner (a program autotuner); we
    stand in Optuna's TPE sampler (``preset.tuner``; OpenTuner is unmaintained and does not
    install on Python 3.11): a single-objective tuner over the same categorical space (depth
    of the droppable blocks, MLP widths), the budget as a hard constraint (over-budget trials
    are not evaluated). ``n_trials`` defaults to the preset's ``tuner_trials``."""
    from ..search import search
    from .presets import preset as get_preset

    p = get_preset("supersam", preset if preset is not None else "paper")
    if p.tuner != "tpe":
        raise ValueError(f'supersam_search: tuner {p.tuner!r} is not available (use "tpe")')
    return search(
        supernet,
        evaluate,
        example_input,
        objective="params",
        budget=budget,
        algorithm="tpe",
        n_trials=p.tuner_trials if n_trials is None else n_trials,
        seed=seed,
        progress=progress,
    )


__all__ = [
    "SAM_MLP_WIDTHS",
    "SAM_VIT_B_DROP",
    "SuperSAMSampler",
    "default_drop_blocks",
    "encoder_calibration",
    "prioritize_neurons",
    "scaled_widths",
    "supersam_search",
    "supersam_space",
    "train_supersam",
]
