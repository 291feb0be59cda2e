"""Elastic depth: :class:`ElasticBlock`, a residual block that can be skipped (re-exported by
:mod:`.elastic`)."""

from __future__ import annotations

from torch import nn


class ElasticBlock(nn.Module):
    """Elastic depth: a residual block that can be skipped.

    Wraps any residual block (forward ``x -> x + f(x)`` style: a timm ViT ``Block``, a SAM image
    encoder ``Block``). When ``active`` is False, forward returns its input unchanged (the
    residual stream passes through, SuperSAM's layer removal); otherwise it calls
    ``block(*args, **kwargs)``. The input is the first positional argument (or the only keyword
    argument).
    """

    def __init__(self, block: nn.Module, active: bool = True):
        super().__init__()
        if not isinstance(block, nn.Module):
            raise TypeError(f"ElasticBlock: block must be an nn.Module, got {type(block).__name__}")
        self.block = block
        self.active = bool(active)

    def set_active(self, active: bool) -> None:
        if not isinstance(active, bool):
            raise TypeError(f"ElasticBlock.set_active: active must be a bool, got {active!r}")
        self.active = active

    def active_choice(self) -> dict:
        return {"active": self.active}

    def choices(self) -> list[dict]:
        return [{"active": False}, {"active": True}]

    def forward(self, *args, **kwargs):
        if self.active:
            return self.block(*args, **kwargs)
        if args:
            return args[0]
        if len(kwargs) == 1:
            return next(iter(kwargs.values()))
        raise TypeError(
            "ElasticBlock: when skipped, the input must be the first positional argument "
            f"(got keyword arguments {sorted(kwargs)})"
        )

    def extra_repr(self) -> str:
        return f"active={self.active}"
