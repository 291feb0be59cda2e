"""The recipes' settings as data: ``preset("flora", "paper")`` and friends.

Each recipe has two presets:

* ``"paper"``: the published settings, as far as they are published (FLORA and SuperSAM: their
  public code; mixed-precision LoRA: the paper, which ships no code). Where the source is
  silent, the field's comment says so and what we chose.
* ``"ours"``: our defaults, where we deviate on purpose (each deviation says why).

A preset is a frozen dataclass: read it, and override fields with
``dataclasses.replace(p, field=value)`` or ``preset("flora", "paper", generations=5)``. The
recipes take ``preset=`` (a name or an instance) and read every setting from it; explicit
keyword arguments of a recipe override the preset's fields of the same name.

Numbers below and where they come from:

FLORA (shadowpa0327/FLORA: ``configs/lr_deit/*``, ``evolution_search.py``,
``nas_utils/*``):
  ratios DeiT-B {1/8, 2/8, 3/8, 4/8, 5/8, 6/8, 1} (no 7/8), DeiT-S {1/6, 2/6, 3/6, 4/6, 5/6, 1};
  factorized per block: attention qkv, MLP fc1, fc2 (proj dense); sampling weight of a
  block's (qkv, fc1, fc2) triple = 1 / product of its ratios; one subnet per step distilled
  from the uncompressed model's logits (no label loss); supernet training lr 7.5e-5,
  weight decay 1e-2, 300 epochs (5 warm-up), min lr 5e-7. Candidate filtering
  ("search_space_searching"): a local supernet per block trained 20 epochs (3 warm-up) at
  lr 7.5e-6 with uniform sampling on 35% of the training set, scored on 50% of the
  validation set. Evolution: 20 generations, population 50, top 10, 25 mutations (each
  block's triple redrawn with probability 0.2), 25 crossovers (each rank from either
  parent), initial population stratified by cost (each block's triples binned by the sum of
  their ratios into 9 bins, bins assigned to blocks so that the total bin index is uniform),
  candidates outside the [min, max] FLOPs window rejected.
SuperSAM (wmabebe/OFM_SAM):
  SAM ViT-B; blocks 1, 2, 5, 6, 9 each dropped with probability 0.5; MLP hidden widths
  {768, 1020, 1536, 2304} of 3072 for random subnets of blocks 1-11, block 0 at full width;
  the largest subnet at full width everywhere; sandwich (largest, smallest, one random) with
  one optimizer step per subnet; Dice loss against the ground truth masks, mask decoder
  trained; neuron importance |W| x input activation norm; subnets found by OpenTuner.
Mixed-precision LoRA (arXiv 2403.20080, no code):
  bit-widths per layer together with resolution, width and depth; frozen base with LoRA;
  progressive training from high to low bits; learned step sizes; ~95% BitOPs reduction on
  SAM. Stage boundaries, the exact bit sets, LoRA rank and learning rate are not given in
  the abstract; the values below are ours and say so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction

EIGHTHS_NO_7 = tuple(Fraction(i, 8) for i in (1, 2, 3, 4, 5, 6, 8))
SIXTHS_ALL = tuple(Fraction(i, 6) for i in (1, 2, 3, 4, 5, 6))


# --------------------------------------------------------------------------- FLORA
@dataclass(frozen=True)
class FloraPreset:
    """FLORA's settings (module doc). Epoch counts are the published schedule; the recipes
    take step counts (``steps``, ``filter_steps_per_block``): a script converts, e.g. steps =
    epochs * len(train) / batch size."""

    #: rank ratios of min(in, out) for DeiT-B (embedding 768) and other widths
    ratios_deit_b: tuple = EIGHTHS_NO_7
    #: DeiT-S (embedding 384): sixths, 5/6 included (its factorization runs dense: the layer
    #: never costs more than the original, see ElasticLinear._factors_cheaper)
    ratios_deit_s: tuple = SIXTHS_ALL
    #: the layers of a block whose ranks form one joint choice (attention proj stays dense)
    block_roles: tuple = ("qkv", "fc1", "fc2")
    #: sampling weight of a kept triple: "inverse_product" = 1 / (r_qkv * r_fc1 * r_fc2)
    sampling: str = "inverse_product"
    num_random: int = 1  # subnets per training step
    #: loss weights: FLORA trains on distillation from the teacher's logits alone
    label_weight: float = 0.0
    distill_weight: float = 1.0
    temperature: float = 1.0  # FLORA's soft-target cross-entropy, T = 1
    lr: float = 7.5e-5
    weight_decay: float = 1e-2
    min_lr: float = 5e-7
    epochs: int = 300
    warmup_epochs: int = 5
    # filtering (local supernet of one block at a time)
    filter_sampling: str = "uniform"
    filter_train_fraction: float = 0.35
    filter_val_fraction: float = 0.5
    filter_epochs: int = 20
    filter_warmup_epochs: int = 3
    filter_lr: float = 7.5e-6
    #: keep rule (ours; FLORA ships its kept lists as pickles and no rule): the block's
    #: triples are sorted by cost and cut into ``keep_bins`` equal-count bins; bin i (cheapest
    #: first) keeps its lowest-loss fraction keep_fraction_cheap + (keep_fraction_costly -
    #: keep_fraction_cheap) * i / (bins - 1) (linear), 30% on average, more among cheap
    #: triples; the full triple is always kept.
    keep_fraction_cheap: float = 0.45
    keep_fraction_costly: float = 0.15
    keep_bins: int = 3
    # search
    generations: int = 20
    population: int = 50
    parents: int = 10  # "top 10"
    mutations: int = 25
    mutate_prob: float = 0.2  # per block
    crossovers: int = 25
    init: str = "stratified"
    init_bins: int = 9
    #: candidates outside the window are rejected (redrawn), never repaired
    out_of_window: str = "reject"
    objective: str = "macs"  # FLORA's FLOPs (MACs) of the subnet


# --------------------------------------------------------------------------- SuperSAM
@dataclass(frozen=True)
class SuperSAMPreset:
    """SuperSAM's settings (module doc)."""

    drop_blocks: tuple = (1, 2, 5, 6, 9)
    drop_prob: float = 0.5
    #: widths of random subnets (of SAM ViT-B's 3072; scaled to other hidden sizes)
    random_widths: tuple = (768, 1020, 1536, 2304)
    full_width: int = 3072
    #: blocks whose MLP stays at full width in every subnet
    fixed_full_width_blocks: tuple = (0,)
    sandwich: tuple = ("largest", "smallest", "random")
    num_random: int = 1
    #: one optimizer step per subnet of the sandwich (not one summed step)
    step_per_subnet: bool = True
    #: segmentation loss weights: Dice only
    dice_weight: float = 1.0
    focal_weight: float = 0.0
    iou_weight: float = 0.0
    train_decoder: bool = True
    distill: str = "none"
    importance: str = "activation"  # |W| x input activation norm
    #: the paper's autotuner is OpenTuner; we stand in Optuna (TPE by default, "cmaes" too):
    #: OpenTuner is unmaintained and not installable on Python 3.11
    tuner: str = "tpe"
    tuner_trials: int = 100  # not published: ours
    lr: float = 1e-4  # not published for all datasets: ours
    batch_size: int = 4  # ours (one GPU)


