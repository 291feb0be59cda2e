"""Tiny supernets and synthetic data for the training tests (and their worker processes)."""

from __future__ import annotations

import torch

import supernet_kernels as sk

__all__ = [
    "MiniNet",
    "TinyNet",
    "class_data",
    "make_generic_supernet",
    "make_mini_supernet",
    "make_vit_supernet",
    "seg_data",
]


def make_vit_supernet(num_classes: int = 4, depth: int = 3):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=4,
        depth=depth,
        embed_dim=32,
        num_heads=2,
        num_classes=num_classes,
    )
    return sk.convert(model), model


def seg_data(n: int = 4, seed: int = 0):
    """Segmentation samples for the tiny SAMs (image 3 x 64 x 64 uniform noise, two boolean
    16 x 20 rectangles as masks)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        img = torch.rand(3, 64, 64, generator=g)
        masks = torch.zeros(2, 64, 64, dtype=torch.bool)
        for j in range(2):
            y0, x0 = torch.randint(0, 40, (2,), generator=g).tolist()
            masks[j, y0 : y0 + 16, x0 : x0 + 20] = True
        out.append((img, masks))
    return out


def class_data(n: int = 64, num_classes: int = 4, seed: int = 0, size: int = 16):
    """Learnable synthetic classification: each class is a fixed pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_classes, 3, size, size, generator=torch.Generator().manual_seed(99))
    labels = torch.randint(0, num_classes, (n,), generator=g)
    images = protos[labels] + 0.5 * torch.randn(n, 3, size, size, generator=g)
    return [(images[i], int(labels[i])) for i in range(n)]


class _Block(torch.nn.Module):
    def __init__(self, d: int = 32, h: int = 64):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.ff = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.GELU(), torch.nn.Linear(h, d))

    def forward(self, x):
        return x + self.ff(self.norm(x))


class _BlockNet(torch.nn.Module):
    """A generic classifier: a linear embedding of the flattened image to width ``d``,
    ``depth`` residual MLP blocks (hidden ``h``), a linear head."""

    num_classes = 4

    def __init__(self, pixels: int, d: int, h: int, depth: int):
        super().__init__()
        self.embed = torch.nn.Linear(pixels, d)
        self.layers = torch.nn.ModuleList([_Block(d, h) for _ in range(depth)])
        self.head = torch.nn.Linear(d, self.num_classes)

    def forward(self, x):
        x = self.embed(x.flatten(1))
        for blk in self.layers:
            x = blk(x)
        return self.head(x)


class TinyNet(_BlockNet):
    """A generic (non-timm) classifier on (3, 16, 16) images: imports nothing heavy, for the
    2-process test whose workers start from scratch."""

    def __init__(self):
        super().__init__(3 * 16 * 16, 32, 64, depth=3)


def _block_supernet(net: _BlockNet, widths: list[int]):
    """``net``'s supernet: every block's MLP at ``widths``, block 1 droppable."""
    space = {
        "mlp": {f"layers.{i}.ff": list(widths) for i in range(len(net.layers))},
        "depth": {"layers.1": [False, True]},
    }
    return sk.convert(net, space)


def make_generic_supernet():
    torch.manual_seed(0)
    return _block_supernet(TinyNet(), [16, 32, 64])


class MiniNet(_BlockNet):
    """A generic classifier on (3, 4, 4) images, small enough that a checkpoint of it (Adam
    states included) is a ~100 KB test file."""

    def __init__(self):
        super().__init__(3 * 4 * 4, 16, 32, depth=2)


def make_mini_supernet():
    torch.manual_seed(0)
    return _block_supernet(MiniNet(), [8, 16, 32])
