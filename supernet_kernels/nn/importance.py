"""Neuron importance for elastic MLP width: sort hidden units so that a prefix keeps the best.

An MLP ``fc2(act(fc1(x)))`` has hidden units = rows of fc1 (and its bias) = columns of fc2.
Permuting them together leaves the function unchanged; after sorting by importance, descending,
the width-w sub-MLP (fc1 rows :w, fc2 columns :w) keeps the w most important units. This is the
neuron prioritisation of elastic-width supernets (SuperSAM, OFA-style).

Importance functions take ``(fc1, fc2)`` (``nn.Linear`` or
:class:`~supernet_kernels.nn.ElasticLinear`, any mix) and return a 1-D tensor of size hidden;
any callable with that signature works as a user hook in :func:`reorder_mlp`. Weights are read
at full (stored) size: an ``ElasticLinear``'s weight is ``weight`` (dense) or ``u @ v`` at its
largest rank (factorized), with LoRA adapters merged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .elastic import ElasticLinear, check_perm

ImportanceFn = Callable[[nn.Module, nn.Module], torch.Tensor]


def _check_layer(layer, name: str) -> None:
    if not isinstance(layer, (nn.Linear, ElasticLinear)):
        raise TypeError(f"{name} must be an nn.Linear or ElasticLinear, got {type(layer).__name__}")


def _hidden(fc1, fc2, where: str) -> int:
    _check_layer(fc1, f"{where}: fc1")
    _check_layer(fc2, f"{where}: fc2")
    if fc1.out_features != fc2.in_features:
        raise ValueError(
            f"{where}: fc1.out_features ({fc1.out_features}) must equal fc2.in_features "
            f"({fc2.in_features}), the hidden width"
        )
    return fc1.out_features


@torch.no_grad()
def full_weight(layer: nn.Module) -> torch.Tensor:
    """The full-size float weight (out_features, in_features) of an nn.Linear or ElasticLinear
    (factorized: u @ v at the largest rank; LoRA merged). A new tensor, detached."""
    if isinstance(layer, nn.Linear):
        return layer.weight.detach().clone()
    _check_layer(layer, "full_weight: layer")
    w = layer.weight.detach().clone() if layer.max_rank is None else layer.u @ layer.v
    if layer.lora_rank:
        w = w + (layer.lora_b @ layer.lora_a) * layer.lora_scaling
    return w


def magnitude_importance(fc1: nn.Module, fc2: nn.Module) -> torch.Tensor:
    """The default: importance of hidden unit j = ||W_fc1[j, :]||_1 + ||W_fc2[:, j]||_1
    (float32, size hidden)."""
    _hidden(fc1, fc2, "magnitude_importance")
    w1 = full_weight(fc1).float()
    w2 = full_weight(fc2).float()
    return w1.abs().sum(1) + w2.abs().sum(0)


def activation_importance(
    fc1: nn.Module, fc2: nn.Module, batches_fn: Callable[[], object]
) -> torch.Tensor:
    """Activation-aware importance (SuperSAM; Wanda's |W| times input-norm score).

    ``batches_fn()`` runs the model containing fc1 and fc2 on a few batches (its return value is
    ignored), at full width. Forward hooks record the L2 norm over all tokens of each input
    feature of fc1 (``x``) and of fc2 (the hidden activation ``h``). The importance of hidden
    unit j is

        sum_i |W_fc1[j, i]| * ||x_i||  +  sum_o |W_fc2[o, j]| * ||h_j||

    (what unit j draws from the input, plus what it contributes to the output). Runs under
    ``torch.no_grad``; the hooks are removed afterwards, also on error.
    """
    hidden = _hidden(fc1, fc2, "activation_importance")
    if not callable(batches_fn):
        raise TypeError(
            "activation_importance: batches_fn must be a callable that runs the model on a few "
            f"batches, got {type(batches_fn).__name__}"
        )
    sq = {
        "fc1": torch.zeros(fc1.in_features, dtype=torch.float64),
        "fc2": torch.zeros(hidden, dtype=torch.float64),
    }

    def make_hook(key):
        def hook(module, args, kwargs=None):
            x = args[0].detach()
            k = x.shape[-1]
            sq[key][:k] += x.reshape(-1, k).to(torch.float64).square().sum(0).cpu()

        return hook

    handles = [
        fc1.register_forward_pre_hook(make_hook("fc1")),
        fc2.register_forward_pre_hook(make_hook("fc2")),
    ]
    try:
        with torch.no_grad():
            batches_fn()
    finally:
        for h in handles:
            h.remove()
    if not (sq["fc1"] > 0).any() and not (sq["fc2"] > 0).any():
        raise RuntimeError(
            "activation_importance: batches_fn() did not run fc1 / fc2 (no activations seen)"
        )
    w1 = full_weight(fc1).to(torch.float64).cpu()
    w2 = full_weight(fc2).to(torch.float64).cpu()
    score = w1.abs() @ sq["fc1"].sqrt() + w2.abs().sum(0) * sq["fc2"].sqrt()
    return score.to(device=next(fc1.parameters()).device, dtype=torch.float32)


@torch.no_grad()
def permute_outputs(layer: nn.Module, perm: torch.Tensor) -> None:
    """Output neuron i becomes old neuron perm[i], in place (nn.Linear: weight rows and bias;
    ElasticLinear: :meth:`~ElasticLinear.reorder_outputs`)."""
    if isinstance(layer, ElasticLinear):
        layer.reorder_outputs(perm)
        return
    _check_layer(layer, "permute_outputs: layer")
    perm = _check_perm(perm, layer.out_features, "permute_outputs")
    layer.weight.copy_(layer.weight[perm.to(layer.weight.device)])
    if layer.bias is not None:
        layer.bias.copy_(layer.bias[perm.to(layer.bias.device)])


@torch.no_grad()
def permute_inputs(layer: nn.Module, perm: torch.Tensor) -> None:
    """Input feature j becomes old feature perm[j], in place (nn.Linear: weight columns;
    ElasticLinear: :meth:`~ElasticLinear.reorder_inputs`)."""
    if isinstance(layer, ElasticLinear):
        layer.reorder_inputs(perm)
        return
    _check_layer(layer, "permute_inputs: layer")
    perm = _check_perm(perm, layer.in_features, "permute_inputs")
    layer.weight.copy_(layer.weight[:, perm.to(layer.weight.device)])


_check_perm = check_perm  # the checks ElasticLinear.reorder_* apply


def reorder_mlp(
    fc1: nn.Module,
    fc2: nn.Module,
    importance: torch.Tensor | ImportanceFn | None = None,
) -> torch.Tensor:
    """Sort the MLP's hidden units by importance, descending, in place; return the permutation
    (new unit i is old unit perm[i]).

    ``importance``: a 1-D tensor of size hidden, a callable ``(fc1, fc2) -> tensor`` (e.g.
    :func:`magnitude_importance`, a ``functools.partial`` of :func:`activation_importance`, or a
    user hook), or None for :func:`magnitude_importance`. Ties keep their original order. fc1's
    rows (and bias) and fc2's columns move together, so the full-width MLP computes the same
    function (for any elementwise activation between them).
    """
    hidden = _hidden(fc1, fc2, "reorder_mlp")
    if importance is None:
        importance = magnitude_importance
    scores = importance(fc1, fc2) if callable(importance) else importance
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or scores.numel() != hidden:
        what = (
            f"shape {tuple(scores.shape)}"
            if isinstance(scores, torch.Tensor)
            else type(scores).__name__
        )
        raise ValueError(
            f"reorder_mlp: importance must be a 1-D tensor of size hidden={hidden}, got {what}"
        )
    if not torch.isfinite(scores).all():
        raise ValueError("reorder_mlp: importance has NaN or inf entries")
    perm = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    permute_outputs(fc1, perm)
    permute_inputs(fc2, perm)
    return perm
