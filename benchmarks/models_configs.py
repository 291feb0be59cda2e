"""The whole-model benchmark's models and configurations: the model specs (DeiT-B, SAM ViT-B
encoder), building them without initialization, the supernets, the compressed configurations
(W8A8, W4A16, the low rank at half the MACs, SuperSAM's cut, mixed, sampled) and their counts
(params, MACs, BitOPs, weight bytes from ``supernet_kernels.cost.profile``). bench_models.py
times them."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

LINEAR_KINDS = ("Linear", "LowRankLinear", "QuantLinear", "ElasticLinear", "ElasticLowRankLinear")
CUT_BLOCKS = (1, 2, 5, 6, 9)  # SuperSAM-style depth cut
CUT_MLP_HIDDEN = 1536
ALL_CONFIGS = ("dense", "w8a8", "w4a16", "lowrank50", "cut", "mixed", "sampled")
MODES = ("eager", "compile", "ours")
# --quick: (mode, config) per model, batch 1, fp16 (no torch.compile: its compile time).
QUICK_PLAN = {
    "sam_vit_b": (("eager", "dense"), ("ours", "dense"), ("ours", "w8a8")),
    "deit_b": (("eager", "dense"), ("ours", "dense")),
}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Max relative error (max |ours - eager| / max |eager|) of our dense output, per dtype.
REL_TOL = {"float16": 2e-2, "bfloat16": 6e-2}
# Module classes whose forwards open a profiler scope (models_report.op_family's rule 1).
ATTENTION_KINDS = (
    "Attention",
    "SKViTAttention",
    "SKSamAttention",
    "WindowAttention",
    "SKSwinAttention",
)
# A space in which every linear is dense and may be quantized (W8A8 needs w_bits <= 8).
QUANT_SPACE = {"linear": {"*": {"rank": [None], "w_bits": [4, 8, 16], "a_bits": [8, 16]}}}
PLOT_NAME = "models_latency_vs_bitops.png"
# Configs that change only linear layers (the 8.5%-of-SAM-time note applies to them as is).
LINEAR_ONLY = ("w8a8", "w4a16", "lowrank50", "mixed")


@dataclass(frozen=True)
class ModelSpec:
    key: str
    title: str
    resolution: int
    batches: tuple[int, ...]  # full mode
    build: Callable[[], nn.Module]


def _deit() -> nn.Module:
    import timm

    return timm.create_model("deit_base_patch16_224", pretrained=False)


def _sam() -> nn.Module:
    from segment_anything import build_sam_vit_b

    return build_sam_vit_b(checkpoint=None).image_encoder


MODELS = {
    "deit_b": ModelSpec("deit_b", "DeiT-B/16 224", 224, (1, 64, 256), _deit),
    "sam_vit_b": ModelSpec("sam_vit_b", "SAM ViT-B encoder 1024", 1024, (1, 4), _sam),
}


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:400]


# --------------------------------------------------------------------------- building


def build_model(spec: ModelSpec, device: torch.device, dtype=torch.float16) -> nn.Module:
    """The architecture built on the meta device, then materialized on ``device`` without
    running its initializers: zeros on CPU (counting only), N(0, 0.02) on a GPU (timing)."""
    with torch.device("meta"):
        model = spec.build()
    model = model.to(dtype).to_empty(device=device).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02) if device.type == "cuda" else p.zero_()
        for b in model.buffers():
            if b.is_floating_point():
                b.zero_()
    model.requires_grad_(False)
    return model


@contextlib.contextmanager
def zero_factors() -> Iterator[None]:
    """convert() factorizes qkv / fc1 / fc2 by a float64 SVD (minutes on a CPU); counts and
    latency do not depend on the factor values, so use zero factors of the right shapes."""
    import supernet_kernels.nn.lowrank as L

    orig = L.svd_factors

    def fake(weight: torch.Tensor, rank: int | None = None):
        r = min(weight.shape) if rank is None else rank
        return weight.new_zeros(weight.shape[0], r), weight.new_zeros(r, weight.shape[1])

    L.svd_factors = fake
    try:
        yield
    finally:
        L.svd_factors = orig


@dataclass
class Supernets:
    lowrank: Any  # default space: qkv / fc1 / fc2 factorized, proj w_bits {4, 8, 16}
    dense: Any  # QUANT_SPACE, group 128: every linear dense, quantizable
    per_channel: Any  # QUANT_SPACE, per-channel groups (W8A8)


def make_supernets(model: nn.Module) -> Supernets:
    import supernet_kernels as sk

    with zero_factors():
        lowrank = sk.convert(model, build=None)
    dense = sk.convert(model, space=QUANT_SPACE, group_size=128, build=None)
    per_channel = sk.convert(model, space=QUANT_SPACE, group_size=None, build=None)
    return Supernets(lowrank, dense, per_channel)


# --------------------------------------------------------------------------- configs


def with_linears(sn, base: dict, pick: Callable[[str, dict], dict | None]) -> dict:
    """``base`` with each linear's entry replaced by ``pick(name, its space)`` (None: kept)."""
    cfg = copy.deepcopy(base)
    for name, sp in sn.space["linear"].items():
        new = pick(name, sp)
        if new is not None:
            cfg["linear"][name] = new
    return cfg


