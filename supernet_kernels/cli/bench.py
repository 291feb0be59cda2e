"""`supernet-kernels bench`."""

from __future__ import annotations

import sys
from pathlib import Path

from ..timing import time_forward
from ._common import (
    EXIT_OK,
    InputFileError,
    UsageError,
    _bar,
    _device,
    _int_list,
    _log,
    _missing,
    _nonneg_int,
    _positive_int,
    _set_threads,
    _write_json,
    add_command,
    common_options,
)


def _repo_benchmarks() -> Path | None:
    d = Path(__file__).resolve().parents[2] / "benchmarks"
    return d if d.is_dir() and any(d.glob("bench_*.py")) else None


def _bench_image_size(model, given: int | None) -> int:
    """The input size a subnet runs: its recorded resolution (timm ViT), the fixed size of a
    SAM encoder or Swin (their window / relative-position tables depend on it), else
    ``--image-size``; a --image-size the subnet cannot run is a usage error."""
    info = getattr(model, "sk_subnet", {}) or {}
    family = info.get("family")
    fixed, why = info.get("resolution"), "the subnet's resolution"
    if family == "sam":
        fixed, why = int(model.img_size), "a SAM image encoder runs only its img_size"
    elif family == "timm_swin":
        fixed = int(model.patch_embed.img_size[0])
        why = "a Swin subnet runs only its img_size (windows and relative positions)"
    if fixed is None:
        if given is None:
            raise UsageError("the subnet records no resolution: give --image-size")
        return given
    if given is not None and given != fixed:
        raise UsageError(f"--image-size {given}: this subnet takes {fixed}x{fixed} ({why})")
    return fixed


def _run_suite(args) -> int:
    """benchmarks/bench_SUITE.py of the repository checkout, in a subprocess."""
    import shlex
    import subprocess

    bench_dir = _repo_benchmarks()
    if bench_dir is None:
        raise UsageError(
            "no benchmarks/ folder next to the package (not a repository checkout): give "
            "an exported subnet file to time, `supernet-kernels bench SUBNET.safetensors`"
        )
    suites = sorted(p.stem.removeprefix("bench_") for p in bench_dir.glob("bench_*.py"))
    if args.list:
        print("benchmarks in", bench_dir)
        for s in suites:
            print(f"  {s:<10} python {bench_dir / f'bench_{s}.py'} --help")
        return EXIT_OK
    suite = args.suite or "lowrank"
    if suite not in suites:
        raise UsageError(f"--suite {suite!r}: not one of {suites}")
    extra = shlex.split(args.bench_args)
    if not any(a == "--out" or a.startswith("--out=") for a in extra):
        # Results go where the user says, or the current folder: never into the package's
        # (possibly installed, read-only) tree, which the scripts default to.
        out = Path(args.out) if args.out else Path.cwd()
        out.mkdir(parents=True, exist_ok=True)
        target = out / "attention.jsonl" if suite == "attention" else out
        extra += ["--out", str(target)]
    cmd = [sys.executable, str(bench_dir / f"bench_{suite}.py"), *extra]
    _log(args, "running " + " ".join(cmd))
    return subprocess.call(cmd)


def _load_subnet(args, path: Path):
    """(model on --device in --dtype, device, dtype) of an exported subnet file."""
    import torch

    import supernet_kernels as sk

    if not path.is_file():
        raise _missing(path, "subnet")
    try:
        model = sk.load(path)
    except ValueError as exc:
        raise InputFileError(str(exc)) from exc
    device = _device(args)
    dtype = getattr(torch, args.dtype)
    if device.type == "cpu" and dtype == torch.float16:
        raise UsageError("--dtype float16 on the CPU is not supported; use float32 or bfloat16")
    return model.to(device=device, dtype=dtype).eval(), device, dtype


def _warn_spread(rows: list[dict]) -> None:
    for r in rows:
        if r["max_ms"] > 10 * r["min_ms"]:
            # e.g. first-call compilation or autotuning inside the timed runs, or a busy machine
            print(
                f"warning: batch {r['batch']}: the {r['repeats']} timed runs disagree by "
                f"{r['max_ms'] / r['min_ms']:.0f}x (min {r['min_ms']:.3f} ms, max "
                f"{r['max_ms']:.3f} ms); raise --warmup / --repeats or check the machine's load",
                file=sys.stderr,
            )


def run(args) -> int:
    import torch

    from ..backends import backend

    if args.subnet is None:
        return _run_suite(args)
    _set_threads(args)
    path = Path(args.subnet)
    model, device, dtype = _load_subnet(args, path)
    size = _bench_image_size(model, args.image_size)
    rows = []
    bar = _bar(args, len(args.batch_sizes), "bench")
    with backend(args.backend):
        for b in args.batch_sizes:
            x = torch.randn(b, 3, size, size, device=device, dtype=dtype)
            r = time_forward(model, x, args.repeats, args.warmup)
            r.update(batch=b, images_per_s=b / (r["median_ms"] / 1e3))
            rows.append(r)
            bar.update(1)
    bar.close()
    _warn_spread(rows)
    print(f"{path.name} on {device} ({args.dtype}, backend {args.backend}), {size}x{size}")
    print(f"  {'batch':>5}  {'median ms':>10}  {'min ms':>8}  {'images/s':>10}")
    for r in rows:
        print(
            f"  {r['batch']:>5}  {r['median_ms']:>10.3f}  {r['min_ms']:>8.3f}  "
            f"{r['images_per_s']:>10.1f}"
        )
    if args.json:
        doc = {"subnet": str(path), "device": str(device), "dtype": args.dtype, "rows": rows}
        _write_json(Path(args.json), doc)
    return EXIT_OK


def add_parser(sub):
    p = add_command(
        sub,
        "bench",
        "run the repository's benchmarks, or time an exported subnet",
        "Without SUBNET: run benchmarks/bench_SUITE.py of the repository checkout the "
        "package is installed from (--bench-args go to it). With SUBNET (a file from "
        "`export`): time its forward here (median of --repeats, per batch size) on our "
        "kernels (ops dispatch on --backend).",
    )
    p.add_argument("subnet", nargs="?", default=None, metavar="SUBNET", help="exported subnet")
    p.add_argument("--suite", default=None, help="benchmarks/bench_SUITE.py (default lowrank)")
    p.add_argument("--list", action="store_true", help="list the repository's benchmarks")
    p.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=[1, 64],
        metavar="LIST",
        help="SUBNET: comma-separated batch sizes",
    )
    p.add_argument("--repeats", type=_positive_int, default=30, help="timed forwards per size")
    p.add_argument("--warmup", type=_nonneg_int, default=3, help="untimed forwards first")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="model and input dtype",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "triton", "cuda"),
        default="auto",
        help="supernet_kernels backend of the ops",
    )
    p.add_argument(
        "--image-size",
        type=_positive_int,
        default=None,
        help="input size where the subnet records none",
    )
    p.add_argument("--json", default=None, metavar="FILE", help="also write the timings as JSON")
    p.add_argument(
        "--bench-args",
        default="",
        metavar="ARGS",
        help="arguments for the benchmark script, e.g. --bench-args '--smoke'",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="suites: folder for their results (default: the current folder)",
    )
    common_options(p)
    p.set_defaults(func=run)
    return p
