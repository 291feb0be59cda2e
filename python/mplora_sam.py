"""Mixed-precision LoRA on a segment-anything checkpoint: the image encoder's qkv / proj / MLP
linears fake-quantized at per-layer bit-widths from {2, 3, 4, 8} and frozen, LoRA adapters
trained with progressive stages {8} -> {8, 4} -> {8, 4, 3, 2}, distilling from the original
float encoder.

    python python/mplora_sam.py --model-type vit_b --checkpoint sam_vit_b_01ec64.pth \
        --train-dir /data/sa1b_subset/train --val-dir /data/sa1b_subset/val --steps 3000 \
        --out runs/mplora_b

The checkpoint is loaded with segment_anything's ``sam_model_registry[model_type](checkpoint=
path)``. Data folders use the segmentation folder format of ``supernet_kernels.train.data``
(``root/images/<stem>.<ext>`` + ``root/masks/<stem>.npz`` or ``.png``; ``data_format()``).

Writes to ``--out``: ``history.jsonl``, the trainer checkpoint ``ckpt/``, ``results.json``
(mIoU of the all-8-bit, all-4-bit and all-2-bit subnets on --val-dir, and with
``--memory-report`` the training memory of LoRA vs full fine-tuning on one batch:
``torch.cuda.max_memory_allocated`` on a GPU, an analytic estimate on the CPU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model-type", default="vit_b", help="sam_model_registry key (vit_b, ...)")
    p.add_argument("--checkpoint", required=True, help="SAM weights file")
    p.add_argument("--train-dir", required=True, help="segmentation folder (images/, masks/)")
    p.add_argument("--val-dir", default=None, help="segmentation folder for mIoU")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--stages", default="8;8,4;8,4,3,2", help="bit sets per stage, ';'-separated")
    p.add_argument(
        "--boundaries",
        default=None,
        help="start step of each stage, e.g. 0,1000,2000 (default: an even split)",
    )
    p.add_argument("--group-size", type=int, default=128, help="quantization group (-1: channel)")
    p.add_argument("--memory-report", action="store_true", help="LoRA vs full fine-tuning memory")
    p.add_argument("--amp", choices=["bf16"], default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--out", default="runs/mplora")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch
    from segment_anything import sam_model_registry

    from supernet_kernels.recipes import flora, mplora
    from supernet_kernels.train import SegmentationFolder, SegmentationTask

    sam = sam_model_registry[args.model_type](checkpoint=args.checkpoint)
    size = sam.image_encoder.img_size
    train = SegmentationFolder(args.train_dir, image_size=size)
    val = SegmentationFolder(args.val_dir, image_size=size) if args.val_dir else None
    task = SegmentationTask(sam)
    stages = [tuple(int(b) for b in s.split(",")) for s in args.stages.split(";")]
    bounds = [int(b) for b in args.boundaries.split(",")] if args.boundaries else None
    group = None if args.group_size == -1 else args.group_size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {}
    if args.memory_report:
        batch = flora.as_batches(train, 1, args.batch_size, task)[0]
        dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        rep = mplora.memory_report(
            sam.image_encoder,
            batch,
            task=task.to(dev),
            bits=sorted({b for s in stages for b in s}),
            lora_rank=args.lora_rank,
            group_size=group,
            device=dev,
        )
        res["memory"] = rep
        print(
            f"training memory ({rep['method']}): LoRA {rep['lora_bytes'] / 2**30:.2f} GiB, "
            f"full fine-tuning {rep['full_bytes'] / 2**30:.2f} GiB"
        )
        task.to("cpu")
    sn, hist = mplora.train_mplora(
        sam.image_encoder,
        train,
        task=task,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        stages=stages,
        boundaries=bounds,
        lora_rank=args.lora_rank,
        group_size=group,
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
    if val is not None:
        for bits in sorted({b for s in stages for b in s}, reverse=True):
            cfg = sn.max_config()
            for n, s in sn.space["linear"].items():
                if len(s["w_bits"]) > 1:
                    cfg["linear"][n]["w_bits"] = bits
            sn.set_active(cfg)
            sn.eval()
            res[f"w{bits}"] = task.metric(sn, val, batch_size=args.batch_size)
            print(f"all {bits}-bit: mIoU {res[f'w{bits}']:.4f}")
    (out / "results.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
