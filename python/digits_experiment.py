"""A small real experiment on the CPU: the three recipes on a ViT trained on scikit-learn's digits.

scikit-learn's digits (1797 8x8 grey images of 0..9) are upsampled to 16x16 (bilinear),
standardized, and split once with a fixed seed: 1437 train / 360 test; the last 200 training
images are also the held-out batches of FLORA's filtering. A timm VisionTransformer (img 16,
patch 4, embed 64, depth 4, heads 4, mlp_ratio 2, one input channel) is trained from scratch
(AdamW, cosine schedule). Then each recipe converts it and trains its supernet:

* FLORA (``preset="paper"``): rank choices {1/8 .. 6/8, 1} of qkv / fc1 / fc2, FLORA's
  block-level filter of joint (qkv, fc1, fc2) triples (local supernet per block, ~30% kept,
  more among cheap triples), sampling over the kept triples by 1 / product of ratios,
  distillation alone from the trained ViT; then FLORA's evolution over the filtered space in
  a FLOPs window;
* SuperSAM rules on a ViT classifier (a classification stand-in, not SAM: no mask decoder,
  so the Dice loss is replaced by the classification loss): blocks 1 and 2 droppable
  (p = 0.5), block 0's MLP at full width, random subnets below full width, MLP widths
  {768, 1020, 1536, 2304} / 3072 of 128 plus full, activation-importance neuron ordering,
  sandwich with one optimizer step per subnet; then a TPE search under a parameter budget;
* MP-LoRA (``preset="paper"``): qkv / proj / fc1 / fc2 at {2, 3, 4, 8} weight bits, 4 / 8 /
  16-bit activations per linear and for the attention matmuls, depth, MLP width, LSQ step
  sizes, one LoRA adapter per bit group, progressive stages, distillation from the float ViT;
  then an evolutionary search under a BitOPs budget.

Test accuracy of the largest, a middle and the smallest subnet before (right after conversion)
and after supernet training goes to a markdown table, printed and saved to
benchmarks/results/digits_recipes.md.

    python python/digits_experiment.py              # about 10 minutes on 2 CPU cores
    python python/digits_experiment.py --quick      # a smoke run (few steps)
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from supernet_kernels.quickstart.data import train_dense
from supernet_kernels.recipes import flora, mplora, supersam
from supernet_kernels.search import search
from supernet_kernels.supernet import convert
from supernet_kernels.train import ClassificationTask

ROOT = Path(__file__).resolve().parents[1]
# FLORA's evolution, scaled down to a 4-block ViT (the preset: 20 x 50, top 10, 25 + 25)
QUICK_EVOLUTION = {"generations": 1, "population": 4, "parents": 2, "mutations": 2, "crossovers": 2}
FULL_EVOLUTION = {"generations": 5, "population": 16, "parents": 4, "mutations": 8, "crossovers": 8}


def load_digits(seed: int = 0):
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = 360
    te, tr = perm[:n_test], perm[n_test:]
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    train = [(x[i], int(y[i])) for i in tr]
    test = [(x[i], int(y[i])) for i in te]
    return train, test


def make_vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=4,
        in_chans=1,
        num_classes=10,
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
    )


def train_base(model, train, epochs: int, lr: float, batch: int = 64, seed: int = 0):
    """The quickstart's dense training (AdamW, warm-up + cosine, label smoothing 0.1) on a
    list of (image, label) samples."""
    x = torch.stack([s[0] for s in train])
    y = torch.tensor([s[1] for s in train])
    return train_dense(model, x, y, epochs, lr=lr, batch=batch, seed=seed)


def accuracy(task, model, data) -> float:
    model.eval()
    return 100.0 * task.metric(model, data, batch_size=256)


def subnet_accs(task, sn, configs: dict, data) -> dict:
    out = {}
    was = sn.active_config()
    for name, cfg in configs.items():
        sn.set_active(cfg)
        out[name] = accuracy(task, sn, data)
    sn.set_active(was)
    return out


def _mid(choices):
    return choices[len(choices) // 2]


def flora_configs(sn, space):
    """Largest, middle and smallest subnet of the (filtered) space."""
    from supernet_kernels.search.space import SearchSpace

    ss = SearchSpace(sn, space)
    return {
        "largest": ss.max_config(),
        "middle": ss.decode({k: _mid(c) for k, c in ss.genes.items()}),
        "smallest": ss.min_config(),
    }


def search_row(task, label, sn, res, test, cost: str, dense: float, budget: str):
    """A table row for the search result ``res``: the best subnet's test accuracy."""
    best = res.best
    sn.set_active(best["config"])
    acc = accuracy(task, sn, test)
    sn.set_active(sn.max_config())
    desc = f"searched ({res.algorithm}, {len(res.history)} subnets, {budget}): " + (
        f"{cost} {100 * best[cost] / dense:.0f}% of dense"
    )
    return (label, "searched", desc, float("nan"), acc)


