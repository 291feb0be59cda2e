"""Argument parsing, loading and evaluation shared by the checkpoint scripts in this folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def make_parser(doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_sam_args(p: argparse.ArgumentParser) -> None:
    """--model-type, --checkpoint, --train-dir, --val-dir of the segment-anything scripts."""
    p.add_argument("--model-type", default="vit_b", help="sam_model_registry key (vit_b, ...)")
    p.add_argument("--checkpoint", required=True, help="SAM weights file")
    p.add_argument("--train-dir", required=True, help="segmentation folder (images/, masks/)")
    p.add_argument("--val-dir", default=None, help="segmentation folder for mIoU")


def add_schedule_args(p: argparse.ArgumentParser, *, lr: float, batch_size: int) -> None:
    """--steps, --lr, --batch-size, --warmup-steps."""
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--warmup-steps", type=int, default=0)


def add_run_args(p: argparse.ArgumentParser, *, out: str) -> None:
    """--amp, --device, --workers, --out, --resume, --seed."""
    p.add_argument("--amp", choices=["bf16"], default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--out", default=out)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)


def out_dir(args) -> Path:
    """``--out`` as a Path, created."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_kwargs(args, out: Path) -> dict:
    """The trainer keywords every recipe takes from add_schedule_args / add_run_args."""
    return dict(
        device=args.device,
        seed=args.seed,
        resume=args.resume,
        warmup_steps=args.warmup_steps,
        amp=args.amp,
        num_workers=args.workers,
        checkpoint_dir=str(out / "ckpt"),
        log_file=str(out / "history.jsonl"),
        progress=True,
    )


def load_sam(args):
    """The segment-anything model of --model-type / --checkpoint and its train / val folders
    (val None without --val-dir), resized to the image encoder's img_size."""
    from segment_anything import sam_model_registry

    from supernet_kernels.train import SegmentationFolder

    sam = sam_model_registry[args.model_type](checkpoint=args.checkpoint)
    size = sam.image_encoder.img_size
    train = SegmentationFolder(args.train_dir, image_size=size)
    val = SegmentationFolder(args.val_dir, image_size=size) if args.val_dir else None
    return sam, train, val


def tiny_vit(embed_dim: int = 48, depth: int = 3, num_classes: int = 10, img: int = 32):
    """A seeded tiny timm ViT (the smoke runs' stand-in for DeiT / SAM ViT-B)."""
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=img, patch_size=8,
        embed_dim=embed_dim, depth=depth, num_heads=2, mlp_ratio=2.0, num_classes=num_classes,
    ).eval()  # fmt: skip


def digits_data(img: int = 32, n_train: int = 512, n_val: int = 128, seed: int = 0):
    """scikit-learn's 8x8 digits upsampled to img x img, 3 channels, standardized: (train,
    val) lists of (image, label). Small enough for a smoke run on 2 CPU cores."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(img, img), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y), generator=g)
    tr, va = idx[:n_train], idx[n_train : n_train + n_val]
    return [(x[i], int(y[i])) for i in tr], [(x[i], int(y[i])) for i in va]


def save_subnet(supernet, config, path) -> str:
    """Extract ``config`` and save it with ``supernet_kernels.save`` (safetensors + record);
    subnets carrying fake quantizers that the format does not describe yet fall back to a
    safetensors state dict with the config beside it (``.json``)."""
    import json

    from safetensors.torch import save_file

    from supernet_kernels.supernet import save

    sub = supernet.extract(config)
    fake = any(n.endswith(("input_quant", "attn_quant")) for n, _ in sub.named_modules())
    try:
        if fake:  # supernet_kernels.load would not rebuild the quantizers: refuse its format
            raise ValueError("fake activation quantizers")
        return str(save(sub, path))
    except (ValueError, TypeError, KeyError):
        import os

        state = {k: v.detach().contiguous() for k, v in sub.state_dict().items()}
        tmp = Path(str(path) + ".tmp")
        save_file(state, str(tmp))
        os.replace(tmp, path)  # atomic
        tmp = Path(str(path) + ".json.tmp")
        tmp.write_text(json.dumps(config, indent=1))
        os.replace(tmp, str(path) + ".json")
        return str(path)


def pretrain(model, data, steps: int = 150, lr: float = 1e-3, batch_size: int = 32, seed: int = 0):
    """Plain supervised training of a smoke run's tiny model, so that its teacher knows the
    task (a random teacher makes distillation, filtering and search meaningless)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    step = 0
    while step < steps:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == steps:
                break
    return model.eval()


def shapes_data(n: int = 32, seed: int = 0):
    """Synthetic segmentation samples (image 3 x 64 x 64, two boolean masks): bright
    rectangles on noise, each rectangle a mask (what the SAM task trains on)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        img = 0.2 * torch.rand(3, 64, 64, generator=g)
        masks = torch.zeros(2, 64, 64, dtype=torch.bool)
        for j in range(2):
            y0, x0 = torch.randint(0, 40, (2,), generator=g).tolist()
            masks[j, y0 : y0 + 16, x0 : x0 + 20] = True
            img[j, y0 : y0 + 16, x0 : x0 + 20] += 0.8
        out.append((img, masks))
    return out


def held_out_evaluator(task, train, val, batches: int, batch_size: int):
    """The search's metric: the task's metric on the first ``batches`` held-out batches (val,
    else train), always the same samples so that candidates compare."""
    import torch

    held = val if val is not None else train
    subset = torch.utils.data.Subset(held, list(range(min(len(held), batches * batch_size))))

    def evaluate(m):
        m.eval()
        return task.metric(m, subset, batch_size=batch_size)

    return evaluate


def extremes_metrics(task, supernet, largest, smallest, val, batch_size: int, key: str) -> dict:
    """``{"largest_<key>": ..., "smallest_<key>": ...}``: the supernet's metric on ``val`` at
    its largest and smallest configs (left active at the smallest)."""
    out = {}
    for name, cfg in (("largest", largest), ("smallest", smallest)):
        supernet.set_active(cfg)
        supernet.eval()
        out[f"{name}_{key}"] = task.metric(supernet, val, batch_size=batch_size)
    return out
