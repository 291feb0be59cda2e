"""``supernet-kernels quickstart``: the whole flow on a dataset that ships with scikit-learn.

No GPU and no network needed; about 2.5 minutes on 2 CPU cores (``fast=True``: well under a
minute, too few steps to reach the goal, for tests). Steps:

1. **Data**: scikit-learn's digits (1797 grey 8x8 images of 0..9, bundled with the package),
   upsampled to 16x16 (bilinear), repeated to 3 channels, standardized with the training
   split's mean / std; one fixed-seed split: 360 test, 360 validation, 1077 train. The test
   split is used only for the final table; the search sees the validation split only.
2. **Dense model**: a timm ``VisionTransformer`` (img 16, patch 4, embed 64, depth 4, heads 4,
   mlp_ratio 2, 10 classes) trained from scratch (AdamW lr 2e-3, warm-up + cosine, label
   smoothing 0.1, batch 64).
3. **Supernet** (:func:`quickstart_space`): ``convert`` with SuperSAM-style elastic depth
   (blocks 1 and 2 droppable) and MLP width ({32, 40, 64, 96, 128} of 128), and per-layer
   weight precision {4, 8, 16} bits for every attention qkv / proj and MLP fc1 / fc2 (dense
   layers; fake-quantized with straight-through gradients while training, ``QuantLinear``
   on our ``quant_linear`` op once exported). The classifier head stays 16-bit.
   Why this space: we tried both on this model (seed 0, same training and search): the
   default space of ``convert`` (FLORA-style ranks of qkv / fc1 / fc2 + proj bits + the same
   depth / width) found 96.9% test at 47% of the dense BitOPs, its smallest subnet (11.6%)
   95.0%; this space found 96.4% at 40%, and its smallest subnet (12.3% of the BitOPs) kept
   96.1%: the better accuracy / BitOPs front (dense: 96.1%). At embed 64 a rank-r
   factorization of a 64 x 192 or 64 x 128 layer saves MACs only below r ~ 40 of 64, while
   8-bit weights halve a layer's BitOPs at almost no accuracy cost. Ranks do save MACs (CPU
   time); bits save BitOPs and weight bytes.
4. **Supernet training**: the sandwich rule (largest + smallest + 2 random subnets per step),
   each distilled from the trained dense model (``distill="teacher"``, KL at T = 1), AdamW
   lr 5e-4, 20 warm-up steps, cosine, 500 steps of batch 64.
5. **Search**: evolution (population 16, 10 generations) under ``"bitops <= 0.5 * dense"``;
   metric = validation top-1 with the validation cross-entropy as a tie-breaker (1e-3 x NLL
   subtracted: smaller than one image's worth of accuracy, 1 / 360).
6. **Export**: the best member -> ``subnet.safetensors`` (``supernet_kernels.save``), loaded
   back with ``supernet_kernels.load`` and checked against the extracted subnet.
7. **Kernels and latency**: every subnet runs through ``torch.ops.supernet_kernels.*`` (the
   ops dispatch; on the CPU "auto" is the torch backend; the Triton kernels run on the CPU only
   under ``TRITON_INTERPRET=1``, a correctness tool for the tests, so they are not timed here);
   latency = median of repeated batch-1 and batch-64 forwards. With a GPU, the four models
   are timed there too (float16, CUDA-synchronized).
8. **Report**: a table (dense / supernet max / supernet min / best found: test and validation
   accuracy, BitOPs, MACs, params, weight bytes, latency), ``summary.json``, ``summary.md``,
   ``accuracy_vs_bitops.png`` (every searched subnet and the four rows), the search front
   (``search/front.json`` ...), and whether the goal -- a subnet at <= 50% of the dense
   BitOPs within 2 points of the dense test accuracy -- was met, and if not, why.

Every number in the table comes from the modules themselves: costs from
:func:`supernet_kernels.cost.profile` of the dense model, the extracted largest / smallest
subnets and the reloaded best subnet at input (1, 3, 16, 16); accuracies from their forwards.

Modules: :mod:`.settings` (the fixed settings), :mod:`.data` (steps 1-2), :mod:`.flow` (the
run, steps 3-7), :mod:`.machine` (the machine, kernel paths, latency), :mod:`.report` (step 8).
"""

from .data import accuracy, load_digits_splits, make_vit, train_dense
from .flow import quickstart_space, run_quickstart
from .machine import kernel_paths, machine_info, measure_latency
from .settings import (
    BUDGET,
    CLASSES,
    DEPTH,
    EMBED,
    FAST,
    FULL,
    GOAL_POINTS,
    GOAL_RATIO,
    HEADS,
    IMG,
    MLP_RATIO,
    N_TEST,
    N_VAL,
    PATCH,
)

__all__ = [
    "BUDGET",
    "CLASSES",
    "DEPTH",
    "EMBED",
    "FAST",
    "FULL",
    "GOAL_POINTS",
    "GOAL_RATIO",
    "HEADS",
    "IMG",
    "MLP_RATIO",
    "N_TEST",
    "N_VAL",
    "PATCH",
    "accuracy",
    "kernel_paths",
    "load_digits_splits",
    "machine_info",
    "make_vit",
    "measure_latency",
    "quickstart_space",
    "run_quickstart",
    "train_dense",
]
