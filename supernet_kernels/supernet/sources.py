"""Where a model to convert comes from, by a short description (what the command line's
``convert`` and ``plan`` take): :func:`make_model` returns the model and facts about it.

Sources (``source`` plus keyword arguments):

* a timm model name (``"vit_tiny_patch16_224"``; ``model_kwargs``: constructor arguments,
  ``pretrained=True`` downloads timm's weights);
* a state-dict checkpoint file (``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors``) with its timm
  architecture ``arch``; read with ``torch.load(weights_only=True)`` or safetensors;
* a segment-anything checkpoint with ``sam="vit_b" | "vit_l" | "vit_h"`` (its image encoder);
* a Hugging Face transformers folder written by ``save_pretrained`` (``config.json`` and
  ``model.safetensors``), loaded with ``from_pretrained(folder, local_files_only=True,
  use_safetensors=True)``: never downloads, never unpickles. The class is the one
  ``config.json``'s ``architectures`` names, or ``arch="hf:CLASS"``; it must be one of the
  first-class transformers classes (:data:`~supernet_kernels.supernet.hf.HF_CLASSES`);
* ``"hf:CLASS"`` alone: that transformers class with fresh random weights, its config from
  ``model_kwargs`` (config fields, e.g. ``{"num_hidden_layers": 4}``; nested configs as dicts).

For a ``SamModel`` (folder or class) the model returned is a ``SamVisionModel`` holding its
vision encoder (``info["part"] = "vision_encoder"``), as a segment-anything checkpoint gives
its image encoder: the search space lies there, and the encoder runs on images alone.

Nothing here downloads unless ``pretrained=True`` names a timm model, and nothing is
unpickled. Errors are :class:`ModelSourceError` (a ValueError) whose ``kind`` says what is
wrong: ``"usage"`` (the arguments), ``"input"`` (a file: missing, unreadable, another model's),
``"failed"`` (the library that builds the model refused).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

HF_PREFIX = "hf:"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
SAM_TYPES = ("vit_b", "vit_l", "vit_h")


class ModelSourceError(ValueError):
    """A model source that cannot be made; ``kind``: "usage", "input" or "failed"."""

    def __init__(self, message: str, kind: str = "input"):
        super().__init__(message)
        self.kind = kind


def _missing(path, what: str) -> ModelSourceError:
    return ModelSourceError(f"{what} not found: {path}", "input")


def looks_like_path(s: str) -> bool:
    return os.sep in s or "/" in s or Path(s).suffix.lower() in CHECKPOINT_SUFFIXES


def is_hf_folder(path: Path) -> bool:
    """A folder written by transformers' ``save_pretrained`` (it holds ``config.json``)."""
    return path.is_dir() and (path / "config.json").is_file()


