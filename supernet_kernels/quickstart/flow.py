"""The quickstart's run, step by step (see the package doc): :func:`run_quickstart`."""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import accuracy, load_digits_splits, make_vit, train_dense
from .machine import kernel_paths, machine_info, measure_latency
from .report import _describe_config, _fmt_table, _markdown, _plot
from .settings import BUDGET, CLASSES, FAST, FULL, GOAL_POINTS, GOAL_RATIO, IMG


def quickstart_space(model) -> dict:
    """The ``convert(space=...)`` override of the quickstart (see the module doc)."""
    from ..supernet import families as fam

    lay = fam.layout(model)
    linear = {}
    for name, role in lay.roles.items():
        if role in ("qkv", "proj", "fc1", "fc2"):
            linear[name] = {"rank": [None], "w_bits": [4, 8, 16], "a_bits": [16]}
    n = sum(1 for b in lay.blocks if b.startswith("blocks."))
    depth = {f"blocks.{i}": ([False, True] if 0 < i < n - 1 else [True]) for i in range(n)}
    return {"resolution": None, "depth": depth, "linear": linear}


def _validation_metric(xv, yv):
    def evaluate(model) -> float:
        out = model(xv)
        acc = (out.argmax(-1) == yv).float().mean().item()
        return acc - 1e-3 * F.cross_entropy(out.float(), yv).item()

    return evaluate


