"""What the commands share: exit codes, the errors the command line reports in one line,
argument validators, the parser class, and the readers of supernets, data and config files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..recipes import RECIPES as RECIPES_TABLE

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_INFEASIBLE = 4
EXIT_INTERRUPTED = 130

EXIT_CODES_TEXT = """exit codes:
  0    success
  1    runtime failure
  2    usage error (unknown option, bad value, missing argument, bad --set)
  3    missing or invalid input file (model, checkpoint, data, config, supernet, front)
  4    infeasible budget: no subnet meets the search budget
  130  interrupted (Ctrl-C)"""

# The choices of `convert --recipe` (recipes that shape the space) and `train --recipe`
# (recipes with a sampler), from the one table of recipes.
RECIPES = tuple(n for n, r in RECIPES_TABLE.items() if r.space is not None)
TRAIN_RECIPES = tuple(n for n, r in RECIPES_TABLE.items() if r.sampler is not None)


class CLIError(Exception):
    """An error the command line reports in one line, with its exit code."""

    code = EXIT_FAILURE

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(CLIError):
    code = EXIT_USAGE


class InputFileError(CLIError):
    code = EXIT_INPUT


class InfeasibleBudget(CLIError):
    code = EXIT_INFEASIBLE


def _missing(path, what: str = "file") -> InputFileError:
    return InputFileError(f"{what} not found: {path}")


# --------------------------------------------------------------------------- small helpers
def _log(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, flush=True)


def _bar(args, total: int | None, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=getattr(args, "no_progress", False), leave=False)


def _set_threads(args) -> None:
    n = getattr(args, "threads", None)
    if n:
        import torch

        torch.set_num_threads(n)


def _json_value(text):
    """An option value that is inline JSON, or (already parsed) a mapping from a config file."""
    if isinstance(text, dict | list):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg} ({text!r})") from None


def _json_dict(text):
    v = _json_value(text)
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return v


def _int_at_least(text, lo: int) -> int:
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < lo:
        raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
    return v


def _positive_int(text) -> int:
    return _int_at_least(text, 1)


def _nonneg_int(text) -> int:
    return _int_at_least(text, 0)


def _positive_float(text) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {v}")
    return v


def _int_list(text) -> list[int]:
    if isinstance(text, list):
        vals = text
    else:
        vals = [t for t in str(text).replace(" ", "").split(",") if t]
    try:
        out = [int(v) for v in vals]
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not out or any(v < 1 for v in out):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return out


def _read_json(path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise _missing(path, what)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{what} {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputFileError(f"{what} {path}: expected a JSON object")
    return data


def _write_json(path: Path, data) -> Path:
    from .._io import atomic_write_json

    return atomic_write_json(path, data)


def _device(args):
    import torch

    name = getattr(args, "device", None) or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available here")
    return dev


# --------------------------------------------------------------------------- supernet folders
def _load_state_file(path: Path) -> dict:
    """The tensors of a safetensors file (nothing unpickled), a bad one an input error."""
    from .._io import load_tensors

    if not Path(path).is_file():
        raise _missing(path, "supernet weights")
    try:
        return load_tensors(path)
    except ValueError as exc:
        raise InputFileError(str(exc)) from exc


def _build_supernet(model, meta: dict):
    """convert(model) the way ``meta`` (a supernet.json document) records it."""
    from ..supernet.store import build_supernet

    return build_supernet(model, meta)


def load_supernet(path):
    """Rebuild the supernet of a ``supernet.json`` (from ``convert`` or ``train``) with its
    weights (:func:`supernet_kernels.supernet.store.load_supernet`). Returns ``(supernet, doc,
    json_path)``."""
    from ..supernet.store import load_supernet as load

    try:
        return load(path)
    except FileNotFoundError as exc:
        raise InputFileError(str(exc)) from exc
    except ValueError as exc:
        raise InputFileError(str(exc)) from exc


def _write_supernet(sn, doc: dict, out: Path) -> Path:
    from ..supernet.store import save_supernet

    return save_supernet(sn, out, doc)


def _load_space_arg(value):
    if value is None or isinstance(value, dict):
        return value
    text = str(value)
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--space: not valid JSON: {exc.msg}") from None
    from ..config_files import ConfigError, load_config

    try:
        return load_config(text)
    except FileNotFoundError:
        raise _missing(text, "space file") from None
    except ConfigError as exc:
        raise InputFileError(str(exc)) from exc


def _config_from_file(path) -> dict:
    from ..config_files import ConfigError, load_config

    try:
        data = load_config(path)
    except FileNotFoundError:
        raise _missing(path, "subnet config") from None
    except ConfigError as exc:
        raise InputFileError(str(exc)) from exc
    if "config" in data and isinstance(data["config"], dict):
        data = data["config"]  # a front member / history row
    elif isinstance(data.get("best"), dict):
        data = data["best"]["config"]  # a front.json
    return data


def _load_data(path, doc: dict, task_kind: str):
    """A dataset in the documented formats (:func:`supernet_kernels.train.data.load_dataset`)
    at the supernet's image size and normalization; a missing or bad one an input error."""
    from ..train.data import load_dataset

    path = Path(path)
    if not path.exists():
        raise _missing(path, "data")
    try:
        return load_dataset(
            path,
            task_kind,
            image_size=int(doc.get("image_size") or 224),
            mean=doc.get("mean") or (0.485, 0.456, 0.406),
            std=doc.get("std") or (0.229, 0.224, 0.225),
        )
    except ValueError as exc:
        raise InputFileError(f"data {path}: {exc}") from exc


