"""Small file helpers shared by tables, caches and results: atomic JSON writes."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_replace(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(fd, tmp)``, an open temporary file in ``path``'s folder (created if needed), to be
    written (and closed) by the caller; on success it is renamed over ``path`` (atomic on POSIX
    within one file system), on any exception it is removed and the exception goes on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON so that a reader sees either the old file or the new one, whole.

    The data goes to a temporary file in the same folder, is flushed to disk, then renamed
    over the target (rename is atomic on POSIX within one file system).
    """
    path = Path(path)
    with atomic_replace(path) as (fd, _), os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file, turning a corrupt one into a clear error that names the file."""
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} is not valid JSON ({exc}); delete or fix it") from exc


def slug(name: str) -> str:
    """File-name-safe key for a GPU name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    out = "".join(c.lower() if c.isalnum() else "-" for c in name)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "unknown"


def check_dtypes(tensors: dict, state: dict, where: str) -> None:
    """Refuse tensors whose dtype differs from the model's: ``load_state_dict`` would convert
    them silently (an int32 tensor where a float32 weight belongs is a corrupt file, not data)."""
    bad = [
        f"{k}: file {t.dtype}, model {state[k].dtype}"
        for k, t in tensors.items()
        if k in state and t.dtype != state[k].dtype
    ]
    if bad:
        raise ValueError(f"{where} does not match the model (dtype mismatch): {bad[:8]}")