# --------------------------------------------------------------------------- MP-LoRA
@dataclass(frozen=True)
class MPLoRAPreset:
    """Mixed-precision LoRA supernet settings (module doc). The paper (no public code) names
    the operators searched (resolution, feature size / width, depth, bit-widths) and the
    training scheme (LoRA on a frozen base, progressive, learned step sizes); the numbers are
    ours unless marked."""

    #: weight bits per linear (W2 is what a ~95% BitOPs reduction needs; ours)
    w_bits: tuple = (2, 3, 4, 8)
    #: activation bits per linear (paper: searched; the set is ours)
    a_bits: tuple = (4, 8, 16)
    #: bits of the attention matmul operands Q, K, V and the probabilities P, per attention
    #: module (one choice for all four; ours)
    attn_bits: tuple = (4, 8, 16)
    #: elastic depth: blocks that may be dropped (SAM ViT-B: every block but the first, the
    #: last and the global-attention ones 2, 5, 8, 11; ours)
    drop_blocks: tuple | None = None
    #: MLP widths as fractions of the hidden size (ours)
    mlp_fractions: tuple = (0.25, 0.5, 0.75, 1.0)
    #: resolutions as fractions of the native one (families with elastic resolution: timm
    #: ViT; SAM's resolution is fixed, see the README)
    resolution_fractions: tuple = (0.75, 1.0)
    lora_rank: int = 8
    #: one adapter per weight-bit group (paper: a shared adapter interferes between bits; the
    #: grouping is ours): {group name: bits}
    adapter_groups: tuple = ((8,), (3, 4), (2,))
    lsq: bool = True  # learned step sizes for weights and activations
    #: progressive schedule: stages widen the bit set from high to low; stage i starts at
    #: fraction boundaries[i] of the steps (ours)
    stages: tuple = ((8,), (4, 8), (2, 3, 4, 8))
    stage_boundaries: tuple = (0.0, 0.25, 0.5)
    num_random: int = 2
    lr: float = 1e-3
    distill: str = "teacher"


