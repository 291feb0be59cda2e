"""`supernet-kernels train`."""

from __future__ import annotations

import copy
import time
from pathlib import Path

from ..recipes import RECIPES as RECIPES_TABLE
from ._common import (
    EXIT_OK,
    TRAIN_RECIPES,
    InputFileError,
    UsageError,
    _device,
    _json_dict,
    _load_data,
    _log,
    _nonneg_int,
    _positive_float,
    _positive_int,
    _set_threads,
    _task_for,
    _write_supernet,
    add_command,
    common_options,
    load_supernet,
)


def _sampler_for(recipe: str, args, steps: int):
    return RECIPES_TABLE[recipe].sampler(args.num_random, steps, args.distill, args.drop_prob)


def default_recipe(doc: dict) -> str:
    """The training recipe of a supernet.json: the one it was converted with where that one
    trains, else the sandwich rule."""
    recipe = RECIPES_TABLE.get(doc.get("recipe"))
    return recipe.name if recipe is not None and recipe.sampler is not None else "sandwich"


def _train_config(args, out: Path):
    """The TrainConfig of the options (``--trainer`` / ``trainer:`` adds further fields)."""
    import dataclasses

    from ..train import TrainConfig

    extra = dict(args.trainer or {})
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(k for k in extra if k not in fields)
    if bad:
        raise UsageError(f"trainer: unknown TrainConfig fields {bad} (known: {sorted(fields)})")
    kw = dict(
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        num_random=args.num_random,
        distill=args.distill,
        warmup_steps=args.warmup_steps,
        amp=args.amp,
        seed=args.seed,
        checkpoint_dir=str(out / "checkpoint"),
        checkpoint_every=args.checkpoint_every,
        log_file=str(out / "train_log.jsonl"),
        progress=not args.no_progress,
    )
    kw.update(extra)
    try:
        return TrainConfig(**kw)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


def _make_trainer(args, sn, doc: dict, recipe: str, task, data, eval_data, config):
    from ..train import Trainer

    teacher = None
    if config.distill == "teacher":
        teacher = copy.deepcopy(sn).requires_grad_(False).eval()
        teacher.set_active(teacher.max_config())
    trainable = RECIPES_TABLE[recipe].trainable
    trainable = trainable(doc) if trainable is not None else None
    try:
        sampler = _sampler_for(recipe, args, config.steps)
    except ValueError as exc:
        raise UsageError(f"--recipe {recipe}: {exc}") from exc
    try:
        return Trainer(
            sn,
            task,
            data,
            config,
            sampler=sampler,
            teacher=teacher,
            trainable=trainable,
            eval_data=eval_data,
            device=_device(args),
        )
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith(("train_data", "eval_data")):
            raise InputFileError(f"data: {msg}") from exc
        raise


def _train(args, trainer, config, ckpt: Path) -> None:
    """Run the trainer (from the checkpoint with --resume) and report the last step."""
    t0 = time.perf_counter()
    if args.resume:
        from ..train.checkpoint import checkpoint_path

        if not checkpoint_path(ckpt).is_file():
            _log(args, f"--resume: no checkpoint in {ckpt} yet, starting at step 0")
    try:
        records = trainer.train(resume=bool(args.resume))
    except ValueError as exc:
        if "checkpoint" in str(exc):
            raise InputFileError(f"--resume: {exc}") from exc
        raise
    dt = time.perf_counter() - t0
    if records:
        last = records[-1]
        losses = " ".join(f"{v:.4g}" for v in last["loss"])
        _log(args, f"step {last['step'] + 1}/{config.steps}: loss {losses} ({dt:.1f} s)")
    else:
        _log(args, f"nothing to do: the checkpoint is already at step {trainer.step}")


def _evaluate(args, trainer, sn, eval_data) -> dict:
    ev = trainer.evaluate(eval_data, [sn.max_config(), sn.min_config()])
    _log(
        args,
        f"eval {ev[0]['metric_name']}: largest {ev[0]['metric']:.4f}, smallest "
        f"{ev[1]['metric']:.4f}",
    )
    return {"max": ev[0]["metric"], "min": ev[1]["metric"], "metric": ev[0]["metric_name"]}


