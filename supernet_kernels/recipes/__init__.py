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
"""

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
    mplora_supernet,
    train_mplora,
)
from .presets import FloraPreset, MPLoRAPreset, SuperSAMPreset, preset
from .supersam import SuperSAMSampler, supersam_search, supersam_space, train_supersam

__all__ = [
    "FloraPreset",
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