def _task_for(doc: dict, args, sn=None):
    from ..train import ClassificationTask, SegmentationTask

    kind = getattr(args, "task", None) or doc.get("task") or "classification"
    if kind == "auto":
        kind = doc.get("task") or "classification"
    if kind == "segmentation" and doc.get("hf") == "SamModel":
        from ..supernet.sources import ModelSourceError, sam_model_of
        from ..train.hf_sam_task import HFSamSegmentationTask

        try:
            return HFSamSegmentationTask(sam_model_of(doc)), kind
        except ModelSourceError as exc:
            raise InputFileError(str(exc)) from exc
    if kind == "segmentation":
        if not doc.get("sam"):
            raise UsageError(
                "segmentation needs a supernet converted from a SAM checkpoint (--sam)"
            )
        from segment_anything import sam_model_registry

        ckpt = doc.get("source")
        if not ckpt or not Path(ckpt).is_file():
            raise _missing(ckpt, "SAM checkpoint (prompt encoder and mask decoder)")
        sam = sam_model_registry[doc["sam"]](checkpoint=ckpt)
        return SegmentationTask(sam), kind
    n = doc.get("num_classes") or None
    return ClassificationTask(num_classes=n), kind


# --------------------------------------------------------------------------- the parser
class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with our one-line error format (exit code 2) and a record of its options.

    ``options`` (dest -> the ``Action`` that ``add_argument`` returns, a public object) is what
    ``--config`` files and ``--set`` are checked and coerced against; ``commands`` (name ->
    subparser) is filled by ``build_parser`` from each command's ``add_parser``. Both are kept
    here so that nothing reads argparse's private lists (``_actions``, ``_SubParsersAction``).
    """

    def __init__(self, *args, **kwargs):
        self.options: dict[str, argparse.Action] = {}
        self.commands: dict[str, _Parser] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        self.options[action.dest] = action
        return action

    def add_argument_group(self, *args, **kwargs):
        group = super().add_argument_group(*args, **kwargs)
        add = group.add_argument

        def add_and_record(*a, **kw):
            action = add(*a, **kw)
            self.options[action.dest] = action
            return action

        group.add_argument = add_and_record
        return group

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def add_command(sub, name: str, help_: str, description: str) -> _Parser:
    """A subcommand's parser (``sub``: the root parser's ``add_subparsers()``)."""
    return sub.add_parser(
        name,
        help=help_,
        description=description,
        epilog=EXIT_CODES_TEXT,
        formatter_class=_Formatter,
    )


def common_options(p: argparse.ArgumentParser, config: bool = True) -> None:
    g = p.add_argument_group("common options")
    if config:
        g.add_argument(
            "--config",
            metavar="FILE",
            default=None,
            help="YAML or JSON file of this command's options (keys: option names, e.g. "
            "batch_size); options on the command line override it",
        )
        g.add_argument(
            "--set",
            metavar="KEY=VALUE",
            action="append",
            default=[],
            dest="overrides",
            help="override one option after --config, dotted keys for nested ones "
            "(e.g. --set steps=100 --set trainer.warmup_steps=10); repeatable",
        )
    g.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--quiet", action="store_true", help="print only errors and results")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error")
