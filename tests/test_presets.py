"""The three papers as presets: each preset element pinned to the published settings (one test
per element), and what the paper presets do (FLORA's triple filter and windowed evolution,
SuperSAM's width rules, per-subnet steps and Dice-only loss, distillation-only training)."""

from __future__ import annotations

import dataclasses
import random
from fractions import Fraction

import pytest
import torch

from supernet_kernels.recipes import flora, supersam
from supernet_kernels.recipes.presets import PRESETS, preset
from supernet_kernels.search.space import SearchSpace

timm = pytest.importorskip("timm")

from helpers import models as _models  # noqa: E402
from helpers.train import seg_data  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

F = Fraction
PUBLISHED = [
    # FLORA, public code (configs/lr_deit/*, evolution_search.py, nas_utils/*)
    ("flora", "ratios_deit_b", (F(1, 8), F(2, 8), F(3, 8), F(4, 8), F(5, 8), F(6, 8), F(1))),
    ("flora", "ratios_deit_s", (F(1, 6), F(2, 6), F(3, 6), F(4, 6), F(5, 6), F(1))),
    ("flora", "block_roles", ("qkv", "fc1", "fc2")),
    ("flora", "sampling", "inverse_product"),
    ("flora", "num_random", 1),
    ("flora", "label_weight", 0.0),
    ("flora", "temperature", 1.0),
    ("flora", "lr", 7.5e-5),
    ("flora", "weight_decay", 1e-2),
    ("flora", "min_lr", 5e-7),
    ("flora", "epochs", 300),
    ("flora", "warmup_epochs", 5),
    ("flora", "filter_sampling", "uniform"),
    ("flora", "filter_train_fraction", 0.35),
    ("flora", "filter_val_fraction", 0.5),
    ("flora", "filter_epochs", 20),
    ("flora", "filter_warmup_epochs", 3),
    ("flora", "filter_lr", 7.5e-6),
    ("flora", "generations", 20),
    ("flora", "population", 50),
    ("flora", "parents", 10),
    ("flora", "mutations", 25),
    ("flora", "mutate_prob", 0.2),
    ("flora", "crossovers", 25),
    ("flora", "init", "stratified"),
    ("flora", "init_bins", 9),
    ("flora", "out_of_window", "reject"),
    # SuperSAM, public code (wmabebe/OFM_SAM)
    ("supersam", "drop_blocks", (1, 2, 5, 6, 9)),
    ("supersam", "drop_prob", 0.5),
    ("supersam", "random_widths", (768, 1020, 1536, 2304)),
    ("supersam", "full_width", 3072),
    ("supersam", "fixed_full_width_blocks", (0,)),
    ("supersam", "sandwich", ("largest", "smallest", "random")),
    ("supersam", "num_random", 1),
    ("supersam", "step_per_subnet", True),
    ("supersam", "dice_weight", 1.0),
    ("supersam", "focal_weight", 0.0),
    ("supersam", "iou_weight", 0.0),
    ("supersam", "train_decoder", True),
    ("supersam", "distill", "none"),
    ("supersam", "importance", "activation"),
    # Mixed-precision LoRA (arXiv 2403.20080): the operators and the training scheme
    ("mplora", "a_bits", (4, 8, 16)),
    ("mplora", "attn_bits", (4, 8, 16)),
    ("mplora", "lsq", True),
]


@pytest.mark.parametrize("recipe,name,value", PUBLISHED, ids=[f"{r}.{n}" for r, n, _ in PUBLISHED])
def test_paper_preset_element(recipe, name, value):
    assert getattr(preset(recipe, "paper"), name) == value


def test_mplora_paper_preset_operators():
    p = preset("mplora", "paper")
    assert 2 in p.w_bits and max(p.w_bits) == 8  # bit-widths per layer
    assert len(p.mlp_fractions) > 1 and len(p.resolution_fractions) > 1  # width, resolution
    assert p.drop_blocks is None  # depth: the family's droppable blocks
    assert len(p.adapter_groups) > 1  # one adapter per group of bit-widths
    stages = [set(s) for s in p.stages]  # progressive: each stage widens the previous
    assert all(a < b for a, b in zip(stages, stages[1:], strict=False))
    assert list(p.stage_boundaries) == sorted(p.stage_boundaries) and p.stage_boundaries[0] == 0


def test_flora_keep_rule_in_preset_keeps_30_percent_more_among_cheap():
    p = preset("flora", "paper")
    mean = (p.keep_fraction_cheap + p.keep_fraction_costly) / 2
    assert abs(mean - 0.30) < 1e-9 and p.keep_fraction_cheap > p.keep_fraction_costly


