"""Where ``convert`` and ``plan`` get a model: a timm name, a state-dict checkpoint with its
timm architecture, or a segment-anything checkpoint. Nothing is unpickled."""

from __future__ import annotations

import os
from pathlib import Path

from ._common import CLIError, InputFileError, UsageError, _missing


def _looks_like_path(s: str) -> bool:
    return (
        os.sep in s
        or "/" in s
        or Path(s).suffix.lower() in (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
    )


def _read_state_dict(path: Path) -> dict:
    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from .._io import load_tensors

            sd = load_tensors(path)
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if type(exc).__name__ == "UnpicklingError":
            # torch's message advises retrying with weights_only=False, which runs whatever
            # code the file holds: do not pass that on. Keep only what it found.
            found = [ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln]
            raise InputFileError(
                f"{path} holds pickled Python objects besides tensors"
                f"{' (' + found[0] + ')' if found else ''}; supernet-kernels does not unpickle "
                "them (unpickling can run code). Save the weights as a state dict of tensors "
                "(torch.save(model.state_dict(), ...)) or as safetensors"
            ) from None
        raise InputFileError(f"{path} is not a readable checkpoint: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputFileError(f"{path}: expected a state dict (name -> tensor)")
    return sd


def _make_model(args) -> tuple[object, dict]:
    """The model ``convert`` converts, and facts about where it came from."""
    src = args.model
    kwargs = dict(args.model_kwargs or {})
    info: dict = {"source": src}
    if args.sam:
        path = Path(src)
        if not path.is_file():
            raise _missing(path, "SAM checkpoint")
        try:
            from segment_anything import sam_model_registry
        except ImportError as exc:
            raise CLIError("--sam needs segment-anything (pip install segment-anything)") from exc
        try:
            sam = sam_model_registry[args.sam](checkpoint=str(path))
        except Exception as exc:
            raise InputFileError(
                f"{path} is not a segment-anything {args.sam} checkpoint: {exc}"
            ) from exc
        info.update(source=str(path.resolve()), sam=args.sam, task="segmentation")
        enc = sam.image_encoder
        info["image_size"] = int(getattr(enc, "img_size", 1024))
        return enc, info
    import timm

    if Path(src).exists() or _looks_like_path(src):
        path = Path(src)
        if not path.is_file():
            raise _missing(path, "checkpoint")
        if not args.arch:
            raise UsageError(
                f"{path} is a checkpoint file: name its timm architecture with --arch "
                "(e.g. --arch deit_small_patch16_224), or give --sam TYPE for a SAM checkpoint"
            )
        arch = args.arch
        sd = _read_state_dict(path)
        try:
            model = timm.create_model(arch, pretrained=False, **kwargs)
        except Exception as exc:
            raise UsageError(f"--arch {arch!r}: cannot create it with timm: {exc}") from exc
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise InputFileError(
                f"{path} does not fit timm {arch} {kwargs or ''}: {str(exc)[:400]}"
            ) from exc
        info.update(source=str(path.resolve()), arch=arch)
    else:
        if not timm.list_models(src) and not timm.is_model(src):
            raise UsageError(
                f"{src!r} is neither an existing checkpoint file nor a timm model name "
                "(see timm.list_models())"
            )
        try:
            model = timm.create_model(src, pretrained=args.pretrained, **kwargs)
        except Exception as exc:
            raise CLIError(f"timm.create_model({src!r}, ...) failed: {exc}") from exc
        info.update(arch=src)
    info["task"] = "classification"
    cfg = getattr(model, "pretrained_cfg", None) or {}
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    info["image_size"] = int(size[0] if isinstance(size, tuple | list) else size or 224)
    info["mean"] = list(cfg.get("mean", (0.485, 0.456, 0.406)))
    info["std"] = list(cfg.get("std", (0.229, 0.224, 0.225)))
    info["num_classes"] = int(getattr(model, "num_classes", 0) or 0)
    return model.eval(), info
