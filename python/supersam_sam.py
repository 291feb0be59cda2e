"""SuperSAM end to end on a segment-anything model: convert the image encoder to a supernet
(elastic depth of blocks 1, 2, 5, 6, 9 and MLP width, neurons ordered by importance), train
with the sandwich rule (``--preset paper``: one optimizer step per subnet, Dice loss with the
mask decoder trained, block 0 at full width, random subnets below full width), search with a
tuner under a size budget (Optuna TPE standing in for the paper's OpenTuner), extract,
evaluate, save.

Smoke run (2 CPU cores, about a minute: a 4-block SAM of width 32 on synthetic shapes)::

    python python/supersam_sam.py --smoke --out runs/supersam_smoke

Full run (one GPU)::

    python python/supersam_sam.py --model-type vit_b --checkpoint sam_vit_b_01ec64.pth \
        --train-dir /data/seg/train --val-dir /data/seg/val --steps 20000 \
        --budget 0.7 --trials 100 --out runs/supersam_b

Full-run data: segmentation folders in the format of ``supernet_kernels.train.data``
(``root/images/<stem>.<ext>`` + ``root/masks/<stem>.npz`` or ``.png``), e.g. one of the
paper's fine-tuning sets; images resized to 1024. Time on one H100 (bf16, batch 4, three
optimizer steps per step): about 2 steps / s for SAM ViT-B, so 20000 steps take about 3
hours; the search (``--trials`` subnets scored on ``--search-batches`` held-out batches)
about 15 minutes.

Writes to ``--out``: ``space.json``, ``search.json`` (the tuner's trials and front),
``encoder.safetensors`` (the best encoder subnet under the budget, ``supernet_kernels.load``),
``results.json`` (mIoU of the largest, smallest and searched subnets, the searched subnet's
parameters against the dense encoder) and ``history.jsonl``.
"""

from __future__ import annotations

import json

from _common import (
    add_run_args,
    add_sam_args,
    add_schedule_args,
    extremes_metrics,
    held_out_evaluator,
    load_sam,
    make_parser,
    out_dir,
    run_kwargs,
    save_subnet,
    shapes_data,
)


def main(argv=None) -> None:
    p = make_parser(__doc__)
    p.add_argument("--smoke", action="store_true", help="tiny SAM on synthetic shapes, CPU")
    p.add_argument("--preset", default="paper", choices=["paper", "ours"])
    add_sam_args(p)
    for a in p._actions:  # not required with --smoke
        if a.dest in ("checkpoint", "train_dir"):
            a.required = False
    add_schedule_args(p, lr=1e-4, batch_size=4)
    p.add_argument("--calib-batches", type=int, default=4, help="batches for neuron ordering")
    p.add_argument("--budget", type=float, default=0.7, help="params budget, fraction of dense")
    p.add_argument("--trials", type=int, default=None, help="tuner trials (default: preset's)")
    p.add_argument("--search-batches", type=int, default=4)
    add_run_args(p, out="runs/supersam")
    args = p.parse_args(argv)

    import torch

    from supernet_kernels.recipes import supersam
    from supernet_kernels.train.tiny_sam import tiny_sam

    if args.smoke:
        torch.set_num_threads(1)  # tiny matmuls: more threads only spin
        sam = tiny_sam(depth=12, global_attn_indexes=(2, 5, 8, 11), embed_dim=16)
        train, val = shapes_data(32), shapes_data(8, seed=1)
        args.steps, args.batch_size, args.workers = min(args.steps, 8), 4, 0
        args.trials, args.search_batches, args.calib_batches = args.trials or 8, 1, 1
    else:
        if not (args.checkpoint and args.train_dir):
            p.error("--checkpoint and --train-dir are required without --smoke")
        sam, train, val = load_sam(args)
    out = out_dir(args)
    kw = run_kwargs(args, out)
    kw["progress"] = not args.smoke
    sn, hist = supersam.train_supersam(
        sam, train, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
        calib_batches=args.calib_batches, preset=args.preset, **kw,
    )  # fmt: skip
    task = hist["task"]
    (out / "space.json").write_text(json.dumps(hist["space"], indent=1))
    # mIoU on the first search_batches held-out batches (fixed prompts)
    evaluate = held_out_evaluator(task, train, val, args.search_batches, args.batch_size)

    size = sam.image_encoder.img_size
    res = supersam.supersam_search(
        sn, evaluate, (1, 3, size, size), budget=f"params <= {args.budget} * dense",
        preset=hist["preset"], n_trials=args.trials, seed=args.seed, progress=not args.smoke,
    )  # fmt: skip
    res.to_json(out / "search.json")
    best = res.best
    path = save_subnet(sn, best["config"], out / "encoder.safetensors")
    results = {"budget": args.budget, "searched_params": best["params"], "search": best["metric"]}
    if val is not None:
        sub = sn.extract(best["config"]).eval()
        results["searched_miou"] = task.metric(sub, val, batch_size=args.batch_size)
        results.update(extremes_metrics(task, sn, sn.max_config(), sn.min_config(), val,
                                        args.batch_size, "miou"))  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    print(f"wrote {path} and {out}")


if __name__ == "__main__":
    main()
