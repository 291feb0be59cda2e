"""Recipes (FLORA, SuperSAM, MP-LoRA) on a tiny timm ViT with synthetic data: each runs a few
steps; samplers follow their documented distributions; filtering keeps full rank and applies
its rule; MP-LoRA trains only the adapters; memory_report compares LoRA with full fine-tuning."""

from __future__ import annotations

import random

import pytest
import torch

from supernet_kernels.recipes import flora, mplora, supersam
from supernet_kernels.supernet import convert

timm = pytest.importorskip("timm")

from helpers import models as _models  # noqa: E402
from helpers.train import seg_data  # noqa: E402

NUM_CLASSES = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit(depth: int = 4):
    return _models.tiny_timm_vit(
        img_size=16,
        patch_size=4,
        embed_dim=32,
        depth=depth,
        num_heads=2,
        mlp_ratio=2.0,
        num_classes=NUM_CLASSES,
    )


def synthetic(n: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return [(x[i], int(y[i])) for i in range(n)]


# --------------------------------------------------------------------------- FLORA
def test_flora_space_ratios():
    model = tiny_vit()
    sp = flora.flora_space(model)
    # embed 32, DeiT-B-like eighths without 7/8: min(in, out) = 32 for qkv, fc1, fc2
    assert sp["linear"]["blocks.0.attn.qkv"]["rank"] == [4, 8, 12, 16, 20, 24, 32]
    assert sp["linear"]["blocks.1.mlp.fc2"]["rank"] == [4, 8, 12, 16, 20, 24, 32]
    assert sp["linear"]["blocks.0.attn.proj"] == {"rank": [None], "w_bits": [16], "a_bits": [16]}
    assert flora.rank_choices(384, flora.SIXTHS) == [64, 128, 192, 256, 320, 384]  # 5/6 too
    sn = convert(model, space=sp)
    assert all(v == [True] for v in sn.space["depth"].values())
    assert all(len(v) == 1 for v in sn.space["mlp"].values())
    assert sn.space["resolution"] == [16]


def test_flora_sampler_frequencies_follow_inverse_ratio():
    sn = convert(tiny_vit(), space=flora.flora_space(tiny_vit()))
    sampler = flora.FloraSampler()
    rng = random.Random(0)
    layer = "blocks.2.mlp.fc1"
    ranks = sn.space["linear"][layer]["rank"]
    counts = dict.fromkeys(ranks, 0)
    n = 4000
    for step in range(n):
        (cfg,) = sampler(step, rng, sn)
        counts[cfg["linear"][layer]["rank"]] += 1
        assert cfg["linear"]["blocks.0.attn.proj"]["rank"] is None
    full = max(ranks)
    w = [full / r for r in ranks]
    expected = [x / sum(w) for x in w]
    for r, p in zip(ranks, expected, strict=True):
        # binomial standard error; 5 sigma
        se = (p * (1 - p) / n) ** 0.5
        assert abs(counts[r] / n - p) < 5 * se, (r, counts[r] / n, p)
    # lowest rank drawn 8x as often as full rank (ratio 1/8 vs 1)
    assert counts[ranks[0]] > 5 * counts[full]
    got = sampler.choice_weights(sn)[layer]
    assert got[0] == ranks and sum(got[1]) == pytest.approx(1.0)


def test_filter_candidates_rule_and_full_rank():
    from supernet_kernels.train import ClassificationTask

    model = tiny_vit(depth=2)
    sn = convert(model, space=flora.flora_space(model))
    data = synthetic(32)
    before = {k: v.clone() for k, v in sn.state_dict().items()}
    space, scores = flora.filter_candidates(
        sn,
        ClassificationTask(),
        data,
        model,
        steps_per_block=2,
        batch_size=8,
        heldout=synthetic(16, seed=1),
        heldout_batches=2,
        tau=0.1,
        return_scores=True,
    )
    assert set(scores) == {n for n, s in sn.space["linear"].items() if s["rank"] != [None]}
    for n, res in scores.items():
        full = max(res)
        kept = space["linear"][n]["rank"]
        assert full in kept
        limit = 1.1 * res[full]
        assert kept == sorted(r for r in res if r == full or res[r] <= limit)
    # weights restored
    for k, v in sn.state_dict().items():  # (on the device it trained on: CUDA where there is one)
        assert torch.equal(v.cpu(), before[k].cpu()), k
    # no training, tau = 0: full rank reproduces the teacher (loss = its entropy), a rank-1/8
    # approximation is worse, so it goes; a large atol keeps everything
    task = ClassificationTask()
    strict = flora.filter_candidates(sn, task, data, model, steps_per_block=0, tau=0.0)
    loose = flora.filter_candidates(sn, task, data, model, steps_per_block=0, atol=10.0)
    for n in scores:
        assert min(sn.space["linear"][n]["rank"]) not in strict["linear"][n]["rank"]
        assert loose["linear"][n]["rank"] == sn.space["linear"][n]["rank"]
    # keep=1: full rank only
    space1 = flora.filter_candidates(
        sn, ClassificationTask(), data, model, steps_per_block=0, batch_size=8, keep=1
    )
    assert all(space1["linear"][n]["rank"] == [max(scores[n])] for n in scores)


def test_train_flora_runs():
    model = tiny_vit(depth=2)
    sn, hist = flora.train_flora(
        model, synthetic(32), steps=2, batch_size=8, filter_steps_per_block=1, seed=0
    )
    assert len(hist["steps"]) == 2
    assert hist["space"]["linear"]
    dev = next(sn.parameters()).device  # trained on CUDA where there is one
    out = sn(torch.randn(2, 3, 16, 16, device=dev))
    assert out.shape == (2, NUM_CLASSES)


# --------------------------------------------------------------------------- SuperSAM
def test_supersam_space_and_sampler_probabilities():
    model = tiny_vit(depth=12)
    sp = supersam.supersam_space(model)
    droppable = sorted(b for b, v in sp["depth"].items() if v == [False, True])
    assert droppable == [f"blocks.{i}" for i in (1, 2, 5, 6, 9)]
    # hidden 64 = 3072 / 48: {768, 1020, 1536, 2304, 3072} / 48
    assert sp["mlp"]["blocks.0.mlp"] == [16, 21, 32, 48, 64]
    assert supersam.scaled_widths(3072) == [768, 1020, 1536, 2304, 3072]
    assert supersam.default_drop_blocks(4) == [1, 2]
    sn = convert(model, space=sp)
    probs = {"blocks.1": 0.2, "blocks.5": 0.8}
    sampler = supersam.SuperSAMSampler(drop_prob=probs)
    rng = random.Random(1)
    drops = dict.fromkeys(droppable, 0)
    n = 1000
    for step in range(n):
        big, small, rand = sampler(step, rng, sn)
        assert big == sn.max_config() and small == sn.min_config()
        for b in droppable:
            drops[b] += not rand["depth"][b]
    for b in droppable:
        p = probs.get(b, 0.5)
        se = (p * (1 - p) / n) ** 0.5
        assert abs(drops[b] / n - p) < 5 * se, (b, drops[b] / n, p)


def test_train_supersam_on_vit_runs():
    model = tiny_vit(depth=4)
    sn, hist = supersam.train_supersam(model, synthetic(32), steps=2, batch_size=8, calib_batches=2)
    assert len(hist["steps"]) == 2
    assert sorted(b for b, v in sn.space["depth"].items() if False in v) == [
        "blocks.1",
        "blocks.2",
    ]


def test_prioritize_neurons_keeps_function():
    model = tiny_vit(depth=2)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    perms = supersam.prioritize_neurons(model, [x])
    assert set(perms) == {"blocks.0.mlp", "blocks.1.mlp"}
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- MP-LoRA
def test_progressive_stages_widen_at_boundaries():
    s = mplora.ProgressiveBitsSampler(total_steps=9)
    assert s.boundaries == [0, 3, 6]
    assert [s.bits_at(i) for i in (0, 2, 3, 5, 6, 8)] == [
        (8,),
        (8,),
        (8, 4),
        (8, 4),
        (8, 4, 3, 2),
        (8, 4, 3, 2),
    ]
    s2 = mplora.ProgressiveBitsSampler(boundaries=[0, 10, 12])
    assert s2.bits_at(9) == (8,) and s2.bits_at(10) == (8, 4) and s2.bits_at(100) == (8, 4, 3, 2)
    with pytest.raises(ValueError):
        mplora.ProgressiveBitsSampler(boundaries=[1, 2, 3])
    with pytest.raises(ValueError):
        mplora.ProgressiveBitsSampler(boundaries=[0, 5, 4])
    short = mplora.ProgressiveBitsSampler(total_steps=1)  # fewer steps than stages
    assert short.boundaries == [0, 0, 1] and short.bits_at(0) == (8, 4)
    sn = mplora.mplora_supernet(tiny_vit(depth=2), lora_rank=2)
    rng = random.Random(0)
    for step in range(9):
        allowed = set(s.bits_at(step))
        cfgs = s(step, rng, sn)
        seen = {c["w_bits"] for cfg in cfgs for n, c in cfg["linear"].items() if n != "head"}
        assert seen <= allowed
        if step >= 6:
            assert {2, 8} <= seen  # sandwich: largest and smallest of the stage
    assert s(0, rng, sn) == [s(0, rng, sn)[0]]  # one bit-width: one config


def test_mplora_trains_only_lora_and_keeps_base():
    model = tiny_vit(depth=2)
    sn, hist = mplora.train_mplora(model, synthetic(32), steps=3, batch_size=8, lora_rank=2)
    assert len(hist["steps"]) == 3 and hist["boundaries"] == [0, 1, 2]
    ref = convert(model, space=mplora.mplora_space(model, (2, 3, 4, 8)))
    ref_state = ref.state_dict()
    changed = False
    for name, p in sn.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        assert p.requires_grad == (leaf in ("lora_a", "lora_b")), name
        if leaf in ("lora_a", "lora_b"):
            changed |= leaf == "lora_b" and bool(p.abs().sum() > 0)
            continue
        assert torch.equal(p.cpu(), ref_state[name].cpu()), name  # bit-identical base
    assert changed, "lora_b never moved"
    el = sn.elastic_linears()["blocks.0.attn.qkv"]
    assert el.lora_rank == 2 and el.w_bits_choices == (2, 3, 4, 8)


def test_memory_report_lora_below_full():
    model = tiny_vit(depth=2)
    rep = mplora.memory_report(model, torch.randn(4, 3, 16, 16), lora_rank=2)
    assert rep["method"] == "analytic"
    assert 0 < rep["lora_bytes"] < rep["full_bytes"]
    assert rep["lora"]["trainable_params"] < rep["full"]["trainable_params"]
    assert rep["lora"]["activations"] > 0


# --------------------------------------------------------------------------- SAM
def tiny_sam():
    return _models.tiny_sam(depth=4, global_attn_indexes=(1, 3)).eval()


def test_train_supersam_on_sam_runs():
    from supernet_kernels.train import SegmentationTask

    sam = tiny_sam()
    enc_before = {k: v.clone() for k, v in sam.image_encoder.state_dict().items()}
    task = SegmentationTask(sam)
    sn, hist = supersam.train_supersam(
        sam, seg_data(8), task=task, steps=2, batch_size=2, calib_batches=1
    )
    assert len(hist["steps"]) == 2 and len(hist["steps"][0]["loss"]) == 3  # sandwich
    # SAM ViT-B's set restricted to 1..depth-2; a global-attention block (1) may be listed
    assert sorted(b for b, v in sn.space["depth"].items() if False in v) == [
        "blocks.1",
        "blocks.2",
    ]
    assert sn.space["mlp"]["blocks.0.mlp"] == supersam.scaled_widths(64)
    for k, v in sam.image_encoder.state_dict().items():  # the user's SAM is untouched
        assert torch.equal(v, enc_before[k]), k
    sn.set_active(sn.min_config())
    miou = task.metric(sn, seg_data(2, seed=1), batch_size=2)
    assert 0.0 <= miou <= 1.0


def test_train_mplora_on_sam_and_memory_report():
    from supernet_kernels.train import SegmentationTask

    sam = tiny_sam()
    task = SegmentationTask(sam)
    sn, hist = mplora.train_mplora(
        sam.image_encoder, seg_data(8), task=task, steps=3, batch_size=2, lora_rank=2
    )
    assert len(hist["steps"]) == 3
    assert all(lin.lora_rank == 2 for lin in sn.elastic_linears().values())
    batch = flora.as_batches(seg_data(2), 1, 2, task)[0]
    rep = mplora.memory_report(sam.image_encoder, batch, task=task, lora_rank=2)
    assert 0 < rep["lora_bytes"] < rep["full_bytes"]
