"""The ``supernet-kernels`` command line.

Subcommands (``supernet-kernels COMMAND --help`` explains every option):

* ``info``: versions, usable backends, compiled CUDA architectures, GPU, verified kernels.
* ``convert MODEL``: a timm model name, a state-dict checkpoint (``--arch``), or a
  segment-anything checkpoint (``--sam vit_b``) -> a supernet folder: ``supernet.json`` (how
  to rebuild it, the search space, its largest / smallest configs) and ``supernet.safetensors``
  (the converted weights).
* ``train SUPERNET_JSON --data DATA``: supernet training (the sandwich rule, or the FLORA /
  SuperSAM / MP-LoRA samplers) on a data folder in the documented formats; checkpoints,
  ``--resume``; writes a new supernet folder.
* ``search SUPERNET_JSON --data DATA``: the best subnets under a budget (``"bitops <= 0.5 *
  dense"``) with evolution or Optuna NSGA-II / TPE; writes the front (JSON, CSV, plot) and the
  best config.
* ``export SUPERNET_JSON``: one subnet (a config JSON, a front member, the largest or the
  smallest) -> a ``supernet_kernels.save`` file, loaded back and checked.
* ``bench``: ``benchmarks/bench_*.py`` of a repository checkout, or a built-in timing of an
  exported subnet.
* ``quickstart``: the whole flow on scikit-learn's digits in minutes on a CPU
  (:mod:`supernet_kernels.quickstart`).

Config files: every subcommand but ``info`` takes ``--config FILE`` (YAML or JSON; keys are
the subcommand's option names) and ``--set KEY=VALUE`` overrides (dotted keys into nested
options); see :mod:`supernet_kernels.config_files`. Precedence: defaults < file < options on
the command line < ``--set``.

Errors go to stderr as one line ``supernet-kernels COMMAND: error: ...`` (the traceback too
with ``--debug``). Exit codes, for scripts:

==== ==========================================================================
0    success
1    runtime failure (anything else that went wrong)
2    usage error: unknown option, bad value, missing argument, bad ``--set``
3    missing or invalid input file (model, checkpoint, data, config, supernet, front)
4    infeasible budget: no subnet of the space meets the search budget
130  interrupted (Ctrl-C)
==== ==========================================================================
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_INFEASIBLE = 4
EXIT_INTERRUPTED = 130

EXIT_CODES_TEXT = """exit codes:
  0    success
  1    runtime failure
  2    usage error (unknown option, bad value, missing argument, bad --set)
  3    missing or invalid input file (model, checkpoint, data, config, supernet, front)
  4    infeasible budget: no subnet meets the search budget
  130  interrupted (Ctrl-C)"""

SUPERNET_FORMAT = "sk-cli-supernet-v1"  # supernet.store.SUPERNET_FORMAT (kept light: no torch)
RECIPES = ("default", "flora", "supersam", "mplora")
TRAIN_RECIPES = ("sandwich", "flora", "supersam", "mplora")


# --------------------------------------------------------------------------- errors
class CLIError(Exception):
    """An error the command line reports in one line, with its exit code."""

    code = EXIT_FAILURE

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(CLIError):
    code = EXIT_USAGE


class InputFileError(CLIError):
    code = EXIT_INPUT


class InfeasibleBudget(CLIError):
    code = EXIT_INFEASIBLE


def _missing(path, what: str = "file") -> InputFileError:
    return InputFileError(f"{what} not found: {path}")


# --------------------------------------------------------------------------- info
def _versions() -> list[tuple[str, str]]:
    import torch

    from ._version import __version__

    rows = [
        ("supernet-kernels", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("torch CUDA", str(torch.version.cuda)),
    ]
    try:
        import triton

        rows.append(("triton", triton.__version__))
    except ImportError:
        rows.append(("triton", "not installed"))
    return rows


def info_text() -> str:
    """Everything ``supernet-kernels info`` prints, as one string (tested)."""
    import torch

    from . import dispatch
    from ._native import native_info
    from .backends import backend_status, triton_interpret

    lines = ["supernet-kernels info", ""]
    lines += [f"  {k:<18} {v}" for k, v in _versions()]

    nat = native_info()
    lines += ["", "native extension (supernet_kernels._C)"]
    if nat.loaded:
        archs = ", ".join(f"sm_{a}" for a in nat.cuda_archs) or "none"
        lines.append("  loaded: yes")
        lines.append(f"  CUDA kernels compiled: {'yes' if nat.has_cuda else 'no (C++ only build)'}")
        lines.append(f"  CUDA architectures: {archs}")
    else:
        lines.append(f"  loaded: no ({nat.error})")
        lines.append("  the torch and Triton paths work without it")

    lines += ["", "GPU"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(
                f"  cuda:{i} {p.name} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
                f"{p.total_memory / 2**30:.0f} GiB)"
            )
    else:
        lines.append("  none found")

    lines += ["", "backends usable here"]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for name, (ok, why) in backend_status(dev).items():
            lines.append(f"  {dev:<5} {name:<7} {'yes' if ok else 'no: ' + why}")
    if not triton_interpret():
        lines.append("  (set TRITON_INTERPRET=1 to run the Triton kernels on the CPU, for testing)")

    lines += ["", "implementations per op (the registry), and where our kernels are verified"]
    lines.append("  (every test of the op and kernel passed on a real GPU of that architecture)")
    from . import registry

    verified = dispatch.verified_kernels(strict=False)
    for op in registry.ops():
        lines.append(f"  {op}")
        for name, impl in registry.implementations(op).items():
            if not impl.kernel:
                kind = "reference (CPU path, test oracle)" if impl.reference else "torch path"
                if impl.dense_equivalent:
                    kind += ", dense-equivalent"
                lines.append(f"    {name:<16} {kind}: {impl.doc}")
                continue
            by_arch = verified.get(op, {}).get(name, {})
            if any(by_arch.values()):
                where = "; ".join(
                    f"{tag} ({', '.join(sorted({str(r.get('gpu')) for r in runs}))} @ "
                    f"{str(runs[0].get('commit', '?'))[:10]})"
                    for tag, runs in sorted(by_arch.items())
                    if runs
                )
                lines.append(f"    {name:<16} kernel, verified on {where}")
            else:
                lines.append(
                    f"    {name:<16} kernel, UNVERIFIED: its tests never all passed on a real "
                    "GPU; 'auto' will not pick it"
                )
    tables = sorted(p.stem for p in (dispatch.PACKAGE_CONFIGS / "dispatch").glob("*.json"))
    lines += ["", f"dispatch tables shipped: {', '.join(tables) or 'none'}"]
    lines.append(
        "  (per architecture smXY, refined per GPU where measured; ranked by CUDA-graph time "
        "where recorded; auto keeps within 1.10x of the dense layer)"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- small helpers
def _log(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, flush=True)


def _bar(args, total: int | None, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=getattr(args, "no_progress", False), leave=False)


def _set_threads(args) -> None:
    n = getattr(args, "threads", None)
    if n:
        import torch

        torch.set_num_threads(n)


def _json_value(text):
    """An option value that is inline JSON, or (already parsed) a mapping from a config file."""
    if isinstance(text, dict | list):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg} ({text!r})") from None


def _json_dict(text):
    v = _json_value(text)
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return v


def _int_at_least(text, lo: int) -> int:
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < lo:
        raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
    return v


def _positive_int(text) -> int:
    return _int_at_least(text, 1)


def _nonneg_int(text) -> int:
    return _int_at_least(text, 0)


def _positive_float(text) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {v}")
    return v


def _int_list(text) -> list[int]:
    if isinstance(text, list):
        vals = text
    else:
        vals = [t for t in str(text).replace(" ", "").split(",") if t]
    try:
        out = [int(v) for v in vals]
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not out or any(v < 1 for v in out):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return out


def _read_json(path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise _missing(path, what)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{what} {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputFileError(f"{what} {path}: expected a JSON object")
    return data


def _write_json(path: Path, data) -> Path:
    from ._io import atomic_write_json

    return atomic_write_json(path, data)


def _device(args):
    import torch

    name = getattr(args, "device", None) or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available here")
    return dev


# --------------------------------------------------------------------------- supernet folders
def _load_state_file(path: Path) -> dict:
    from safetensors.torch import load_file

    if not path.is_file():
        raise _missing(path, "supernet weights")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise InputFileError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}"
        ) from exc


def _space_override(recipe: str, model, args_space, bits) -> dict | None:
    """The ``convert(space=...)`` override of a recipe, merged with the user's."""
    from .config_files import deep_merge

    if recipe == "default":
        base = None
    elif recipe == "flora":
        from .recipes.flora import flora_space

        base = flora_space(model)
    elif recipe == "supersam":
        from .recipes.supersam import supersam_space

        base = supersam_space(model)
    elif recipe == "mplora":
        from .recipes.mplora import mplora_space

        base = mplora_space(model, bits)
    else:  # pragma: no cover - argparse checks choices
        raise UsageError(f"unknown recipe {recipe!r}")
    if args_space:
        base = deep_merge(base or {}, args_space)
    return json.loads(json.dumps(base)) if base is not None else None


