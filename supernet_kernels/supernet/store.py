"""Save and load whole supernets: a folder of ``supernet.json`` + ``supernet.safetensors``.

``save_supernet(supernet, folder)`` (also ``supernet_kernels.save(supernet, folder)``) writes

* ``supernet.safetensors``: ``supernet.state_dict()`` (no pickle), its header holding a random
  ``state_id``;
* ``supernet.json``: ``{"format": "sk-cli-supernet-v1", "family", "build" (how to rebuild the
  architecture, see :func:`~supernet_kernels.supernet.families.describe_build`),
  "attention", "space" (the search space, which convert is asked for again on load),
  "max_config", "min_config", "state": "supernet.safetensors", "state_id", ...}`` plus what
  the command line records (recipe, source, image size, ...).

This is the format ``supernet-kernels convert`` / ``train`` have always written: folders from
earlier releases load (they have no ``state_id``).

Atomic: each file is written to a temporary file in the folder, fsynced and renamed over its
target, the weights first and the JSON last (the JSON is the commit point). A reader that
finds a JSON whose ``state_id`` differs from the weights' (a save interrupted between the two
renames, or files mixed from two saves) gets a clear error instead of mismatched weights.

``load_supernet(path)`` (also ``supernet_kernels.load(folder)``) reads only JSON and
safetensors: it checks the document, rebuilds the architecture from ``build``, converts it
with the recorded space (and recipe: ``mplora`` rebuilds its LoRA adapters), loads the
weights strictly and checks the rebuilt space equals the recorded one. Errors are
``ValueError`` (``FileNotFoundError`` for a missing file) naming the file.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .._io import atomic_write_json, load_tensors, read_header, read_json, save_tensors
from . import families as fam
from .core import Supernet, convert
from .io import check_build_bounds

SUPERNET_FORMAT = "sk-cli-supernet-v1"
DOC_NAME = "supernet.json"
STATE_NAME = "supernet.safetensors"
_STATE_ID = "supernet_kernels.state_id"


@dataclass(frozen=True)
class StoredRecipe:
    """What the store needs of a recipe (``supernet.json``'s ``recipe`` field): ``supernet(model,
    doc)`` builds the supernet itself from the document (None: ``convert``), ``records`` the
    fields it rebuilds from (``lora_rank`` among them: its supernets may hold LoRA adapters)."""

    name: str
    supernet: Callable | None = None
    records: tuple[str, ...] = ()


# Filled by supernet_kernels.recipes (imported by the package itself, so every import of
# supernet_kernels fills it): recipes build on convert, so the store, below them, reads this
# table instead of importing them.
_RECIPES: dict[str, StoredRecipe] = {}


def register_recipe(name: str, supernet: Callable | None = None, records=()) -> None:
    """Tell the store how a recipe's supernets are rebuilt (see :class:`StoredRecipe`)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_recipe: name must be a non-empty str, got {name!r}")
    _RECIPES[name] = StoredRecipe(name, supernet, tuple(records))


def build_supernet(model: nn.Module, doc: dict) -> Supernet:
    """``convert(model)`` the way ``doc`` (a supernet.json document) records it."""
    recipe = _RECIPES.get(doc.get("recipe", "default"))
    if recipe is not None and recipe.supernet is not None:
        return recipe.supernet(model, doc)
    override = doc.get("space_override")
    recorded = doc.get("space")
    if isinstance(recorded, dict):
        # Rebuilding a written supernet: its heads as recorded, which decides whether convert
        # reorders qkv head-major. A file written before heads were elastic holds every head
        # in the original qkv row order: all heads, fixed.
        heads = recorded.get("heads")
        if heads is None:
            heads = {a: [h] for a, h in fam.layout(model).heads.items()}
        override = {**(override or {}), "heads": heads}
    return convert(
        model,
        space=override,
        attention=doc.get("attention", "ours"),
        importance=doc.get("_importance", "magnitude"),
        calib_batches=doc.get("_calib"),
    )


def supernet_doc(sn: Supernet, base: dict | None = None) -> dict:
    """The supernet.json document of ``sn`` (``base``: further fields to record)."""
    doc = dict(base or {})
    doc.setdefault("recipe", "default")
    if doc["recipe"] == "default" and doc.get("space_override") is None:
        doc["space_override"] = sn.space  # the whole space: convert rebuilds exactly it
    doc.update(
        format=SUPERNET_FORMAT,
        family=sn.family,
        build=sn.build,
        attention=sn.attention,
        space=sn.space,
        max_config=sn.max_config(),
        min_config=sn.min_config(),
        state=STATE_NAME,
    )
    return doc


