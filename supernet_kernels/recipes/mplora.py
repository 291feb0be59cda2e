"""Mixed-precision LoRA: one supernet over per-layer weight and activation bit-widths, depth,
MLP width and resolution, trained through LoRA adapters on a frozen, fake-quantized base
(after "Mixed-precision Supernet Training from Vision Foundation Models using Low Rank
Adapter", arXiv 2403.20080; no public code). Settings: :mod:`.presets` (``preset="paper"``
and ``"ours"``).

* **Space** (:func:`mplora_space` + :class:`~.mixed.MixedPrecisionSupernet`): every attention
  qkv / proj and MLP fc1 / fc2 dense with ``w_bits`` choices (paper preset {2, 3, 4, 8});
  activation bits per linear input and per attention module (Q, K, V and the probabilities,
  ``act_bits`` section; paper preset {4, 8, 16}); depth (the family's droppable blocks: SAM
  keeps its first, last and global-attention blocks), MLP width (fractions of the hidden size)
  and resolution (timm ViT only: SAM's position embeddings and windows are tied to 1024).
* **Trainable**: LoRA adapters (one pair per weight-bit group with ``adapter_groups``) and
  the step sizes of the activation quantizers and, with ``lsq``, the weights'
  (:mod:`.mixed`). Everything else stays frozen and bit-identical.
* **Progressive training** (:class:`ProgressiveBitsSampler`), documented schedule: stage i
  starts at step ``boundaries[i]`` (paper preset: at 0, 25% and 50% of the steps) and allows
  the weight bits of ``stages[i]`` ({8} -> {4, 8} -> {2, 3, 4, 8}) and the activation bits at
  least twice the stage's fewest weight bits ({16} -> {8, 16} -> {4, 8, 16}): precision
  comes down gradually, high-precision subnets first settle the adapters. Each step trains the
  sandwich of the current stage (everything at its largest, everything at its smallest within
  the stage, ``num_random`` random subnets; identical configs once), distilled from the
  unquantized teacher.
* **Cost**: BitOPs = MACs x w_bits x a_bits per linear plus the attention matmuls at their
  operand bits (:func:`supernet_kernels.cost.profile`). On SAM ViT-B at 1024 x 1024 the paper
  preset's smallest subnet is 3.0% of the dense fp16 BitOPs (5.0% with every block at full
  width; tests/test_mplora.py), so 5% budgets are searchable; with the attention matmuls at
  16 bits (the "ours" preset) the floor is 34.6%.
* **Memory** (:func:`memory_report`): peak training memory of this recipe vs full fine-tuning
  of the same supernet.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence

import torch
from torch import nn

from ..supernet import Supernet, convert
from ..supernet import families as fam
from .common import fixed_space, make_trainer, model_output
from .mixed import MixedPrecisionSupernet, add_grouped_lora, add_weight_lsq
from .presets import MPLoRAPreset
from .presets import preset as get_preset

DEFAULT_STAGES = ((8,), (8, 4), (8, 4, 3, 2))
DEFAULT_ROLES = ("qkv", "proj", "fc1", "fc2", "generic")
LORA_NAMES = ("lora_a", "lora_b", "lora_bank")
STEP_SIZE_NAMES = ("step", "w_step", "step_size", "a_step", "weight_step", "act_step")


def _widths(hidden: int, fractions) -> list[int]:
    out = set()
    for f in fractions:
        w = hidden * f
        w = round(w / 8) * 8 if hidden >= 64 else round(w)
        out.add(min(hidden, max(1, int(w))))
    return sorted(out)


def mplora_space(
    model: nn.Module,
    bits: Sequence[int],
    roles=DEFAULT_ROLES,
    *,
    drop_blocks: Sequence[int] | None = None,
    mlp_fractions: Sequence[float] = (1.0,),
    resolution_fractions: Sequence[float] = (1.0,),
) -> dict:
    """The ``convert(space=...)`` override: linears of ``roles`` dense with ``w_bits`` =
    ``bits`` (a_bits 16: activation bits live in the ``act_bits`` section); MLP widths
    ``mlp_fractions`` of the hidden size; blocks ``blocks.{i}`` for i in ``drop_blocks``
    droppable (None with more than one MLP fraction: the family's default droppable blocks;
    otherwise none); resolutions ``resolution_fractions`` of the native one (timm ViT)."""
    lay = fam.layout(model)
    space = fixed_space(model, lay)
    mods = dict(model.named_modules())
    for n, role in lay.roles.items():
        if role in roles:
            space["linear"][n] = {"rank": [None], "w_bits": sorted(set(bits)), "a_bits": [16]}
    if tuple(mlp_fractions) != (1.0,):
        for m, (a, _) in lay.mlps.items():
            space["mlp"][m] = _widths(mods[a].out_features, mlp_fractions)
    if drop_blocks is not None:
        for i in drop_blocks:
            if f"blocks.{i}" not in space["depth"]:
                raise ValueError(f"mplora_space: no block blocks.{i}")
            space["depth"][f"blocks.{i}"] = [False, True]
    elif tuple(mlp_fractions) != (1.0,):
        for b, droppable in lay.blocks.items():
            if droppable:
                space["depth"][b] = [False, True]
    if lay.resolution is not None and tuple(resolution_fractions) != (1.0,):
        native, patch = lay.resolution["native"], lay.resolution["patch"]
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        space["resolution"] = sorted(
            {max(patch, round(native * f / patch) * patch) for f in resolution_fractions}
        )
    return space


def act_bits_space(supernet: Supernet, a_bits, attn_bits, roles=DEFAULT_ROLES) -> dict:
    """The ``act_bits`` choices: ``a_bits`` for every quantizable linear, ``attn_bits`` for
    every attention module ours computes (empty choices or (16,) leave them out)."""
    out = {}
    if tuple(a_bits) != (16,):
        for n in lora_layers(supernet):
            out[n] = list(a_bits)
    if tuple(attn_bits) != (16,) and supernet.attention == "ours":
        for a in supernet.space["heads"]:
            out[a] = list(attn_bits)
    return out


def lora_layers(supernet: Supernet) -> list[str]:
    """The layers MP-LoRA adapts: the dense ElasticLinears with more than one w_bits choice."""
    return [
        n
        for n, el in supernet.elastic_linears().items()
        if not el.is_factorized and len(el.w_bits_choices) > 1
    ]


def lora_trainable(name: str, param: torch.Tensor | None = None) -> bool:
    """The trainer's ``trainable`` predicate: LoRA adapters and quantizer step sizes."""
    parts = name.split(".")
    return any(p in LORA_NAMES or p in STEP_SIZE_NAMES for p in parts)


