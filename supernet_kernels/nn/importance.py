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

Attention heads are ordered the same way (:func:`reorder_heads`): a head's units are its rows in
each of q, k and v of the fused ``qkv`` layer and its input columns of ``proj``; a head's score
is the MLP measure summed over its units (:func:`magnitude_head_importance`,
:func:`activation_head_importance`), and whole heads move, so a prefix of h heads keeps the h
best.
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


def _input_norms(
    layers: tuple[nn.Module, ...], batches_fn: Callable[[], object], where: str, what: str
) -> list[torch.Tensor]:
    """Run ``batches_fn()`` once with forward pre-hooks on ``layers``; return, per layer, the L2
    norm over all tokens of each of its input features (float64, CPU). The hooks are removed
    afterwards, also on error."""
    if not callable(batches_fn):
        raise TypeError(
            f"{where}: batches_fn must be a callable that runs the model on a few batches, got "
            f"{type(batches_fn).__name__}"
        )
    sq = [torch.zeros(layer.in_features, dtype=torch.float64) for layer in layers]

    def make_hook(i):
        def hook(module, args, kwargs=None):
            x = args[0].detach()
            k = x.shape[-1]
            sq[i][:k] += x.reshape(-1, k).to(torch.float64).square().sum(0).cpu()

        return hook

    handles = [layer.register_forward_pre_hook(make_hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            batches_fn()
    finally:
        for h in handles:
            h.remove()
    if not any((t > 0).any() for t in sq):
        raise RuntimeError(f"{where}: batches_fn() did not run {what} (no activations seen)")
    return [t.sqrt() for t in sq]


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
    _hidden(fc1, fc2, "activation_importance")
    x_norm, h_norm = _input_norms((fc1, fc2), batches_fn, "activation_importance", "fc1 / fc2")
    w1 = full_weight(fc1).to(torch.float64).cpu()
    w2 = full_weight(fc2).to(torch.float64).cpu()
    score = w1.abs() @ x_norm + w2.abs().sum(0) * h_norm
    return score.to(device=next(fc1.parameters()).device, dtype=torch.float32)


# --------------------------------------------------------------------------- attention heads
def _head_dims(qkv, proj, num_heads, where: str) -> tuple[int, int]:
    """(attention width A = num_heads * head_dim, head_dim) of a fused qkv (out 3A) and a proj
    (in A)."""
    _check_layer(qkv, f"{where}: qkv")
    _check_layer(proj, f"{where}: proj")
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
        raise ValueError(f"{where}: num_heads must be an int >= 1, got {num_heads!r}")
    width = proj.in_features
    if qkv.out_features != 3 * width or width % num_heads:
        raise ValueError(
            f"{where}: qkv.out_features ({qkv.out_features}) must be 3 * proj.in_features "
            f"({width}), and that a multiple of num_heads ({num_heads})"
        )
    return width, width // num_heads


def magnitude_head_importance(qkv: nn.Module, proj: nn.Module, num_heads: int) -> torch.Tensor:
    """The default head score: :func:`magnitude_importance` summed over the head's units, i.e.
    ||W_qkv[rows of head h in q, k and v]||_1 + ||W_proj[:, columns of head h]||_1 (float32,
    size num_heads). qkv rows in timm / segment-anything's order [q heads | k heads | v heads]."""
    width, _ = _head_dims(qkv, proj, num_heads, "magnitude_head_importance")
    rows = full_weight(qkv).float().abs().sum(1).reshape(3, width).sum(0)
    cols = full_weight(proj).float().abs().sum(0)
    return (rows + cols).reshape(num_heads, -1).sum(1)


def activation_head_importance(
    qkv: nn.Module, proj: nn.Module, num_heads: int, batches_fn: Callable[[], object]
) -> torch.Tensor:
    """:func:`activation_importance` summed over each head's units: ``batches_fn()`` runs the
    model once; with x the input of qkv and o the attention output (proj's input), unit j of
    the attention width scores sum over q, k, v rows r of j of sum_i |W_qkv[r, i]| * ||x_i||,
    plus sum_o |W_proj[o, j]| * ||o_j||; a head's score is the sum over its head_dim units."""
    width, _ = _head_dims(qkv, proj, num_heads, "activation_head_importance")
    x_norm, o_norm = _input_norms(
        (qkv, proj), batches_fn, "activation_head_importance", "qkv / proj"
    )
    w1 = full_weight(qkv).to(torch.float64).cpu()
    w2 = full_weight(proj).to(torch.float64).cpu()
    unit = (w1.abs() @ x_norm).reshape(3, width).sum(0) + w2.abs().sum(0) * o_norm
    score = unit.reshape(num_heads, -1).sum(1)
    return score.to(device=next(qkv.parameters()).device, dtype=torch.float32)


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


HeadImportanceFn = Callable[[nn.Module, nn.Module, int], torch.Tensor]


def reorder_heads(
    qkv: nn.Module,
    proj: nn.Module,
    num_heads: int,
    importance: torch.Tensor | HeadImportanceFn | None = None,
) -> torch.Tensor:
    """Sort attention heads by importance, descending, and lay qkv's rows out head-major, in
    place; return the head permutation (new head i is old head perm[i]).

    ``qkv`` rows go from timm / segment-anything's order [q heads | k heads | v heads] to
    [head 0: q k v | head 1: q k v | ...] (best head first), so the first h heads' q, k and v are
    the prefix of 3 * h * head_dim rows that an elastic ``out`` slices; the module computing
    attention must split that layout (``qkv_layout = "head"`` in
    :mod:`~supernet_kernels.supernet.attention`). ``proj``'s input columns follow the heads, so
    a prefix of h * head_dim columns consumes them. head_dim blocks stay intact, so per-head
    parts (q / k norms, SAM's relative-position tables, which all heads share) need no change.

    ``importance``: a tensor of size num_heads, a callable ``(qkv, proj, num_heads) -> tensor``
    (:func:`magnitude_head_importance`, the default when None, a ``functools.partial`` of
    :func:`activation_head_importance`, or a user hook). Ties keep their original order.
    """
    width, head_dim = _head_dims(qkv, proj, num_heads, "reorder_heads")
    if importance is None:
        importance = magnitude_head_importance
    scores = importance(qkv, proj, num_heads) if callable(importance) else importance
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or scores.numel() != num_heads:
        what = (
            f"shape {tuple(scores.shape)}"
            if isinstance(scores, torch.Tensor)
            else type(scores).__name__
        )
        raise ValueError(
            f"reorder_heads: importance must be a 1-D tensor of size num_heads={num_heads}, "
            f"got {what}"
        )
    if not torch.isfinite(scores).all():
        raise ValueError("reorder_heads: importance has NaN or inf entries")
    perm = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    units = perm[:, None] * head_dim + torch.arange(head_dim)  # (heads, head_dim), old units
    sections = torch.arange(3)[None, :, None] * width  # q, k, v offsets
    permute_outputs(qkv, (sections + units[:, None, :]).reshape(-1))
    permute_inputs(proj, units.reshape(-1))
    return perm
