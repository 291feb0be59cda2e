"""Mixed-precision LoRA: one supernet over per-layer weight bit-widths, trained through LoRA
adapters on a frozen, fake-quantized base.

* **Supernet** (:func:`mplora_supernet`): ``convert`` with every attention qkv / proj and MLP
  fc1 / fc2 dense (rank None) with ``w_bits`` choices ``bits`` (default {2, 3, 4, 8}), depth,
  MLP width, attention heads and resolution fixed. ``convert`` has no ``lora_rank`` option, so
  the recipe then gives those layers adapters with :func:`supernet_kernels.train.add_lora` (the
  same ``lora_a`` Kaiming-uniform / ``lora_b`` zero adapters and frozen base as
  ``ElasticLinear.from_linear(..., lora_rank=r)`` makes, added to the converted layers in
  place: the model is unchanged at the start). The base (weight, bias) is frozen; in a
  quantized forward the adapter is merged into the weight before fake quantization
  (straight-through), so the adapter learns to correct the quantization error of the
  bit-width sampled.
* **Trainable**: LoRA adapters (``lora_a``, ``lora_b``) and quantizer step sizes where a layer
  exposes them as parameters (names in ``STEP_SIZE_NAMES``; our ElasticLinear computes min-max
  scales and has none). Everything else (patch embedding, norms, heads, base weights) is frozen
  and stays bit-identical.
* **Progressive training** (:class:`ProgressiveBitsSampler`): stages widen the bit-width space
  from high to low, default {8} -> {8, 4} -> {8, 4, 3, 2}; stage i starts at step
  ``boundaries[i]`` (default: the steps split evenly, boundaries = round(i * steps / stages)).
  Each step trains the sandwich of the current stage: every layer at the stage's most bits,
  every layer at its fewest, and ``num_random`` subnets with each layer's bits drawn uniformly
  from the stage (identical configs are trained once).
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
from .flora import fixed_space, make_trainer, model_output

DEFAULT_STAGES = ((8,), (8, 4), (8, 4, 3, 2))
DEFAULT_ROLES = ("qkv", "proj", "fc1", "fc2", "generic")
LORA_NAMES = ("lora_a", "lora_b")
STEP_SIZE_NAMES = ("step_size", "w_step", "a_step", "weight_step", "act_step")


def mplora_space(model: nn.Module, bits: Sequence[int], roles=DEFAULT_ROLES) -> dict:
    """The ``convert(space=...)`` override: linears of ``roles`` dense with ``w_bits`` =
    ``bits``; depth, MLP width, attention heads, resolution fixed."""
    lay = fam.layout(model)
    space = fixed_space(model, lay)
    for n, role in lay.roles.items():
        if role in roles:
            space["linear"][n] = {"rank": [None], "w_bits": sorted(set(bits)), "a_bits": [16]}
    return space


def lora_layers(supernet: Supernet) -> list[str]:
    """The layers MP-LoRA adapts: the dense ElasticLinears with more than one w_bits choice."""
    return [
        n
        for n, el in supernet.elastic_linears().items()
        if not el.is_factorized and len(el.w_bits_choices) > 1
    ]


def lora_trainable(name: str, param: torch.Tensor | None = None) -> bool:
    """The trainer's ``trainable`` predicate: LoRA adapters and quantizer step sizes."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf in LORA_NAMES or leaf in STEP_SIZE_NAMES


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
    bits: Sequence[int] = (2, 3, 4, 8),
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    roles: Sequence[str] = DEFAULT_ROLES,
    group_size: int | None = 128,
    lora: bool = True,
) -> Supernet:
    """The MP-LoRA supernet of ``model`` (a copy; ``model`` is untouched): see the module doc.
    ``lora=False`` gives the same supernet without adapters, all parameters trainable (the
    full fine-tuning baseline)."""
    supernet = convert(model, space=mplora_space(model, bits, roles), group_size=group_size)
    if lora:
        from ..train import add_lora

        add_lora(supernet, lora_rank, lora_alpha, layers=lora_layers(supernet))
        freeze_for_lora(supernet)
    else:
        for p in supernet.parameters():
            p.requires_grad_(True)
    return supernet