def freeze_for_lora(module: nn.Module) -> int:
    """requires_grad = lora_trainable(name) for every parameter; returns the trainable count."""
    n = 0
    for name, p in module.named_parameters():
        on = lora_trainable(name, p)
        p.requires_grad_(on)
        n += p.numel() if on else 0
    return n


def mplora_supernet(
    model: nn.Module,
    *,
    preset: str | MPLoRAPreset | None = None,
    bits: Sequence[int] | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    roles: Sequence[str] = DEFAULT_ROLES,
    group_size: int | None = 128,
    lora: bool = True,
    **overrides,
) -> Supernet:
    """The MP-LoRA supernet of ``model`` (a copy; ``model`` is untouched): see the module doc.

    ``preset``: "paper", "ours" or an :class:`~.presets.MPLoRAPreset`; None keeps the
    historical weight-only space (``bits`` default {2, 3, 4, 8}, one adapter, min-max scales,
    a plain Supernet). ``bits`` / ``lora_rank`` / ``overrides`` replace preset fields.
    ``lora=False`` gives the same supernet without adapters, all parameters trainable (the
    full fine-tuning baseline)."""
    if preset is None:
        p = get_preset("mplora", "ours", **overrides)
        p = get_preset("mplora", p, w_bits=tuple(bits or (2, 3, 4, 8)), adapter_groups=(
            tuple(sorted(set(bits or (2, 3, 4, 8)))),))  # fmt: skip
    else:
        p = get_preset("mplora", preset, **overrides)
        if bits is not None:
            p = get_preset("mplora", p, w_bits=tuple(bits))
    rank = p.lora_rank if lora_rank is None else lora_rank
    space = mplora_space(
        model,
        p.w_bits,
        roles,
        drop_blocks=p.drop_blocks,
        mlp_fractions=p.mlp_fractions,
        resolution_fractions=p.resolution_fractions,
    )
    supernet = convert(model, space=space, group_size=group_size)
    act = act_bits_space(supernet, p.a_bits, p.attn_bits, roles)
    if act or len(p.adapter_groups) > 1 or p.lsq:
        supernet = MixedPrecisionSupernet.extend(supernet, act)
    if p.lsq:
        add_weight_lsq(supernet)
    if lora:
        from ..train import add_lora

        add_lora(supernet, rank, lora_alpha, layers=lora_layers(supernet))
        if len(p.adapter_groups) > 1:
            add_grouped_lora(supernet, p.adapter_groups)
        freeze_for_lora(supernet)
    else:
        for q in supernet.parameters():
            q.requires_grad_(True)
    supernet.mplora_preset = p
    return supernet


