"""FLORA on a timm DeiT / ViT checkpoint: low-rank supernet, candidate filtering, training.

    python python/flora_deit.py --model deit_base_patch16_224 --checkpoint deit_b.pth \
        --train-dir /data/imagenet/train --val-dir /data/imagenet/val --steps 20000 \
        --out runs/flora_deit_b

The checkpoint is loaded with ``timm.create_model(model, pretrained=False,
checkpoint_path=...)``. Data folders use the classification folder format of
``supernet_kernels.train.data`` (``root/<class>/<image>``; see ``data_format()``), images
resized to the model's input size and normalized with its mean / std. ``--heldout-dir``
(default: --val-dir) gives the held-out batches of the filtering.

Writes to ``--out``: ``space.json`` (the filtered space), ``scores.json`` (the filtering
losses), ``history.jsonl`` (training logs), the trainer checkpoint (``ckpt/``), and
``results.json`` (accuracy of the largest / smallest subnet of the filtered space on
--val-dir). ``--resume`` continues from ``--out/ckpt``
(the space from ``--out/space.json``, no second filtering).
"""

from __future__ import annotations

import json

from _common import add_run_args, add_schedule_args, make_parser, out_dir, run_kwargs


def main(argv=None) -> None:
    p = make_parser(__doc__)
    p.add_argument("--model", required=True, help="timm architecture, e.g. deit_base_patch16_224")
    p.add_argument("--checkpoint", required=True, help="weights file for checkpoint_path=")
    p.add_argument("--num-classes", type=int, default=None, help="default: the timm default")
    p.add_argument("--train-dir", required=True, help="class-subfolder training images")
    p.add_argument("--val-dir", default=None, help="class-subfolder validation images")
    p.add_argument("--heldout-dir", default=None, help="filtering batches (default: val-dir)")
    add_schedule_args(p, lr=1e-4, batch_size=32)
    p.add_argument(
        "--ratios",
        default=None,
        help="rank ratios, e.g. '1/8,2/8,3/8,1' (default: "
        "eighths without 7/8, sixths for 384-wide DeiT-S)",
    )
    p.add_argument("--no-filter", action="store_true", help="skip candidate filtering")
    p.add_argument("--filter-steps", type=int, default=20, help="steps per block when filtering")
    p.add_argument("--heldout-batches", type=int, default=2)
    p.add_argument("--tau", type=float, default=0.5, help="filter: loss <= (1 + tau) * full")
    p.add_argument("--atol", type=float, default=0.0, help="filter: + atol")
    add_run_args(p, out="runs/flora")
    args = p.parse_args(argv)

    from fractions import Fraction

    import timm

    from supernet_kernels.recipes import flora
    from supernet_kernels.train import ClassificationTask, ImageFolderDataset

    kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = timm.create_model(args.model, pretrained=False, checkpoint_path=args.checkpoint, **kw)
    model.eval()
    cfg = model.pretrained_cfg
    size = model.patch_embed.img_size[0]
    mean, std = (
        tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        tuple(cfg.get("std", (0.229, 0.224, 0.225))),
    )

    def folder(root):
        return ImageFolderDataset(root, image_size=size, mean=mean, std=std)

    train = folder(args.train_dir)
    val = folder(args.val_dir) if args.val_dir else None
    held = args.heldout_dir or args.val_dir
    heldout = folder(held) if held else None
    ratios = [Fraction(r) for r in args.ratios.split(",")] if args.ratios else None
    out = out_dir(args)
    task = ClassificationTask()
    prior = out / "space.json"
    space = json.loads(prior.read_text()) if args.resume and prior.is_file() else None
    sn, hist = flora.train_flora(
        model,
        train,
        task=task,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        ratios=ratios,
        filter=not args.no_filter,
        space=space,
        filter_steps_per_block=args.filter_steps,
        heldout=heldout,
        heldout_batches=args.heldout_batches,
        tau=args.tau,
        atol=args.atol,
        **run_kwargs(args, out),
    )
    (out / "space.json").write_text(json.dumps(hist["space"], indent=1))
    scores = {n: {str(r): v for r, v in s.items()} for n, s in hist["scores"].items()}
    if scores:
        (out / "scores.json").write_text(json.dumps(scores, indent=1))
    if val is not None:
        res = {}
        for name, pick in (("largest", lambda c: c[-1]), ("smallest", lambda c: c[0])):
            c = sn.max_config()
            for n, s in hist["space"]["linear"].items():
                if s["rank"] != [None]:
                    c["linear"][n]["rank"] = pick(s["rank"])
            sn.set_active(c)
            sn.eval()
            res[name] = task.metric(sn, val, batch_size=args.batch_size)
            print(f"{name}: top-1 {100 * res[name]:.2f}%")
        (out / "results.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