def _build_supernet(model, meta: dict):
    """convert(model) the way ``meta`` (a supernet.json document) records it."""
    from .supernet.store import build_supernet

    return build_supernet(model, meta)


def load_supernet(path):
    """Rebuild the supernet of a ``supernet.json`` (from ``convert`` or ``train``) with its
    weights (:func:`supernet_kernels.supernet.store.load_supernet`). Returns ``(supernet, doc,
    json_path)``."""
    from .supernet.store import load_supernet as load

    try:
        return load(path)
    except FileNotFoundError as exc:
        raise InputFileError(str(exc)) from exc
    except ValueError as exc:
        raise InputFileError(str(exc)) from exc


def _write_supernet(sn, doc: dict, out: Path) -> Path:
    from .supernet.store import save_supernet

    return save_supernet(sn, out, doc)


# --------------------------------------------------------------------------- models
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
            from safetensors.torch import load_file

            sd = load_file(str(path))
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


def _load_space_arg(value):
    if value is None or isinstance(value, dict):
        return value
    text = str(value)
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--space: not valid JSON: {exc.msg}") from None
    from .config_files import ConfigError, load_config

    try:
        return load_config(text)
    except FileNotFoundError:
        raise _missing(text, "space file") from None
    except ConfigError as exc:
        raise InputFileError(str(exc)) from exc


