"""Dispatch tables, and the record of which kernels passed the test suite on which architecture.

* ``configs/dispatch/sm<XY>.json``: the table of an architecture (compute capability X.Y),
  written from measurements on a GPU of it; ``configs/dispatch/<gpu-name>.json`` refines it for
  one GPU where that GPU was measured (per op: a GPU table's op replaces the architecture's).
  Per op, an ordered list of shape buckets::

      {"dtype": "float16", "m_max": 2, "bits": 4, "act_bits": 16,
       "rank_by": "graph",                          # graph-replay time where recorded, else eager
       "ranked": ["torch_int4pack", "triton", ...], # fastest first by rank_by
       "times_us": {"triton": {"eager": 93.0, "graph": 45.3}, ...},
       "dense_us": {"eager": 46.7, "graph": 34.7},  # the fp16/bf16 dense layer at that shape
       "pick": "torch_int4pack"}                    # what auto runs on the measured GPU

  The first bucket whose dtype matches and whose bounds hold applies (``<key>_max`` bounds a
  key, ``<key>`` pins it). Tables of the old shape (``"backend"`` only) still read.
* ``configs/verified.json``: per op, implementation and architecture (``"sm90"``), the runs in
  which every test of that op and implementation passed on a real GPU. A kernel verified on
  sm_90 serves every sm_90 GPU; "auto" never runs one of our kernels elsewhere.

``SUPERNET_KERNELS_CONFIG_DIR`` points both lookups at another folder (tables of the user's own
GPU, written by the benchmark) before the packaged ones. A missing, unreadable or malformed
file is reported once (``DispatchWarning``) and treated as empty: the ops then run torch's paths.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any

from ._io import atomic_write_json, read_json, slug

PACKAGE_CONFIGS = Path(__file__).parent / "configs"
# The 1.10x rule: auto runs a compressed implementation only where its recorded time is at most
# this much the dense fp16/bf16 layer's at that shape; elsewhere the dense-equivalent path.
DENSE_SLACK = 1.10


class DispatchWarning(UserWarning):
    """A dispatch table or verification record could not be used (the ops fall back)."""


def _config_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("SUPERNET_KERNELS_CONFIG_DIR"):
        dirs.append(Path(os.environ["SUPERNET_KERNELS_CONFIG_DIR"]))
    dirs.append(PACKAGE_CONFIGS)
    return dirs


def capability_tuple(capability: tuple[int, int] | str) -> tuple[int, int]:
    """(9, 0), "9.0", "sm90" or "sm_90" -> (9, 0); anything else ValueError."""
    if isinstance(capability, str):
        s = capability.strip().lower().removeprefix("sm_").removeprefix("sm")
        if "." in s:
            major, _, minor = s.partition(".")
        elif s.isdigit() and len(s) >= 2:
            major, minor = s[:-1], s[-1]
        else:
            major = minor = ""
        if not (major.isdigit() and minor.isdigit()):
            raise ValueError(f"capability must look like 9.0 (or sm90), got {capability!r}")
        return int(major), int(minor)
    major, minor = capability
    return int(major), int(minor)


def capability_tag(capability: tuple[int, int] | str | None) -> str | None:
    """(9, 0), "9.0", "sm90" or "sm_90" -> "sm90"; None stays None."""
    if capability is None:
        return None
    major, minor = capability_tuple(capability)
    return f"sm{major}{minor}"


_WARNED: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        warnings.warn(msg, DispatchWarning, stacklevel=3)


@functools.cache
def _read_table(name: str) -> tuple[dict[str, list[dict[str, Any]]], str | None, str | None]:
    """(op -> buckets, the file, the error) of ``dispatch/<name>.json`` in the first folder
    holding it. A file that cannot be used gives ({}, file, why)."""
    for d in _config_dirs():
        path = d / "dispatch" / f"{name}.json"
        if not path.exists():
            continue
        try:
            table = read_json(path, "dispatch table")
        except (OSError, ValueError) as exc:
            return {}, str(path), str(exc)
        if not isinstance(table, dict):
            return {}, str(path), f"dispatch table {path} must hold a JSON object"
        out = {}
        for op, entries in table.items():
            if op == "meta":
                continue
            if not isinstance(entries, list) or not all(
                isinstance(e, dict) and "dtype" in e and "m_max" in e
                and ("pick" in e or "backend" in e)
                for e in entries
            ):  # fmt: skip
                return {}, str(path), f"dispatch table {path}: {op!r} is not a list of buckets"
            out[op] = entries
        return out, str(path), None
    return {}, None, None


def _table(name: str, strict: bool) -> tuple[dict[str, list[dict[str, Any]]], str | None]:
    table, path, error = _read_table(name)
    if error is not None:
        if strict:
            raise ValueError(f"{error}; delete or fix it")
        _warn_once(f"{error}; running torch's paths instead")
    return table, path


def _load_table(name: str) -> dict[str, list[dict[str, Any]]]:
    return _table(name, strict=True)[0]


# What backends.select chose per (op, dtype, GPU, shape, ...) on a real GPU: a choice costs
# ~16 us of Python (measured on this project's CPU), an op call on a GPU tens of us. Cleared
# with the tables and the verification record below.
SELECT_MEMO: dict[tuple, Any] = {}


def clear_caches() -> None:
    """Forget the tables, the verification record and the choices made from them."""
    _read_table.cache_clear()
    _read_verified.cache_clear()
    SELECT_MEMO.clear()


_load_table.cache_clear = clear_caches  # type: ignore[attr-defined]


def table_for(
    op: str, gpu_name: str | None, capability, strict: bool = False
) -> tuple[list[dict[str, Any]], str | None]:
    """(buckets, where they come from) for ``op`` on this GPU: its own table where it was
    measured, else its architecture's; ([], None) where neither has the op. A table that
    cannot be used raises (``strict``) or is reported once and skipped."""
    if gpu_name:
        table, path = _table(slug(gpu_name), strict)
        if op in table:
            return table[op], f"table of {gpu_name} ({Path(path).name})"
    tag = capability_tag(capability)
    if tag:
        table, path = _table(tag, strict)
        if op in table:
            return table[op], f"{tag} architecture table ({Path(path).name})"
    return [], None


def _matches(entry: dict[str, Any], dtype: str, m: int, shape: dict[str, Any]) -> bool:
    if entry.get("dtype") != dtype or m > entry["m_max"]:
        return False
    for name, value in shape.items():
        if f"{name}_max" in entry and value > entry[f"{name}_max"]:
            return False
        if name in entry and entry[name] != value:
            return False
    return True


def find_entry(
    op: str, gpu_name: str | None, capability, dtype: str, m: int, strict: bool = False,
    **shape: Any,
) -> tuple[dict[str, Any] | None, str | None]:  # fmt: skip
    """The bucket that applies to this call, and the table it comes from."""
    entries, source = table_for(op, gpu_name, capability, strict)
    for entry in entries:
        if _matches(entry, dtype, m, shape):
            return entry, source
    return None, source


def lookup(op: str, gpu_name: str, dtype: str, m: int, capability=None, **shape: Any) -> str | None:
    """The implementation the table picks for this call, or None where no bucket applies."""
    entry, _ = find_entry(op, gpu_name, capability, dtype, m, strict=True, **shape)
    if entry is None:
        return None
    return entry.get("pick", entry.get("backend"))


def entry_time(entry: dict[str, Any], name: str) -> float | None:
    """The time ``entry`` ranks ``name`` by (its ``rank_by``: graph or eager), or None."""
    t = (entry.get("times_us") or {}).get(name)
    if not isinstance(t, dict):
        return t if isinstance(t, (int, float)) else None
    return t.get(entry.get("rank_by", "eager"))


def dense_time(entry: dict[str, Any]) -> float | None:
    d = entry.get("dense_us")
    if isinstance(d, dict):
        return d.get(entry.get("rank_by", "eager"))
    return d if isinstance(d, (int, float)) else None


def ranked(entry: dict[str, Any]) -> list[str]:
    """The bucket's candidates, fastest first (old tables: just their backend)."""
    if "ranked" in entry:
        return list(entry["ranked"])
    return [entry.get("pick", entry.get("backend"))]


