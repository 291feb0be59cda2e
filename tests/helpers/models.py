"""Tiny seeded models shared by the test modules (timm ViT, SAM image encoder, whole SAM)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

__all__ = ["tiny_sam", "tiny_sam_encoder", "tiny_timm_vit"]


def tiny_timm_vit(**kw) -> nn.Module:
    """timm's ``vit_tiny_patch16_224`` architecture with the sizes in ``kw``, seed 0, eval mode."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw).eval()


def tiny_sam_encoder(depth: int, num_heads: int = 2) -> nn.Module:
    """A SAM image encoder (img 64, patch 16, embed 64, ``num_heads`` heads, global block 1,
    window 2), seed 0, eval mode, with non-zero relative position tables and pos_embed so they
    matter."""
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    torch.manual_seed(0)
    m = ImageEncoderViT(
        img_size=64,
        patch_size=16,
        embed_dim=64,
        depth=depth,
        num_heads=num_heads,
        global_attn_indexes=(1,),
        window_size=2,
        use_rel_pos=True,
        out_chans=32,
    )
    with torch.no_grad():  # non-zero relative position tables, so they matter
        for n, p in m.named_parameters():
            if "rel_pos" in n or "pos_embed" in n:
                p.normal_(0, 0.02)
    return m.eval()


def tiny_sam(depth: int, global_attn_indexes: tuple[int, ...]) -> nn.Module:
    """The package's tiny segment-anything model (encoder embed 32, mlp_ratio 2), seed 0, in
    training mode; skips without segment_anything."""
    pytest.importorskip("segment_anything")
    from supernet_kernels.train.tiny_sam import tiny_sam as build

    return build(depth, global_attn_indexes, embed_dim=32, mlp_ratio=2.0)
