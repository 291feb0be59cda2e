"""``--config FILE`` and ``--set KEY=VALUE``: a command's options from a YAML / JSON file and
dotted overrides, checked and coerced against the options its parser records
(``_Parser.options``)."""

from __future__ import annotations

import argparse

from ._common import (
    InputFileError,
    UsageError,
    _int_list,
    _json_dict,
    _json_value,
    _load_space_arg,
    _missing,
    _nonneg_int,
    _positive_float,
    _positive_int,
)

_NOT_CONFIGURABLE = {"help", "config", "overrides", "func", "command", "version", "subnet"}


def _coerce(action: argparse.Action, value, where: str):
    if action.nargs == 0 and isinstance(action.const, bool):  # store_true / store_false
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if value is None:
        return None
    t = action.type
    if t is not None and (isinstance(value, str) or t in (_int_list, _json_dict, _json_value)):
        try:
            value = t(value)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
    elif t in (int, _positive_int, _nonneg_int) and not (
        isinstance(value, int) and not isinstance(value, bool)
    ):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    elif t in (float, _positive_float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        value = t(value)
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{where}: {value!r} is not one of {list(action.choices)}")
    return value


def _apply_config(parser, sub, argv: list[str], args):
    """Re-parse with the --config file's values as defaults, then apply --set."""
    from ..config_files import ConfigError, load_config, parse_override

    actions = {d: a for d, a in sub.options.items() if d not in _NOT_CONFIGURABLE}
    if args.config:
        try:
            cfg = load_config(args.config)
        except FileNotFoundError:
            raise _missing(args.config, "config file") from None
        except ConfigError as exc:
            raise InputFileError(str(exc)) from exc
        defaults = {}
        for key, value in cfg.items():
            dest = key.replace("-", "_")
            if dest not in actions:
                raise InputFileError(
                    f"config file {args.config}: unknown option {key!r} for "
                    f"`{args.command}` (options: {sorted(actions)})"
                )
            try:
                defaults[dest] = _coerce(actions[dest], value, f"config file {args.config}: {key}")
            except ValueError as exc:
                raise InputFileError(str(exc)) from None
        sub.set_defaults(**defaults)
        args = parser.parse_args(argv)
    for item in args.overrides:
        try:
            parts, value = parse_override(item)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        dest = parts[0].replace("-", "_")
        if dest not in actions:
            raise UsageError(
                f"--set {item!r}: unknown option {parts[0]!r} for `{args.command}` "
                f"(options: {sorted(actions)})"
            )
        if len(parts) == 1:
            try:
                value = _coerce(actions[dest], value, f"--set {item}")
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        else:
            from ..config_files import apply_overrides

            current = getattr(args, dest)
            if isinstance(current, str) and dest == "space":
                current = _load_space_arg(current)
            if current is not None and not isinstance(current, dict):
                raise UsageError(f"--set {item!r}: option {parts[0]!r} is not a mapping")
            try:
                value = apply_overrides({"v": current or {}}, ["v." + item.split(".", 1)[1]])["v"]
            except ConfigError as exc:
                raise UsageError(str(exc).replace("v.", "")) from None
        setattr(args, dest, value)
    return args
