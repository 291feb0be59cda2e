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

import json

from _common import (
    add_run_args,
    add_sam_args,
    add_schedule_args,
    load_sam,
    make_parser,
    out_dir,
    run_kwargs,
)


def main(argv=None) -> None:
    p = make_parser(__doc__)
    add_sam_args(p)
    add_schedule_args(p, lr=1e-3, batch_size=4)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--stages", default="8;8,4;8,4,3,2", help="bit sets per stage, ';'-separated")
    p.add_argument(
        "--boundaries",
        default=None,
        help="start step of each stage, e.g. 0,1000,2000 (default: an even split)",
    )
    p.add_argument("--group-size", type=int, default=128, help="quantization group (-1: channel)")
    p.add_argument("--memory-report", action="store_true", help="LoRA vs full fine-tuning memory")
    add_run_args(p, out="runs/mplora")
    args = p.parse_args(argv)

    import torch

    from supernet_kernels.recipes import flora, mplora
    from supernet_kernels.train import SegmentationTask

    sam, train, val = load_sam(args)
    task = SegmentationTask(sam)
    stages = [tuple(int(b) for b in s.split(",")) for s in args.stages.split(";")]
    bounds = [int(b) for b in args.boundaries.split(",")] if args.boundaries else None
    group = None if args.group_size == -1 else args.group_size
    out = out_dir(args)
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
        **run_kwargs(args, out),
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