def heldout_metric(task, data):
    def evaluate(m):
        m.eval()
        return task.metric(m, data, batch_size=256)

    return evaluate


def supersam_configs(sn):
    sp = sn.space
    mid = sn.max_config()
    drop = [b for b, v in sp["depth"].items() if False in v]
    for i, b in enumerate(drop):
        mid["depth"][b] = i % 2 == 1  # drop every other droppable block, the first one first
    for m, w in sp["mlp"].items():
        mid["mlp"][m] = _mid(w)
    return {"largest": sn.max_config(), "middle": mid, "smallest": sn.min_config()}


def mplora_configs(sn):
    def at(bits, act):
        cfg = sn.max_config()
        for n, s in sn.space["linear"].items():
            if len(s["w_bits"]) > 1:
                cfg["linear"][n]["w_bits"] = bits
        for n in cfg.get("act_bits", {}):
            cfg["act_bits"][n] = act
        return cfg

    return {"largest": at(8, 16), "middle": at(4, 8), "smallest": at(2, 4)}


def describe(cfgs, sn, kind: str) -> dict:
    out = {}
    for name, cfg in cfgs.items():
        sn.set_active(cfg)
        p = sn.active_params()
        if kind == "flora":
            ranks = sorted({c["rank"] for c in cfg["linear"].values() if c["rank"] is not None})
            d = f"ranks {ranks}, {p / 1e3:.1f}k linear params"
        elif kind == "supersam":
            kept = sum(cfg["depth"].values())
            widths = sorted(set(cfg["mlp"].values()))
            d = f"{kept}/4 blocks, MLP widths {widths}, {p / 1e3:.1f}k linear params"
        else:
            bits = sorted({c["w_bits"] for n, c in cfg["linear"].items() if n != "head"})
            act = sorted(set(cfg.get("act_bits", {}).values())) or [16]
            d = f"weights {bits[0]}-bit, activations {act[0]}-bit (linears, attention), LoRA r=8"
        out[name] = d
    sn.set_active(sn.max_config())
    return out


