"""Mixed-precision LoRA on a segment-anything model, end to end: convert the image encoder to a
mixed-precision supernet (weight bits per linear, activation bits per linear and for the
attention matmuls, depth, MLP width; ``--preset paper``), train LoRA adapters and LSQ step
sizes with the progressive schedule, search under a BitOPs budget, extract, evaluate, save.

Smoke run (2 CPU cores, about a minute: a 4-block SAM of width 32 on synthetic shapes)::

    python python/mplora_sam.py --smoke --out runs/mplora_smoke

Full run (one GPU)::

    python python/mplora_sam.py --model-type vit_b --checkpoint sam_vit_b_01ec64.pth \
        --train-dir /data/sa1b_subset/train --val-dir /data/sa1b_subset/val \
        --steps 20000 --budget 0.05 --out runs/mplora_b

Full-run data: segmentation folders in the format of ``supernet_kernels.train.data``
(``root/images/<stem>.<ext>`` + ``root/masks/<stem>.npz`` or ``.png``), e.g. a few thousand
SA-1B images or a fine-tuning set such as the paper's; images resized to 1024. Time on one
H100 (bf16, batch 4, sandwich of 4 subnets per step): about 1.5 steps / s for SAM ViT-B with
the fake-quantized attention (it materializes the attention probabilities), so 20000 steps
take about 4 hours; the search (``--generations`` x ``--population`` subnets, each scored on
``--search-batches`` held-out batches) about 20 minutes. On SAM ViT-B the paper preset's
smallest subnet is 3.0% of the dense fp16 BitOPs, so budgets down to ~3% are reachable.

Writes to ``--out``: ``search.json`` (history and front), ``subnet.safetensors`` (the best
subnet under the budget; its activation quantizers are fake, so it is saved as a state dict
with its config in ``subnet.safetensors.json``), ``results.json`` (the BitOPs floor, the
searched subnet's BitOPs and mIoU, the mIoU of the largest and smallest subnets) and
``history.jsonl``.
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
    add_schedule_args(p, lr=1e-3, batch_size=4)
    p.add_argument("--group-size", type=int, default=128, help="quantization group (-1: channel)")
    p.add_argument("--budget", type=float, default=0.05, help="BitOPs budget, fraction of dense")
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--population", type=int, default=20)
    p.add_argument("--search-batches", type=int, default=4)
    add_run_args(p, out="runs/mplora")
    args = p.parse_args(argv)

    import torch

    from supernet_kernels.recipes import mplora
    from supernet_kernels.search import search
    from supernet_kernels.search.objectives import CostModel
    from supernet_kernels.train import SegmentationTask
    from supernet_kernels.train.tiny_sam import tiny_sam

    if args.smoke:
        torch.set_num_threads(1)  # tiny matmuls: more threads only spin
        sam = tiny_sam()
        train, val = shapes_data(32), shapes_data(8, seed=1)
        args.steps, args.batch_size, args.workers = min(args.steps, 12), 4, 0
        args.generations, args.population, args.search_batches = 1, 4, 1
        group = 16
    else:
        if not (args.checkpoint and args.train_dir):
            p.error("--checkpoint and --train-dir are required without --smoke")
        sam, train, val = load_sam(args)
        group = None if args.group_size == -1 else args.group_size
    task = SegmentationTask(sam)
    out = out_dir(args)
    kw = run_kwargs(args, out)
    kw["progress"] = not args.smoke
    encoder = sam.image_encoder
    sn, hist = mplora.train_mplora(
        encoder, train, preset=args.preset, task=task, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, group_size=group, **kw,
    )  # fmt: skip
    size = encoder.img_size
    shape = (1, 3, size, size)
    cm = CostModel(sn, shape)
    floor = cm.costs(sn.min_config(), ("bitops",))["bitops"] / cm.reference("dense", "bitops")
    print(f"BitOPs floor of the space: {100 * floor:.1f}% of dense fp16")
    if args.smoke:  # a 4-block width-32 encoder on 16 tokens: the 16-bit patch embedding and
        args.budget = max(args.budget, round(1.2 * floor, 3))  # neck are a third of it
    # mIoU on the first search_batches held-out batches (fixed prompts)
    evaluate = held_out_evaluator(task, train, val, args.search_batches, args.batch_size)

    res = search(sn, evaluate, shape, objective="bitops", budget=f"bitops <= {args.budget} * dense",
                 generations=args.generations, population=args.population, seed=args.seed,
                 progress=not args.smoke)  # fmt: skip
    res.to_json(out / "search.json")
    best = res.best
    path = save_subnet(sn, best["config"], out / "subnet.safetensors")
    dense = cm.reference("dense", "bitops")
    results = {
        "bitops_floor": floor,
        "budget": args.budget,
        "searched_bitops": best["bitops"] / dense,
        "search_miou": best["metric"],
    }
    if val is not None:
        sub = sn.extract(best["config"]).eval()
        results["searched_miou"] = task.metric(sub, val, batch_size=args.batch_size)
        results.update(extremes_metrics(task, sn, sn.max_config(), sn.min_config(), val,
                                        args.batch_size, "miou"))  # fmt: skip
        sn.set_active(sn.max_config())
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    print(f"wrote {path} and {out}")


if __name__ == "__main__":
    main()
