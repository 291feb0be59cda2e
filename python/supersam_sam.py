"""SuperSAM on a segment-anything checkpoint: elastic depth and MLP width of the image encoder,
neuron prioritization, sandwich training with in-place distillation.

    python python/supersam_sam.py --model-type vit_b --checkpoint sam_vit_b_01ec64.pth \
        --train-dir /data/sa1b_subset/train --val-dir /data/sa1b_subset/val --steps 5000 \
        --out runs/supersam_b

The checkpoint is loaded with segment_anything's ``sam_model_registry[model_type](checkpoint=
path)``. Data folders use the segmentation folder format of ``supernet_kernels.train.data``
(``root/images/<stem>.<ext>`` + ``root/masks/<stem>.npz`` or ``.png``; see ``data_format()``),
resized to the encoder's img_size. Droppable blocks default to SuperSAM's 1, 2, 5, 6, 9
(``--drop-blocks``), MLP widths {768, 1020, 1536, 2304, 3072} / 3072 of the hidden size.

Writes to ``--out``: ``history.jsonl``, the trainer checkpoint ``ckpt/``, ``results.json``
(mIoU of the largest and the smallest subnet on --val-dir) and, with ``--export``, the
extracted encoder subnets ``encoder_largest.safetensors`` / ``encoder_smallest.safetensors``
(``supernet_kernels.supernet.save``; load with ``supernet_kernels.supernet.load``).
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
    add_schedule_args(p, lr=1e-4, batch_size=4)
    p.add_argument(
        "--drop-blocks", default=None, help="comma-separated droppable blocks (default 1,2,5,6,9)"
    )
    p.add_argument("--drop-prob", type=float, default=0.5)
    p.add_argument("--calib-batches", type=int, default=4, help="batches for neuron ordering")
    p.add_argument("--no-prioritize", action="store_true", help="skip neuron prioritization")
    p.add_argument("--train-decoder", action="store_true", help="train the mask decoder too")
    p.add_argument("--export", action="store_true", help="save largest / smallest encoders")
    add_run_args(p, out="runs/supersam")
    args = p.parse_args(argv)

    from supernet_kernels.recipes import supersam
    from supernet_kernels.supernet import save
    from supernet_kernels.train import SegmentationTask

    sam, train, val = load_sam(args)
    task = SegmentationTask(sam, train_decoder=args.train_decoder)
    drop = [int(i) for i in args.drop_blocks.split(",")] if args.drop_blocks else None
    out = out_dir(args)
    sn, hist = supersam.train_supersam(
        sam,
        train,
        task=task,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        drop_blocks=drop,
        drop_prob=args.drop_prob,
        calib_batches=args.calib_batches,
        prioritize=not args.no_prioritize,
        **run_kwargs(args, out),
    )
    (out / "space.json").write_text(json.dumps(hist["space"], indent=1))
    configs = {"largest": sn.max_config(), "smallest": sn.min_config()}
    res = {}
    for name, cfg in configs.items():
        sn.set_active(cfg)
        sn.eval()
        if val is not None:
            res[name] = task.metric(sn, val, batch_size=args.batch_size)
            print(f"{name}: mIoU {res[name]:.4f}")
        if args.export:
            save(sn.extract(cfg), out / f"encoder_{name}.safetensors")
    if res:
        (out / "results.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