class ProgressiveBitsSampler:
    """Progressive mixed-precision sampling (module doc). ``stages``: weight-bit sets, widest
    last (each should contain the previous); ``boundaries``: the step each stage starts at
    (boundaries[0] == 0, non-decreasing; a stage starting where the next one does is
    skipped), or None with ``total_steps`` for an even split (or ``fractions`` of it).
    Activation bits of a stage: the ``act_bits`` choices >= 2 x the stage's fewest weight
    bits (always at least the largest). Depth, MLP widths and resolution: the largest, the
    smallest or uniform, like everything else in the sandwich.
    Called as ``sampler(step, rng, supernet) -> list of configs``."""

    def __init__(
        self,
        stages: Sequence[Sequence[int]] = DEFAULT_STAGES,
        boundaries: Sequence[int] | None = None,
        total_steps: int | None = None,
        num_random: int = 1,
        sandwich: bool = True,
        fractions: Sequence[float] | None = None,
    ):
        self.stages = [tuple(sorted(set(s), reverse=True)) for s in stages]
        if not self.stages or any(not s for s in self.stages):
            raise ValueError("ProgressiveBitsSampler: stages must be non-empty bit sets")
        if boundaries is None:
            if total_steps is None:
                raise ValueError("ProgressiveBitsSampler: give boundaries or total_steps")
            k = len(self.stages)
            fr = list(fractions) if fractions is not None else [i / k for i in range(k)]
            boundaries = [round(f * total_steps) for f in fr]
        boundaries = list(boundaries)
        if (
            len(boundaries) != len(self.stages)
            or boundaries[0] != 0
            or any(b > c for b, c in zip(boundaries, boundaries[1:], strict=False))
        ):
            raise ValueError(
                "ProgressiveBitsSampler: boundaries must start at 0, not decrease and "
                f"give one step per stage; got {boundaries} for {len(self.stages)} stages"
            )
        self.boundaries = boundaries
        self.num_random = num_random
        self.sandwich = sandwich

    def stage_at(self, step: int) -> int:
        return max(i for i, b in enumerate(self.boundaries) if step >= b)

    def bits_at(self, step: int) -> tuple[int, ...]:
        """The weight bit-widths sampled at ``step`` (descending)."""
        return self.stages[self.stage_at(step)]

    def act_bits_at(self, step: int, choices: Sequence[int]) -> list[int]:
        """The activation bit-widths allowed at ``step`` among ``choices``."""
        low = min(self.bits_at(step))
        ok = sorted(b for b in choices if b >= 2 * low)
        return ok or [max(choices)]

    def _config(self, supernet: Supernet, step: int, pick) -> dict:
        allowed = self.bits_at(step)
        sp = supernet.space
        cfg = supernet.max_config()
        if sp["resolution"]:
            cfg["resolution"] = pick(sorted(sp["resolution"]))
        for b, c in sp["depth"].items():
            cfg["depth"][b] = pick(sorted(c))
        for m, c in sp["mlp"].items():
            cfg["mlp"][m] = pick(sorted(c))
        for n, s in sp["linear"].items():
            if len(s["w_bits"]) < 2:
                continue
            ok = [b for b in s["w_bits"] if b in allowed] or [max(s["w_bits"])]
            cfg["linear"][n]["w_bits"] = pick(sorted(ok))
        for n, c in sp.get("act_bits", {}).items():
            cfg["act_bits"][n] = pick(self.act_bits_at(step, c))
        # The space owns the rules between choices (8-bit activations need <= 8-bit weights).
        return supernet.space_spec().repair(cfg)

    def __call__(self, step: int, rng: random.Random, supernet: Supernet) -> list[dict]:
        cfgs = []
        if self.sandwich:
            cfgs += [
                self._config(supernet, step, lambda c: c[-1]),
                self._config(supernet, step, lambda c: c[0]),
            ]
        cfgs += [self._config(supernet, step, rng.choice) for _ in range(self.num_random)]
        out = []
        for c in cfgs:
            if c not in out:
                out.append(c)
        return out