def _role(name: str) -> str:
    last = name.rsplit(".", 1)[-1]
    if last in ("qkv", "proj"):
        return "attn"
    if last in ("fc1", "fc2", "lin1", "lin2"):
        return "mlp"
    return "other"


def uniform_bits(sn, w_bits: int, a_bits: int, roles=("attn", "mlp", "other")) -> dict:
    return with_linears(
        sn,
        sn.max_config(),
        lambda n, sp: (
            {"rank": None, "w_bits": w_bits, "a_bits": a_bits} if _role(n) in roles else None
        ),
    )


def rank_config(sn, eighths: int) -> dict:
    """Every factorized layer at its ``eighths``-th rank choice (eighths/8 of min(in, out))."""

    def pick(name, sp):
        ranks = [r for r in sp["rank"] if r is not None]
        if not ranks:
            return None
        return {"rank": ranks[min(eighths, len(ranks)) - 1], "w_bits": 16, "a_bits": 16}

    return with_linears(sn, sn.max_config(), pick)


def linear_dims(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {
        n: (m.in_features, m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    }


def linear_macs(prof) -> int:
    return sum(r.macs for r in prof.layers if r.type in LINEAR_KINDS)


def choose_rank_ratio(
    space: dict, dense_prof, dims: dict[str, tuple[int, int]], target: float = 0.5
) -> tuple[int, float, dict[int, float]]:
    """The rank ratio e/8 (one for every factorized layer) whose linear-layer MACs come closest
    to ``target`` x the dense model's. Per layer, tokens = dense MACs / (in x out), so a rank-r
    layer costs tokens x r x (in + out). Returns (e, estimated ratio, {e: ratio})."""
    dense_rows = {r.name: r for r in dense_prof.layers if r.type in LINEAR_KINDS}
    total = sum(r.macs for r in dense_rows.values())
    est: dict[int, float] = {}
    n_choices = max(
        (len([r for r in sp["rank"] if r is not None]) for sp in space["linear"].values()),
        default=0,
    )
    for e in range(1, n_choices + 1):
        macs = 0
        for name, row in dense_rows.items():
            sp = space["linear"].get(name)
            ranks = [r for r in sp["rank"] if r is not None] if sp else []
            if not ranks:
                macs += row.macs
                continue
            k, n = dims[name]
            tokens = row.macs / (k * n)
            macs += tokens * ranks[min(e, len(ranks)) - 1] * (k + n)
        est[e] = macs / total
    if not est:
        raise ValueError("the space has no factorized layer")
    best = min(est, key=lambda e: abs(est[e] - target))
    return best, est[best], est


def cut_config(sn, blocks=CUT_BLOCKS, hidden: int = CUT_MLP_HIDDEN) -> tuple[dict, list[str]]:
    """Blocks ``blocks`` dropped where the space allows, every MLP at ``hidden`` (or the nearest
    choice), dense 16-bit linears. Returns (config, blocks kept because the space pins them)."""
    sp = sn.space
    cfg = uniform_bits(sn, 16, 16)
    pinned = []
    for b in blocks:
        name = f"blocks.{b}"
        if name in sp["depth"] and False in sp["depth"][name]:
            cfg["depth"][name] = False
        else:
            pinned.append(name)
    for m, widths in sp["mlp"].items():
        cfg["mlp"][m] = min(widths, key=lambda w: abs(w - hidden))
    return cfg, pinned


def mixed_config(sn) -> dict:
    return with_linears(
        sn,
        sn.max_config(),
        lambda n, sp: (
            {"rank": None, "w_bits": 8, "a_bits": 8}
            if _role(n) == "attn"
            else {"rank": None, "w_bits": 4, "a_bits": 16}
            if _role(n) == "mlp"
            else None
        ),
    )


def droppable(sn) -> list[str]:
    return [b for b, c in sn.space["depth"].items() if False in c]


def evenly(items: list, k: int) -> list:
    if k >= len(items):
        return list(items)
    step = len(items) / k
    return [items[int(i * step + step / 2)] for i in range(k)]


@dataclass
class Variant:
    """One thing to count and (on a GPU) time."""

    kind: str  # "config" | "study"
    name: str  # config name, or "operator=level"
    sn: Any  # supernet the config belongs to (None: the original model)
    config: dict | None
    resolution: int
    make: Callable[[], nn.Module]  # the standalone model to time
    operator: str | None = None
    level: Any = None
    note: str | None = None
    mode: str = "ours"  # "eager" | "compile" (the library's model) | "ours" (extracted subnet)


def variants(spec: ModelSpec, model: nn.Module, sns: Supernets, dense_prof) -> list[Variant]:
    """Every (mode, config) and study level of one model, in order (the table's order). The
    library's model runs in modes eager / compile; every subnet is extracted from a supernet
    converted with attention="ours" and runs in mode ours."""
    res = spec.resolution

    def sub(sn, cfg):
        return lambda: sn.extract(cfg)

    e, est, _ = choose_rank_ratio(sns.lowrank.space, dense_prof, linear_dims(model))
    lr = rank_config(sns.lowrank, e)
    cut, pinned = cut_config(sns.dense)
    dense = uniform_bits(sns.dense, 16, 16)
    w8 = uniform_bits(sns.per_channel, 8, 8)
    w4 = uniform_bits(sns.dense, 4, 16)
    mixed = mixed_config(sns.dense)
    sampled = sns.lowrank.sample_config(0)
    out = [
        Variant("config", "dense", None, None, res, lambda: model, mode="eager",
                note="the library's model"),
        Variant("config", "dense", None, None, res, lambda: model, mode="compile",
                note="torch.compile, default mode"),
        Variant("config", "dense", sns.dense, dense, res, sub(sns.dense, dense),
                note="max config, our attention"),
        Variant("config", "w8a8", sns.per_channel, w8, res, sub(sns.per_channel, w8),
                note="per-channel, int8 act"),
        Variant("config", "w4a16", sns.dense, w4, res, sub(sns.dense, w4), note="group 128"),
        Variant("config", "lowrank50", sns.lowrank, lr, res, sub(sns.lowrank, lr),
                note=f"rank ratio {e}/8 (estimated linear MACs {100 * est:.0f}% of dense)"),
        Variant("config", "cut", sns.dense, cut, res, sub(sns.dense, cut),
                note="blocks kept by the space: " + (", ".join(pinned) or "none")),
        Variant("config", "mixed", sns.dense, mixed, res, sub(sns.dense, mixed),
                note="attn W8A8 g128, MLP W4A16 g128"),
        Variant("config", "sampled", sns.lowrank, sampled, sampled.get("resolution") or res,
                sub(sns.lowrank, sampled), note="sample_config(0), default space"),
    ]  # fmt: skip

    def study(op, level, sn, cfg, resolution=res):
        out.append(Variant("study", f"{op}={level}", sn, cfg, resolution, sub(sn, cfg), op, level))

    base = uniform_bits(sns.dense, 16, 16)
    for r in (sns.dense.space["resolution"] or [])[:-1]:
        study("resolution", r, sns.dense, dict(copy.deepcopy(base), resolution=r), r)
    mlp_space = sns.dense.space["mlp"]
    if mlp_space:
        widths = next(iter(mlp_space.values()))
        for i in range(len(widths) - 1):
            cfg = copy.deepcopy(base)
            for m, ws in mlp_space.items():
                cfg["mlp"][m] = ws[min(i, len(ws) - 1)]
            study("mlp_width", f"{widths[i]}/{widths[-1]}", sns.dense, cfg)
    blocks = droppable(sns.dense)
    for k in sorted({min(2, len(blocks)), min(4, len(blocks)), len(blocks)} - {0}):
        cfg = copy.deepcopy(base)
        for b in evenly(blocks, k):
            cfg["depth"][b] = False
        study("depth", f"-{k} blocks", sns.dense, cfg)
    for eighths in (2, 4, 6):
        study("rank", f"{eighths}/8", sns.lowrank, rank_config(sns.lowrank, eighths))
    for wb, ab, sn in ((8, 16, sns.dense), (4, 16, sns.dense), (8, 8, sns.per_channel)):
        study("bits", f"W{wb}A{ab}", sn, uniform_bits(sn, wb, ab))
    return out


# --------------------------------------------------------------------------- counting


def count(variant: Variant, model: nn.Module, dense_prof=None) -> dict:
    """params / MACs / BitOPs / weight bytes at batch 1 (profile under FakeTensorMode) and the
    linear layers' share of the MACs and BitOPs."""
    from supernet_kernels.cost import profile

    shape = (1, 3, variant.resolution, variant.resolution)
    if variant.sn is None:
        prof = dense_prof if dense_prof is not None else profile(model, shape)
    else:
        prof = profile(variant.sn, shape, config=variant.config)
    lin = [r for r in prof.layers if r.type in LINEAR_KINDS]
    return {
        "params": prof.total_params,
        "macs": prof.total_macs,
        "bitops": prof.total_bitops,
        "weight_bytes": prof.total_weight_bytes,
        "linear_macs": sum(r.macs for r in lin),
        "linear_bitops": sum(r.bitops for r in lin),
    }


def scaled(counts: dict, batch: int) -> dict:
    out = dict(counts)
    for k in ("macs", "bitops", "linear_macs", "linear_bitops"):
        out[k] = counts[k] * batch
    return out
