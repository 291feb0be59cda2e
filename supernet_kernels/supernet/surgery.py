"""Module surgery shared by conversion, extraction and loading: replacing a module by name,
and removing dropped blocks."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    head, _, attr = name.rpartition(".")
    return (model.get_submodule(head) if head else model), attr


class _Removed(nn.Identity):
    """Placeholder for a dropped block while extracting."""


def remove_blocks(model: nn.Module, names: Iterable[str]) -> None:
    """Remove the named blocks (original names, resolved before anything moves): entries of
    nn.Sequential / nn.ModuleList are deleted and the rest renumbered; elsewhere nn.Identity."""
    for name in sorted(set(names)):
        parent, attr = _parent(model, name)
        setattr(parent, attr, _Removed())
    drop_placeholders(model)


def drop_placeholders(model: nn.Module) -> None:
    for _, parent in list(model.named_modules()):
        kids = parent._modules
        if not any(isinstance(c, _Removed) for c in kids.values()):
            continue
        if isinstance(parent, nn.Sequential | nn.ModuleList):
            keep = [c for c in kids.values() if not isinstance(c, _Removed)]
            kids.clear()
            for i, c in enumerate(keep):
                kids[str(i)] = c
        else:
            for attr, c in list(kids.items()):
                if isinstance(c, _Removed):
                    kids[attr] = nn.Identity()