def train_mplora(
    model: nn.Module,
    train_data,
    *,
    preset: str | MPLoRAPreset | None = None,
    task=None,
    steps: int = 1000,
    lr: float | None = None,
    batch_size: int = 32,
    stages: Sequence[Sequence[int]] | None = None,
    boundaries: Sequence[int] | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    roles: Sequence[str] = DEFAULT_ROLES,
    group_size: int | None = 128,
    teacher: nn.Module | None = None,
    distill: str | None = None,
    num_random: int | None = None,
    eval_data=None,
    device=None,
    seed: int = 0,
    resume: bool = False,
    **train_kwargs,
) -> tuple[Supernet, dict]:
    """MP-LoRA end to end: :func:`mplora_supernet` (``preset``; None: the weight-only space
    over the union of ``stages``' bits), then ``steps`` steps of
    :class:`ProgressiveBitsSampler` (stage boundaries: the preset's fractions, or an even
    split) training the adapters and step sizes (AdamW, batch 32), distilling from
    ``teacher`` (default: a frozen copy of the unquantized ``model``; ``distill="largest"``
    distills from the stage's largest subnet instead). ``task`` defaults to
    ``ClassificationTask()``. ``train_kwargs``: other ``TrainConfig`` fields; ``resume``:
    continue from ``checkpoint_dir``. Arguments left None come from the preset.

    Returns ``(supernet, history)``: history = {"steps": per-step logs, "boundaries": the
    stage start steps, "stages": the bit sets, "trainable": trainable parameter count,
    "preset": the preset used}.
    """
    from ..train import ClassificationTask

    task = task if task is not None else ClassificationTask()
    p = get_preset("mplora", preset if preset is not None else "ours")
    if preset is None:
        stages = stages if stages is not None else DEFAULT_STAGES
        bits = sorted({b for s in stages for b in s})
        p = get_preset("mplora", p, w_bits=tuple(bits), adapter_groups=(tuple(bits),))
        fractions = None
    else:
        stages = stages if stages is not None else p.stages
        fractions = p.stage_boundaries
    lr = p.lr if lr is None else lr
    distill = p.distill if distill is None else distill
    num_random = (1 if preset is None else p.num_random) if num_random is None else num_random
    if distill == "teacher" and teacher is None:
        teacher = copy.deepcopy(model).requires_grad_(False)
    supernet = mplora_supernet(
        model,
        preset=p,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        roles=roles,
        group_size=group_size,
    )
    sampler = ProgressiveBitsSampler(
        stages, boundaries, steps, num_random=num_random, fractions=fractions
    )
    n_train = sum(q.numel() for q in supernet.parameters() if q.requires_grad)
    trainer = make_trainer(
        supernet,
        task,
        train_data,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        sampler=sampler,
        teacher=teacher if distill == "teacher" else None,
        trainable=lora_trainable,
        distill=distill,
        eval_data=eval_data,
        device=device,
        seed=seed,
        **train_kwargs,
    )
    logs = trainer.train(resume=resume)
    history = {
        "steps": logs,
        "boundaries": list(sampler.boundaries),
        "stages": [list(s) for s in sampler.stages],
        "trainable": n_train,
        "preset": p,
    }
    return supernet, history