class ProgressiveBitsSampler:
    """Progressive mixed-precision sampling (module doc). ``stages``: bit sets, widest last
    (each should contain the previous); ``boundaries``: the step each stage starts at
    (boundaries[0] == 0, non-decreasing; a stage starting where the next one does is
    skipped), or None with ``total_steps`` for an even split.
    Called as ``sampler(step, rng, supernet) -> list of configs``."""

    def __init__(
        self,
        stages: Sequence[Sequence[int]] = DEFAULT_STAGES,
        boundaries: Sequence[int] | None = None,
        total_steps: int | None = None,
        num_random: int = 1,
        sandwich: bool = True,
    ):
        self.stages = [tuple(sorted(set(s), reverse=True)) for s in stages]
        if not self.stages or any(not s for s in self.stages):
            raise ValueError("ProgressiveBitsSampler: stages must be non-empty bit sets")
        if boundaries is None:
            if total_steps is None:
                raise ValueError("ProgressiveBitsSampler: give boundaries or total_steps")
            k = len(self.stages)
            boundaries = [round(i * total_steps / k) for i in range(k)]
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
        """The bit-widths sampled at ``step`` (descending)."""
        return self.stages[self.stage_at(step)]

    def _config(self, supernet: Supernet, allowed, pick) -> dict:
        cfg = supernet.max_config()
        for n, s in supernet.space["linear"].items():
            if len(s["w_bits"]) < 2:
                continue
            ok = [b for b in s["w_bits"] if b in allowed] or [max(s["w_bits"])]
            cfg["linear"][n]["w_bits"] = pick(sorted(ok))
            if cfg["linear"][n]["a_bits"] == 8 and cfg["linear"][n]["w_bits"] > 8:
                cfg["linear"][n]["a_bits"] = 16
        return cfg

    def __call__(self, step: int, rng: random.Random, supernet: Supernet) -> list[dict]:
        bits = self.bits_at(step)
        cfgs = []
        if self.sandwich:
            cfgs += [
                self._config(supernet, bits, lambda c: c[-1]),
                self._config(supernet, bits, lambda c: c[0]),
            ]
        cfgs += [self._config(supernet, bits, rng.choice) for _ in range(self.num_random)]
        out = []
        for c in cfgs:
            if c not in out:
                out.append(c)
        return out


def train_mplora(
    model: nn.Module,
    train_data,
    *,
    task=None,
    steps: int = 1000,
    lr: float = 1e-3,
    batch_size: int = 32,
    stages: Sequence[Sequence[int]] = DEFAULT_STAGES,
    boundaries: Sequence[int] | None = None,
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    roles: Sequence[str] = DEFAULT_ROLES,
    group_size: int | None = 128,
    teacher: nn.Module | None = None,
    distill: str = "teacher",
    num_random: int = 1,
    eval_data=None,
    device=None,
    seed: int = 0,
    resume: bool = False,
    **train_kwargs,
) -> tuple[Supernet, dict]:
    """MP-LoRA end to end: :func:`mplora_supernet` over the union of ``stages``' bits, then
    ``steps`` steps of :class:`ProgressiveBitsSampler` (stage boundaries default to an even
    split) training only the adapters (AdamW lr 1e-3, batch 32), distilling from ``teacher``
    (default: a frozen copy of the unquantized ``model``; ``distill="largest"`` distills from
    the stage's most-bits subnet instead). ``task`` defaults to ``ClassificationTask()``.
    ``train_kwargs``: other ``TrainConfig`` fields; ``resume``: continue from
    ``checkpoint_dir`` (``Trainer.train(resume=True)``).

    Returns ``(supernet, history)``: history = {"steps": per-step logs, "boundaries": the
    stage start steps, "stages": the bit sets, "trainable": trainable parameter count}.
    """
    from ..train import ClassificationTask

    task = task if task is not None else ClassificationTask()
    bits = sorted({b for s in stages for b in s})
    if distill == "teacher" and teacher is None:
        teacher = copy.deepcopy(model).requires_grad_(False)
    supernet = mplora_supernet(
        model,
        bits=bits,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        roles=roles,
        group_size=group_size,
    )
    sampler = ProgressiveBitsSampler(stages, boundaries, steps, num_random=num_random)
    n_train = sum(p.numel() for p in supernet.parameters() if p.requires_grad)
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
    "ProgressiveBitsSampler",
    "freeze_for_lora",
    "lora_layers",
    "lora_trainable",
    "memory_report",
    "mplora_space",
    "mplora_supernet",
    "train_mplora",
]
