"""`supernet-kernels quickstart`."""

from __future__ import annotations

from ._common import (
    EXIT_OK,
    add_command,
    common_options,
)


def run(args) -> int:
    from ..quickstart import run_quickstart

    run_quickstart(
        out=args.out,
        fast=args.fast,
        seed=args.seed,
        threads=args.threads,
        progress=not args.no_progress,
        quiet=args.quiet,
    )
    return EXIT_OK


def add_parser(sub):
    p = add_command(
        sub,
        "quickstart",
        "the whole flow on scikit-learn's digits, CPU, a few minutes",
        "Train a small ViT on scikit-learn's digits (bundled: no download), convert it into "
        "a supernet, train the supernet, search it under 'bitops <= 0.5 * dense' on a "
        "validation split, export and reload the best subnet, time it on our kernels and "
        "print a table (dense / supernet max / min / best: test accuracy, BitOPs, MACs, "
        "params, latency). Writes OUT/summary.json, OUT/summary.md, OUT/accuracy_vs_bitops.png, "
        "the subnet and the search front.",
    )
    p.add_argument("--out", default="quickstart_out", metavar="DIR", help="output folder")
    p.add_argument("--fast", action="store_true", help="few steps (~1 minute; for tests)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, models and search")
    common_options(p)
    p.set_defaults(func=run)
    return p