# --------------------------------------------------------------------------- memory
def _saved_activation_bytes(supernet: Supernet, batch, task) -> int:
    """Bytes of the tensors autograd saves for backward in one forward (unique storages)."""
    seen: dict[tuple, int] = {}

    def pack(t):
        try:
            key = (t.untyped_storage().data_ptr(), t.device.type)
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model_output(supernet, batch, task)
    del out
    params = {p.untyped_storage().data_ptr() for p in supernet.parameters()}
    return sum(v for (ptr, _), v in seen.items() if ptr not in params)


def _analytic(supernet: Supernet, batch, task, optimizer_states: int) -> dict:
    params = sum(p.numel() * p.element_size() for p in supernet.parameters())
    train = [p for p in supernet.parameters() if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in train)
    act = _saved_activation_bytes(supernet, batch, task)
    out = {
        "params": params,
        "grads": grads,
        "optimizer": optimizer_states * grads,
        "activations": act,
        "trainable_params": sum(p.numel() for p in train),
    }
    out["total"] = params + grads + out["optimizer"] + act
    return out


def _cuda_peak(supernet: Supernet, batch, task, device) -> dict:
    supernet.to(device)
    train = [p for p in supernet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(train, lr=1e-4)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):  # the second step has the optimizer state allocated
        out = model_output(supernet, batch, task)
        loss = _first(out).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del out, loss
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    res = {"total": peak, "trainable_params": sum(p.numel() for p in train)}
    supernet.to("cpu")
    del opt
    torch.cuda.empty_cache()
    return res


def _first(out):
    if isinstance(out, torch.Tensor):
        return out
    vals = out.values() if isinstance(out, dict) else out
    return next(v for v in vals if isinstance(v, torch.Tensor))


def memory_report(
    model: nn.Module,
    batch,
    *,
    task=None,
    bits: Sequence[int] = (2, 3, 4, 8),
    lora_rank: int = 8,
    roles: Sequence[str] = DEFAULT_ROLES,
    group_size: int | None = 128,
    device=None,
    optimizer_states: int = 2,
) -> dict:
    """Peak training memory of the MP-LoRA recipe vs full fine-tuning of the same supernet
    (every parameter trainable, no adapters), one AdamW step on ``batch`` at the largest
    config (the most bits).

    On CUDA (``device`` a CUDA device): measured, ``torch.cuda.max_memory_allocated`` over two
    training steps (method "cuda_max_memory_allocated"). Elsewhere: an analytic estimate,
    method "analytic": parameter bytes + gradient bytes of the trainable parameters +
    ``optimizer_states`` (AdamW: 2) x those bytes + the bytes of the tensors autograd saves for
    backward in one forward, measured with ``torch.autograd.graph.saved_tensors_hooks`` (unique
    storages, parameters excluded). Workspace of the backward pass is not counted.

    Returns {"method", "lora_bytes", "full_bytes", "lora": {...}, "full": {...}} (the
    breakdowns in bytes, with "trainable_params").
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if task is not None:  # its modules (a SAM prompt encoder / mask decoder) run beside the model
        task.to(device)
    res = {}
    for name, lora in (("lora", True), ("full", False)):
        sn = mplora_supernet(
            model, bits=bits, lora_rank=lora_rank, roles=roles, group_size=group_size, lora=lora
        )
        sn.train()
        if device.type == "cuda":
            res[name] = _cuda_peak(sn, batch, task, device)
        else:
            res[name] = _analytic(sn, batch, task, optimizer_states)
        del sn
    method = "cuda_max_memory_allocated" if device.type == "cuda" else "analytic"
    return {
        "method": method,
        "lora_bytes": res["lora"]["total"],
        "full_bytes": res["full"]["total"],
        **res,
    }


__all__ = [
    "DEFAULT_STAGES",
    "act_bits_space",
    "ProgressiveBitsSampler",
    "freeze_for_lora",
    "lora_layers",
    "lora_trainable",
    "memory_report",
    "mplora_space",
    "mplora_supernet",
    "train_mplora",
]