def before_after(task, before_sn, sn, cfgs, test, kind, label, name, times) -> list:
    """Table rows ``(label, config, description, before, after)`` of the subnets ``cfgs``
    before and after training, printed as ``<name> done``."""
    b = subnet_accs(task, before_sn, cfgs, test)
    a = subnet_accs(task, sn, cfgs, test)
    d = describe(cfgs, sn, kind)
    print(f"{name} trained: before {b} after {a}", flush=True)
    return [(label, k, d[k], b[k], a[k]) for k in cfgs]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few steps only (smoke run)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: fastest on busy cores)",
    )
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks/results/digits_recipes.md"), help="markdown file"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    q = args.quick
    t_all = time.perf_counter()
    times = {}

    train, test = load_digits()
    heldout = train[-200:]
    task = ClassificationTask(num_classes=10)

    t = time.perf_counter()
    base = train_base(make_vit(), train, epochs=3 if q else 40, lr=2e-3)
    times["base ViT"] = time.perf_counter() - t
    base_acc = accuracy(task, base, test)
    print(f"base ViT: test accuracy {base_acc:.1f}% ({times['base ViT']:.0f} s)", flush=True)

    rows = []
    notes = []

    # ------------------------------------------------------------------ FLORA
    t = time.perf_counter()
    steps = 5 if q else 600
    before_sn = convert(base, space=flora.flora_space(base))
    sn, hist = flora.train_flora(
        copy.deepcopy(base),
        train,
        task=task,
        steps=steps,
        lr=5e-4,
        batch_size=64,
        teacher=base,
        filter_steps_per_block=2 if q else 40,
        heldout=heldout,
        warmup_steps=0 if q else 20,
        seed=0,
        preset="paper",
    )
    space = hist["space"]
    kept = flora.kept_fraction(space, sn)
    per_block = [len(s["choices"]) for s in space["joint"].values()]
    notes.append(
        f"FLORA filter (block level, joint (qkv, fc1, fc2) triples, keep rule of "
        f"FloraPreset): kept {100 * kept:.1f}% of the triples ({'/'.join(map(str, per_block))} "
        f"of {7**3} per block); training on distillation alone"
    )
    cfgs = flora_configs(sn, space)
    rows += before_after(task, before_sn, sn, cfgs, test, "flora", "FLORA", "FLORA", times)
    win = (0.5, 0.7)
    res = flora.flora_search(
        sn, heldout_metric(task, heldout), (1, 1, 16, 16), space=space, window=win,
        **(QUICK_EVOLUTION if q else FULL_EVOLUTION),
    )  # fmt: skip
    times["FLORA"] = time.perf_counter() - t
    dense = res.budget[-1]["limit"] / win[1]
    rows.append(search_row(task, "FLORA", sn, res, test, "macs", dense, f"MACs in {win} of dense"))

    # ------------------------------------------------------------------ SuperSAM-style
    t = time.perf_counter()
    steps = 5 if q else 300
    label = "SuperSAM rules (ViT classifier stand-in, not SAM)"
    sp = supersam.supersam_space(base, widths=(768, 1020, 1536, 2304), full_width_blocks=(0,))
    calib = supersam.encoder_calibration(flora.as_batches(train, 4, 64, task), task)
    before_sn = convert(base, space=sp, importance="activation", calib_batches=calib)
    sn, hist = supersam.train_supersam(
        copy.deepcopy(base),
        train,
        task=task,
        steps=steps,
        lr=5e-4,
        batch_size=64,
        calib_batches=4,
        warmup_steps=0 if q else 20,
        seed=0,
        preset="paper",
    )
    times[label] = time.perf_counter() - t
    cfgs = supersam_configs(sn)
    rows += before_after(task, before_sn, sn, cfgs, test, "supersam", label, "SuperSAM", times)
    res = supersam.supersam_search(
        sn, heldout_metric(task, heldout), (1, 1, 16, 16), budget="params <= 0.7 * dense",
        n_trials=6 if q else 40,
    )  # fmt: skip
    dense = res.budget[0]["limit"] / 0.7
    rows.append(search_row(task, label, sn, res, test, "params", dense, "params <= 70% dense"))

    # ------------------------------------------------------------------ MP-LoRA
    t = time.perf_counter()
    steps = 6 if q else 300
    before_sn = mplora.mplora_supernet(base, preset="paper", lora_rank=8, group_size=32)
    sn, hist = mplora.train_mplora(
        copy.deepcopy(base),
        train,
        task=task,
        steps=steps,
        lr=2e-3,
        batch_size=64,
        lora_rank=8,
        teacher=base,
        warmup_steps=0 if q else 10,
        seed=0,
        preset="paper",
        group_size=32,
    )
    cfgs = mplora_configs(sn)
    rows += before_after(task, before_sn, sn, cfgs, test, "mplora", "MP-LoRA", "MP-LoRA", times)
    res = search(sn, heldout_metric(task, heldout), (1, 1, 16, 16), budget="bitops <= 0.1 * dense",
                 generations=1 if q else 5, population=4 if q else 16, progress=False)  # fmt: skip
    times["MP-LoRA"] = time.perf_counter() - t
    dense = res.budget[0]["limit"] / 0.1
    rows.append(search_row(task, "MP-LoRA", sn, res, test, "bitops", dense, "BitOPs <= 10% dense"))
    x = torch.stack([s[0] for s in train[:64]])
    mem = mplora.memory_report(base, x, lora_rank=8)
    notes.append(
        f"MP-LoRA stages start at steps {hist['boundaries']}; trainable parameters "
        f"{mem['lora']['trainable_params']:,} (LoRA) vs {mem['full']['trainable_params']:,} "
        f"(full fine-tuning); training memory ({mem['method']} estimate, batch 64: params + "
        f"grads + AdamW states + saved activations) {mem['lora_bytes'] / 2**20:.2f} MiB vs "
        f"{mem['full_bytes'] / 2**20:.2f} MiB"
    )

    total = time.perf_counter() - t_all
    lines = [
        "# Recipes on scikit-learn digits (CPU)",
        "",
        f"Base ViT (img 16, patch 4, embed 64, depth 4, heads 4, mlp 2; trained from scratch): "
        f"test accuracy **{base_acc:.1f}%** on 360 held-out digits.",
        "",
        "| recipe | subnet | config | before (%) | after (%) |",
        "|---|---|---|---:|---:|",
    ]
    lines += [
        f"| {r} | {s} | {c} | {'' if b_ != b_ else f'{b_:.1f}'} | {a_:.1f} |"
        for r, s, c, b_, a_ in rows
    ]
    lines += [
        "",
        "Before: right after conversion (FLORA: SVD inheritance; SuperSAM rules: "
        "activation-importance ordering; MP-LoRA: zero-initialized adapters). After: "
        "after supernet training. Searched: the best subnet of the search (scored on the last "
        "200 training images, which the supernet also trained on), its test accuracy.",
        "",
    ]
    lines += [f"- {n}" for n in notes]
    lines += [
        "- 360 test images: one image is 0.28 points; differences of a point or less are noise."
    ]
    lines += [
        "",
        "Times (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
        + f"; total {total:.0f} (torch {torch.__version__}, torch threads: {args.threads}, "
        f"{platform.processor() or platform.machine()}{', quick run' if q else ''}).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
