"""LoRA adapters on a supernet's elastic linears, and the predicate that trains only them."""

from __future__ import annotations

import fnmatch

from torch import nn


def add_lora(supernet, rank: int = 8, alpha: float | None = None, layers=None) -> list[str]:
    """Give the supernet's ElasticLinears LoRA adapters (``lora_a`` Kaiming-uniform, ``lora_b``
    zero, so the model is unchanged) and freeze their base weights, as ``ElasticLinear(...,
    lora_rank=rank)`` would. ``layers``: fnmatch patterns of linear names (default: all).
    Returns the names given adapters. Train them with ``trainable=lora_only``."""
    names = []
    for name, el in supernet.elastic_linears().items():
        if layers is not None and not any(fnmatch.fnmatchcase(name, p) for p in layers):
            continue
        if el.lora_rank:
            raise ValueError(f"add_lora: {name} already has LoRA adapters")
        el.add_lora(rank, alpha)
        names.append(name)
    return names


def lora_only(name: str, param: nn.Parameter) -> bool:
    """``trainable`` predicate: the LoRA adapters only."""
    return name.rsplit(".", 1)[-1] in ("lora_a", "lora_b")