def within_rule(entry: dict[str, Any], name: str) -> bool:
    """True if ``name``'s recorded time is at most DENSE_SLACK x the dense layer's; True also
    where the bucket records no dense time (nothing to compare)."""
    dense = dense_time(entry)
    if dense is None:
        return True
    t = entry_time(entry, name)
    return t is not None and t <= DENSE_SLACK * dense


def write_dispatch_table(
    gpu_name: str,
    op: str,
    entries: list[dict[str, Any]],
    meta: dict[str, Any],
    config_dir: str | os.PathLike | None = None,
    capability: tuple[int, int] | str | None = None,
) -> list[Path]:
    """Replace ``op``'s buckets in ``<config_dir>/dispatch/<gpu>.json`` and, with
    ``capability``, in the architecture's table too (atomically). Returns the files written."""
    from . import registry

    known = registry.names() if op in registry.ops() else {"torch", "triton", "cuda"}
    for i, e in enumerate(entries):
        missing = {"dtype", "m_max"} - set(e)
        if missing or not ("pick" in e or "backend" in e):
            raise ValueError(f"dispatch entry {i} lacks {sorted(missing) or ['pick']}: {e}")
        for name in (e.get("pick", e.get("backend")), *e.get("ranked", ())):
            if name not in known:
                raise ValueError(f"dispatch entry {i}: unknown backend {name!r} for {op}")
    base = Path(config_dir) if config_dir is not None else PACKAGE_CONFIGS
    targets = [slug(gpu_name)]
    tag = capability_tag(capability)
    if tag:
        targets.append(tag)
    paths = []
    for target in targets:
        path = base / "dispatch" / f"{target}.json"
        table = read_json(path, "dispatch table") if path.exists() else {}
        table[op] = entries
        table.setdefault("meta", {})[op] = {"gpu": gpu_name, "capability": tag, **meta}
        atomic_write_json(path, table)
        paths.append(path)
    clear_caches()
    return paths


