"""FLORA end to end on a timm DeiT / ViT: convert to a low-rank supernet, filter each block's
(qkv, fc1, fc2) rank triples with a local supernet, train with low-rank-aware sampling and
distillation, search the filtered space under a FLOPs window, extract, evaluate, save.

Smoke run (2 CPU cores, about a minute: a 3-block ViT of width 48 on scikit-learn digits)::

    python python/flora_deit.py --smoke --out runs/flora_smoke

Full run (one GPU; FLORA's DeiT-B setting, ``--preset paper``)::

    python python/flora_deit.py --model deit_base_patch16_224 --checkpoint deit_b.pth \
        --train-dir /data/imagenet/train --val-dir /data/imagenet/val \
        --filter-steps 4000 --steps 300000 --window 0.40,0.50 --out runs/flora_deit_b

Full-run data: ImageNet-1k in the classification folder format of
``supernet_kernels.train.data`` (``root/<class>/<image>``), images resized to the model's
input and normalized with its mean / std. FLORA trains its DeiT-B supernet 300 epochs
(~3.8 M steps at batch 1024 over 8 GPUs); on one H100 at batch 256 expect about 10 steps / s
for DeiT-B, so the filter (12 blocks x ``--filter-steps``) takes about an hour per 4000 steps
per block and ``--steps`` 300000 about 8 hours; the search (20 generations x 50 subnets,
each evaluated on ``--search-batches`` held-out batches) about 30 minutes. ``--preset ours``
uses our per-layer filter rule and label + distillation loss instead.

Writes to ``--out``: ``space.json`` (the filtered space), ``search.json`` (the search
history and front), ``subnet.safetensors`` (the best subnet, ``supernet_kernels.load``),
``results.json`` (top-1 of the largest and the smallest subnet of the filtered space and of
the searched subnet, its MACs against dense) and ``history.jsonl`` (training logs).
"""

from __future__ import annotations

import json

from _common import (
    add_run_args,
    add_schedule_args,
    digits_data,
    extremes_metrics,
    make_parser,
    out_dir,
    pretrain,
    run_kwargs,
    save_subnet,
    tiny_vit,
)


def load_full(args):
    import timm

    from supernet_kernels.train import ImageFolderDataset

    kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = timm.create_model(args.model, pretrained=False, checkpoint_path=args.checkpoint, **kw)
    cfg = model.pretrained_cfg
    size = model.patch_embed.img_size[0]
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    def folder(root):
        return ImageFolderDataset(root, image_size=size, mean=mean, std=std)

    val = folder(args.val_dir) if args.val_dir else None
    return model.eval(), folder(args.train_dir), val, size


def main(argv=None) -> None:
    p = make_parser(__doc__)
    p.add_argument("--smoke", action="store_true", help="tiny ViT on digits, CPU, ~1 minute")
    p.add_argument("--preset", default="paper", choices=["paper", "ours"])
    p.add_argument("--model", default=None, help="timm architecture, e.g. deit_base_patch16_224")
    p.add_argument("--checkpoint", default=None, help="weights file for checkpoint_path=")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--train-dir", default=None)
    p.add_argument("--val-dir", default=None)
    add_schedule_args(p, lr=7.5e-5, batch_size=64)
    p.add_argument("--filter-steps", type=int, default=20, help="local supernet steps per block")
    p.add_argument("--window", default="0.40,0.50", help="FLOPs window, fractions of dense")
    p.add_argument("--generations", type=int, default=None, help="default: the preset's (20)")
    p.add_argument("--population", type=int, default=None, help="default: the preset's (50)")
    p.add_argument("--search-batches", type=int, default=4, help="held-out batches per subnet")
    add_run_args(p, out="runs/flora")
    args = p.parse_args(argv)

    import torch

    from supernet_kernels.recipes import flora
    from supernet_kernels.train import ClassificationTask

    if args.smoke:
        torch.set_num_threads(1)  # tiny matmuls: more threads only spin (~100x slower here)
        train, val = digits_data()
        model = pretrain(tiny_vit(), train)  # the teacher: a ViT that knows digits
        size = 32
        args.steps, args.lr, args.batch_size = min(args.steps, 60), 1e-3, 32
        args.workers, args.filter_steps = 0, min(args.filter_steps, 5)
        args.window = "0.55,0.85"  # a 3-block width-48 ViT is half patch embedding and head
        ratios = (0.25, 0.5, 0.75, 1.0)  # 4^3 = 64 triples per block instead of 343
        search_kw = {"generations": 2, "population": 8, "parents": 3, "mutations": 4,
                     "crossovers": 4}  # fmt: skip
    else:
        if not (args.model and args.checkpoint and args.train_dir):
            p.error("--model, --checkpoint and --train-dir are required without --smoke")
        model, train, val, size = load_full(args)
        search_kw = {}
        ratios = None  # the preset's (DeiT-S sixths for width 384)
    if args.generations is not None:
        search_kw["generations"] = args.generations
    if args.population is not None:
        search_kw["population"] = args.population
    out = out_dir(args)
    task = ClassificationTask()
    heldout = val if val is not None else train
    kw = run_kwargs(args, out)
    kw["progress"] = not args.smoke
    # convert + filter + train
    sn, hist = flora.train_flora(
        model, train, task=task, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
        filter_steps_per_block=args.filter_steps, heldout=heldout, heldout_batches=1,
        ratios=ratios, preset=args.preset, **kw,
    )  # fmt: skip
    space = hist["space"]
    (out / "space.json").write_text(json.dumps(space, indent=1))
    kept = flora.kept_fraction(space, sn)
    print(f"filter kept {100 * kept:.1f}% of the joint rank choices")
    # search (FLORA's evolution over the filtered space, FLOPs window)
    batches = flora.as_batches(heldout, args.search_batches, args.batch_size, task)

    def evaluate(m):
        m.eval()
        hit = n = 0
        with torch.no_grad():
            for x, y in batches:
                hit += int((m(x.to(next(m.parameters()).device)).argmax(-1).cpu() == y).sum())
                n += len(y)
        return hit / n

    lo, hi = (float(v) for v in args.window.split(","))
    res = flora.flora_search(sn, evaluate, (1, 3, size, size), space=space, window=(lo, hi),
                             preset=hist["preset"], seed=args.seed, **search_kw)  # fmt: skip
    res.to_json(out / "search.json")
    best = res.best
    # extract, evaluate, save
    path = save_subnet(sn, best["config"], out / "subnet.safetensors")
    sub = sn.extract(best["config"]).eval()
    results = {"kept_fraction": kept, "searched_macs": best["macs"],
               "window": [lo, hi], "search_metric": best["metric"]}  # fmt: skip
    if val is not None:
        results["teacher_top1"] = task.metric(model, val, batch_size=args.batch_size)
        results["searched_top1"] = task.metric(sub, val, batch_size=args.batch_size)
        from supernet_kernels.search.space import SearchSpace

        sp = SearchSpace(sn, space)
        results.update(extremes_metrics(task, sn, sp.max_config(), sp.min_config(), val,
                                        args.batch_size, "top1"))  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    print(f"wrote {path} and {out}")


if __name__ == "__main__":
    main()
