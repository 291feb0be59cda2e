"""The ``supernet-kernels`` command line.

Subcommands (``supernet-kernels COMMAND --help`` explains every option):

* ``info``: versions, usable backends, compiled CUDA architectures, GPU, verified kernels.
* ``convert MODEL``: a timm model name, a state-dict checkpoint (``--arch``), or a
  segment-anything checkpoint (``--sam vit_b``) -> a supernet folder: ``supernet.json`` (how
  to rebuild it, the search space, its largest / smallest configs) and ``supernet.safetensors``
  (the converted weights).
* ``train SUPERNET_JSON --data DATA``: supernet training (the sandwich rule, or the FLORA /
  SuperSAM / MP-LoRA samplers) on a data folder in the documented formats; checkpoints,
  ``--resume``; writes a new supernet folder.
* ``search SUPERNET_JSON --data DATA``: the best subnets under a budget (``"bitops <= 0.5 *
  dense"``) with evolution or Optuna NSGA-II / TPE; writes the front (JSON, CSV, plot) and the
  best config.
* ``export SUPERNET_JSON``: one subnet (a config JSON, a front member, the largest or the
  smallest) -> a ``supernet_kernels.save`` file, loaded back and checked.
* ``bench``: ``benchmarks/bench_*.py`` of a repository checkout, or a built-in timing of an
  exported subnet.
* ``quickstart``: the whole flow on scikit-learn's digits in minutes on a CPU
  (:mod:`supernet_kernels.quickstart`).

Config files: every subcommand but ``info`` takes ``--config FILE`` (YAML or JSON; keys are
the subcommand's option names) and ``--set KEY=VALUE`` overrides (dotted keys into nested
options); see :mod:`supernet_kernels.config_files`. Precedence: defaults < file < options on
the command line < ``--set``.

One module per command (``convert``, ``train``, ...), each with ``add_parser(sub)`` and
``run(args)``; :mod:`._common` holds the errors, validators and readers they share,
:mod:`._config` the ``--config`` / ``--set`` layer.

Errors go to stderr as one line ``supernet-kernels COMMAND: error: ...`` (the traceback too
with ``--debug``). Exit codes, for scripts:

==== ==========================================================================
0    success
1    runtime failure (anything else that went wrong)
2    usage error: unknown option, bad value, missing argument, bad ``--set``
3    missing or invalid input file (model, checkpoint, data, config, supernet, front)
4    infeasible budget: no subnet of the space meets the search budget
130  interrupted (Ctrl-C)
==== ==========================================================================
"""

from __future__ import annotations

import argparse
import sys
import traceback

from ..supernet.store import SUPERNET_FORMAT
from . import bench, convert, export, info, plan, quickstart, search, train
from ._common import (
    EXIT_CODES_TEXT,
    EXIT_FAILURE,
    EXIT_INFEASIBLE,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    RECIPES,
    TRAIN_RECIPES,
    CLIError,
    InfeasibleBudget,
    InputFileError,
    UsageError,
    _load_state_file,  # noqa: F401 (the readers keep their single-module names)
    _Parser,
    load_supernet,
)
from ._config import _apply_config
from ._sources import _make_model, _read_state_dict  # noqa: F401
from .bench import _repo_benchmarks, time_forward  # noqa: F401
from .info import info_text

# In the order `supernet-kernels --help` lists them.
COMMANDS = {
    "info": info,
    "convert": convert,
    "train": train,
    "search": search,
    "export": export,
    "bench": bench,
    "plan": plan,
    "quickstart": quickstart,
}

# The names the single-module command line had (scripts call them): each command's ``run``.
cmd_convert, cmd_train, cmd_search = convert.run, train.run, search.run
cmd_export, cmd_bench, cmd_plan, cmd_quickstart = export.run, bench.run, plan.run, quickstart.run

__all__ = [
    "COMMANDS",
    "EXIT_CODES_TEXT",
    "EXIT_FAILURE",
    "EXIT_INFEASIBLE",
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "RECIPES",
    "SUPERNET_FORMAT",
    "TRAIN_RECIPES",
    "CLIError",
    "InfeasibleBudget",
    "InputFileError",
    "UsageError",
    "build_parser",
    "info_text",
    "load_supernet",
    "main",
    "time_forward",
]


def build_parser() -> _Parser:
    """The whole command line: the root parser and one subparser per command, each recorded in
    ``parser.commands``."""
    parser = _Parser(
        prog="supernet-kernels",
        description="ViT and SAM supernets on sliced low-rank and mixed-bit GPU kernels: "
        "convert a model into a weight-sharing supernet, train it, search subnets under a "
        "hardware budget, export them to our kernels.",
        epilog="Start with `supernet-kernels quickstart` (the whole flow on a built-in "
        "dataset, CPU only, a few minutes).\n\n" + EXIT_CODES_TEXT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in COMMANDS.items():
        parser.commands[name] = module.add_parser(sub)
    return parser


def _join_bench_args(argv: list[str]) -> list[str]:
    """``--bench-args '--smoke'``: argparse takes a value starting with '-' for an option and
    stops; the value of --bench-args is always the next word, so join the two."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--bench-args" and i + 1 < len(argv):
            out.append(f"--bench-args={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _run(argv: list[str] | None, state: dict) -> int:
    parser = build_parser()
    argv = _join_bench_args(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    state["args"] = args
    if args.version:
        from .._version import __version__

        print(f"supernet-kernels {__version__}")
        return EXIT_OK
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    sub = parser.commands[args.command]
    if getattr(args, "config", None) or getattr(args, "overrides", None):
        try:
            args = _apply_config(parser, sub, argv, args)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 2
        state["args"] = args
    for name in getattr(args, "_required", ()):
        if getattr(args, name, None) in (None, ""):
            sub.print_usage(sys.stderr)
            print(
                f"{sub.prog}: error: the following arguments are required: "
                f"--{name.replace('_', '-')} (or `{name}:` in --config)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module doc)."""
    state: dict = {}
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv, state)
    except KeyboardInterrupt:
        print("supernet-kernels: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        args = state.get("args")
        cmd = getattr(args, "command", None)
        prog = f"supernet-kernels {cmd}" if cmd else "supernet-kernels"
        if isinstance(exc, CLIError):
            code = exc.code
        elif isinstance(exc, FileNotFoundError):
            code = EXIT_INPUT
        else:
            code = EXIT_FAILURE
        msg = (
            str(exc)
            if isinstance(exc, CLIError | FileNotFoundError)
            else (f"{type(exc).__name__}: {exc}")
        )
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {msg}", file=sys.stderr)
        if not debug and code == EXIT_FAILURE:
            print("(run again with --debug for the traceback)", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