# --------------------------------------------------------------------------- data
def _load_data(path, doc: dict, task_kind: str):
    """A dataset in the documented formats: a folder (ImageFolder layout for classification,
    images/ + masks/ for segmentation) or a .npz with arrays ``images`` (N, 3, H, W) float and
    ``labels`` (N,) int (classification)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise _missing(path, "data")
    size = int(doc.get("image_size") or 224)
    try:
        if path.is_dir():
            if task_kind == "segmentation":
                from .train import SegmentationFolder

                return SegmentationFolder(path, image_size=size)
            from .train import ImageFolderDataset

            return ImageFolderDataset(
                path,
                image_size=size,
                mean=doc.get("mean") or (0.485, 0.456, 0.406),
                std=doc.get("std") or (0.229, 0.224, 0.225),
            )
        if path.suffix.lower() == ".npz":
            import numpy as np

            with np.load(path) as z:
                if "images" not in z or "labels" not in z:
                    raise ValueError("a .npz needs arrays 'images' (N, 3, H, W) and 'labels' (N,)")
                x = torch.from_numpy(np.asarray(z["images"], dtype="float32"))
                y = torch.from_numpy(np.asarray(z["labels"]).astype("int64"))
            if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
                raise ValueError(
                    f"images {tuple(x.shape)} / labels {tuple(y.shape)}: expected (N, 3, H, W) "
                    "and (N,)"
                )
            return [(x[i], int(y[i])) for i in range(len(x))]
    except ValueError as exc:
        raise InputFileError(f"data {path}: {exc}") from exc
    raise InputFileError(
        f"data {path}: expected a folder (see `supernet-kernels train --help`) or a .npz file"
    )


def _task_for(doc: dict, args, sn=None):
    from .train import ClassificationTask, SegmentationTask

    kind = getattr(args, "task", None) or doc.get("task") or "classification"
    if kind == "auto":
        kind = doc.get("task") or "classification"
    if kind == "segmentation":
        if not doc.get("sam"):
            raise UsageError(
                "segmentation needs a supernet converted from a SAM checkpoint (--sam)"
            )
        from segment_anything import sam_model_registry

        ckpt = doc.get("source")
        if not ckpt or not Path(ckpt).is_file():
            raise _missing(ckpt, "SAM checkpoint (prompt encoder and mask decoder)")
        sam = sam_model_registry[doc["sam"]](checkpoint=ckpt)
        return SegmentationTask(sam), kind
    n = doc.get("num_classes") or None
    return ClassificationTask(num_classes=n), kind


# --------------------------------------------------------------------------- convert
def cmd_convert(args) -> int:
    _set_threads(args)
    t0 = time.perf_counter()
    space_user = _load_space_arg(args.space)
    _log(args, f"loading {args.model} ...")
    model, info = _make_model(args)
    from .supernet import families as fam

    family = fam.detect_family(model)
    build = fam.describe_build(model, family)
    if build is None:
        raise CLIError(
            f"the {family} model's architecture cannot be recorded for rebuilding; the command "
            "line needs a timm ViT / DeiT / Swin or a SAM image encoder (use the Python API "
            "for other models)"
        )
    bits = tuple(args.bits)
    override = _space_override(args.recipe, model, space_user, bits)
    doc = {
        **info,
        "recipe": args.recipe,
        "space_override": override,
        "attention": args.attention,
        "bits": list(bits) if args.recipe == "mplora" else None,
        "lora_rank": args.lora_rank if args.recipe == "mplora" else None,
    }
    meta = dict(doc)
    if args.calib_data:
        task, _ = _task_for(info, args)
        ds = _load_data(args.calib_data, info, info["task"])
        from .recipes.flora import as_batches
        from .recipes.supersam import encoder_calibration

        meta["_importance"] = "activation"
        meta["_calib"] = encoder_calibration(as_batches(ds, 4, 32, task), task)
        doc["importance"] = "activation"
    else:
        doc["importance"] = "magnitude"
    _log(args, f"converting ({family}, recipe {args.recipe}) ...")
    try:
        sn = _build_supernet(model, meta)
    except ValueError as exc:
        raise UsageError(f"convert: {exc}") from exc
    out = Path(args.out)
    path = _write_supernet(sn, doc, out)
    sp = sn.space
    n_lin = len(sp["linear"])
    n_fact = sum(1 for s in sp["linear"].values() if s["rank"] != [None])
    n_drop = sum(1 for v in sp["depth"].values() if False in v)
    n_heads = sum(1 for v in sp["heads"].values() if len(v) > 1)
    _log(
        args,
        f"supernet: {family}, {n_lin} elastic linears ({n_fact} factorized), {len(sp['mlp'])} "
        f"elastic MLPs, {n_heads} attentions with elastic heads, {n_drop} droppable blocks, "
        f"resolution {sp['resolution']}",
    )
    _log(
        args, f"wrote {path} and {out / 'supernet.safetensors'} ({time.perf_counter() - t0:.1f} s)"
    )
    return EXIT_OK


# --------------------------------------------------------------------------- train
def _sampler_for(recipe: str, args, steps: int):
    if recipe == "sandwich":
        from .train import SandwichSampler

        return SandwichSampler(args.num_random)
    if recipe == "flora":
        from .recipes.flora import FloraSampler

        return FloraSampler(
            num_random=max(1, args.num_random), include_largest=args.distill == "largest"
        )
    if recipe == "supersam":
        from .recipes.supersam import SuperSAMSampler

        return SuperSAMSampler(args.drop_prob, num_random=args.num_random)
    if recipe == "mplora":
        from .recipes.mplora import ProgressiveBitsSampler

        return ProgressiveBitsSampler(total_steps=steps, num_random=args.num_random)
    raise UsageError(f"unknown recipe {recipe!r}")  # pragma: no cover


def cmd_train(args) -> int:
    import torch

    from .train import TrainConfig, Trainer

    _set_threads(args)
    sn, doc, src = load_supernet(args.supernet)
    task, kind = _task_for(doc, args, sn)
    data = _load_data(args.data, doc, kind)
    eval_data = _load_data(args.eval_data, doc, kind) if args.eval_data else None
    recipe = args.recipe or {"flora": "flora", "supersam": "supersam", "mplora": "mplora"}.get(
        doc.get("recipe"), "sandwich"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = dict(args.trainer or {})
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(k for k in extra if k not in fields)
    if bad:
        raise UsageError(f"trainer: unknown TrainConfig fields {bad} (known: {sorted(fields)})")
    kw = dict(
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        num_random=args.num_random,
        distill=args.distill,
        warmup_steps=args.warmup_steps,
        amp=args.amp,
        seed=args.seed,
        checkpoint_dir=str(out / "checkpoint"),
        checkpoint_every=args.checkpoint_every,
        log_file=str(out / "train_log.jsonl"),
        progress=not args.no_progress,
    )
    kw.update(extra)
    try:
        config = TrainConfig(**kw)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    teacher = None
    if config.distill == "teacher":
        teacher = copy.deepcopy(sn).requires_grad_(False).eval()
        teacher.set_active(teacher.max_config())
    trainable = None
    if recipe == "mplora" and doc.get("lora_rank"):
        from .recipes.mplora import lora_trainable

        trainable = lora_trainable
    try:
        sampler = _sampler_for(recipe, args, config.steps)
    except ValueError as exc:
        raise UsageError(f"--recipe {recipe}: {exc}") from exc
    device = _device(args)
    try:
        trainer = Trainer(
            sn,
            task,
            data,
            config,
            sampler=sampler,
            teacher=teacher,
            trainable=trainable,
            eval_data=eval_data,
            device=device,
        )
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith(("train_data", "eval_data")):
            raise InputFileError(f"data: {msg}") from exc
        raise
    _log(
        args,
        f"training {src} with {recipe} for {config.steps} steps (batch {config.batch_size}, "
        f"lr {config.lr:g}, distill {config.distill}) on {len(data)} samples, {device}",
    )
    t0 = time.perf_counter()
    ckpt = out / "checkpoint"
    if args.resume:
        from .train.checkpoint import checkpoint_path

        if not checkpoint_path(ckpt).is_file():
            _log(args, f"--resume: no checkpoint in {ckpt} yet, starting at step 0")
    try:
        records = trainer.train(resume=bool(args.resume))
    except ValueError as exc:
        if "checkpoint" in str(exc):
            raise InputFileError(f"--resume: {exc}") from exc
        raise
    dt = time.perf_counter() - t0
    if records:
        last = records[-1]
        _log(
            args,
            f"step {last['step'] + 1}/{config.steps}: loss "
            + " ".join(f"{v:.4g}" for v in last["loss"])
            + f" ({dt:.1f} s)",
        )
    else:
        _log(args, f"nothing to do: the checkpoint is already at step {trainer.step}")
    sn.to(torch.device("cpu"))
    new = dict(doc)
    new["trained"] = {
        "recipe": recipe,
        "steps": config.steps,
        "from": str(src),
        "data": str(args.data),
    }
    if eval_data is not None:
        ev = trainer.evaluate(eval_data, [sn.max_config(), sn.min_config()])
        new["trained"]["eval"] = {
            "max": ev[0]["metric"],
            "min": ev[1]["metric"],
            "metric": ev[0]["metric_name"],
        }
        _log(
            args,
            f"eval {ev[0]['metric_name']}: largest {ev[0]['metric']:.4f}, smallest "
            f"{ev[1]['metric']:.4f}",
        )
    path = _write_supernet(sn, new, out)
    _log(args, f"wrote {path} (log {out / 'train_log.jsonl'}, checkpoint {ckpt})")
    return EXIT_OK


# --------------------------------------------------------------------------- search
def _accuracy_evaluator(task, data, batch_size: int):
    from torch.utils.data import DataLoader

    batches = list(DataLoader(data, batch_size=batch_size, collate_fn=task.collate))

    def evaluate(model) -> float:
        num, den = task.metric_sums(model, batches)
        return num / den if den else float("nan")

    return evaluate


def _source_size(data) -> tuple[int, int] | None:
    """(H, W) of the first sample as stored (before any resize), or None if unknown."""
    samples = getattr(data, "samples", None)
    if samples:
        try:
            from PIL import Image

            with Image.open(samples[0][0]) as im:
                return im.height, im.width
        except Exception:
            return None
    try:
        return tuple(int(d) for d in data[0][0].shape[-2:])
    except Exception:
        return None


def _note_resize(args, data, size: int) -> None:
    """Say when the images are resized to the supernet's input size: silently upsampling a
    32x32 dataset to 224x224 changes what the accuracies mean."""
    hw = _source_size(data)
    if hw is None or hw == (size, size):
        return
    verb = "upsampled" if max(hw) < size else "resized"
    _log(
        args,
        f"note: the images are {hw[0]}x{hw[1]}; they are {verb} (bilinear) to the supernet's "
        f"{size}x{size} input",
    )


def cmd_search(args) -> int:
    import torch

    from .search import search

    _set_threads(args)
    sn, doc, src = load_supernet(args.supernet)
    metric = args.metric
    kind = doc.get("task") or "classification"
    if metric == "auto":
        metric = "accuracy" if kind == "classification" else "fidelity"
    if metric == "accuracy" and kind != "classification":
        raise UsageError("--metric accuracy needs a classification supernet; use fidelity")
    task, _ = (
        (None, kind) if metric == "fidelity" and kind == "segmentation" else _task_for(doc, args)
    )
    data = _load_data(args.data, doc, kind)
    if args.max_samples:
        data = [data[i] for i in range(min(len(data), args.max_samples))]
    if len(data) == 0:
        raise InputFileError(f"data {args.data}: no samples")
    device = _device(args)
    sn.to(device)
    size = int(doc.get("image_size") or 224)
    _note_resize(args, data, size)
    example = (1, 3, size, size)
    if metric == "accuracy":
        task.setup(sn)
        task.validate_dataset(data, None, "data") if hasattr(task, "validate_dataset") else None
        evaluate = _accuracy_evaluator(task, data, args.batch_size)
    else:
        from .search import fidelity_evaluator

        images = torch.stack([data[i][0] for i in range(len(data))]).to(device)
        if kind == "segmentation":
            mean = torch.tensor([123.675, 116.28, 103.53], device=device).view(1, 3, 1, 1)
            std = torch.tensor([58.395, 57.12, 57.375], device=device).view(1, 3, 1, 1)
            images = (images * 255.0 - mean) / std
        evaluate = fidelity_evaluator(sn, images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _log(
        args,
        f"searching {src}: objective {args.objective}, budget {args.budget!r}, "
        f"{args.algorithm}, metric {metric} on {len(data)} samples",
    )
    kw = dict(
        objective=args.objective,
        budget=args.budget,
        algorithm=args.algorithm,
        seed=args.seed,
        progress=not args.no_progress,
        device=device,
    )
    if args.algorithm == "evolution":
        kw.update(population=args.population, generations=args.generations, n_trials=args.trials)
    else:
        kw.update(n_trials=args.trials or 64, population=args.population)
        if args.storage:
            kw.update(storage=args.storage, study_name=args.study_name)
    if args.algorithm == "evolution" and args.storage:
        raise UsageError("--storage is for --algorithm nsga2 / tpe (Optuna studies)")
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            result = search(sn, evaluate, example, **kw)
    except ValueError as exc:
        msg = str(exc)
        if "no subnet meets the budget" in msg:
            raise InfeasibleBudget(msg) from exc
        if "budget" in msg or msg.startswith("search:"):
            raise UsageError(msg) from exc
        raise
    dt = time.perf_counter() - t0
    best = result.best
    result.to_json(out / "front.json")
    result.to_csv(out / "front.csv")
    result.to_csv(out / "history.csv", which="history")
    try:
        result.plot(out / "front.png", title=f"{args.algorithm}: {metric} vs {args.objective}")
    except ImportError:
        _log(args, "matplotlib is not installed: no plot")
    if best is None:
        hist = result.history
        ok = sum(r["status"] == "ok" for r in hist)
        failed = [r for r in hist if r["status"] == "fail"]
        over = sum(r["status"] == "infeasible" or (r["status"] == "ok" and not r["feasible"])
                   for r in hist)  # fmt: skip
        if hist and not failed:
            # Every candidate ran (or was costed) and none met the budget: the budget is tight
            # for this sampler's draws, not an error of the evaluation.
            raise InfeasibleBudget(
                f"search: no candidate met the budget {args.budget!r}: {len(hist)} candidates, "
                f"{ok} evaluated, {over} over the budget (the smallest subnet meets it: raise "
                "--trials, or use --algorithm evolution, which starts from feasible subnets)"
            )
        why = f": {failed[0].get('error')}" if failed else ""
        raise CLIError(
            f"search: no candidate was evaluated successfully ({len(failed)} of {len(hist)} "
            f"failed{why}; see history.csv)"
        )
    _write_json(out / "best_config.json", best["config"])
    _log(args, f"front ({len(result.front)} members, {dt:.1f} s):")
    _log(args, f"  {'#':>3}  {'metric':>8}  {args.objective:>14}")
    for i, r in enumerate(result.front):
        star = " *" if r["config_hash"] == best["config_hash"] else ""
        _log(args, f"  {i:>3}  {r['metric']:>8.4f}  {r[args.objective]:>14.6g}{star}")
    _log(args, f"best: metric {best['metric']:.4f}, {args.objective} {best[args.objective]:.6g}")
    _log(args, f"wrote {out / 'front.json'}, front.csv, history.csv, front.png, best_config.json")
    return EXIT_OK


# --------------------------------------------------------------------------- export
def _config_from_file(path) -> dict:
    from .config_files import ConfigError, load_config

    try:
        data = load_config(path)
    except FileNotFoundError:
        raise _missing(path, "subnet config") from None
    except ConfigError as exc:
        raise InputFileError(str(exc)) from exc
    if "config" in data and isinstance(data["config"], dict):
        data = data["config"]  # a front member / history row
    elif isinstance(data.get("best"), dict):
        data = data["best"]["config"]  # a front.json
    return data


def _precheck_config(cfg, space, what: str) -> None:
    """The config's shape and names against a recorded space (no supernet needed); the values
    are validated by the supernet itself."""
    if not isinstance(cfg, dict):
        raise InputFileError(f"{what}: a subnet config is a JSON object, got {type(cfg).__name__}")
    keys = ("resolution", "depth", "mlp", "heads", "linear")
    bad = [k for k in cfg if k not in keys]
    if bad:
        raise InputFileError(f"{what}: unknown key {bad[0]!r} (expected some of {list(keys)})")
    if not isinstance(space, dict):
        return
    for section in keys[1:]:
        entries = cfg.get(section, {})
        if not isinstance(entries, dict):
            raise InputFileError(f"{what}: {section} must be an object")
        names = space.get(section) or {}
        unknown = [n for n in entries if n not in names]
        if unknown:
            raise InputFileError(
                f"{what}: {section}.{unknown[0]} is not in this supernet (it has "
                f"{list(names)[:4]}{' ...' if len(names) > 4 else ''})"
            )


def cmd_export(args) -> int:
    import torch

    import supernet_kernels as sk

    from .cost import profile

    _set_threads(args)
    chosen = [bool(args.subnet_config), bool(args.front), bool(args.preset)]
    if sum(chosen) != 1:
        raise UsageError("give exactly one of --subnet-config, --front or --preset")
    # The config is read and checked against the recorded space before the supernet is built
    # (a minute for SAM): a broken file is reported at once.
    from .supernet.store import read_supernet_doc

    try:
        recorded, _ = read_supernet_doc(args.supernet)
    except FileNotFoundError as exc:
        raise InputFileError(str(exc)) from exc
    except ValueError as exc:
        raise InputFileError(str(exc)) from exc
    cfg = what = None
    if args.subnet_config:
        cfg = _config_from_file(args.subnet_config)
        what = f"config {args.subnet_config}"
    elif args.front:
        front_doc = _read_json(args.front, "front file")
        front = front_doc.get("front")
        if not isinstance(front, list) or not front:
            raise InputFileError(f"{args.front}: no front members (is it a search front.json?)")
        if args.member is None:
            best = front_doc.get("best")
            if not isinstance(best, dict):
                raise InputFileError(f"{args.front}: no best member; pick one with --member")
            cfg, what = best["config"], f"the best member of {args.front}"
        else:
            if not -len(front) <= args.member < len(front):
                raise UsageError(
                    f"--member {args.member}: the front has {len(front)} members "
                    f"(0..{len(front) - 1})"
                )
            cfg, what = front[args.member]["config"], f"member {args.member} of {args.front}"
    if cfg is not None:
        _precheck_config(cfg, recorded.get("space"), what)
    sn, doc, src = load_supernet(args.supernet)
    if cfg is None:
        cfg = sn.max_config() if args.preset == "max" else sn.min_config()
        what = f"the {'largest' if args.preset == 'max' else 'smallest'} subnet"
    try:
        sub = sn.extract(cfg)
    except ValueError as exc:
        raise InputFileError(f"{what} does not fit this supernet: {exc}") from exc
    out = Path(args.out)
    sk.save(sub, out)
    size = sub.sk_subnet.get("resolution") or int(doc.get("image_size") or 224)
    prof = profile(sub, (1, 3, size, size))
    _log(
        args,
        f"exported {what} -> {out}: {prof.total_params:,} params, {prof.total_macs / 1e6:.3f} "
        f"MMACs, {prof.total_bitops / 1e9:.4f} GBitOPs, {prof.total_weight_bytes / 1024:.1f} KiB",
    )
    if not args.no_verify:
        loaded = sk.load(out)
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        sub.eval()
        with torch.no_grad():
            a, b = sub(x), loaded(x)
        a = a[0] if isinstance(a, tuple | list) else a
        b = b[0] if isinstance(b, tuple | list) else b
        err = float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
        if err > 1e-4:
            raise CLIError(
                f"verify: the reloaded subnet differs from the extracted one ({err:.3g})"
            )
        _log(
            args, f"verified: supernet_kernels.load({out.name}) reproduces it (rel. err {err:.2g})"
        )
    if args.json:
        _write_json(
            Path(args.json),
            {
                "path": str(out),
                "config": cfg,
                "params": prof.total_params,
                "macs": prof.total_macs,
                "bitops": prof.total_bitops,
                "weight_bytes": prof.total_weight_bytes,
            },
        )
    return EXIT_OK


# --------------------------------------------------------------------------- bench
def _repo_benchmarks() -> Path | None:
    d = Path(__file__).resolve().parents[1] / "benchmarks"
    return d if d.is_dir() and any(d.glob("bench_*.py")) else None


def time_forward(model, x, repeats: int = 20, warmup: int = 3) -> dict:
    """Median / min / mean milliseconds of ``model(x)`` (no_grad; CUDA synchronized)."""
    import statistics

    import torch

    def sync():
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    times = []
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        sync()
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - t) * 1e3)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "mean_ms": statistics.fmean(times),
        "repeats": repeats,
    }


def _bench_image_size(model, given: int | None) -> int:
    """The input size a subnet runs: its recorded resolution (timm ViT), the fixed size of a
    SAM encoder or Swin (their window / relative-position tables depend on it), else
    ``--image-size``; a --image-size the subnet cannot run is a usage error."""
    info = getattr(model, "sk_subnet", {}) or {}
    family = info.get("family")
    fixed, why = info.get("resolution"), "the subnet's resolution"
    if family == "sam":
        fixed, why = int(model.img_size), "a SAM image encoder runs only its img_size"
    elif family == "timm_swin":
        fixed = int(model.patch_embed.img_size[0])
        why = "a Swin subnet runs only its img_size (windows and relative positions)"
    if fixed is None:
        if given is None:
            raise UsageError("the subnet records no resolution: give --image-size")
        return given
    if given is not None and given != fixed:
        raise UsageError(f"--image-size {given}: this subnet takes {fixed}x{fixed} ({why})")
    return fixed


def cmd_bench(args) -> int:
    import subprocess

    if args.subnet is None:
        bench_dir = _repo_benchmarks()
        if bench_dir is None:
            raise UsageError(
                "no benchmarks/ folder next to the package (not a repository checkout): give "
                "an exported subnet file to time, `supernet-kernels bench SUBNET.safetensors`"
            )
        suites = sorted(p.stem.removeprefix("bench_") for p in bench_dir.glob("bench_*.py"))
        if args.list:
            print("benchmarks in", bench_dir)
            for s in suites:
                print(f"  {s:<10} python {bench_dir / f'bench_{s}.py'} --help")
            return EXIT_OK
        suite = args.suite or "lowrank"
        if suite not in suites:
            raise UsageError(f"--suite {suite!r}: not one of {suites}")
        import shlex

        extra = shlex.split(args.bench_args)
        if not any(a == "--out" or a.startswith("--out=") for a in extra):
            # Results go where the user says, or the current folder: never into the package's
            # (possibly installed, read-only) tree, which the scripts default to.
            out = Path(args.out) if args.out else Path.cwd()
            out.mkdir(parents=True, exist_ok=True)
            target = out / "attention.jsonl" if suite == "attention" else out
            extra += ["--out", str(target)]
        cmd = [sys.executable, str(bench_dir / f"bench_{suite}.py"), *extra]
        _log(args, "running " + " ".join(cmd))
        return subprocess.call(cmd)
    import torch

    import supernet_kernels as sk

    from .backends import backend

    _set_threads(args)
    path = Path(args.subnet)
    if not path.is_file():
        raise _missing(path, "subnet")
    try:
        model = sk.load(path)
    except ValueError as exc:
        raise InputFileError(str(exc)) from exc
    device = _device(args)
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
        args.dtype
    ]
    if device.type == "cpu" and dtype == torch.float16:
        raise UsageError("--dtype float16 on the CPU is not supported; use float32 or bfloat16")
    model = model.to(device=device, dtype=dtype).eval()
    size = _bench_image_size(model, args.image_size)
    rows = []
    bar = _bar(args, len(args.batch_sizes), "bench")
    with backend(args.backend):
        for b in args.batch_sizes:
            x = torch.randn(b, 3, size, size, device=device, dtype=dtype)
            r = time_forward(model, x, args.repeats, args.warmup)
            r.update(batch=b, images_per_s=b / (r["median_ms"] / 1e3))
            rows.append(r)
            bar.update(1)
    bar.close()
    for r in rows:
        if r["max_ms"] > 10 * r["min_ms"]:
            # e.g. first-call compilation or autotuning inside the timed runs, or a busy machine
            print(
                f"warning: batch {r['batch']}: the {r['repeats']} timed runs disagree by "
                f"{r['max_ms'] / r['min_ms']:.0f}x (min {r['min_ms']:.3f} ms, max "
                f"{r['max_ms']:.3f} ms); raise --warmup / --repeats or check the machine's load",
                file=sys.stderr,
            )
    print(f"{path.name} on {device} ({args.dtype}, backend {args.backend}), {size}x{size}")
    print(f"  {'batch':>5}  {'median ms':>10}  {'min ms':>8}  {'images/s':>10}")
    for r in rows:
        print(
            f"  {r['batch']:>5}  {r['median_ms']:>10.3f}  {r['min_ms']:>8.3f}  "
            f"{r['images_per_s']:>10.1f}"
        )
    if args.json:
        _write_json(
            Path(args.json),
            {"subnet": str(path), "device": str(device), "dtype": args.dtype, "rows": rows},
        )
    return EXIT_OK


# --------------------------------------------------------------------------- plan
_SAM_NAMES = ("sam_vit_b", "sam_vit_l", "sam_vit_h")


def _plan_supernet(args):
    """(supernet, image size): a converted supernet folder/file, or a model converted here (a
    timm name, a checkpoint with --arch / --sam, or sam_vit_b/l/h: the architecture with random
    weights; a plan needs the shapes only)."""
    import supernet_kernels as sk

    src = args.model
    path = Path(src)
    if path.is_dir() and (path / "supernet.json").is_file() or path.name == "supernet.json":
        sn, doc, _ = load_supernet(path)
        return sn, int(doc.get("image_size") or 224)
    if src in _SAM_NAMES and not path.exists():
        try:
            from segment_anything import sam_model_registry
        except ImportError as exc:
            raise CLIError(f"{src} needs segment-anything (pip install segment-anything)") from exc
        enc = sam_model_registry[src.removeprefix("sam_")](checkpoint=None).image_encoder
        model, size = enc.eval(), int(getattr(enc, "img_size", 1024))
    else:
        args.pretrained = False  # no download: the plan needs the architecture only
        args.model_kwargs = None
        model, info = _make_model(args)
        size = int(info.get("image_size") or 224)
    _log(args, f"converting {src} into a supernet ...")
    try:
        return sk.convert(model, inplace=True), size
    except ValueError as exc:
        raise UsageError(f"plan: cannot convert {src}: {exc}") from exc


def cmd_plan(args) -> int:
    import torch

    from .planning import format_plan, plan

    _set_threads(args)
    if args.capability and not args.gpu:
        raise UsageError("--capability describes the GPU named by --gpu; give --gpu too")
    dtype = None
    if args.dtype:
        dtype = getattr(torch, args.dtype)
    sn, size = _plan_supernet(args)
    choice = args.plan_config or "max"
    if choice in ("max", "min"):
        cfg = sn.max_config() if choice == "max" else sn.min_config()
    else:
        cfg = _config_from_file(choice)
    try:
        sn.set_active(cfg)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputFileError(f"--config {choice}: does not fit this supernet: {exc}") from exc
    res = int(cfg.get("resolution") or size) if isinstance(cfg, dict) else size
    x = torch.randn(args.batch, 3, res, res)
    _log(args, f"running {args.model} ({choice} config, {res}x{res}) once to record its calls ...")
    try:
        p = plan(sn, x, gpu=args.gpu, capability=args.capability, dtype=dtype)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(format_plan(p))
    if args.json:
        out = _write_json(Path(args.json), p)
        _log(args, f"wrote {out}")
    return EXIT_OK


# --------------------------------------------------------------------------- quickstart
def cmd_quickstart(args) -> int:
    from .quickstart import run_quickstart

    run_quickstart(
        out=args.out,
        fast=args.fast,
        seed=args.seed,
        threads=args.threads,
        progress=not args.no_progress,
        quiet=args.quiet,
    )
    return EXIT_OK


# --------------------------------------------------------------------------- the parser
class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with our one-line error format (exit code 2)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _common(p: argparse.ArgumentParser, config: bool = True) -> None:
    g = p.add_argument_group("common options")
    if config:
        g.add_argument(
            "--config",
            metavar="FILE",
            default=None,
            help="YAML or JSON file of this command's options (keys: option names, e.g. "
            "batch_size); options on the command line override it",
        )
        g.add_argument(
            "--set",
            metavar="KEY=VALUE",
            action="append",
            default=[],
            dest="overrides",
            help="override one option after --config, dotted keys for nested ones "
            "(e.g. --set steps=100 --set trainer.warmup_steps=10); repeatable",
        )
    g.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--quiet", action="store_true", help="print only errors and results")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="supernet-kernels",
        description="ViT and SAM supernets on sliced low-rank and mixed-bit GPU kernels: "
        "convert a model into a weight-sharing supernet, train it, search subnets under a "
        "hardware budget, export them to our kernels.",
        epilog="Start with `supernet-kernels quickstart` (the whole flow on a built-in "
        "dataset, CPU only, a few minutes).\n\n" + EXIT_CODES_TEXT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name, help_, description):
        return sub.add_parser(
            name,
            help=help_,
            description=description,
            epilog=EXIT_CODES_TEXT,
            formatter_class=_Formatter,
        )

    # ------------------------------------------------------------------ info
    p = add(
        "info",
        "versions, usable backends, compiled CUDA architectures, GPU, "
        "and which kernels are verified on a real GPU",
        "Versions, the native extension, the GPU, usable backends and verified kernels.",
    )
    p.set_defaults(func=None)

    # ------------------------------------------------------------------ convert
    p = add(
        "convert",
        "turn a timm ViT / DeiT / Swin or a SAM image encoder into a supernet",
        "Convert a model into a weight-sharing supernet and write OUT/supernet.json (how to "
        "rebuild it, its search space, largest / smallest configs) and "
        "OUT/supernet.safetensors (its weights).\n\n"
        "MODEL is a timm model name (vit_tiny_patch16_224; --model-kwargs sets its constructor "
        "arguments, --pretrained downloads timm's weights), a state-dict checkpoint "
        "(.pth / .pt / .safetensors; --arch names its timm architecture), or a segment-anything "
        "checkpoint with --sam vit_b / vit_l / vit_h (its image encoder is converted).",
    )
    p.add_argument("model", metavar="MODEL", help="timm model name or checkpoint file")
    p.add_argument(
        "--arch", default=None, help="timm architecture of a state-dict checkpoint file MODEL"
    )
    p.add_argument(
        "--sam",
        choices=("vit_b", "vit_l", "vit_h"),
        default=None,
        help="MODEL is a segment-anything checkpoint of this type",
    )
    p.add_argument(
        "--model-kwargs",
        type=_json_dict,
        default=None,
        metavar="JSON",
        help='timm constructor arguments, e.g. \'{"img_size": 16, "num_classes": 10}\'',
    )
    p.add_argument(
        "--pretrained", action="store_true", help="timm name: download pretrained weights"
    )
    p.add_argument(
        "--recipe",
        choices=RECIPES,
        default="default",
        help="search space: default (ranks of qkv / fc1 / fc2, proj bits, MLP widths, "
        "depth, resolution), flora (ranks only), supersam (depth + MLP width), mplora "
        "(weight bits with LoRA adapters)",
    )
    p.add_argument(
        "--space",
        default=None,
        metavar="FILE|JSON",
        help="space overrides (convert(space=...)): a JSON / YAML file or inline JSON, "
        "merged over the recipe's",
    )
    p.add_argument(
        "--attention",
        choices=("ours", "original"),
        default="ours",
        help="run attention through supernet_kernels' op (ours) or the model's own",
    )
    p.add_argument(
        "--bits",
        type=_int_list,
        default=[2, 3, 4, 8],
        metavar="LIST",
        help="recipe mplora: weight bit-widths, comma-separated",
    )
    p.add_argument(
        "--lora-rank",
        type=_nonneg_int,
        default=8,
        help="recipe mplora: LoRA adapter rank (0: no adapters, train all weights)",
    )
    p.add_argument(
        "--calib-data",
        default=None,
        metavar="DATA",
        help="order MLP units by activation importance on a few batches of this data "
        "(default: by weight magnitude)",
    )
    p.add_argument("--out", default="supernet_out", metavar="DIR", help="output folder")
    _common(p)
    p.set_defaults(func=cmd_convert)

    # ------------------------------------------------------------------ train
    p = add(
        "train",
        "train a supernet (sandwich rule or a recipe's sampler) on a data folder",
        "Train a supernet from `convert` (or an earlier `train`) and write OUT/supernet.json "
        "+ OUT/supernet.safetensors, OUT/train_log.jsonl and OUT/checkpoint/.\n\n"
        "Data (--data, --eval-data):\n"
        "  classification: a folder of class subfolders, root/<class>/<image> (classes are the\n"
        "    sorted subfolder names; images resized to the model's size and normalized with its\n"
        "    mean / std), or a .npz with arrays images (N, 3, H, W) float, already normalized,\n"
        "    and labels (N,) int;\n"
        "  segmentation (SAM): root/images/<stem>.jpg + root/masks/<stem>.npz (array 'masks'\n"
        "    (N, H, W) of 0 / 1) or root/masks/<stem>.png (instance ids, 0 = background).\n"
        "Recipes (--recipe; default: the one the supernet was converted with, else sandwich):\n"
        "  sandwich  largest + smallest + --num-random random subnets per step\n"
        "  flora     FLORA's low-rank-aware rank sampling (1 / rank ratio)\n"
        "  supersam  SuperSAM's block dropping (--drop-prob) and MLP widths, sandwich\n"
        "  mplora    progressive bit-width stages 8 -> 8,4 -> 8,4,3,2 (LoRA adapters only)\n"
        "Other TrainConfig fields: --set trainer.FIELD=VALUE (or `trainer:` in --config).",
    )
    p.add_argument("supernet", metavar="SUPERNET", help="supernet.json (or its folder)")
    p.add_argument(
        "--data",
        required=False,
        default=None,
        metavar="DATA",
        help="training data (required; formats above)",
    )
    p.add_argument("--eval-data", default=None, metavar="DATA", help="evaluated at the end")
    p.add_argument(
        "--task",
        choices=("auto", "classification", "segmentation"),
        default="auto",
        help="task (auto: from the supernet)",
    )
    p.add_argument("--recipe", choices=TRAIN_RECIPES, default=None, help="sampler (see above)")
    p.add_argument("--steps", type=_positive_int, default=1000, help="optimizer steps")
    p.add_argument("--lr", type=_positive_float, default=1e-4, help="peak learning rate")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="per micro-batch")
    p.add_argument("--grad-accum", type=_positive_int, default=1, help="micro-batches per step")
    p.add_argument("--num-random", type=_nonneg_int, default=1, help="random subnets per step")
    p.add_argument(
        "--distill",
        choices=("largest", "teacher", "none"),
        default="largest",
        help="distillation: from the largest subnet in the same step (in-place), from a "
        "frozen copy of the supernet's largest subnet as loaded (teacher), or none",
    )
    p.add_argument("--drop-prob", type=float, default=0.5, help="supersam: block drop prob.")
    p.add_argument("--warmup-steps", type=_nonneg_int, default=0, help="linear warm-up steps")
    p.add_argument("--amp", choices=("bf16",), default=None, help="bf16 autocast")
    p.add_argument("--seed", type=int, default=0, help="seed of subnets and data order")
    p.add_argument(
        "--checkpoint-every", type=_nonneg_int, default=0, help="checkpoint period (0: at the end)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from OUT/checkpoint (same options required)",
    )
    p.add_argument(
        "--trainer",
        type=_json_dict,
        default=None,
        metavar="JSON",
        help="more TrainConfig fields, e.g. '{\"weight_decay\": 0.1}'",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--out", default="train_out", metavar="DIR", help="output folder")
    _common(p)
    p.set_defaults(func=cmd_train, _required=("data",))

    # ------------------------------------------------------------------ search
    p = add(
        "search",
        "search subnets under a hardware budget; writes the Pareto front",
        "Search a trained supernet for the best subnets under a budget and write "
        "OUT/front.json (front, best, history), front.csv, history.csv, front.png and "
        "best_config.json (feed it to `export --subnet-config`).\n\n"
        'Budgets: "bitops <= 0.5 * dense", "macs <= 0.3 * dense and params <= 2e6", '
        '"50% dense", or a number (objective <= number). dense = the original model at '
        "16 bits; max = the supernet's largest subnet. A budget that even the smallest "
        "subnet exceeds exits with 4.",
    )
    p.add_argument("supernet", metavar="SUPERNET", help="supernet.json (or its folder)")
    p.add_argument(
        "--data",
        default=None,
        metavar="DATA",
        help="required: held-out data for the metric (formats of `train --help`)",
    )
    p.add_argument(
        "--metric",
        choices=("auto", "accuracy", "fidelity"),
        default="auto",
        help="accuracy (labels; classification) or fidelity (agreement with the largest "
        "subnet; needs no labels); auto: accuracy for classification",
    )
    p.add_argument(
        "--objective",
        choices=("bitops", "macs", "params", "weight_bytes", "latency"),
        default="bitops",
        help="the cost minimized next to the metric (x axis of the front)",
    )
    p.add_argument("--budget", default=None, help='e.g. "bitops <= 0.5 * dense" (none: no limit)')
    p.add_argument(
        "--algorithm",
        choices=("evolution", "nsga2", "tpe"),
        default="evolution",
        help="evolution (in memory) or Optuna NSGA-II / TPE",
    )
    p.add_argument("--population", type=_positive_int, default=16, help="population size")
    p.add_argument("--generations", type=_positive_int, default=8, help="evolution generations")
    p.add_argument(
        "--trials",
        type=_positive_int,
        default=None,
        help="evaluations (Optuna: default 64; evolution: optional cap)",
    )
    p.add_argument("--storage", default=None, help="Optuna storage URL, e.g. sqlite:///s.db")
    p.add_argument("--study-name", default=None, help="Optuna study name (resumable)")
    p.add_argument(
        "--max-samples",
        type=_positive_int,
        default=None,
        help="use only the first N samples of --data",
    )
    p.add_argument("--batch-size", type=_positive_int, default=128, help="evaluation batch")
    p.add_argument("--seed", type=int, default=0, help="search seed")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--out", default="search_out", metavar="DIR", help="output folder")
    _common(p)
    p.set_defaults(func=cmd_search, _required=("data",))

    # ------------------------------------------------------------------ export
    p = add(
        "export",
        "extract one subnet and save it (supernet_kernels.save / load)",
        "Extract one subnet of a supernet and write it with supernet_kernels.save (one "
        "safetensors file; load it with supernet_kernels.load, no code needed). Pick it with "
        "exactly one of --subnet-config, --front (+ --member) or --preset.",
    )
    p.add_argument("supernet", metavar="SUPERNET", help="supernet.json (or its folder)")
    p.add_argument(
        "--subnet-config",
        default=None,
        metavar="FILE",
        help="a config JSON / YAML (e.g. search's best_config.json)",
    )
    p.add_argument("--front", default=None, metavar="FILE", help="a search front.json")
    p.add_argument(
        "--member",
        type=int,
        default=None,
        help="with --front: the front member's index (default: the best)",
    )
    p.add_argument(
        "--preset", choices=("max", "min"), default=None, help="the largest or the smallest subnet"
    )
    p.add_argument("--out", default="subnet.safetensors", metavar="FILE", help="output file")
    p.add_argument("--json", default=None, metavar="FILE", help="also write its costs as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip loading it back to compare")
    _common(p)
    p.set_defaults(func=cmd_export)

    # ------------------------------------------------------------------ bench
    p = add(
        "bench",
        "run the repository's benchmarks, or time an exported subnet",
        "Without SUBNET: run benchmarks/bench_SUITE.py of the repository checkout the "
        "package is installed from (--bench-args go to it). With SUBNET (a file from "
        "`export`): time its forward here (median of --repeats, per batch size) on our "
        "kernels (ops dispatch on --backend).",
    )
    p.add_argument("subnet", nargs="?", default=None, metavar="SUBNET", help="exported subnet")
    p.add_argument("--suite", default=None, help="benchmarks/bench_SUITE.py (default lowrank)")
    p.add_argument("--list", action="store_true", help="list the repository's benchmarks")
    p.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=[1, 64],
        metavar="LIST",
        help="SUBNET: comma-separated batch sizes",
    )
    p.add_argument("--repeats", type=_positive_int, default=30, help="timed forwards per size")
    p.add_argument("--warmup", type=_nonneg_int, default=3, help="untimed forwards first")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="model and input dtype",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "triton", "cuda"),
        default="auto",
        help="supernet_kernels backend of the ops",
    )
    p.add_argument(
        "--image-size",
        type=_positive_int,
        default=None,
        help="input size where the subnet records none",
    )
    p.add_argument("--json", default=None, metavar="FILE", help="also write the timings as JSON")
    p.add_argument(
        "--bench-args",
        default="",
        metavar="ARGS",
        help="arguments for the benchmark script, e.g. --bench-args '--smoke'",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="suites: folder for their results (default: the current folder)",
    )
    _common(p)
    p.set_defaults(func=cmd_bench)

    # ------------------------------------------------------------------ plan
    p = add(
        "plan",
        "what auto runs for each layer and attention on a GPU, why, and the recorded times",
        "Run the model once on the CPU (or the GPU present) and print, for each weight layer "
        "and attention: its op and shape, the implementation `auto` picks, why (verified on "
        "which architecture, which table, which fallback), the recorded time of every "
        "candidate and of the dense layer, and a flag where the pick is slower than dense. "
        "With --gpu (and --capability) the answer comes from the dispatch tables for that "
        "GPU: every time is a recorded one, not measured here.",
    )
    p.add_argument(
        "--model", required=True, metavar="NAME_OR_PATH",
        help="a supernet folder (convert's output), a timm model name (architecture only, "
        "random weights), sam_vit_b/l/h, or a checkpoint with --arch / --sam",
    )  # fmt: skip
    p.add_argument("--arch", default=None, help="timm architecture of a checkpoint --model")
    p.add_argument("--sam", default=None, metavar="TYPE", help="--model is a SAM checkpoint")
    p.add_argument(
        "--config", dest="plan_config", default="max", metavar="max|min|FILE",
        help="the subnet: the largest, the smallest, or a subnet config file (default max)",
    )  # fmt: skip
    p.add_argument("--gpu", default=None, metavar="NAME", help="plan for this GPU (its name)")
    p.add_argument(
        "--capability", default=None, metavar="X.Y",
        help="the named GPU's compute capability (9.0 for H100/H200); needed unless its own "
        "table records it",
    )  # fmt: skip
    p.add_argument("--batch", type=_positive_int, default=1, help="images per call (default 1)")
    p.add_argument(
        "--dtype", choices=("float16", "bfloat16", "float32"), default=None,
        help="activation dtype to plan for (default float16 for a GPU)",
    )  # fmt: skip
    p.add_argument("--json", default=None, metavar="PATH", help="also write the plan as JSON")
    _common(p, config=False)
    p.set_defaults(func=cmd_plan)

    # ------------------------------------------------------------------ quickstart
    p = add(
        "quickstart",
        "the whole flow on scikit-learn's digits, CPU, a few minutes",
        "Train a small ViT on scikit-learn's digits (bundled: no download), convert it into "
        "a supernet, train the supernet, search it under 'bitops <= 0.5 * dense' on a "
        "validation split, export and reload the best subnet, time it on our kernels and "
        "print a table (dense / supernet max / min / best: test accuracy, BitOPs, MACs, "
        "params, latency). Writes OUT/summary.json, OUT/summary.md, OUT/accuracy_vs_bitops.png, "
        "the subnet and the search front.",
    )
    p.add_argument("--out", default="quickstart_out", metavar="DIR", help="output folder")
    p.add_argument("--fast", action="store_true", help="few steps (~1 minute; for tests)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, models and search")
    _common(p)
    p.set_defaults(func=cmd_quickstart)
    return parser


# --------------------------------------------------------------------------- config files
_NOT_CONFIGURABLE = {"help", "config", "overrides", "func", "command", "version", "subnet"}


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a.choices[name]
    raise KeyError(name)  # pragma: no cover


def _coerce(action: argparse.Action, value, where: str):
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if value is None:
        return None
    t = action.type
    if t is not None and (isinstance(value, str) or t in (_int_list, _json_dict, _json_value)):
        try:
            value = t(value)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
    elif t in (int, _positive_int, _nonneg_int) and not (
        isinstance(value, int) and not isinstance(value, bool)
    ):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    elif t in (float, _positive_float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        value = t(value)
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{where}: {value!r} is not one of {list(action.choices)}")
    return value


def _apply_config(parser, sub: argparse.ArgumentParser, argv: list[str], args):
    """Re-parse with the --config file's values as defaults, then apply --set."""
    from .config_files import ConfigError, load_config, parse_override

    actions = {a.dest: a for a in sub._actions if a.dest not in _NOT_CONFIGURABLE}
    if args.config:
        try:
            cfg = load_config(args.config)
        except FileNotFoundError:
            raise _missing(args.config, "config file") from None
        except ConfigError as exc:
            raise InputFileError(str(exc)) from exc
        defaults = {}
        for key, value in cfg.items():
            dest = key.replace("-", "_")
            if dest not in actions:
                raise InputFileError(
                    f"config file {args.config}: unknown option {key!r} for "
                    f"`{args.command}` (options: {sorted(actions)})"
                )
            try:
                defaults[dest] = _coerce(actions[dest], value, f"config file {args.config}: {key}")
            except ValueError as exc:
                raise InputFileError(str(exc)) from None
        sub.set_defaults(**defaults)
        args = parser.parse_args(argv)
    for item in args.overrides:
        try:
            parts, value = parse_override(item)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        dest = parts[0].replace("-", "_")
        if dest not in actions:
            raise UsageError(
                f"--set {item!r}: unknown option {parts[0]!r} for `{args.command}` "
                f"(options: {sorted(actions)})"
            )
        if len(parts) == 1:
            try:
                value = _coerce(actions[dest], value, f"--set {item}")
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        else:
            from .config_files import apply_overrides

            current = getattr(args, dest)
            if isinstance(current, str) and dest == "space":
                current = _load_space_arg(current)
            if current is not None and not isinstance(current, dict):
                raise UsageError(f"--set {item!r}: option {parts[0]!r} is not a mapping")
            try:
                value = apply_overrides({"v": current or {}}, ["v." + item.split(".", 1)[1]])["v"]
            except ConfigError as exc:
                raise UsageError(str(exc).replace("v.", "")) from None
        setattr(args, dest, value)
    return args