def test_presets_are_data_and_overridable():
    p = preset("flora", "paper", generations=3)
    assert p.generations == 3 and preset("flora", "paper").generations == 20
    assert dataclasses.is_dataclass(p)
    with pytest.raises(TypeError, match="no fields"):
        preset("flora", "paper", generation=3)
    with pytest.raises(ValueError, match="presets"):
        preset("flora", "best")
    for recipe in PRESETS:
        assert set(PRESETS[recipe]) == {"paper", "ours"}


# --------------------------------------------------------------------------- FLORA
def test_keep_rule_fraction_and_cost_dependence():
    rng = random.Random(0)
    triples = [(a, b, c) for a in range(1, 8) for b in range(1, 8) for c in range(1, 8)]
    costs = [sum(t) for t in triples]
    losses = [rng.random() / (1 + sum(t)) for t in triples]
    kept = flora.keep_rule(triples, losses, costs)
    assert 0.27 <= len(kept) / len(triples) <= 0.33
    assert (7, 7, 7) in kept  # the full triple
    order = sorted(range(len(triples)), key=lambda i: costs[i])
    third = len(order) // 3
    cheap = {triples[i] for i in order[:third]}
    costly = {triples[i] for i in order[-third:]}
    assert len(cheap & set(kept)) > 2 * len(costly & set(kept))
    # within a bin the lowest losses are kept
    bin0 = sorted(order[:third], key=lambda i: losses[i])
    assert triples[bin0[0]] in kept


def tiny_vit(depth=2):
    return _models.tiny_timm_vit(
        img_size=16, patch_size=4, embed_dim=32, depth=depth, num_heads=2, mlp_ratio=2.0,
        num_classes=5,
    )  # fmt: skip


def data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, 16, 16, generator=g), i % 5) for i in range(n)]


@pytest.fixture(scope="module")
def flora_run():
    torch.manual_seed(0)
    sn, hist = flora.train_flora(
        tiny_vit(), data(), preset="paper", steps=2, batch_size=8,
        filter_steps_per_block=2, heldout=data(8, seed=1), heldout_batches=1,
    )  # fmt: skip
    return sn, hist


def test_flora_filter_is_block_level_and_filters(flora_run):
    sn, hist = flora_run
    sp = hist["space"]
    assert set(sp["joint"]) == {"blocks.0", "blocks.1"}
    spec = sp["joint"]["blocks.0"]
    assert spec["layers"] == ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    assert 0.25 < flora.kept_fraction(sp, sn) < 0.35  # it filters: ~30% of 7^3 kept
    assert len(hist["scores"]["blocks.0"]) == 7**3  # every joint triple scored
    assert [32, 32, 32] in spec["choices"]


def test_flora_trains_on_distillation_alone(flora_run):
    _, hist = flora_run
    rec = hist["steps"][0]
    assert rec["task_loss"][0] > 0  # logged, not trained on
    assert rec["loss"][0] == pytest.approx(rec["distill_loss"][0])


def test_flora_sampler_weights_kept_triples_by_inverse_ratio_product(flora_run):
    sn, hist = flora_run
    sampler = flora.FloraSampler(hist["space"])
    choices, probs = sampler.joint_weights(sn)["blocks.0"]
    w = [1 / ((a / 32) * (b / 32) * (c / 32)) for a, b, c in choices]
    assert probs == pytest.approx([x / sum(w) for x in w])
    rng = random.Random(0)
    kept = {tuple(c) for c in hist["space"]["joint"]["blocks.1"]["choices"]}
    for _ in range(50):
        (cfg,) = sampler(0, rng, sn)
        t = tuple(
            cfg["linear"][f"blocks.1.{n}"]["rank"] for n in ("attn.qkv", "mlp.fc1", "mlp.fc2")
        )
        assert t in kept


def test_flora_search_over_filtered_space_in_window(flora_run):
    from supernet_kernels.search import fidelity_evaluator

    sn, hist = flora_run
    ev = fidelity_evaluator(sn, torch.randn(4, 3, 16, 16))
    res = flora.flora_search(
        sn, ev, (1, 3, 16, 16), space=hist["space"], window=(0.35, 0.6),
        generations=2, population=6, parents=3, mutations=3, crossovers=3,
    )  # fmt: skip
    dense = res.budget[0]["limit"] / 0.35
    ok = [r for r in res.history if r["status"] == "ok"]
    assert len(ok) > 6  # the initial population and two generations
    kept = {g: {tuple(c) for c in s["choices"]} for g, s in hist["space"]["joint"].items()}
    for r in ok:
        assert 0.35 * dense <= r["macs"] <= 0.6 * dense
        for g, spec in hist["space"]["joint"].items():
            t = tuple(r["config"]["linear"][n]["rank"] for n in spec["layers"])
            assert t in kept[g]


