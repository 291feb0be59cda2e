"""Training recipes from the literature on top of ``convert`` and the trainer.

* :mod:`.flora`: FLORA (low-rank architecture search): :func:`flora_space`,
  :func:`filter_candidates`, :class:`FloraSampler`, :func:`train_flora`;
* :mod:`.supersam`: SuperSAM (elastic depth and MLP width of the SAM image encoder, neuron
  prioritization): :func:`supersam_space`, :class:`SuperSAMSampler`, :func:`train_supersam`;
* :mod:`.mplora`: mixed-precision LoRA on a frozen fake-quantized base, progressive bit-width
  stages: :func:`mplora_supernet`, :class:`ProgressiveBitsSampler`, :func:`train_mplora`,
  :func:`memory_report`.

Each ``train_*`` returns ``(supernet, history)`` with history["steps"] the trainer's logs and
takes ``preset="paper"`` (the published settings) or ``"ours"``: :mod:`.presets`.

:data:`RECIPES` maps each recipe name (the command line's ``--recipe``, the ``recipe`` field of
a supernet.json) to what it changes: the search space convert is asked for, the supernet it
builds itself, the training sampler, the parameters it trains.
"""

from collections.abc import Callable
from dataclasses import dataclass

from ..supernet.store import register_recipe
from .flora import (
    FloraSampler,
    distill_score,
    filter_candidates,
    filter_triples,
    flora_search,
    flora_space,
    keep_rule,
    kept_fraction,
    train_flora,
)
from .mixed import MixedPrecisionSupernet
from .mplora import (
    ProgressiveBitsSampler,
    lora_layers,
    lora_trainable,
    memory_report,
    mplora_space,
    mplora_supernet,
    train_mplora,
)
from .presets import FloraPreset, MPLoRAPreset, SuperSAMPreset, preset
from .supersam import SuperSAMSampler, supersam_search, supersam_space, train_supersam


@dataclass(frozen=True)
class Recipe:
    """What a recipe changes. ``space(model, bits)``: the ``convert(space=...)`` override (None
    for convert's default); None when the recipe is not a way to convert. ``supernet(model,
    doc)``: builds the supernet itself from a supernet.json document (None: ``convert``).
    ``sampler(num_random, steps, distill, drop_prob)``: the training sampler; None when the
    recipe does not train. ``trainable(doc)``: the predicate of trained parameters (None:
    all). ``records``: the supernet.json fields ``supernet`` rebuilds from (``lora_rank``
    among them: the recipe's supernets may hold LoRA adapters)."""

    name: str
    space: Callable | None = None
    supernet: Callable | None = None
    sampler: Callable | None = None
    trainable: Callable | None = None
    records: tuple[str, ...] = ()


def _sandwich(num_random, steps, distill, drop_prob):
    from ..train import SandwichSampler

    return SandwichSampler(num_random)


def _mplora_supernet(model, doc):
    lora = doc.get("lora_rank") or 0
    bits = tuple(doc.get("bits") or (2, 3, 4, 8))
    return mplora_supernet(model, bits=bits, lora_rank=lora or 8, lora=bool(lora))


RECIPES: dict[str, Recipe] = {
    "default": Recipe("default", space=lambda model, bits: None),
    "sandwich": Recipe("sandwich", sampler=_sandwich),
    "flora": Recipe(
        "flora",
        space=lambda model, bits: flora_space(model),
        sampler=lambda num_random, steps, distill, drop_prob: FloraSampler(
            num_random=max(1, num_random), include_largest=distill == "largest"
        ),
    ),
    "supersam": Recipe(
        "supersam",
        space=lambda model, bits: supersam_space(model),
        sampler=lambda num_random, steps, distill, drop_prob: SuperSAMSampler(
            drop_prob, num_random=num_random
        ),
    ),
    "mplora": Recipe(
        "mplora",
        space=lambda model, bits: mplora_space(model, bits),
        supernet=_mplora_supernet,
        sampler=lambda num_random, steps, distill, drop_prob: ProgressiveBitsSampler(
            total_steps=steps, num_random=num_random
        ),
        trainable=lambda doc: lora_trainable if doc.get("lora_rank") else None,
        records=("bits", "lora_rank"),
    ),
}

for _recipe in RECIPES.values():
    register_recipe(_recipe.name, supernet=_recipe.supernet, records=_recipe.records)

__all__ = [
    "FloraPreset",
    "RECIPES",
    "FloraSampler",
    "MPLoRAPreset",
    "MixedPrecisionSupernet",
    "SuperSAMPreset",
    "filter_triples",
    "flora_search",
    "keep_rule",
    "kept_fraction",
    "preset",
    "supersam_search",
    "ProgressiveBitsSampler",
    "Recipe",
    "SuperSAMSampler",
    "distill_score",
    "filter_candidates",
    "flora_space",
    "lora_layers",
    "lora_trainable",
    "memory_report",
    "mplora_supernet",
    "supersam_space",
    "train_flora",
    "train_mplora",
    "train_supersam",
]