def run_quickstart(
    out: str | os.PathLike = "quickstart_out",
    fast: bool = False,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    quiet: bool = False,
) -> dict:
    """Run the quickstart (module doc) and write its outputs to ``out``; returns the summary."""
    from tqdm.auto import tqdm

    import supernet_kernels as sk

    from ..cost import profile
    from ..search import search
    from ..train import ClassificationTask, SandwichSampler, TrainConfig, Trainer

    def say(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    p = FAST if fast else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads or 1)
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    example = (1, 3, IMG, IMG)
    show = progress and not quiet

    # 1. data
    t = time.perf_counter()
    data = load_digits_splits(seed)
    (xtr, ytr), (xv, yv), (xte, yte) = data["train"], data["val"], data["test"]
    times["data"] = time.perf_counter() - t
    say(f"[1/7] digits: {len(xtr)} train / {len(xv)} val / {len(xte)} test, 16x16x3")

    # 2. dense model
    t = time.perf_counter()
    bar = tqdm(total=p["epochs"], desc="dense ViT", disable=not show, leave=False)
    dense = train_dense(make_vit(seed), xtr, ytr, p["epochs"], seed=seed, bar=bar)
    bar.close()
    dense.requires_grad_(False)
    times["dense training"] = time.perf_counter() - t
    dense_test = accuracy(dense, xte, yte)
    say(
        f"[2/7] dense ViT: {p['epochs']} epochs, test accuracy {dense_test:.2f}% "
        f"({times['dense training']:.0f} s)"
    )

    # 3. supernet
    t = time.perf_counter()
    supernet = sk.convert(dense, space=quickstart_space(dense))
    supernet.requires_grad_(True)
    times["convert"] = time.perf_counter() - t
    sp = supernet.space
    say(
        f"[3/7] supernet: {sum(False in v for v in sp['depth'].values())} droppable blocks, "
        f"{len(sp['mlp'])} elastic MLPs, {sum(len(s['w_bits']) > 1 for s in sp['linear'].values())}"
        " linears with 4/8/16-bit weights"
    )

    # 4. supernet training
    t = time.perf_counter()
    train = [(xtr[i], int(ytr[i])) for i in range(len(xtr))]
    cfg = TrainConfig(
        steps=p["steps"],
        lr=5e-4,
        batch_size=64,
        num_random=2,
        distill="teacher",
        warmup_steps=min(20, p["steps"] // 10),
        weight_decay=0.05,
        progress=False,
        seed=seed,
        log_file=str(out / "train_log.jsonl"),
    )
    trainer = Trainer(
        supernet,
        ClassificationTask(num_classes=CLASSES),
        train,
        cfg,
        sampler=SandwichSampler(cfg.num_random),
        teacher=dense,
        device="cpu",
    )
    bar = tqdm(total=p["steps"], desc="supernet", disable=not show, leave=False)
    chunk = max(1, p["steps"] // 50)
    done = 0
    while done < p["steps"]:
        nxt = min(p["steps"], done + chunk)
        recs = trainer.train(until=nxt)  # continues from trainer.step
        done = nxt
        bar.update(len(recs))
        if recs:
            bar.set_postfix(loss=" ".join(f"{v:.2f}" for v in recs[-1]["loss"]))
    bar.close()
    supernet.eval()
    times["supernet training"] = time.perf_counter() - t
    say(
        f"[4/7] supernet training: {p['steps']} sandwich steps (max + min + 2 random), distilled "
        f"from the dense ViT ({times['supernet training']:.0f} s)"
    )

    # 5. search
    t = time.perf_counter()
    evaluate = _validation_metric(xv, yv)
    with torch.no_grad():
        result = search(
            supernet,
            evaluate,
            example,
            objective="bitops",
            budget=BUDGET,
            algorithm="evolution",
            population=p["population"],
            generations=p["generations"],
            seed=seed,
            progress=show,
        )
    times["search"] = time.perf_counter() - t
    best = result.best
    if best is None:
        raise RuntimeError("quickstart: the search evaluated no subnet successfully")
    sdir = out / "search"
    sdir.mkdir(exist_ok=True)
    result.to_json(sdir / "front.json")
    result.to_csv(sdir / "front.csv")
    result.plot(sdir / "front.png", title="quickstart search: validation metric vs BitOPs")
    n_eval = sum(r["status"] == "ok" for r in result.history)
    say(
        f"[5/7] search: {n_eval} subnets evaluated under {BUDGET!r}, front of "
        f"{len(result.front)} ({times['search']:.0f} s)"
    )

    # 6. export + reload
    t = time.perf_counter()
    subnet_path = out / "subnet.safetensors"
    extracted = supernet.extract(best["config"]).eval()
    sk.save(extracted, subnet_path)
    loaded = sk.load(subnet_path).eval()
    with torch.no_grad():
        a, b = extracted(xte[:64]), loaded(xte[:64])
    reload_err = float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
    if reload_err > 1e-4:
        raise RuntimeError(f"quickstart: the reloaded subnet differs ({reload_err:.3g})")
    times["export + reload"] = time.perf_counter() - t
    say(
        f"[6/7] exported {subnet_path} ({subnet_path.stat().st_size / 1024:.0f} KiB) and "
        f"reloaded it with supernet_kernels.load (max rel. difference {reload_err:.1e})"
    )

    # 7. costs, accuracy, latency on our kernels
    t = time.perf_counter()
    models = {
        "dense": dense,
        "supernet max": supernet.extract(supernet.max_config()).eval(),
        "supernet min": supernet.extract(supernet.min_config()).eval(),
        "best found": loaded,
    }
    dense_prof = profile(dense, example)
    rows = []
    gpu = torch.cuda.is_available()
    x1 = xte[:1].contiguous()
    x64 = xte[:64].contiguous()
    bar = tqdm(total=len(models), desc="latency", disable=not show, leave=False)
    with sk.backend("auto"):
        for name, m in models.items():
            prof = profile(m, example)
            row = {
                "name": name,
                "test_acc": accuracy(m, xte, yte),
                "val_acc": accuracy(m, xv, yv),
                "bitops": prof.total_bitops,
                "bitops_ratio": prof.total_bitops / dense_prof.total_bitops,
                "macs": prof.total_macs,
                "params": prof.total_params,
                "weight_bytes": prof.total_weight_bytes,
                "cpu_b1_ms": measure_latency(m, x1, p["reps_b1"]),
                "cpu_b64_ms": measure_latency(m, x64, p["reps_b64"]),
            }
            if gpu:
                g = copy.deepcopy(m).to("cuda", torch.float16).eval()
                row["gpu_b1_ms"] = measure_latency(g, x1.to("cuda", torch.float16), p["reps_b1"])
                row["gpu_b64_ms"] = measure_latency(g, x64.to("cuda", torch.float16), p["reps_b64"])
                del g
            rows.append(row)
            bar.update(1)
    bar.close()
    times["report"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t_all

    best_row = rows[-1]
    drop = rows[0]["test_acc"] - best_row["test_acc"]
    ok_cost = best_row["bitops_ratio"] <= GOAL_RATIO + 1e-9
    ok_acc = drop <= GOAL_POINTS + 1e-9
    met = ok_cost and ok_acc
    if met:
        why = (
            f"The best subnet runs at {best_row['bitops_ratio']:.1%} of the dense BitOPs with "
            f"test accuracy {best_row['test_acc']:.2f}% vs {rows[0]['test_acc']:.2f}% dense "
            f"({-drop:+.2f} points). The test split has {len(xte)} images: one image is "
            f"{100 / len(xte):.2f} points, so differences below a point are noise."
        )
    else:
        reasons = []
        if not ok_cost:
            reasons.append(
                f"its BitOPs are {best_row['bitops_ratio']:.1%} of dense (> {GOAL_RATIO:.0%})"
            )
        if not ok_acc:
            reasons.append(
                f"its test accuracy is {drop:.2f} points below dense (> {GOAL_POINTS:g})"
            )
        cause = (
            "--fast trains the dense model for "
            f"{p['epochs']} epochs and the supernet for {p['steps']} steps only, and searches "
            f"{n_eval} subnets: a smoke run, not a result; run without --fast"
            if fast
            else "the supernet training or the search was too short for this seed, or the "
            f"validation split ({len(xv)} images) picked a subnet that generalizes worse; "
            "try more --set steps / a different --seed"
        )
        why = "The best subnet misses: " + "; ".join(reasons) + f". Why: {cause}."
    if fast:
        why = (
            f"--fast is a smoke run ({p['epochs']} dense epochs, {p['steps']} supernet steps, "
            f"{n_eval} subnets searched): the models are undertrained and the accuracies are "
            "not meaningful; run without --fast for the real result. " + why
        )
    latency_note = (
        "CPU latency does not follow BitOPs: on the CPU every op runs the PyTorch reference "
        "(a quantized layer dequantizes its weight on each call, our attention op adds "
        "dispatch overhead that the dense timm model's fused attention does not have); the "
        "fused low-rank / mixed-bit kernels are GPU kernels."
    )
    description = (
        f"scikit-learn digits (16x16x3; {len(xtr)} train / {len(xv)} val / {len(xte)} test). "
        f"Dense: timm ViT (img 16, patch 4, embed 64, depth 4, heads 4, mlp 2) trained "
        f"{p['epochs']} epochs. Supernet: blocks 1-2 droppable, MLP widths {{32..128}}, "
        f"qkv/proj/fc1/fc2 weights at 4/8/16 bits; {p['steps']} sandwich steps distilled from "
        f"the dense model. Search: evolution ({p['population']} x {p['generations']}) under "
        f"'{BUDGET}' on the validation split. Test accuracy on the test split only; costs "
        "from supernet_kernels.cost.profile at batch 1 (BitOPs = MACs x weight bits x "
        "activation bits); latency = median forward on our kernels (CPU: torch backend)."
    )
    summary = {
        "format": "sk-quickstart-v1",
        "fast": fast,
        "seed": seed,
        "description": description,
        "machine": machine_info(),
        "params": p,
        "splits": {"train": len(xtr), "val": len(xv), "test": len(xte)},
        "budget": BUDGET,
        "dense_bitops": dense_prof.total_bitops,
        "rows": rows,
        "best": {
            "config": best["config"],
            "summary": _describe_config(best["config"]),
            "val_metric": best["metric"],
            "search_bitops": best["bitops"],
        },
        "goal": {
            "text": f"BitOPs <= {GOAL_RATIO:.0%} of dense and test accuracy within "
            f"{GOAL_POINTS:g} points of dense",
            "met": met,
            "bitops_ratio": best_row["bitops_ratio"],
            "accuracy_drop_points": drop,
            "explanation": why,
        },
        "kernels": kernel_paths(),
        "latency_note": latency_note,
        "reload_max_rel_diff": reload_err,
        "search": {"evaluated": n_eval, "front": len(result.front)},
        "times_s": times,
        "files": {
            "subnet": str(subnet_path),
            "plot": str(out / "accuracy_vs_bitops.png"),
            "summary_json": str(out / "summary.json"),
            "summary_md": str(out / "summary.md"),
            "front": str(sdir / "front.json"),
            "train_log": str(out / "train_log.jsonl"),
        },
    }
    _plot(out / "accuracy_vs_bitops.png", result.history, rows, dense_prof.total_bitops)
    table = _fmt_table(rows, gpu)
    summary["table"] = table
    from .._io import atomic_write_json

    atomic_write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(_markdown(summary, gpu))
    say("[7/7] results (test split; costs per image at batch 1):")
    print(table, flush=True)
    say("")
    say(f"goal ({summary['goal']['text']}): {'MET' if met else 'NOT MET'}. {why}")
    say(f"latency: {latency_note}")
    say(
        f"kernels: CPU {summary['kernels']['cpu']}; Triton: "
        f"{summary['kernels']['triton_interpreter']}"
    )
    m = summary["machine"]
    say(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['torch_threads']} torch thread(s), GPU "
        f"{m['gpu'] or 'none'}; total {times['total']:.0f} s"
    )
    say(
        f"wrote {out}/summary.json, summary.md, accuracy_vs_bitops.png, subnet.safetensors, search/"
    )
    sys.stdout.flush()
    return summary
