"""`supernet-kernels plan`."""

from __future__ import annotations

from pathlib import Path

from ._common import (
    EXIT_OK,
    CLIError,
    InputFileError,
    UsageError,
    _config_from_file,
    _log,
    _positive_int,
    _set_threads,
    _write_json,
    add_command,
    common_options,
    load_supernet,
)
from ._sources import _make_model

_SAM_NAMES = ("sam_vit_b", "sam_vit_l", "sam_vit_h")


def _plan_supernet(args):
    """(supernet, image size): a converted supernet folder/file, or a model converted here (a
    timm name, a checkpoint with --arch / --sam, or sam_vit_b/l/h: the architecture with random
    weights; a plan needs the shapes only)."""
    import supernet_kernels as sk

    src = args.model
    path = Path(src)
    if path.is_dir() and (path / "supernet.json").is_file() or path.name == "supernet.json":
        sn, doc, _ = load_supernet(path)
        return sn, int(doc.get("image_size") or 224)
    if src in _SAM_NAMES and not path.exists():
        try:
            from segment_anything import sam_model_registry
        except ImportError as exc:
            raise CLIError(f"{src} needs segment-anything (pip install segment-anything)") from exc
        enc = sam_model_registry[src.removeprefix("sam_")](checkpoint=None).image_encoder
        model, size = enc.eval(), int(getattr(enc, "img_size", 1024))
    else:
        args.pretrained = False  # no download: the plan needs the architecture only
        args.model_kwargs = None
        model, info = _make_model(args)
        size = int(info.get("image_size") or 224)
    _log(args, f"converting {src} into a supernet ...")
    try:
        return sk.convert(model, inplace=True), size
    except ValueError as exc:
        raise UsageError(f"plan: cannot convert {src}: {exc}") from exc


def run(args) -> int:
    import torch

    from ..planning import format_plan, plan

    _set_threads(args)
    if args.capability and not args.gpu:
        raise UsageError("--capability describes the GPU named by --gpu; give --gpu too")
    dtype = None
    if args.dtype:
        dtype = getattr(torch, args.dtype)
    sn, size = _plan_supernet(args)
    choice = args.plan_config or "max"
    if choice in ("max", "min"):
        cfg = sn.max_config() if choice == "max" else sn.min_config()
    else:
        cfg = _config_from_file(choice)
    try:
        sn.set_active(cfg)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputFileError(f"--config {choice}: does not fit this supernet: {exc}") from exc
    res = int(cfg.get("resolution") or size) if isinstance(cfg, dict) else size
    x = torch.randn(args.batch, 3, res, res)
    _log(args, f"running {args.model} ({choice} config, {res}x{res}) once to record its calls ...")
    try:
        p = plan(sn, x, gpu=args.gpu, capability=args.capability, dtype=dtype)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(format_plan(p))
    if args.json:
        out = _write_json(Path(args.json), p)
        _log(args, f"wrote {out}")
    return EXIT_OK


def add_parser(sub):
    p = add_command(
        sub,
        "plan",
        "what auto runs for each layer and attention on a GPU, why, and the recorded times",
        "Run the model once on the CPU (or the GPU present) and print, for each weight layer "
        "and attention: its op and shape, the implementation `auto` picks, why (verified on "
        "which architecture, which table, which fallback), the recorded time of every "
        "candidate and of the dense layer, and a flag where the pick is slower than dense. "
        "With --gpu (and --capability) the answer comes from the dispatch tables for that "
        "GPU: every time is a recorded one, not measured here.",
    )
    p.add_argument(
        "--model", required=True, metavar="NAME_OR_PATH",
        help="a supernet folder (convert's output), a timm model name (architecture only, "
        "random weights), sam_vit_b/l/h, or a checkpoint with --arch / --sam",
    )  # fmt: skip
    p.add_argument("--arch", default=None, help="timm architecture of a checkpoint --model")
    p.add_argument("--sam", default=None, metavar="TYPE", help="--model is a SAM checkpoint")
    p.add_argument(
        "--config", dest="plan_config", default="max", metavar="max|min|FILE",
        help="the subnet: the largest, the smallest, or a subnet config file (default max)",
    )  # fmt: skip
    p.add_argument("--gpu", default=None, metavar="NAME", help="plan for this GPU (its name)")
    p.add_argument(
        "--capability", default=None, metavar="X.Y",
        help="the named GPU's compute capability (9.0 for H100/H200); needed unless its own "
        "table records it",
    )  # fmt: skip
    p.add_argument("--batch", type=_positive_int, default=1, help="images per call (default 1)")
    p.add_argument(
        "--dtype", choices=("float16", "bfloat16", "float32"), default=None,
        help="activation dtype to plan for (default float16 for a GPU)",
    )  # fmt: skip
    p.add_argument("--json", default=None, metavar="PATH", help="also write the plan as JSON")
    common_options(p, config=False)
    p.set_defaults(func=run)
    return p