def read_state_dict(path: str | os.PathLike) -> dict:
    """The tensors of a state-dict checkpoint (safetensors, or a torch file read with
    ``weights_only=True``; a ``state_dict`` / ``model`` / ``model_state_dict`` entry is
    unwrapped). Files holding other pickled objects are refused, not unpickled."""
    import torch

    path = Path(path)
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
            raise ModelSourceError(
                f"{path} holds pickled Python objects besides tensors"
                f"{' (' + found[0] + ')' if found else ''}; supernet-kernels does not unpickle "
                "them (unpickling can run code). Save the weights as a state dict of tensors "
                "(torch.save(model.state_dict(), ...)) or as safetensors"
            ) from None
        raise ModelSourceError(f"{path} is not a readable checkpoint: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelSourceError(f"{path}: expected a state dict (name -> tensor)")
    return sd


def make_model(
    source: str,
    *,
    arch: str | None = None,
    sam: str | None = None,
    model_kwargs: dict | None = None,
    pretrained: bool = False,
) -> tuple[object, dict]:
    """``(model, info)`` for ``source`` (see the module doc). ``info`` records where the model
    came from (``source``, ``arch`` / ``sam`` / ``hf``), its ``task`` ("classification",
    "segmentation" for a segment-anything or transformers SAM encoder, "embedding" for a
    transformers ``SamVisionModel`` alone),
    ``image_size``, and for classifiers ``mean`` / ``std`` / ``num_classes``."""
    if not isinstance(source, str) or not source:
        raise ModelSourceError(f"model source must be a non-empty string, got {source!r}", "usage")
    kwargs = dict(model_kwargs or {})
    if sam is not None:
        return _sam_model(source, sam)
    path = Path(source)
    hf_arch = arch[len(HF_PREFIX) :] if arch and arch.startswith(HF_PREFIX) else None
    if source.startswith(HF_PREFIX) or hf_arch is not None or is_hf_folder(path):
        return _hf_model(source, hf_arch, kwargs, pretrained)
    return _timm_model(source, arch, kwargs, pretrained)


def _sam_model(source: str, sam: str) -> tuple[object, dict]:
    if sam not in SAM_TYPES:
        raise ModelSourceError(f"sam must be one of {list(SAM_TYPES)}, got {sam!r}", "usage")
    path = Path(source)
    if not path.is_file():
        raise _missing(path, "SAM checkpoint")
    try:
        from segment_anything import sam_model_registry
    except ImportError as exc:
        raise ModelSourceError(
            "a SAM checkpoint needs segment-anything (pip install segment-anything)", "failed"
        ) from exc
    try:
        model = sam_model_registry[sam](checkpoint=str(path))
    except Exception as exc:
        raise ModelSourceError(f"{path} is not a segment-anything {sam} checkpoint: {exc}") from exc
    enc = model.image_encoder
    info = {
        "source": str(path.resolve()),
        "sam": sam,
        "task": "segmentation",
        "image_size": int(getattr(enc, "img_size", 1024)),
    }
    return enc, info


def _timm_model(source: str, arch: str | None, kwargs: dict, pretrained: bool):
    import timm

    info: dict = {"source": source}
    if Path(source).exists() or looks_like_path(source):
        path = Path(source)
        if not path.is_file():
            raise _missing(path, "checkpoint")
        if not arch:
            raise ModelSourceError(
                f"{path} is a checkpoint file: name its timm architecture with arch (--arch "
                "deit_small_patch16_224), or give sam=TYPE (--sam) for a SAM checkpoint",
                "usage",
            )
        sd = read_state_dict(path)
        try:
            model = timm.create_model(arch, pretrained=False, **kwargs)
        except Exception as exc:
            raise ModelSourceError(
                f"arch {arch!r}: cannot create it with timm: {exc}", "usage"
            ) from exc
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise ModelSourceError(
                f"{path} does not fit timm {arch} {kwargs or ''}: {str(exc)[:400]}"
            ) from exc
        info.update(source=str(path.resolve()), arch=arch)
    else:
        if not timm.list_models(source) and not timm.is_model(source):
            raise ModelSourceError(
                f"{source!r} is neither an existing checkpoint file, a transformers folder, "
                "hf:CLASS nor a timm model name (see timm.list_models())",
                "usage",
            )
        try:
            model = timm.create_model(source, pretrained=pretrained, **kwargs)
        except Exception as exc:
            raise ModelSourceError(
                f"timm.create_model({source!r}, ...) failed: {exc}", "failed"
            ) from exc
        info.update(arch=source)
    info["task"] = "classification"
    cfg = getattr(model, "pretrained_cfg", None) or {}
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    info["image_size"] = int(size[0] if isinstance(size, tuple | list) else size or 224)
    info["mean"] = list(cfg.get("mean", (0.485, 0.456, 0.406)))
    info["std"] = list(cfg.get("std", (0.229, 0.224, 0.225)))
    info["num_classes"] = int(getattr(model, "num_classes", 0) or 0)
    return model.eval(), info


# --------------------------------------------------------------------------- transformers
def _hf_class(name: str):
    from .hf import HF_CLASSES

    if name not in HF_CLASSES:
        raise ModelSourceError(
            f"transformers class {name!r} is not a first-class family here; use one of "
            f"{list(HF_CLASSES)} (other models: convert them with the Python API, which treats "
            "them generically)",
            "usage",
        )
    try:
        import transformers
    except ImportError as exc:
        raise ModelSourceError(
            f"{name} needs transformers (pip install transformers)", "failed"
        ) from exc
    return getattr(transformers, name)


def _hf_folder_class(path: Path) -> str:
    """The class ``config.json``'s ``architectures`` names (read as JSON; nothing is run)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelSourceError(
            f"{path / 'config.json'} is not a readable JSON file: {exc}"
        ) from exc
    names = config.get("architectures") if isinstance(config, dict) else None
    if not (isinstance(names, list) and len(names) == 1 and isinstance(names[0], str)):
        raise ModelSourceError(
            f"{path / 'config.json'} names no single class in 'architectures' ({names!r}); name "
            "it with arch='hf:CLASS' (--arch hf:ViTForImageClassification)",
            "usage",
        )
    return names[0]


def _hf_model(source: str, name: str | None, kwargs: dict, pretrained: bool, whole=False):
    folder = None
    if source.startswith(HF_PREFIX):
        if name is not None:
            raise ModelSourceError(
                f"{source!r} names its class already; arch={HF_PREFIX}{name} is for a folder",
                "usage",
            )
        name = source[len(HF_PREFIX) :]
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise _missing(folder, "transformers model folder")
        if not is_hf_folder(folder):
            raise ModelSourceError(
                f"{folder} has no config.json: not a folder written by save_pretrained"
            )
        name = name or _hf_folder_class(folder)
    cls = _hf_class(name)
    info: dict = {"hf": name}
    if folder is None:
        if pretrained:
            raise ModelSourceError(
                f"{source}: pretrained weights of a transformers model come from a local folder "
                "(save_pretrained, then give the folder); nothing is downloaded",
                "usage",
            )
        try:
            config = cls.config_class(**kwargs)
            model = cls(config)
        except Exception as exc:
            raise ModelSourceError(
                f"{name}({cls.config_class.__name__}(**{kwargs})) failed: {exc}", "usage"
            ) from exc
        info["source"] = source
    else:
        if kwargs:
            raise ModelSourceError(
                "model_kwargs (--model-kwargs) do not apply to a saved transformers folder: its "
                "config.json is the configuration",
                "usage",
            )
        weights = sorted(p.name for p in folder.glob("*.safetensors"))
        if not weights:
            pickled = ", ".join(sorted(p.name for p in folder.glob("*.bin")))
            only = f" (only {pickled})" if pickled else ""
            raise ModelSourceError(
                f"{folder} holds no safetensors weights{only}; "
                "supernet-kernels reads transformers weights from safetensors only (pickled "
                ".bin files can run code): save with save_pretrained(..., safe_serialization=True)"
            )
        try:
            model, loading = cls.from_pretrained(
                folder, local_files_only=True, use_safetensors=True, output_loading_info=True
            )
        except Exception as exc:
            raise ModelSourceError(f"{name}.from_pretrained({folder}) failed: {exc}") from exc
        # from_pretrained initializes missing or mis-shaped weights afresh with a logged
        # warning: a folder of another model must be refused instead.
        fresh = [*loading.get("missing_keys", []), *loading.get("mismatched_keys", [])]
        if fresh:
            raise ModelSourceError(
                f"{folder} does not hold all weights of {name}: {len(fresh)} would be "
                f"initialized afresh (e.g. {sorted(map(str, fresh))[:3]}); is it another model?"
            )
        info["source"] = str(folder.resolve())
    if name == "SamModel" and not whole:
        # As for a segment-anything checkpoint, the image encoder is converted: the search
        # space is all in it (the prompt encoder and mask decoder linears stay fixed), and
        # an encoder runs on images alone.
        from .hf import vision_model

        model = vision_model(model).eval()
        info["part"] = "vision_encoder"
    config = model.config
    vision = getattr(config, "vision_config", config)
    info["image_size"] = int(getattr(vision, "image_size", 224))
    if name == "SamModel":
        info["task"] = "segmentation"  # with its own prompt encoder and mask decoder
    elif name.startswith("Sam"):
        info["task"] = "embedding"  # a vision model alone: no decoder to train against
    else:
        info["task"] = "classification"
        mean, std = _hf_normalization(folder)
        info["mean"], info["std"] = mean, std
        info["num_classes"] = (
            int(getattr(config, "num_labels", 0)) if "Classification" in name else 0
        )
    return model.eval(), info


def sam_model_of(info: dict):
    """The whole transformers ``SamModel`` (prompt encoder and mask decoder included) that a
    ``make_model`` info dict of a SamModel folder names, loaded again from that folder: what
    a segmentation task runs the converted encoder's embeddings through."""
    if info.get("hf") != "SamModel":
        raise ModelSourceError(f"{info.get('source')!r} is not a transformers SamModel", "usage")
    folder = Path(str(info.get("source")))
    if not is_hf_folder(folder):
        raise ModelSourceError(
            f"segmentation needs the SamModel's prompt encoder and mask decoder, from the "
            f"folder it was converted from; {folder} is not such a folder (a model made from "
            "hf:SamModel has fresh weights that were not kept)"
        )
    model, _ = _hf_model(str(folder), "SamModel", {}, False, whole=True)
    return model


def _hf_normalization(folder: Path | None) -> tuple[list[float], list[float]]:
    """The image mean / std of the folder's ``preprocessor_config.json`` (JSON), else those of
    transformers' ViT image processor (0.5, 0.5, 0.5)."""
    mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        try:
            cfg = json.loads((folder / "preprocessor_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelSourceError(
                f"{folder / 'preprocessor_config.json'} is not a readable JSON file: {exc}"
            ) from exc
        m, s = cfg.get("image_mean"), cfg.get("image_std")
        if isinstance(m, list) and isinstance(s, list) and len(m) == len(s) == 3:
            mean, std = [float(v) for v in m], [float(v) for v in s]
    return mean, std
