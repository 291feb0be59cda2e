"""Helpers every recipe shares: the fixed space (nothing elastic but what a recipe opens),
batches from a dataset, a model's output for a batch, and the trainer a recipe runs."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..supernet import Supernet
from ..supernet import families as fam


def fixed_space(model: nn.Module, lay: fam.Layout | None = None) -> dict:
    """A ``convert(space=...)`` override fixing every block, MLP width, head count and the
    resolution at their largest (a recipe then adds the dimensions it searches)."""
    lay = lay if lay is not None else fam.layout(model)
    mods = dict(model.named_modules())
    space: dict = {
        "depth": {b: [True] for b in lay.blocks},
        "mlp": {m: [mods[a].out_features] for m, (a, _) in lay.mlps.items()},
        "heads": {a: [h] for a, h in lay.heads.items()},
        "linear": {},
    }
    if lay.resolution is not None:
        space["resolution"] = None
    return space


def batch_inputs(batch):
    """The model input of a batch: the first element of a tuple / list, ``batch["image"]`` (or
    the first tensor) of a dict, the batch itself otherwise."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        if "image" in batch:
            return batch["image"]
        if "images" in batch:
            return batch["images"]
        return next(v for v in batch.values() if isinstance(v, torch.Tensor))
    return batch


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def model_output(model: nn.Module, batch, task=None):
    """``model``'s output on a (collated, prepared) batch: ``task.forward(model, batch)`` on the
    model's device where a task is given, else ``model(batch_inputs(batch))``."""
    dev = _device_of(model)
    if task is not None:
        return task.forward(model, task.to_device(batch, dev))
    return model(_to(batch_inputs(batch), dev))


def as_batches(data, n: int, batch_size: int = 32, task=None, seed: int = 0) -> list:
    """The first ``n`` batches of ``data``: a map-style dataset (a list of samples too) is
    batched in order with ``task.collate``; a DataLoader or any other iterable yields collated
    batches. Each batch goes through ``task.prepare`` with a generator seeded ``seed`` (SAM
    prompts drawn once, reproducibly)."""
    if n < 1:
        raise ValueError(f"as_batches: n must be >= 1, got {n}")
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        collate = getattr(task, "collate", None)
        data = torch.utils.data.DataLoader(
            data, batch_size=batch_size, shuffle=False, collate_fn=collate
        )
    out = []
    for b in data:
        out.append(b)
        if len(out) == n:
            break
    if not out:
        raise ValueError("as_batches: the data is empty")
    prepare = getattr(task, "prepare", None)
    if callable(prepare):
        g = torch.Generator().manual_seed(seed)
        out = [prepare(b, g) for b in out]
    return out


def make_trainer(
    supernet: Supernet,
    task,
    data,
    *,
    sampler=None,
    teacher=None,
    trainable=None,
    optimizer=None,
    eval_data=None,
    device=None,
    **config,
):
    """A :class:`~supernet_kernels.train.Trainer` with ``TrainConfig(**config)``; recipe
    defaults progress=False (keys the installed TrainConfig lacks are an error)."""
    from ..train import TrainConfig, Trainer

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config.setdefault("progress", False)
    unknown = sorted(k for k in config if k not in names)
    if unknown:
        raise TypeError(f"recipes: unknown TrainConfig fields {unknown}")
    return Trainer(
        supernet,
        task,
        data,
        TrainConfig(**config),
        sampler=sampler,
        teacher=teacher,
        trainable=trainable,
        optimizer=optimizer,
        eval_data=eval_data,
        device=device,
    )
