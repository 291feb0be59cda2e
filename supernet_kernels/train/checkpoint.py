"""Training checkpoints: one safetensors file, tensors in its body, everything else as JSON in its
header. Nothing is pickled, so loading a checkpoint never runs code.

Format (``sk-train-checkpoint-v1``): ``<checkpoint_dir>/checkpoint.safetensors``

* tensors: every tensor of the state tree under its path, e.g. ``model/model.blocks.0.attn.qkv.u``,
  ``optimizer/state/3/exp_avg``, ``rng/torch``;
* header metadata ``"sk_train"``: a JSON document ``{"format": ..., "state": <tree>}`` where the
  tree is the trainer's state dict with each tensor replaced by ``{"__tensor__": key}``; tuples
  are ``{"__tuple__": [...]}``, dicts with non-string keys (optimizer state is keyed by
  parameter index) ``{"__items__": [[key, value], ...]}`` and numpy arrays (numpy's RNG state)
  ``{"__ndarray__": [...], "dtype": ...}``, so the tree comes back exactly, types included.
  Floats round-trip exactly (JSON writes ``repr``), NaN / inf included.

Writes are atomic: a temporary file in the same folder, written, fsynced, then renamed over the
old checkpoint (``os.replace``) and the folder fsynced, so a crash leaves the old checkpoint or
the new one, whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .._io import load_tensors, read_header, save_tensors

FORMAT = "sk-train-checkpoint-v1"
FILENAME = "checkpoint.safetensors"
META_KEY = "sk_train"


def checkpoint_path(path: str | os.PathLike) -> Path:
    """The checkpoint file of ``path`` (a checkpoint file, or a folder holding one)."""
    p = Path(path)
    return p / FILENAME if p.is_dir() or not p.suffix else p


# --------------------------------------------------------------------------- tree encoding
def encode(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able tree, {key: tensor}) for a state tree of dicts, lists, tuples, tensors, numpy
    arrays and scalars; TypeError naming the path of anything else."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(v: Any, path: str) -> Any:
        if isinstance(v, torch.Tensor):
            t = v.detach()
            t = t.to("cpu").clone() if t.device.type == "cpu" else t.to("cpu")
            tensors[path] = t.contiguous()
            return {"__tensor__": path}
        if v is None or isinstance(v, bool | int | float | str):
            return v
        if isinstance(v, tuple):
            return {"__tuple__": [enc(x, f"{path}/{i}") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [enc(x, f"{path}/{i}") for i, x in enumerate(v)]
        if isinstance(v, dict):
            if all(isinstance(k, str) for k in v) and not any(k.startswith("__") for k in v):
                return {k: enc(x, f"{path}/{k}") for k, x in v.items()}
            items = []
            for k, x in v.items():
                if not isinstance(k, str | int) or isinstance(k, bool):
                    raise TypeError(f"checkpoint: {path}: unsupported dict key {k!r}")
                items.append([k, enc(x, f"{path}/{k}")])
            return {"__items__": items}
        mod = type(v).__module__
        if mod == "numpy" and type(v).__name__ == "ndarray":
            return {"__ndarray__": v.tolist(), "dtype": str(v.dtype)}
        if mod == "numpy":  # numpy scalar
            return v.item()
        if isinstance(v, torch.dtype):
            return {"__dtype__": str(v).removeprefix("torch.")}
        raise TypeError(
            f"checkpoint: {path or 'state'}: cannot store a {type(v).__name__} (plain tensors, "
            "numbers, strings, lists, tuples and dicts only; nothing is pickled)"
        )

    return enc(tree, ""), tensors


def decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [decode(x, tensors) for x in tree]
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__tuple__" in tree:
            return tuple(decode(x, tensors) for x in tree["__tuple__"])
        if "__items__" in tree:
            return {k: decode(x, tensors) for k, x in tree["__items__"]}
        if "__ndarray__" in tree:
            import numpy as np

            return np.asarray(tree["__ndarray__"], dtype=tree["dtype"])
        if "__dtype__" in tree:
            return getattr(torch, tree["__dtype__"])
        return {k: decode(x, tensors) for k, x in tree.items()}
    return tree


# --------------------------------------------------------------------------- files
def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` (a trainer state dict) atomically to ``path`` (a file, or a folder that
    gets ``checkpoint.safetensors``); returns the file."""
    path = checkpoint_path(path)
    tree, tensors = encode(state)
    meta = {META_KEY: json.dumps({"format": FORMAT, "state": tree}, allow_nan=True)}
    return save_tensors(path, tensors, meta)  # atomic; the file and the rename fsynced


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The state dict saved by :func:`save_checkpoint`; ValueError for a missing, corrupt or
    foreign file."""
    path = checkpoint_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no checkpoint at {path}")
    meta, _ = read_header(path, "checkpoint")
    tensors = load_tensors(path, "checkpoint")
    if META_KEY not in meta:
        raise ValueError(
            f"checkpoint: {path} is not a supernet_kernels training checkpoint (no "
            f"{META_KEY!r} header)"
        )
    try:
        doc = json.loads(meta[META_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint: {path}: corrupt header ({exc})") from exc
    if doc.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint: {path} has format {doc.get('format')!r}, expected {FORMAT!r}"
        )
    try:
        return decode(doc["state"], tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"checkpoint: {path}: header and tensors disagree (corrupt file?): {exc!r}"
        ) from exc
