"""Build records: how to rebuild a converted model's architecture without code.

:func:`describe_build` writes a JSON record for a model (a timm name with the constructor
arguments that differ from its defaults, a whitelisted class with its arguments, or a family's
own record such as transformers' config) and keeps it only if :func:`rebuild` of that record
gives the same :func:`fingerprint`; :func:`rebuild` follows a record (fresh weights). The
families themselves (``FAMILIES``, what each reads and writes) are in :mod:`.families`.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import torch
from torch import nn

from .families import FAMILIES

_CLASSES = {f.build_class: f.get_class for f in FAMILIES.values() if f.build_class}


def rebuild(build: dict, device=None) -> nn.Module:
    """The architecture a build record describes (fresh weights). Raises ValueError for a
    record it cannot follow."""
    if not isinstance(build, dict) or not isinstance(build.get("kwargs"), dict):
        raise ValueError(f"corrupt build record {build!r}")
    kwargs = dict(build["kwargs"])
    kind = build.get("kind")
    ctx = torch.device(device) if device is not None else _nullctx()
    try:
        with ctx:
            if kind == "timm":
                import timm

                name = build.get("name")
                if not isinstance(name, str):
                    raise ValueError(f"corrupt build record: name {name!r}")
                return timm.create_model(name, pretrained=False, **kwargs)
            if kind == "hf":
                from . import hf

                return hf.rebuild(build)
            if kind == "class":
                get = _CLASSES.get(build.get("class"))
                cls = get() if get is not None else None
                if cls is None:
                    raise ValueError(f"unknown class {build.get('class')!r} in build record")
                if build["class"] == "segment_anything.ImageEncoderViT":
                    eps = kwargs.pop("norm_eps", 1e-6)
                    kwargs["norm_layer"] = functools.partial(nn.LayerNorm, eps=eps)
                return cls(**kwargs)
    except ValueError:
        raise
    except Exception as exc:  # a record timm / SAM refuse: name it
        raise ValueError(f"cannot rebuild the architecture from {build!r}: {exc}") from exc
    raise ValueError(f"unknown build kind {kind!r}")


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def fingerprint(model: nn.Module) -> tuple:
    """Module types and reprs (dropout / drop-path / identity ignored: rates do not change the
    inference architecture) and the state_dict's shapes."""
    mods = []
    for name, m in model.named_modules():
        t = type(m).__name__
        if "Drop" in t or t == "Identity":
            continue
        mods.append((name, t, m.extra_repr()))
    shapes = sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())
    return tuple(mods), tuple(shapes)


def _generic_timm_candidates(model: nn.Module, name: str) -> list[dict]:
    """Records for a timm model outside the ViT / Swin families: its architecture name with
    the constructor arguments readable on any timm model (classes, input channels, pooling),
    most specific first. The caller verifies them."""
    kw: dict[str, Any] = {}
    if isinstance(getattr(model, "num_classes", None), int):
        kw["num_classes"] = int(model.num_classes)
    pool = getattr(model, "global_pool", None)
    if isinstance(pool, str):
        kw["global_pool"] = pool
    cands = []
    for drop in ([], ["global_pool"], ["global_pool", "num_classes"]):
        k = {a: b for a, b in kw.items() if a not in drop}
        cands.append({"kind": "timm", "name": name, "kwargs": k})
    return cands


def describe_build(model: nn.Module, family: str) -> dict | None:
    """A verified JSON build record for ``model`` (call before converting it), or None."""
    spec = FAMILIES[family]
    if spec.record is not None:  # a family with its own build records (transformers)
        try:
            build = json.loads(json.dumps(spec.record(model)))
            if fingerprint(rebuild(build, device="meta")) == fingerprint(model):
                return build
        except Exception:
            pass
        return None
    reader = spec.kwargs
    if reader is None:
        # Any timm model made by name: its name plus the generic arguments, verified.
        name = _timm_name(model)
        if name is None:
            return None
        return _first_rebuilding(model, _generic_timm_candidates(model, name))
    try:
        kwargs = json.loads(json.dumps(reader(model)))
    except Exception:
        return None
    candidates = []
    name = _timm_name(model)
    if name is not None:
        try:
            default = rebuild({"kind": "timm", "name": name, "kwargs": {}}, device="meta")
            base = json.loads(json.dumps(reader(default)))
            diff = {k: v for k, v in kwargs.items() if base.get(k) != v}
            candidates.append({"kind": "timm", "name": name, "kwargs": diff})
        except Exception:
            pass
    candidates.append({"kind": "class", "class": spec.build_class, "kwargs": kwargs})
    return _first_rebuilding(model, candidates)


def _timm_name(model: nn.Module) -> str | None:
    """The timm architecture name a model was made by, if it says."""
    cfg = getattr(model, "pretrained_cfg", None)
    name = cfg.get("architecture") if isinstance(cfg, dict) else None
    return name if isinstance(name, str) else None


def _first_rebuilding(model: nn.Module, candidates: list[dict]) -> dict | None:
    """The first record whose rebuild has ``model``'s fingerprint, else None."""
    want = fingerprint(model)
    for build in candidates:
        # On the meta device (no memory, no init); some timm versions (1.0.15) copy data while
        # building Swin, which meta tensors refuse: then on the CPU.
        for device in ("meta", "cpu"):
            try:
                if fingerprint(rebuild(build, device=device)) == want:
                    return build
                break
            except Exception:
                continue
    return None
