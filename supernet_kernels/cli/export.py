"""`supernet-kernels export`."""

from __future__ import annotations

from pathlib import Path

from ._common import (
    EXIT_OK,
    CLIError,
    InputFileError,
    UsageError,
    _config_from_file,
    _log,
    _read_json,
    _set_threads,
    _write_json,
    add_command,
    common_options,
    load_supernet,
)


def _precheck_config(cfg, space, what: str) -> None:
    """The config's shape and names against a recorded space (no supernet needed); the values
    are validated by the supernet itself."""
    if not isinstance(cfg, dict):
        raise InputFileError(f"{what}: a subnet config is a JSON object, got {type(cfg).__name__}")
    keys = ("resolution", "depth", "mlp", "heads", "linear")
    bad = [k for k in cfg if k not in keys]
    if bad:
        raise InputFileError(f"{what}: unknown key {bad[0]!r} (expected some of {list(keys)})")
    if not isinstance(space, dict):
        return
    for section in keys[1:]:
        entries = cfg.get(section, {})
        if not isinstance(entries, dict):
            raise InputFileError(f"{what}: {section} must be an object")
        names = space.get(section) or {}
        unknown = [n for n in entries if n not in names]
        if unknown:
            raise InputFileError(
                f"{what}: {section}.{unknown[0]} is not in this supernet (it has "
                f"{list(names)[:4]}{' ...' if len(names) > 4 else ''})"
            )


def _chosen_config(args, recorded: dict) -> tuple[dict | None, str | None]:
    """(config, what it is) from --subnet-config or --front (+ --member), checked against the
    recorded space; (None, None) for --preset (the supernet knows its own)."""
    cfg = what = None
    if args.subnet_config:
        cfg = _config_from_file(args.subnet_config)
        what = f"config {args.subnet_config}"
    elif args.front:
        front_doc = _read_json(args.front, "front file")
        front = front_doc.get("front")
        if not isinstance(front, list) or not front:
            raise InputFileError(f"{args.front}: no front members (is it a search front.json?)")
        if args.member is None:
            best = front_doc.get("best")
            if not isinstance(best, dict):
                raise InputFileError(f"{args.front}: no best member; pick one with --member")
            cfg, what = best["config"], f"the best member of {args.front}"
        else:
            if not -len(front) <= args.member < len(front):
                raise UsageError(
                    f"--member {args.member}: the front has {len(front)} members "
                    f"(0..{len(front) - 1})"
                )
            cfg, what = front[args.member]["config"], f"member {args.member} of {args.front}"
    if cfg is not None:
        _precheck_config(cfg, recorded.get("space"), what)
    return cfg, what


def _first_tensor(out):
    """A model's main output: the first of a tuple, or of a transformers ModelOutput."""
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return out[0] if isinstance(out, tuple | list) else out


def _verify(args, sub, out: Path, size: int) -> None:
    """Load the written file back and compare its output with the extracted subnet's."""
    import torch

    import supernet_kernels as sk

    loaded = sk.load(out)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    sub.eval()
    with torch.no_grad():
        a, b = sub(x), loaded(x)
    a, b = _first_tensor(a), _first_tensor(b)
    err = float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
    if err > 1e-4:
        raise CLIError(f"verify: the reloaded subnet differs from the extracted one ({err:.3g})")
    _log(args, f"verified: supernet_kernels.load({out.name}) reproduces it (rel. err {err:.2g})")


def run(args) -> int:
    import supernet_kernels as sk

    from ..cost import profile
    from ..supernet.store import read_supernet_doc

    _set_threads(args)
    if sum([bool(args.subnet_config), bool(args.front), bool(args.preset)]) != 1:
        raise UsageError("give exactly one of --subnet-config, --front or --preset")
    # The config is read and checked against the recorded space before the supernet is built
    # (a minute for SAM): a broken file is reported at once.
    try:
        recorded, _ = read_supernet_doc(args.supernet)
    except (FileNotFoundError, ValueError) as exc:
        raise InputFileError(str(exc)) from exc
    cfg, what = _chosen_config(args, recorded)
    sn, doc, src = load_supernet(args.supernet)
    if cfg is None:
        cfg = sn.max_config() if args.preset == "max" else sn.min_config()
        what = f"the {'largest' if args.preset == 'max' else 'smallest'} subnet"
    try:
        sub = sn.extract(cfg)
    except ValueError as exc:
        raise InputFileError(f"{what} does not fit this supernet: {exc}") from exc
    out = Path(args.out)
    sk.save(sub, out)
    size = sub.sk_subnet.get("resolution") or int(doc.get("image_size") or 224)
    prof = profile(sub, (1, 3, size, size))
    _log(
        args,
        f"exported {what} -> {out}: {prof.total_params:,} params, {prof.total_macs / 1e6:.3f} "
        f"MMACs, {prof.total_bitops / 1e9:.4f} GBitOPs, {prof.total_weight_bytes / 1024:.1f} KiB",
    )
    if not args.no_verify:
        _verify(args, sub, out, size)
    if args.json:
        costs = {
            "params": prof.total_params,
            "macs": prof.total_macs,
            "bitops": prof.total_bitops,
            "weight_bytes": prof.total_weight_bytes,
        }
        _write_json(Path(args.json), {"path": str(out), "config": cfg, **costs})
    return EXIT_OK


def add_parser(sub):
    p = add_command(
        sub,
        "export",
        "extract one subnet and save it (supernet_kernels.save / load)",
        "Extract one subnet of a supernet and write it with supernet_kernels.save (one "
        "safetensors file; load it with supernet_kernels.load, no code needed). Pick it with "
        "exactly one of --subnet-config, --front (+ --member) or --preset.",
    )
    p.add_argument("supernet", metavar="SUPERNET", help="supernet.json (or its folder)")
    p.add_argument(
        "--subnet-config",
        default=None,
        metavar="FILE",
        help="a config JSON / YAML (e.g. search's best_config.json)",
    )
    p.add_argument("--front", default=None, metavar="FILE", help="a search front.json")
    p.add_argument(
        "--member",
        type=int,
        default=None,
        help="with --front: the front member's index (default: the best)",
    )
    p.add_argument(
        "--preset", choices=("max", "min"), default=None, help="the largest or the smallest subnet"
    )
    p.add_argument("--out", default="subnet.safetensors", metavar="FILE", help="output file")
    p.add_argument("--json", default=None, metavar="FILE", help="also write its costs as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip loading it back to compare")
    common_options(p)
    p.set_defaults(func=run)
    return p
