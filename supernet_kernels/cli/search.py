"""`supernet-kernels search`."""

from __future__ import annotations

import time
from pathlib import Path

from ._common import (
    EXIT_OK,
    CLIError,
    InfeasibleBudget,
    InputFileError,
    UsageError,
    _device,
    _load_data,
    _log,
    _positive_int,
    _set_threads,
    _task_for,
    _write_json,
    add_command,
    common_options,
    load_supernet,
)


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


def _metric(args, doc: dict) -> tuple[str, str]:
    """(metric, task kind): --metric auto is accuracy for classification, else fidelity."""
    metric = args.metric
    kind = doc.get("task") or "classification"
    if metric == "auto":
        metric = "accuracy" if kind == "classification" else "fidelity"
    if metric == "accuracy" and kind != "classification":
        raise UsageError("--metric accuracy needs a classification supernet; use fidelity")
    return metric, kind


def _evaluator(args, sn, doc: dict, metric: str, kind: str, device):
    """(evaluate(model) -> metric, the data) on --data (its first --max-samples)."""
    import torch

    task, _ = (
        (None, kind) if metric == "fidelity" and kind == "segmentation" else _task_for(doc, args)
    )
    data = _load_data(args.data, doc, kind)
    if args.max_samples:
        data = [data[i] for i in range(min(len(data), args.max_samples))]
    if len(data) == 0:
        raise InputFileError(f"data {args.data}: no samples")
    sn.to(device)
    _note_resize(args, data, int(doc.get("image_size") or 224))
    if metric == "accuracy":
        task.setup(sn)
        task.validate_dataset(data, None, "data") if hasattr(task, "validate_dataset") else None
        return _accuracy_evaluator(task, data, args.batch_size), data
    from ..search import fidelity_evaluator

    images = torch.stack([data[i][0] for i in range(len(data))]).to(device)
    if kind == "segmentation":
        mean = torch.tensor([123.675, 116.28, 103.53], device=device).view(1, 3, 1, 1)
        std = torch.tensor([58.395, 57.12, 57.375], device=device).view(1, 3, 1, 1)
        images = (images * 255.0 - mean) / std
    return fidelity_evaluator(sn, images), data


def _search_options(args, device) -> dict:
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
    return kw


def _no_best(args, result) -> CLIError:
    """The error of a search that found no feasible, evaluated subnet."""
    hist = result.history
    ok = sum(r["status"] == "ok" for r in hist)
    failed = [r for r in hist if r["status"] == "fail"]
    over = sum(r["status"] == "infeasible" or (r["status"] == "ok" and not r["feasible"])
               for r in hist)  # fmt: skip
    if hist and not failed:
        # Every candidate ran (or was costed) and none met the budget: the budget is tight
        # for this sampler's draws, not an error of the evaluation.
        return InfeasibleBudget(
            f"search: no candidate met the budget {args.budget!r}: {len(hist)} candidates, "
            f"{ok} evaluated, {over} over the budget (the smallest subnet meets it: raise "
            "--trials, or use --algorithm evolution, which starts from feasible subnets)"
        )
    why = f": {failed[0].get('error')}" if failed else ""
    return CLIError(
        f"search: no candidate was evaluated successfully ({len(failed)} of {len(hist)} "
        f"failed{why}; see history.csv)"
    )


def _write_results(args, result, out: Path, metric: str) -> None:
    result.to_json(out / "front.json")
    result.to_csv(out / "front.csv")
    result.to_csv(out / "history.csv", which="history")
    try:
        result.plot(out / "front.png", title=f"{args.algorithm}: {metric} vs {args.objective}")
    except ImportError:
        _log(args, "matplotlib is not installed: no plot")


def _print_front(args, result, best, dt: float) -> None:
    _log(args, f"front ({len(result.front)} members, {dt:.1f} s):")
    _log(args, f"  {'#':>3}  {'metric':>8}  {args.objective:>14}")
    for i, r in enumerate(result.front):
        star = " *" if r["config_hash"] == best["config_hash"] else ""
        _log(args, f"  {i:>3}  {r['metric']:>8.4f}  {r[args.objective]:>14.6g}{star}")
    _log(args, f"best: metric {best['metric']:.4f}, {args.objective} {best[args.objective]:.6g}")


def run(args) -> int:
    import torch

    from ..search import search

    _set_threads(args)
    sn, doc, src = load_supernet(args.supernet)
    metric, kind = _metric(args, doc)
    device = _device(args)
    evaluate, data = _evaluator(args, sn, doc, metric, kind, device)
    size = int(doc.get("image_size") or 224)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _log(
        args,
        f"searching {src}: objective {args.objective}, budget {args.budget!r}, "
        f"{args.algorithm}, metric {metric} on {len(data)} samples",
    )
    kw = _search_options(args, device)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            result = search(sn, evaluate, (1, 3, size, size), **kw)
    except ValueError as exc:
        msg = str(exc)
        if "no subnet meets the budget" in msg:
            raise InfeasibleBudget(msg) from exc
        if "budget" in msg or msg.startswith("search:"):
            raise UsageError(msg) from exc
        raise
    dt = time.perf_counter() - t0
    _write_results(args, result, out, metric)
    best = result.best
    if best is None:
        raise _no_best(args, result)
    _write_json(out / "best_config.json", best["config"])
    _print_front(args, result, best, dt)
    _log(args, f"wrote {out / 'front.json'}, front.csv, history.csv, front.png, best_config.json")
    return EXIT_OK


def add_parser(sub):
    p = add_command(
        sub,
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
    common_options(p)
    p.set_defaults(func=run, _required=("data",))
    return p
