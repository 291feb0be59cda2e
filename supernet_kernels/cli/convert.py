"""`supernet-kernels convert`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..recipes import RECIPES as RECIPES_TABLE
from ._common import (
    EXIT_OK,
    RECIPES,
    CLIError,
    UsageError,
    _build_supernet,
    _int_list,
    _json_dict,
    _load_data,
    _load_space_arg,
    _log,
    _nonneg_int,
    _set_threads,
    _task_for,
    _write_supernet,
    add_command,
    common_options,
)
from ._sources import _make_model


def _space_override(recipe: str, model, args_space, bits) -> dict | None:
    """The ``convert(space=...)`` override of a recipe, merged with the user's."""
    from ..config_files import deep_merge

    base = RECIPES_TABLE[recipe].space(model, bits)
    if args_space:
        base = deep_merge(base or {}, args_space)
    return json.loads(json.dumps(base)) if base is not None else None


def _calibration(args, info: dict) -> dict:
    """convert's inputs for ordering MLP units by activation importance on --calib-data."""
    from ..recipes.flora import as_batches
    from ..recipes.supersam import encoder_calibration

    task, _ = _task_for(info, args)
    ds = _load_data(args.calib_data, info, info["task"])
    return {
        "_importance": "activation",
        "_calib": encoder_calibration(as_batches(ds, 4, 32, task), task),
    }


def _summary(sp: dict, family: str) -> str:
    n_lin = len(sp["linear"])
    n_fact = sum(1 for s in sp["linear"].values() if s["rank"] != [None])
    n_drop = sum(1 for v in sp["depth"].values() if False in v)
    n_heads = sum(1 for v in sp["heads"].values() if len(v) > 1)
    return (
        f"supernet: {family}, {n_lin} elastic linears ({n_fact} factorized), {len(sp['mlp'])} "
        f"elastic MLPs, {n_heads} attentions with elastic heads, {n_drop} droppable blocks, "
        f"resolution {sp['resolution']}"
    )


def run(args) -> int:
    _set_threads(args)
    t0 = time.perf_counter()
    space_user = _load_space_arg(args.space)
    _log(args, f"loading {args.model} ...")
    model, info = _make_model(args)
    from ..supernet import families as fam

    family = fam.detect_family(model)
    build = fam.describe_build(model, family)
    if build is None:
        raise CLIError(
            f"the {family} model's architecture cannot be recorded for rebuilding; the command "
            "line needs a timm model, a SAM image encoder or a transformers ViT / SAM (use the "
            "Python API for other models)"
        )
    bits = tuple(args.bits)
    override = _space_override(args.recipe, model, space_user, bits)
    doc = {
        **info,
        "recipe": args.recipe,
        "space_override": override,
        "attention": args.attention,
        "bits": list(bits) if "bits" in RECIPES_TABLE[args.recipe].records else None,
        "lora_rank": args.lora_rank if "lora_rank" in RECIPES_TABLE[args.recipe].records else None,
    }
    meta = dict(doc)
    doc["importance"] = "magnitude"
    if args.calib_data:
        meta.update(_calibration(args, info))
        doc["importance"] = "activation"
    _log(args, f"converting ({family}, recipe {args.recipe}) ...")
    try:
        sn = _build_supernet(model, meta)
    except ValueError as exc:
        raise UsageError(f"convert: {exc}") from exc
    out = Path(args.out)
    path = _write_supernet(sn, doc, out)
    _log(args, _summary(sn.space, family))
    _log(
        args, f"wrote {path} and {out / 'supernet.safetensors'} ({time.perf_counter() - t0:.1f} s)"
    )
    return EXIT_OK


def add_parser(sub):
    p = add_command(
        sub,
        "convert",
        "turn a timm ViT / DeiT / Swin, a SAM image encoder or a transformers ViT / SAM into a "
        "supernet",
        "Convert a model into a weight-sharing supernet and write OUT/supernet.json (how to "
        "rebuild it, its search space, largest / smallest configs) and "
        "OUT/supernet.safetensors (its weights).\n\n"
        "MODEL is a timm model name (vit_tiny_patch16_224; --model-kwargs sets its constructor "
        "arguments, --pretrained downloads timm's weights), a state-dict checkpoint "
        "(.pth / .pt / .safetensors; --arch names its timm architecture), a segment-anything "
        "checkpoint with --sam vit_b / vit_l / vit_h (its image encoder is converted), a "
        "Hugging Face transformers folder written by save_pretrained (config.json and "
        "safetensors weights; the class from config.json, or --arch hf:CLASS), or hf:CLASS "
        "(fresh weights; --model-kwargs sets its config). transformers classes: "
        "ViTModel, ViTForImageClassification, SamModel, SamVisionModel. Nothing is downloaded "
        "unless --pretrained names a timm model, and nothing is unpickled.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="timm model name, checkpoint file, transformers folder or hf:CLASS",
    )
    p.add_argument(
        "--arch",
        default=None,
        help="timm architecture of a state-dict checkpoint file MODEL, or hf:CLASS for a "
        "transformers folder MODEL",
    )
    p.add_argument(
        "--sam",
        choices=("vit_b", "vit_l", "vit_h"),
        default=None,
        help="MODEL is a segment-anything checkpoint of this type",
    )
    p.add_argument(
        "--model-kwargs",
        type=_json_dict,
        default=None,
        metavar="JSON",
        help='timm constructor arguments, e.g. \'{"img_size": 16, "num_classes": 10}\', or '
        "the config fields of hf:CLASS",
    )
    p.add_argument(
        "--pretrained", action="store_true", help="timm name: download pretrained weights"
    )
    p.add_argument(
        "--recipe",
        choices=RECIPES,
        default="default",
        help="search space: default (ranks of qkv / fc1 / fc2, proj bits, MLP widths, "
        "depth, resolution), flora (ranks only), supersam (depth + MLP width), mplora "
        "(weight bits with LoRA adapters)",
    )
    p.add_argument(
        "--space",
        default=None,
        metavar="FILE|JSON",
        help="space overrides (convert(space=...)): a JSON / YAML file or inline JSON, "
        "merged over the recipe's",
    )
    p.add_argument(
        "--attention",
        choices=("ours", "original"),
        default="ours",
        help="run attention through supernet_kernels' op (ours) or the model's own",
    )
    p.add_argument(
        "--bits",
        type=_int_list,
        default=[2, 3, 4, 8],
        metavar="LIST",
        help="recipe mplora: weight bit-widths, comma-separated",
    )
    p.add_argument(
        "--lora-rank",
        type=_nonneg_int,
        default=8,
        help="recipe mplora: LoRA adapter rank (0: no adapters, train all weights)",
    )
    p.add_argument(
        "--calib-data",
        default=None,
        metavar="DATA",
        help="order MLP units by activation importance on a few batches of this data "
        "(default: by weight magnitude)",
    )
    p.add_argument("--out", default="supernet_out", metavar="DIR", help="output folder")
    common_options(p)
    p.set_defaults(func=run)
    return p