PRESETS: dict[str, dict[str, object]] = {
    "flora": {
        "paper": FloraPreset(),
        # Ours: label loss added to distillation (weight 1): the labels add signal where the
        # teacher is soft (label smoothing, small data); not yet measured against FLORA's
        # distillation alone. Repair instead of rejection: a candidate outside the budget is
        # moved inside it rather than drawn again (fewer wasted profiles; upper bound only).
        "ours": FloraPreset(label_weight=1.0, lr=1e-4, weight_decay=0.05, out_of_window="repair"),
    },
    "supersam": {
        "paper": SuperSAMPreset(),
        # Ours: full width offered everywhere, summed sandwich step, focal + Dice + IoU with
        # in-place distillation and a frozen decoder: the decoder stays the pretrained one so
        # every subnet plugs into the stock SAM (no decoder per supernet).
        "ours": SuperSAMPreset(
            random_widths=(768, 1020, 1536, 2304, 3072),
            fixed_full_width_blocks=(),
            step_per_subnet=False,
            focal_weight=20.0,
            iou_weight=1.0,
            train_decoder=False,
            distill="largest",
        ),
    },
    "mplora": {
        "paper": MPLoRAPreset(),
        # Ours: weight-only quantization (activations 16 bits), one shared adapter, min-max
        # scales: every subnet extracts to kernels that exist today (W2-W8 A16 / W8A8).
        "ours": MPLoRAPreset(
            a_bits=(16,),
            attn_bits=(16,),
            mlp_fractions=(1.0,),
            resolution_fractions=(1.0,),
            adapter_groups=((2, 3, 4, 8),),
            lsq=False,
            stages=((8,), (4, 8), (2, 3, 4, 8)),
            stage_boundaries=(0.0, 1 / 3, 2 / 3),
            num_random=1,
        ),
    },
}


def preset(recipe: str, name="paper", **overrides):
    """The preset ``name`` ("paper" or "ours", or a preset instance, returned with the
    overrides applied) of ``recipe`` ("flora", "supersam", "mplora")."""
    if recipe not in PRESETS:
        raise ValueError(f"preset: recipe must be one of {list(PRESETS)}, got {recipe!r}")
    if isinstance(name, str):
        if name not in PRESETS[recipe]:
            raise ValueError(f"preset: {recipe} has presets {list(PRESETS[recipe])}, got {name!r}")
        p = PRESETS[recipe][name]
    elif dataclasses.is_dataclass(name):
        p = name
    else:
        raise TypeError(f"preset: name must be a preset name or instance, got {type(name)}")
    known = {f.name for f in dataclasses.fields(p)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise TypeError(f"preset: {type(p).__name__} has no fields {bad}")
    return dataclasses.replace(p, **overrides) if overrides else p


__all__ = ["PRESETS", "FloraPreset", "MPLoRAPreset", "SuperSAMPreset", "preset"]
