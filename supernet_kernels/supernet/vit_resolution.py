"""Elastic input resolution of a timm ViT: the resolution choices of a model, its dynamic-size
flags, and making it static at one resolution (position embeddings resampled once)."""

from __future__ import annotations

import torch
from torch import nn


def _vit_resolution(model: nn.Module) -> dict | None:
    pe = model.patch_embed
    img, patch = getattr(pe, "img_size", None), getattr(pe, "patch_size", None)
    if img is None or patch is None or img[0] != img[1] or patch[0] != patch[1]:
        return None  # non-square: resolution not elastic
    native, p = int(img[0]), int(patch[0])
    choices = sorted({max(p, round(native * f / p) * p) for f in (160 / 224, 192 / 224)} | {native})
    return {"native": native, "patch": p, "choices": choices}


def vit_flags(model: nn.Module) -> dict:
    pe = model.patch_embed
    return {
        "dynamic_img_size": bool(model.dynamic_img_size),
        "strict_img_size": bool(pe.strict_img_size),
        "flatten": bool(pe.flatten),
        "output_fmt": str(pe.output_fmt.value),
    }


def vit_set_flags(model: nn.Module, flags: dict) -> None:
    from timm.layers import Format

    pe = model.patch_embed
    model.dynamic_img_size = flags["dynamic_img_size"]
    pe.strict_img_size = flags["strict_img_size"]
    pe.flatten = flags["flatten"]
    pe.output_fmt = Format(flags["output_fmt"])


def vit_make_dynamic(model: nn.Module) -> None:
    """Let a timm ViT take any multiple of its patch size: position embeddings are resampled
    (timm's ``resample_abs_pos_embed``) from the native grid on each forward."""
    vit_set_flags(
        model,
        {
            "dynamic_img_size": True,
            "strict_img_size": False,
            "flatten": False,
            "output_fmt": "NHWC",
        },
    )


@torch.no_grad()
def vit_set_resolution(model: nn.Module, resolution: int, flags: dict) -> None:
    """Make a timm ViT static at ``resolution``: position embeddings resampled once exactly as
    the dynamic forward does, patch_embed sizes updated, the original ``flags`` restored."""
    from timm.layers import resample_abs_pos_embed

    pe = model.patch_embed
    p = pe.patch_size
    grid = (resolution // p[0], resolution // p[1])
    if tuple(pe.grid_size) != grid:
        if model.pos_embed is not None:
            new = resample_abs_pos_embed(
                model.pos_embed,
                new_size=grid,
                old_size=pe.grid_size,
                num_prefix_tokens=0 if model.no_embed_class else model.num_prefix_tokens,
            )
            model.pos_embed = nn.Parameter(new.detach().clone(), model.pos_embed.requires_grad)
        pe.img_size = (resolution, resolution)
        pe.grid_size = grid
        pe.num_patches = grid[0] * grid[1]
    vit_set_flags(model, flags)