@functools.cache
def _read_verified() -> tuple[dict[str, dict[str, dict[str, list[dict[str, Any]]]]], str | None]:
    merged: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    for d in reversed(_config_dirs()):
        path = d / "verified.json"
        if not path.exists():
            continue
        try:
            data = read_json(path, "verified-kernels record")
            if not isinstance(data, dict):
                raise ValueError(f"verified-kernels record {path} must hold a JSON object")
            for op, by_impl in data.items():
                for impl, by_arch in by_impl.items():
                    if isinstance(by_arch, list):  # the old per-GPU-name shape
                        by_arch = _old_records(by_arch, path)
                    for tag, runs in by_arch.items():
                        if not isinstance(runs, list):
                            raise ValueError(f"{path}: {op}/{impl}/{tag} must be a list of runs")
                        merged.setdefault(op, {}).setdefault(impl, {}).setdefault(
                            capability_tag(tag), []
                        ).extend(runs)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            return {}, f"{exc} ({path})"
    return merged, None


def verified_kernels(strict: bool = True) -> dict[str, dict[str, dict[str, list[dict[str, Any]]]]]:
    """op -> implementation -> architecture tag -> the runs that verified it there. A record
    that cannot be read raises (``strict``) or is reported once and counts as empty."""
    merged, error = _read_verified()
    if error is not None:
        if strict:
            raise ValueError(error)
        _warn_once(f"{error}; every kernel counts as unverified")
    return merged


verified_kernels.cache_clear = clear_caches  # type: ignore[attr-defined]


def _old_records(runs: list, path: Path) -> dict[str, list]:
    by_arch: dict[str, list] = {}
    for run in runs:
        if isinstance(run, dict) and run.get("capability"):
            by_arch.setdefault(run["capability"], []).append(run)
        else:
            _warn_once(f"{path}: a verification run without a 'capability' is ignored: {run}")
    return by_arch


def verified_on(op: str, impl: str, strict: bool = True) -> list[str]:
    """The architectures on which ``impl`` of ``op`` passed the test suite."""
    by_arch = verified_kernels(strict).get(op, {}).get(impl, {})
    return sorted(t for t, runs in by_arch.items() if runs)


def is_verified(op: str, impl: str, capability: tuple[int, int] | str | None = None) -> bool:
    """True if the test suite passed with this op and kernel on this architecture (on any
    architecture when ``capability`` is None). Torch's paths need no verification."""
    from . import registry

    if registry.has(op, impl) and not registry.get(op, impl).kernel:
        return True
    if impl == "torch":
        return True
    tags = verified_on(op, impl, strict=False)
    return bool(tags) if capability is None else capability_tag(capability) in tags
