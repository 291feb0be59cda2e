"""A seeded small segment-anything model: the stand-in for SAM ViT-B in smoke runs and tests."""

from __future__ import annotations

from torch import nn


def tiny_sam(
    depth: int = 4,
    global_attn_indexes=(1, 3),
    embed_dim: int = 32,
    mlp_ratio: float = 4.0,
) -> nn.Module:
    """A whole segment-anything ``Sam``: image encoder (img 64, patch 16, ``embed_dim``,
    ``depth`` blocks of 2 heads, window 2, global attention at ``global_attn_indexes``,
    relative positions), prompt encoder and mask decoder of width 16; seed 0, training mode.
    Needs segment_anything."""
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(0)
    enc = ImageEncoderViT(
        img_size=64, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=2,
        mlp_ratio=mlp_ratio, out_chans=16, global_attn_indexes=tuple(global_attn_indexes),
        window_size=2, use_rel_pos=True,
    )  # fmt: skip
    pe = PromptEncoder(
        embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4
    )
    dec = MaskDecoder(
        transformer_dim=16,
        transformer=TwoWayTransformer(depth=1, embedding_dim=16, mlp_dim=32, num_heads=2),
        num_multimask_outputs=3,
        iou_head_depth=2,
        iou_head_hidden_dim=16,
    )
    return Sam(enc, pe, dec)
