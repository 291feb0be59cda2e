"""The fused MLP block in converted models.

A converted ViT / DeiT / Swin / SAM block keeps its own MLP module (timm's ``Mlp``,
segment-anything's ``MLPBlock``, or any module holding two linears and an activation) with
:class:`~supernet_kernels.nn.elastic.ElasticLinear` layers in it. :func:`fuse_mlps` gives each
such module a :class:`FusedMlpForward`: where the active config makes both linears low-rank
(factorized, at a rank where the factors are cheaper than the dense weight, 16-bit, no LoRA)
and every other child is a no-op (identity, dropout in eval mode or with p = 0), the block
runs as one ``torch.ops.supernet_kernels.lowrank_mlp`` call; otherwise, and at the max config
(full rank: the linears run dense), it runs the module's own forward. The module's class,
parameters and state-dict keys are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from .elastic import ElasticLinear


def activation_name(act: nn.Module) -> str | None:
    """The op's name for an activation module (torch's and timm's GELU / GELUTanh, ReLU), or
    None where the op has none."""
    if isinstance(act, nn.GELU):
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(act.approximate)
    if isinstance(act, nn.ReLU):
        return "relu"
    mod = type(act).__module__
    if mod.startswith("timm.") and type(act).__name__ in ("GELU", "GELUTanh"):
        return "gelu" if type(act).__name__ == "GELU" else "gelu_tanh"
    return None


def _is_noop(m: nn.Module) -> bool:
    if isinstance(m, nn.Identity):
        return True
    if isinstance(m, nn.Dropout):
        return m.p == 0 or not m.training
    return False


def _lowrank_active(lin: nn.Module) -> bool:
    return (
        isinstance(lin, ElasticLinear)
        and lin.is_factorized
        and lin._factors_cheaper()
        and lin.w_bits == 16
        and lin.a_bits == 16
        and not lin.lora_rank
    )


def _hooked(*mods: nn.Module) -> bool:
    """True where a forward hook would see these modules: then the block must run unfused so
    that the hooks fire per layer. Profilers count per module this way (FlopCounterMode's
    module tracker registers global forward hooks; so do activation-importance hooks), and a
    fused block would hide its two linears from them (its cost would read as zero)."""
    from torch.nn.modules import module as _module  # torch's own registry of global hooks

    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in mods)


class FusedMlpForward:
    """The forward of an MLP module with two ElasticLinears ``fc1`` and ``fc2`` (attribute
    names) and an activation ``act``: the fused op where it applies, else the module's own."""

    def __init__(self, module: nn.Module, fc1: str, fc2: str, act: str):
        self.module, self.fc1, self.fc2, self.act = module, fc1, fc2, act

    def fused_args(self, x: torch.Tensor) -> tuple | None:
        """The op's arguments for this input, or None where the block must run unfused."""
        mod = self.module
        fc1, fc2 = getattr(mod, self.fc1), getattr(mod, self.fc2)
        act = activation_name(getattr(mod, self.act))
        if act is None or not (_lowrank_active(fc1) and _lowrank_active(fc2)):
            return None
        if _hooked(fc1, fc2, getattr(mod, self.act)):
            return None
        others = [m for n, m in mod.named_children() if n not in (self.fc1, self.fc2, self.act)]
        if not all(_is_noop(m) for m in others):
            return None
        if fc2.active_in != fc1.active_out or x.shape[-1] != fc1.active_in:
            return None
        if x.dtype != fc1.u.dtype or fc2.u.dtype != fc1.u.dtype:
            return None
        if torch.is_autocast_enabled(x.device.type):
            return None  # the op takes one dtype; autocast's casts belong to the linears
        k = fc1.active_in
        v1 = fc1.v if k == fc1.in_features else fc1.v[:, :k]
        return (
            x, fc1.u, v1, None, fc1.active_rank, fc1.bias,
            fc2.u, fc2.v, None, fc2.active_rank, fc2.bias,
            fc1.active_out, fc2.active_out, act,
        )  # fmt: skip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        args = self.fused_args(x)
        if args is None:
            return type(self.module).forward(self.module, x)
        return torch.ops.supernet_kernels.lowrank_mlp(*args)


def fuse_mlp(module: nn.Module, fc1: str, fc2: str, act: str | None = None) -> bool:
    """Give ``module`` (holding ``fc1``, an activation ``act``, ``fc2``) the fused forward;
    False (module unchanged) where the linears are not elastic or there is not exactly one
    activation child with a fused form. ``act`` None: that child, found by type."""
    if not isinstance(getattr(module, fc1, None), ElasticLinear):
        return False
    if not isinstance(getattr(module, fc2, None), ElasticLinear):
        return False
    if act is None:
        acts = [n for n, m in module.named_children() if activation_name(m) is not None]
        if len(acts) != 1:
            return False
        act = acts[0]
    a = getattr(module, act, None)
    if not isinstance(a, nn.Module) or activation_name(a) is None:
        return False
    module.forward = FusedMlpForward(module, fc1, fc2, act)
    return True


def fuse_mlps(model: nn.Module, mlps: dict[str, tuple[str, str]]) -> list[str]:
    """:func:`fuse_mlp` on every MLP module of a layout (name -> (fc1 path, fc2 path)); the
    names of the modules that got the fused forward."""
    done = []
    for name, (a, b) in mlps.items():
        module = model.get_submodule(name)
        if fuse_mlp(module, a.rsplit(".", 1)[-1], b.rsplit(".", 1)[-1]):
            done.append(name)
    return done


def is_fused(module: nn.Module) -> bool:
    return isinstance(module.__dict__.get("forward"), FusedMlpForward)
