"""Configuration files for the command line: YAML or JSON, with ``--set a.b=c`` overrides.

A config file is one mapping (YAML ``.yaml`` / ``.yml``, JSON ``.json``; any other suffix is
tried as JSON, then YAML). For a ``supernet-kernels`` subcommand its top-level keys are the
subcommand's option names (``batch-size`` or ``batch_size``), and options that take a mapping
(``trainer``, ``space``, ``model-kwargs``) hold nested mappings::

    # train.yaml
    recipe: sandwich
    steps: 200
    lr: 5.0e-4
    batch_size: 64
    trainer:              # any other TrainConfig field
      warmup_steps: 20
      weight_decay: 0.05

Overrides ``--set KEY=VALUE`` (repeatable) address nested keys with dots (``trainer.warmup_steps
=10``; a numeric part indexes an existing list: ``widths.0=32``). VALUE is read as a YAML
scalar or flow collection: ``10`` is an int, ``1e-3`` / ``5.0e-4`` floats (also in
files, unlike plain YAML 1.1), ``true`` / ``false``
bools, ``null`` None, ``[1, 2]`` a list, ``{a: 1}`` a mapping, anything else a string (quote it
to force a string: ``name='123'``). Intermediate mappings are created as needed.

Precedence (lowest first): the option's default, the config file, options given on the command
line, ``--set``.

Functions: :func:`load_config` (file -> dict), :func:`parse_value`, :func:`parse_override`,
:func:`apply_overrides`, :func:`deep_merge`, :func:`load_with_overrides`. Problems raise
:class:`ConfigError` (a ValueError; ``.path`` is the file, or None for an override) saying
where; a missing file raises FileNotFoundError.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "apply_overrides",
    "deep_merge",
    "load_config",
    "load_with_overrides",
    "parse_override",
    "parse_value",
]

YAML_SUFFIXES = (".yaml", ".yml")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-*]*$|^\d+$")
# YAML 1.1 (pyyaml) reads 1e-3 and 5e4 as strings; we read them as floats, like JSON does.
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def _numbers(obj):
    """Strings that are numbers in exponent notation (``1e-3``) -> float, recursively."""
    if isinstance(obj, str) and _FLOAT.match(obj.strip()):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


class ConfigError(ValueError):
    """A config file or override that cannot be used; ``path`` names the file (or None)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


def _yaml():
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        return None
    return yaml


def _parse_yaml(text: str, path: Path):
    yaml = _yaml()
    if yaml is None:  # pragma: no cover
        raise ConfigError(f"{path}: reading YAML needs pyyaml (pip install pyyaml)", path)
    try:
        return _numbers(yaml.safe_load(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}", path) from exc


def load_config(path: str | os.PathLike) -> dict:
    """The mapping in a YAML or JSON file (an empty file gives {})."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file", path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}", path) from exc
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}", path
            ) from exc
    elif suffix in YAML_SUFFIXES:
        data = _parse_yaml(text, path)
    else:
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            data = _parse_yaml(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of option names to values, got a "
            f"{type(data).__name__}",
            path,
        )
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: keys must be strings, got {bad[0]!r}", path)
    return data


def parse_value(text: str) -> Any:
    """A ``--set`` value: a YAML scalar / flow collection (JSON when pyyaml is missing), else
    the string itself."""
    yaml = _yaml()
    if yaml is not None:
        if (text.startswith("'") and text.endswith("'")) or (
            text.startswith('"') and text.endswith('"')
        ):
            try:
                return yaml.safe_load(text)
            except yaml.YAMLError:
                return text
        try:
            return _numbers(yaml.safe_load(text)) if text.strip() else ""
        except yaml.YAMLError:
            return text
    try:  # pragma: no cover
        return json.loads(text)
    except json.JSONDecodeError:  # pragma: no cover
        return text


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` -> (["a", "b"], parsed c)."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. trainer.warmup_steps=10)")
    key, _, value = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p or not _KEY.match(p) for p in parts):
        raise ConfigError(
            f"--set {item!r}: bad key {key!r} (dot-separated names, e.g. trainer.warmup_steps)"
        )
    return parts, parse_value(value)


def _set_path(cfg: dict, parts: list[str], value: Any, item: str) -> None:
    node: Any = cfg
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(
                    f"--set {item!r}: {where}: index out of range for a list of {len(node)}"
                )
            if last:
                node[int(p)] = value
            else:
                node = node[int(p)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(
                f"--set {item!r}: {'.'.join(parts[:i])} is a {type(node).__name__}, not a mapping"
            )
        if last:
            node[p] = value
        else:
            if p not in node or node[p] is None:
                node[p] = {}
            node = node[p]


def apply_overrides(config: Mapping, overrides: Iterable[str] | None) -> dict:
    """A deep copy of ``config`` with each ``KEY=VALUE`` override applied in order."""
    out = copy.deepcopy(dict(config))
    for item in overrides or ():
        parts, value = parse_override(item)
        _set_path(out, parts, value, item)
    return out


def deep_merge(base: Mapping, update: Mapping) -> dict:
    """``base`` updated by ``update``; nested mappings are merged, everything else replaced."""
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_with_overrides(
    path: str | os.PathLike | None,
    overrides: Iterable[str] | None = None,
    defaults: Mapping | None = None,
) -> dict:
    """``defaults``, merged with the file at ``path`` (if any), then the overrides."""
    cfg = dict(defaults or {})
    if path is not None:
        cfg = deep_merge(cfg, load_config(path))
    return apply_overrides(cfg, overrides)