def run(args) -> int:
    import torch

    _set_threads(args)
    sn, doc, src = load_supernet(args.supernet)
    task, kind = _task_for(doc, args, sn)
    data = _load_data(args.data, doc, kind)
    eval_data = _load_data(args.eval_data, doc, kind) if args.eval_data else None
    recipe = args.recipe or default_recipe(doc)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = _train_config(args, out)
    trainer = _make_trainer(args, sn, doc, recipe, task, data, eval_data, config)
    _log(
        args,
        f"training {src} with {recipe} for {config.steps} steps (batch {config.batch_size}, "
        f"lr {config.lr:g}, distill {config.distill}) on {len(data)} samples, {trainer.device}",
    )
    ckpt = out / "checkpoint"
    _train(args, trainer, config, ckpt)
    sn.to(torch.device("cpu"))
    new = dict(doc)
    new["trained"] = {
        "recipe": recipe,
        "steps": config.steps,
        "from": str(src),
        "data": str(args.data),
    }
    if eval_data is not None:
        new["trained"]["eval"] = _evaluate(args, trainer, sn, eval_data)
    path = _write_supernet(sn, new, out)
    _log(args, f"wrote {path} (log {out / 'train_log.jsonl'}, checkpoint {ckpt})")
    return EXIT_OK


def add_parser(sub):
    p = add_command(
        sub,
        "train",
        "train a supernet (sandwich rule or a recipe's sampler) on a data folder",
        "Train a supernet from `convert` (or an earlier `train`) and write OUT/supernet.json "
        "+ OUT/supernet.safetensors, OUT/train_log.jsonl and OUT/checkpoint/.\n\n"
        "Data (--data, --eval-data):\n"
        "  classification: a folder of class subfolders, root/<class>/<image> (classes are the\n"
        "    sorted subfolder names; images resized to the model's size and normalized with its\n"
        "    mean / std), or a .npz with arrays images (N, 3, H, W) float, already normalized,\n"
        "    and labels (N,) int;\n"
        "  segmentation (SAM): root/images/<stem>.jpg + root/masks/<stem>.npz (array 'masks'\n"
        "    (N, H, W) of 0 / 1) or root/masks/<stem>.png (instance ids, 0 = background).\n"
        "Recipes (--recipe; default: the one the supernet was converted with, else sandwich):\n"
        "  sandwich  largest + smallest + --num-random random subnets per step\n"
        "  flora     FLORA's low-rank-aware rank sampling (1 / rank ratio)\n"
        "  supersam  SuperSAM's block dropping (--drop-prob) and MLP widths, sandwich\n"
        "  mplora    progressive bit-width stages 8 -> 8,4 -> 8,4,3,2 (LoRA adapters only)\n"
        "Other TrainConfig fields: --set trainer.FIELD=VALUE (or `trainer:` in --config).",
    )
    p.add_argument("supernet", metavar="SUPERNET", help="supernet.json (or its folder)")
    p.add_argument(
        "--data",
        required=False,
        default=None,
        metavar="DATA",
        help="training data (required; formats above)",
    )
    p.add_argument("--eval-data", default=None, metavar="DATA", help="evaluated at the end")
    p.add_argument(
        "--task",
        choices=("auto", "classification", "segmentation"),
        default="auto",
        help="task (auto: from the supernet)",
    )
    p.add_argument("--recipe", choices=TRAIN_RECIPES, default=None, help="sampler (see above)")
    p.add_argument("--steps", type=_positive_int, default=1000, help="optimizer steps")
    p.add_argument("--lr", type=_positive_float, default=1e-4, help="peak learning rate")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="per micro-batch")
    p.add_argument("--grad-accum", type=_positive_int, default=1, help="micro-batches per step")
    p.add_argument("--num-random", type=_nonneg_int, default=1, help="random subnets per step")
    p.add_argument(
        "--distill",
        choices=("largest", "teacher", "none"),
        default="largest",
        help="distillation: from the largest subnet in the same step (in-place), from a "
        "frozen copy of the supernet's largest subnet as loaded (teacher), or none",
    )
    p.add_argument("--drop-prob", type=float, default=0.5, help="supersam: block drop prob.")
    p.add_argument("--warmup-steps", type=_nonneg_int, default=0, help="linear warm-up steps")
    p.add_argument("--amp", choices=("bf16",), default=None, help="bf16 autocast")
    p.add_argument("--seed", type=int, default=0, help="seed of subnets and data order")
    p.add_argument(
        "--checkpoint-every", type=_nonneg_int, default=0, help="checkpoint period (0: at the end)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from OUT/checkpoint (same options required)",
    )
    p.add_argument(
        "--trainer",
        type=_json_dict,
        default=None,
        metavar="JSON",
        help="more TrainConfig fields, e.g. '{\"weight_decay\": 0.1}'",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--out", default="train_out", metavar="DIR", help="output folder")
    common_options(p)
    p.set_defaults(func=run, _required=("data",))
    return p
