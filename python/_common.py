"""Argument parsing and loading shared by the checkpoint scripts in this folder."""

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
