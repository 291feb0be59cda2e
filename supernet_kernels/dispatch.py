"""Dispatch tables and the record of which kernels passed the test suite on a real GPU.

* ``configs/dispatch/<gpu>.json``: written by the benchmarks' ``--write-dispatch`` from
  measurements on that GPU. Per op, an ordered list of entries such as
  ``{"dtype": "float16", "m_max": 256, "rank_max": 128, "backend": "triton"}``; the first entry
  whose dtype matches and whose bounds hold wins.
* ``configs/verified.json``: per op and backend, the GPUs (name, commit, tests passed) on which
  every test of that op and backend in the suite ran and passed (the record says which, and
  how the rest of the suite went). "auto" never picks a GPU kernel that is not listed there.

``SUPERNET_KERNELS_CONFIG_DIR`` points both lookups at another folder (tables of the user's own
GPU, written by the benchmark) before the packaged ones.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from ._io import atomic_write_json, read_json, slug

PACKAGE_CONFIGS = Path(__file__).parent / "configs"


def _config_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("SUPERNET_KERNELS_CONFIG_DIR"):
        dirs.append(Path(os.environ["SUPERNET_KERNELS_CONFIG_DIR"]))
    dirs.append(PACKAGE_CONFIGS)
    return dirs


@functools.cache
def _load_table(gpu_slug: str) -> dict[str, Any]:
    for d in _config_dirs():
        path = d / "dispatch" / f"{gpu_slug}.json"
        if path.exists():
            table = read_json(path, "dispatch table")
            if not isinstance(table, dict):
                raise ValueError(f"dispatch table {path} must hold a JSON object")
            return table
    return {}


def _matches(entry: dict[str, Any], dtype: str, m: int, shape: dict[str, int]) -> bool:
    if entry.get("dtype") != dtype or m > entry["m_max"]:
        return False
    for name, value in shape.items():
        if f"{name}_max" in entry and value > entry[f"{name}_max"]:
            return False
        if name in entry and entry[name] != value:
            return False
    return True


def lookup(op: str, gpu_name: str, dtype: str, m: int, **shape: int) -> str | None:
    """The backend the table names for this call, or None where no entry applies.

    ``shape`` holds the op's other keys (``rank`` for lowrank_linear, ``bits`` for
    quant_linear): an entry bounds a key with ``<key>_max`` or pins it with ``<key>``.
    """
    for entry in _load_table(slug(gpu_name)).get(op, []):
        if _matches(entry, dtype, m, shape):
            return entry["backend"]
    return None


def write_dispatch_table(
    gpu_name: str,
    op: str,
    entries: list[dict[str, Any]],
    meta: dict[str, Any],
    config_dir: str | os.PathLike | None = None,
) -> Path:
    """Replace ``op``'s entries in ``<config_dir>/dispatch/<gpu>.json`` (atomically)."""
    for i, e in enumerate(entries):
        missing = {"dtype", "m_max", "backend"} - set(e)
        if missing:
            raise ValueError(f"dispatch entry {i} lacks {sorted(missing)}: {e}")
        if e["backend"] not in ("torch", "triton", "cuda"):
            raise ValueError(f"dispatch entry {i}: unknown backend {e['backend']!r}")
    base = Path(config_dir) if config_dir is not None else PACKAGE_CONFIGS
    path = base / "dispatch" / f"{slug(gpu_name)}.json"
    table = read_json(path, "dispatch table") if path.exists() else {}
    table[op] = entries
    table.setdefault("meta", {})[op] = {"gpu": gpu_name, **meta}
    atomic_write_json(path, table)
    _load_table.cache_clear()
    return path


@functools.cache
def verified_kernels() -> dict[str, dict[str, list[dict[str, Any]]]]:
    merged: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for d in reversed(_config_dirs()):
        path = d / "verified.json"
        if path.exists():
            data = read_json(path, "verified-kernels record")
            for op, by_backend in data.items():
                for be, runs in by_backend.items():
                    merged.setdefault(op, {}).setdefault(be, []).extend(runs)
    return merged


def is_verified(op: str, backend: str) -> bool:
    """True once the test suite passed with this op and backend on some real GPU."""
    if backend == "torch":
        return True  # the reference itself
    return bool(verified_kernels().get(op, {}).get(backend))