def test_stratified_initial_population_spreads_cost(flora_run):
    from supernet_kernels.search.evolution import stratified_sample

    sn, hist = flora_run
    space = SearchSpace(sn, hist["space"])
    bins = {k: [[c] for c in v] for k, v in space.genes.items()}  # one choice per bin
    rng = random.Random(0)
    totals = [sum(stratified_sample(space, bins, rng).values()) for _ in range(2000)]
    top = sum(len(v) - 1 for v in space.genes.values())
    # the total index is uniform over 0..top: both ends are drawn as often as the middle
    ends = sum(t <= top // 10 or t >= top - top // 10 for t in totals) / len(totals)
    assert ends > 0.15


# --------------------------------------------------------------------------- SuperSAM
def tiny_sam():
    return _models.tiny_sam(depth=4, global_attn_indexes=(1, 3)).eval()


def test_supersam_paper_preset_rules():
    sam = tiny_sam()
    sn, hist = supersam.train_supersam(
        sam, seg_data(), steps=2, batch_size=2, calib_batches=1, preset="paper"
    )
    sp = sn.space
    assert sp["mlp"]["blocks.0.mlp"] == [64]  # block 0 at full width (hidden 64)
    assert sp["mlp"]["blocks.1.mlp"][-1] == 64 and len(sp["mlp"]["blocks.1.mlp"]) > 1
    task = hist["task"]
    assert task.train_decoder and task.focal_weight == 0 and task.iou_weight == 0
    assert len(hist["steps"][0]["loss"]) == 3  # largest, smallest, random
    assert hist["steps"][0]["distill_loss"] == [0.0, 0.0, 0.0]  # Dice alone
    sampler = supersam.SuperSAMSampler(0.5, random_full_width=False)
    rng = random.Random(0)
    for _ in range(100):
        cfg = sampler.sample(rng, sn)
        assert cfg["mlp"]["blocks.0.mlp"] == 64
        assert all(cfg["mlp"][m] < 64 for m in ("blocks.1.mlp", "blocks.2.mlp", "blocks.3.mlp"))


def test_step_per_subnet_takes_one_optimizer_step_per_subnet():
    from supernet_kernels.recipes.flora import make_trainer
    from supernet_kernels.supernet import convert
    from supernet_kernels.train import ClassificationTask

    sn = convert(tiny_vit())
    for per in (False, True):
        tr = make_trainer(sn, ClassificationTask(), data(16), steps=2, batch_size=8,
                          step_per_subnet=per, distill="none")  # fmt: skip
        n = {"k": 0}
        orig = tr.optimizer.step

        def counted(*a, _orig=orig, _n=n, **k):
            _n["k"] += 1
            return _orig(*a, **k)

        tr.optimizer.step = counted
        tr.train()
        assert n["k"] == (2 * 3 if per else 2)  # sandwich of 3 subnets, 2 steps


def test_supersam_search_uses_a_tuner():
    sn = supersam.train_supersam(tiny_vit(4), data(8), steps=1, batch_size=4, calib_batches=1,
                                 preset="paper")[0]  # fmt: skip
    res = supersam.supersam_search(
        sn, lambda m: float(sum(m.active_config()["depth"].values())), (1, 3, 16, 16),
        budget="params <= 0.8 * dense", n_trials=6,
    )  # fmt: skip
    assert res.algorithm == "tpe" and res.best is not None


def test_resume_refuses_another_label_weight(tmp_path):
    from supernet_kernels.recipes.flora import make_trainer
    from supernet_kernels.supernet import convert
    from supernet_kernels.train import ClassificationTask

    sn = convert(tiny_vit())
    kw = {"steps": 1, "batch_size": 8, "checkpoint_dir": str(tmp_path), "distill": "largest"}
    make_trainer(sn, ClassificationTask(), data(16), label_weight=0.5, **kw).train()
    with pytest.raises(ValueError, match="label_weight"):
        make_trainer(sn, ClassificationTask(), data(16), **kw).train(resume=True)
