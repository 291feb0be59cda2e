"""``supernet-kernels quickstart``: the whole flow on a dataset that ships with scikit-learn.

No GPU and no network needed; about 2.5 minutes on 2 CPU cores (``fast=True``: well under a
minute, too few steps to reach the goal, for tests). Steps:

1. **Data**: scikit-learn's digits (1797 grey 8x8 images of 0..9, bundled with the package),
   upsampled to 16x16 (bilinear), repeated to 3 channels, standardized with the training
   split's mean / std; one fixed-seed split: 360 test, 360 validation, 1077 train. The test
   split is used only for the final table; the search sees the validation split only.
2. **Dense model**: a timm ``VisionTransformer`` (img 16, patch 4, embed 64, depth 4, heads 4,
   mlp_ratio 2, 10 classes) trained from scratch (AdamW lr 2e-3, warm-up + cosine, label
   smoothing 0.1, batch 64).
3. **Supernet** (:func:`quickstart_space`): ``convert`` with SuperSAM-style elastic depth
   (blocks 1 and 2 droppable) and MLP width ({32, 40, 64, 96, 128} of 128), and per-layer
   weight precision {4, 8, 16} bits for every attention qkv / proj and MLP fc1 / fc2 (dense
   layers; fake-quantized with straight-through gradients while training, ``QuantLinear``
   on our ``quant_linear`` op once exported). The classifier head stays 16-bit.
   Why this space: we tried both on this model (seed 0, same training and search): the
   default space of ``convert`` (FLORA-style ranks of qkv / fc1 / fc2 + proj bits + the same
   depth / width) found 96.9% test at 47% of the dense BitOPs, its smallest subnet (11.6%)
   95.0%; this space found 96.4% at 40%, and its smallest subnet (12.3% of the BitOPs) kept
   96.1%: the better accuracy / BitOPs front (dense: 96.1%). At embed 64 a rank-r
   factorization of a 64 x 192 or 64 x 128 layer saves MACs only below r ~ 40 of 64, while
   8-bit weights halve a layer's BitOPs at almost no accuracy cost. Ranks do save MACs (CPU
   time); bits save BitOPs and weight bytes.
4. **Supernet training**: the sandwich rule (largest + smallest + 2 random subnets per step),
   each distilled from the trained dense model (``distill="teacher"``, KL at T = 1), AdamW
   lr 5e-4, 20 warm-up steps, cosine, 500 steps of batch 64.
5. **Search**: evolution (population 16, 10 generations) under ``"bitops <= 0.5 * dense"``;
   metric = validation top-1 with the validation cross-entropy as a tie-breaker (1e-3 x NLL
   subtracted: smaller than one image's worth of accuracy, 1 / 360).
6. **Export**: the best member -> ``subnet.safetensors`` (``supernet_kernels.save``), loaded
   back with ``supernet_kernels.load`` and checked against the extracted subnet.
7. **Kernels and latency**: every subnet runs through ``torch.ops.supernet_kernels.*`` (the
   ops dispatch; on the CPU "auto" is the torch backend; the Triton kernels run on the CPU only
   under ``TRITON_INTERPRET=1``, a correctness tool for the tests, so they are not timed here);
   latency = median of repeated batch-1 and batch-64 forwards. With a GPU, the four models
   are timed there too (float16, CUDA-synchronized).
8. **Report**: a table (dense / supernet max / supernet min / best found: test and validation
   accuracy, BitOPs, MACs, params, weight bytes, latency), ``summary.json``, ``summary.md``,
   ``accuracy_vs_bitops.png`` (every searched subnet and the four rows), the search front
   (``search/front.json`` ...), and whether the goal -- a subnet at <= 50% of the dense
   BitOPs within 2 points of the dense test accuracy -- was met, and if not, why.

Every number in the table comes from the modules themselves: costs from
:func:`supernet_kernels.cost.profile` of the dense model, the extracted largest / smallest
subnets and the reloaded best subnet at input (1, 3, 16, 16); accuracies from their forwards.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .timing import time_forward

IMG, PATCH, EMBED, DEPTH, HEADS, MLP_RATIO, CLASSES = 16, 4, 64, 4, 4, 2.0, 10
N_TEST, N_VAL = 360, 360
BUDGET = "bitops <= 0.5 * dense"
GOAL_RATIO, GOAL_POINTS = 0.5, 2.0

FULL = {
    "epochs": 50,
    "steps": 500,
    "population": 16,
    "generations": 10,
    "reps_b1": 50,
    "reps_b64": 20,
}
FAST = {
    "epochs": 10,
    "steps": 20,
    "population": 8,
    "generations": 2,
    "reps_b1": 5,
    "reps_b64": 3,
}


# --------------------------------------------------------------------------- machine
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------- data
def load_digits_splits(seed: int = 0):
    """(x, y) tensors of the train / val / test splits (see the module doc)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=IMG, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    te, va, tr = perm[:N_TEST], perm[N_TEST : N_TEST + N_VAL], perm[N_TEST + N_VAL :]
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return {
        "train": (x[tr], y[tr]),
        "val": (x[va], y[va]),
        "test": (x[te], y[te]),
        "norm": (float(mean), float(std)),
    }