# --------------------------------------------------------------------------- main
def _join_bench_args(argv: list[str]) -> list[str]:
    """``--bench-args '--smoke'``: argparse takes a value starting with '-' for an option and
    stops; the value of --bench-args is always the next word, so join the two."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--bench-args" and i + 1 < len(argv):
            out.append(f"--bench-args={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _run(argv: list[str] | None, state: dict) -> int:
    parser = build_parser()
    argv = _join_bench_args(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    state["args"] = args
    if args.version:
        from ._version import __version__

        print(f"supernet-kernels {__version__}")
        return EXIT_OK
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "info":
        print(info_text())
        return EXIT_OK
    sub = _subparser(parser, args.command)
    if getattr(args, "config", None) or getattr(args, "overrides", None):
        try:
            args = _apply_config(parser, sub, argv, args)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 2
        state["args"] = args
    for name in getattr(args, "_required", ()):
        if getattr(args, name, None) in (None, ""):
            sub.print_usage(sys.stderr)
            print(
                f"{sub.prog}: error: the following arguments are required: "
                f"--{name.replace('_', '-')} (or `{name}:` in --config)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module doc)."""
    state: dict = {}
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv, state)
    except KeyboardInterrupt:
        print("supernet-kernels: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        args = state.get("args")
        cmd = getattr(args, "command", None)
        prog = f"supernet-kernels {cmd}" if cmd else "supernet-kernels"
        if isinstance(exc, CLIError):
            code = exc.code
        elif isinstance(exc, FileNotFoundError):
            code = EXIT_INPUT
        else:
            code = EXIT_FAILURE
        msg = (
            str(exc)
            if isinstance(exc, CLIError | FileNotFoundError)
            else (f"{type(exc).__name__}: {exc}")
        )
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {msg}", file=sys.stderr)
        if not debug and code == EXIT_FAILURE:
            print("(run again with --debug for the traceback)", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