def save_supernet(sn: Supernet, folder: str | os.PathLike, info: dict | None = None) -> Path:
    """Write ``sn`` to ``folder`` (created if needed); returns the supernet.json path.
    ``info``: further JSON fields to record (the command line's recipe, source, ...)."""
    if not isinstance(sn, Supernet):
        raise TypeError(f"save_supernet: expected a Supernet, got {type(sn).__name__}")
    if sn.build is None:
        raise ValueError(
            f"save: this {sn.family} supernet records no architecture to rebuild (convert "
            "could not describe the model); convert it with build={'kind': 'timm', 'name': ..., "
            "'kwargs': {...}} or {'kind': 'class', ...}, or save its state_dict yourself"
        )
    lora = [n for n, m in sn.elastic_linears().items() if m.lora_rank]
    recipe = _RECIPES.get((info or {}).get("recipe", "default"))
    if lora and (recipe is None or "lora_rank" not in recipe.records):
        raise ValueError(
            f"save: the supernet has LoRA adapters ({lora[0]!r}, ...); save it with "
            "info={'recipe': 'mplora', 'bits': [...], 'lora_rank': r} so load can rebuild them"
        )
    folder = Path(folder)
    if folder.suffix in (".safetensors", ".json", ".pt", ".pth"):
        raise ValueError(
            f"save: a Supernet is saved to a folder, got the file name {folder}; to save a "
            "subnet, extract it first: save(supernet.extract(config), path)"
        )
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"save: {folder} exists and is not a folder (a supernet is a folder)")
    doc = supernet_doc(sn, info)
    doc = json.loads(json.dumps(doc))  # JSON only: fails here on anything else
    doc["state_id"] = secrets.token_hex(8)
    save_tensors(folder / STATE_NAME, sn.state_dict(), {_STATE_ID: doc["state_id"]})
    return atomic_write_json(folder / DOC_NAME, doc)


def read_supernet_doc(path: str | os.PathLike) -> tuple[dict, Path]:
    """(the supernet.json document, its path) of a folder or supernet.json."""
    path = Path(path)
    if path.is_dir():
        path = path / DOC_NAME
    if not path.is_file():
        raise FileNotFoundError(f"load: no supernet file {path}")
    doc = read_json(path, "supernet file")
    if not isinstance(doc, dict) or doc.get("format") != SUPERNET_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(
            f"{path}: not a supernet file written by supernet_kernels.save / `supernet-kernels "
            f"convert` / `train` (format {got!r}, expected {SUPERNET_FORMAT!r})"
        )
    if not isinstance(doc.get("build"), dict):
        raise ValueError(f"{path}: the file records no architecture (build) to rebuild")
    state = doc.get("state", STATE_NAME)
    if not isinstance(state, str) or Path(state).name != state:
        raise ValueError(f"{path}: 'state' must be a file name in the folder, got {state!r}")
    for key in ("space", "space_override"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            raise ValueError(f"{path}: {key!r} must be a dict")
    return doc, path


def load_supernet(path: str | os.PathLike) -> tuple[Supernet, dict, Path]:
    """Rebuild a saved supernet with its weights: ``(supernet, document, supernet.json
    path)``; the supernet is at its max config."""
    doc, path = read_supernet_doc(path)
    state_path = path.parent / doc.get("state", STATE_NAME)
    if not state_path.is_file():
        raise FileNotFoundError(f"load: no supernet weights {state_path} (named by {path})")
    header, shapes = read_header(state_path)
    state_id = header.get(_STATE_ID)
    if doc.get("state_id") is not None and doc["state_id"] != state_id:
        raise ValueError(
            f"{state_path} is not the weights {path} was written with (state_id "
            f"{state_id!r}, expected {doc['state_id']!r}): an interrupted save or files mixed "
            "from two saves"
        )
    # Nothing real is built before the record is known to fit these tensors (an edited build
    # could ask for any size): its numbers within bounds, then a meta-device dry run whose
    # parameter count must be near the file's (a converted model holds at most about twice
    # the original's: full-rank factors; LoRA adds less).
    check_build_bounds(doc["build"], shapes, 0, f"{path}: corrupt build record")
    try:
        dry = fam.rebuild(doc["build"], device="meta")
    except ValueError:
        dry = None  # a build some timm versions cannot run on meta: the real one reports it
    if dry is not None:
        want = sum(math.prod(s) for s in shapes.values())
        got = sum(p.numel() for p in dry.parameters())
        if got > 4 * want + 4096:
            raise ValueError(
                f"{path}: the recorded build has {got} parameters, far more than the "
                f"{want} values in {state_path}; corrupt build record"
            )
    try:
        model = fam.rebuild(doc["build"])
    except ValueError as exc:
        raise ValueError(f"{path}: cannot rebuild the architecture: {exc}") from exc
    meta = dict(doc)
    meta.pop("_importance", None)
    try:
        sn = build_supernet(model, meta)
    except ValueError as exc:
        raise ValueError(f"{path}: cannot convert the rebuilt model as recorded: {exc}") from exc
    state = load_tensors(state_path)
    try:
        sn.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"{state_path} does not fit the supernet {path} describes: {str(exc)[:500]}"
        ) from exc
    have = sn.space
    if isinstance(doc.get("space"), dict) and "heads" not in doc["space"]:
        have.pop("heads")  # written before heads were elastic (see build_supernet)
    if doc.get("space") is not None and json.dumps(have, sort_keys=True) != json.dumps(
        doc["space"], sort_keys=True
    ):
        raise ValueError(f"{path}: the rebuilt supernet's space differs from the recorded one")
    sn.set_active(sn.max_config())
    return sn, doc, path