def make_vit(seed: int = 0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=IMG,
        patch_size=PATCH,
        in_chans=3,
        num_classes=CLASSES,
        embed_dim=EMBED,
        depth=DEPTH,
        num_heads=HEADS,
        mlp_ratio=MLP_RATIO,
    )


def train_dense(
    model, x, y, epochs: int, lr: float = 2e-3, batch: int = 64, seed: int = 0, bar=None
):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(x) / batch)
    warm = max(1, steps // 20)

    def factor(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            b = perm[i : i + batch]
            loss = F.cross_entropy(model(x[b]), y[b], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def accuracy(model, x, y, batch: int = 512) -> float:
    """Top-1 accuracy in percent."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        out = model(x[i : i + batch])
        correct += int((out.argmax(-1) == y[i : i + batch]).sum())
    model.train(was)
    return 100.0 * correct / len(x)


# --------------------------------------------------------------------------- supernet
def quickstart_space(model) -> dict:
    """The ``convert(space=...)`` override of the quickstart (see the module doc)."""
    from .supernet import families as fam

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


# --------------------------------------------------------------------------- latency
def measure_latency(model, x, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``model(x)`` under no_grad (CUDA-synchronized on a GPU)."""
    return time_forward(model, x, repeats, warmup)["median_ms"]


def kernel_paths() -> dict:
    """Which implementation the ops dispatch uses here, and the Triton interpreter's status."""
    from .backends import backend_status, get_backend, triton_interpret

    st = backend_status("cpu")
    tri_ok, tri_why = st["triton"]
    return {
        "backend_setting": get_backend(),
        "cpu": "torch (the ops dispatch's 'auto' on the CPU is the PyTorch reference)",
        "triton_interpreter": (
            "active (TRITON_INTERPRET=1): the Triton kernels run on the CPU, for tests only"
            if triton_interpret()
            else "available for tests only: TRITON_INTERPRET=1 runs the Triton kernels on the "
            "CPU through the interpreter (orders of magnitude slower; not timed)"
        )
        + ("" if tri_ok or "TRITON_INTERPRET" in tri_why else f" [{tri_why}]"),
        "cuda": "available" if torch.cuda.is_available() else "no GPU here",
    }


# --------------------------------------------------------------------------- report
def _row_cells(r: dict, gpu: bool) -> list[str]:
    """One result row's formatted cells, in the column order of the text and markdown tables."""
    cells = [
        r["name"],
        f"{r['test_acc']:.2f}",
        f"{r['val_acc']:.2f}",
        f"{r['bitops'] / 1e6:.1f}",
        f"{r['bitops_ratio']:.3f}",
        f"{r['macs'] / 1e3:.1f}",
        f"{r['params']:,}",
        f"{r['weight_bytes'] / 1024:.1f}",
        f"{r['cpu_b1_ms']:.3f}",
        f"{r['cpu_b64_ms']:.3f}",
    ]
    if gpu:
        cells += [
            f"{r.get('gpu_b1_ms', float('nan')):.3f}",
            f"{r.get('gpu_b64_ms', float('nan')):.3f}",
        ]
    return cells


def _fmt_table(rows: list[dict], gpu: bool) -> str:
    head = [
        "subnet",
        "test acc %",
        "val acc %",
        "MBitOPs",
        "BitOPs/dense",
        "kMACs",
        "params",
        "weight KiB",
        "CPU b1 ms",
        "CPU b64 ms",
    ]
    if gpu:
        head += ["GPU b1 ms", "GPU b64 ms"]
    body = [_row_cells(r, gpu) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    out = [line(head), "  ".join("-" * w for w in widths)] + [line(b) for b in body]
    return "\n".join(out)


def _markdown(summary: dict, gpu: bool) -> str:
    m = summary["machine"]
    head = (
        "| subnet | test acc % | val acc % | MBitOPs | BitOPs / dense | kMACs | params | "
        "weight KiB | CPU b1 ms | CPU b64 ms |" + (" GPU b1 ms | GPU b64 ms |" if gpu else "")
    )
    sep = "|---" + "|---:" * (9 + (2 if gpu else 0)) + "|"
    lines = ["# supernet-kernels quickstart", "", summary["description"], "", head, sep]
    for r in summary["rows"]:
        lines.append("| " + " | ".join(_row_cells(r, gpu)) + " |")
    g = summary["goal"]
    lines += [
        "",
        f"**Goal** ({g['text']}): **{'met' if g['met'] else 'NOT met'}**. {g['explanation']}",
        "",
        f"Best subnet: `{summary['files']['subnet']}` (reload with `supernet_kernels.load`); "
        f"its config: {summary['best']['summary']}.",
        "",
        "Kernels: " + "; ".join(f"{k}: {v}" for k, v in summary["kernels"].items()) + ".",
        "",
        summary["latency_note"],
        "",
        "Times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in summary["times_s"].items()) + ".",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), torch {m['torch']} with "
        f"{m['torch_threads']} thread(s), GPU: {m['gpu'] or 'none'}; "
        f"{'--fast run' if summary['fast'] else 'full run'}, seed {summary['seed']}.",
        "",
    ]
    return "\n".join(lines)


def _describe_config(cfg: dict) -> str:
    kept = [b for b, on in cfg["depth"].items() if on]
    widths = [cfg["mlp"][m] for m in sorted(cfg["mlp"])]
    bits: dict[int, int] = {}
    for n, c in cfg["linear"].items():
        if n == "head":
            continue
        bits[c["w_bits"]] = bits.get(c["w_bits"], 0) + 1
    bits_s = ", ".join(f"{k}-bit x{v}" for k, v in sorted(bits.items()))
    return (
        f"{len(kept)}/{len(cfg['depth'])} blocks ({', '.join(kept)}), MLP widths {widths}, "
        f"weights {bits_s}"
    )


def _plot(path: Path, history: list[dict], rows: list[dict], dense_bitops: float) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    ok = [r for r in history if r["status"] == "ok" and r.get("bitops")]
    ax.scatter(
        [r["bitops"] / 1e6 for r in ok],
        [100.0 * r["metric"] for r in ok],
        s=12,
        c="0.65",
        label="searched subnets (validation)",
    )
    marks = {"dense": "s", "supernet max": "^", "supernet min": "v", "best found": "*"}
    for r in rows:
        ax.plot(
            [r["bitops"] / 1e6],
            [r["test_acc"]],
            marks.get(r["name"], "o"),
            ms=13 if r["name"] == "best found" else 8,
            label=f"{r['name']} (test)",
        )
    ax.axvline(GOAL_RATIO * dense_bitops / 1e6, ls="--", c="k", lw=1, label=BUDGET)
    ax.set_xlabel("MBitOPs per image")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("quickstart: digits ViT supernet, accuracy vs BitOPs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=120)


# --------------------------------------------------------------------------- the run
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

    from .cost import profile
    from .search import search
    from .train import ClassificationTask, SandwichSampler, TrainConfig, Trainer

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
    from ._io import atomic_write_json

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
