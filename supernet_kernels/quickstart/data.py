"""The quickstart's data (scikit-learn's digits) and its dense model: build, train, evaluate."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .settings import CLASSES, DEPTH, EMBED, HEADS, IMG, MLP_RATIO, N_TEST, N_VAL, PATCH


def load_digits_splits(seed: int = 0):
    """(x, y) tensors of the train / val / test splits (see the module doc)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=IMG, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    te, va, tr = perm[:N_TEST], perm[N_TEST : N_TEST + N_VAL], perm[N_TEST + N_VAL :]
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return {
        "train": (x[tr], y[tr]),
        "val": (x[va], y[va]),
        "test": (x[te], y[te]),
        "norm": (float(mean), float(std)),
    }


def make_vit(seed: int = 0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=IMG,
        patch_size=PATCH,
        in_chans=3,
        num_classes=CLASSES,
        embed_dim=EMBED,
        depth=DEPTH,
        num_heads=HEADS,
        mlp_ratio=MLP_RATIO,
    )


def train_dense(
    model, x, y, epochs: int, lr: float = 2e-3, batch: int = 64, seed: int = 0, bar=None
):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(x) / batch)
    warm = max(1, steps // 20)

    def factor(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            b = perm[i : i + batch]
            loss = F.cross_entropy(model(x[b]), y[b], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def accuracy(model, x, y, batch: int = 512) -> float:
    """Top-1 accuracy in percent."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        out = model(x[i : i + batch])
        correct += int((out.argmax(-1) == y[i : i + batch]).sum())
    model.train(was)
    return 100.0 * correct / len(x)
