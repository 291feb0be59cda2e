"""Small file helpers shared by tables, caches, results and weights: atomic JSON writes, and the
one safetensors writer and reader (:func:`save_tensors`, :func:`read_header`,
:func:`load_tensors`: atomic, fsynced, shared storage de-duplicated, nothing unpickled)."""

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


def check_shapes(expected: dict, shapes: dict, where: str) -> None:
    """Refuse a file whose tensor names or shapes (``shapes``: name -> shape, from its header)
    differ from what the model expects (``expected``: name -> shape, or None where another
    loader checks the shape), before anything is loaded."""
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{where} does not match the model (from another model?): missing keys "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}, unexpected keys "
            f"{extra[:8]}{' ...' if len(extra) > 8 else ''}"
        )
    bad = [
        f"{k}: file {shapes[k]}, model {s}"
        for k, s in expected.items()
        if s is not None and shapes[k] != s
    ]
    if bad:
        raise ValueError(f"{where} does not match the model (shape mismatch): {bad[:8]}")


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside the folder ``path`` durable (where the file system allows it)."""
    try:
        dfd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms that cannot open a folder
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover - e.g. file systems without directory fsync
        pass
    finally:
        os.close(dfd)


def unshared(tensors: dict) -> dict:
    """``{name: tensor}`` as contiguous, detached CPU tensors, a tensor sharing its storage with
    an earlier one (tied weights, views) cloned: safetensors refuses shared memory."""
    out: dict = {}
    seen: set = set()
    for key, t in tensors.items():
        t = t.detach().contiguous()
        ident = (t.device, t.untyped_storage().data_ptr()) if t.numel() else None
        if ident is not None and ident in seen:
            t = t.clone()
        elif ident is not None:
            seen.add(ident)
        out[key] = t.cpu()
    return out


def save_tensors(
    path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` ({name: tensor}, see :func:`unshared`) and ``metadata`` (str -> str,
    the safetensors header) to ``path`` so that a reader sees the old file or the new one,
    whole: a temporary file in the same folder, fsynced, renamed over ``path``, the folder
    fsynced (the rename durable too)."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_replace(path) as (fd, tmp):
        os.close(fd)
        save_file(unshared(tensors), tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(path.parent)
    return path


def _unreadable(path: Path, where: str | None, exc: Exception) -> ValueError:
    head = f"{where}: " if where else ""
    return ValueError(
        f"{head}{path} is not a readable safetensors file (truncated or corrupt?): {exc}"
    )


def read_header(
    path: str | os.PathLike, where: str | None = None
) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """(the metadata, {name: shape}) of a safetensors file, reading no tensor data.
    ``FileNotFoundError`` for a missing file, ``ValueError`` (prefixed by ``where``) for one
    safetensors cannot read."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where + ': ' if where else ''}no file {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise _unreadable(path, where, exc) from exc
    return meta, shapes


def load_tensors(path: str | os.PathLike, where: str | None = None, device: str = "cpu") -> dict:
    """{name: tensor} of a safetensors file (no pickle); errors as :func:`read_header`'s."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where + ': ' if where else ''}no file {path}")
    try:
        return load_file(str(path), device=device)
    except Exception as exc:
        raise _unreadable(path, where, exc) from exc
