"""Where ``convert`` and ``plan`` get a model: :mod:`supernet_kernels.supernet.sources`, its
errors turned into the command line's (exit codes)."""

from __future__ import annotations

from ..supernet.sources import ModelSourceError, make_model, read_state_dict
from ._common import CLIError, InputFileError, UsageError

_ERRORS = {"usage": UsageError, "input": InputFileError, "failed": CLIError}


def _cli_error(exc: ModelSourceError) -> CLIError:
    return _ERRORS.get(exc.kind, CLIError)(str(exc))


def _read_state_dict(path) -> dict:
    try:
        return read_state_dict(path)
    except ModelSourceError as exc:
        raise _cli_error(exc) from exc


def _make_model(args) -> tuple[object, dict]:
    """The model ``convert`` converts, and facts about where it came from."""
    try:
        return make_model(
            args.model,
            arch=getattr(args, "arch", None),
            sam=getattr(args, "sam", None),
            model_kwargs=getattr(args, "model_kwargs", None),
            pretrained=bool(getattr(args, "pretrained", False)),
        )
    except ModelSourceError as exc:
        raise _cli_error(exc) from exc
