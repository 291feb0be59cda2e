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

Modules: :mod:`.space` (1, 2), :mod:`.filtering` (3, ``preset="ours"``), :mod:`.triples`
(3, ``preset="paper"``), :mod:`.sampling` (4), :mod:`.search` (:func:`flora_search`),
:mod:`.recipe` (:func:`train_flora`); the helpers every recipe shares are in
:mod:`supernet_kernels.recipes.common` (also importable from here).
"""

from ..common import as_batches, batch_inputs, fixed_space, make_trainer, model_output
from .filtering import block_groups, distill_score, filter_candidates
from .recipe import train_flora
from .sampling import FloraSampler
from .search import flora_search
from .space import EIGHTHS, FACTORIZED_ROLES, RATIOS_BY_WIDTH, SIXTHS, flora_space, rank_choices
from .triples import filter_triples, keep_rule, kept_fraction

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
    # shared by every recipe (recipes.common), importable from here as before
    "FACTORIZED_ROLES",
    "RATIOS_BY_WIDTH",
    "as_batches",
    "batch_inputs",
    "fixed_space",
    "make_trainer",
    "model_output",
]
