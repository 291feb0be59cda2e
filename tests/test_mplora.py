"""Mixed-precision LoRA (paper preset): activation and attention-operand bits in the space,
counted by the profiler, fake-quantized in training; LSQ step sizes learn; one adapter per
weight-bit group; the SAM ViT-B BitOPs floor is below 10% of dense and 5% budgets search."""

from __future__ import annotations

import random

import pytest
import torch

from supernet_kernels import cost
from supernet_kernels.quant.fake import LSQActQuantizer
from supernet_kernels.recipes import mplora
from supernet_kernels.search import search
from supernet_kernels.search.objectives import CostModel
from supernet_kernels.search.space import SearchSpace

timm = pytest.importorskip("timm")

from helpers import models as _models  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit():
    return _models.tiny_timm_vit(
        img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2, mlp_ratio=2.0,
        num_classes=5,
    )  # fmt: skip


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.detach().double(), out.detach().double()
    return float(20 * torch.log10(ref.norm() / (ref - out).norm().clamp_min(1e-30)))


@pytest.fixture(scope="module")
def paper_sn():
    return mplora.mplora_supernet(tiny_vit(), preset="paper", group_size=32)


# --------------------------------------------------------------------------- quantizer
def test_lsq_act_quantizer_grid_identity_and_gradient():
    torch.manual_seed(0)
    q = LSQActQuantizer((4, 8, 16), signed=True)
    x = torch.randn(7, 33)
    assert torch.equal(q(x), x)  # 16 bits: identity
    q.set_bits(4)
    y = q(x)
    s = float(q.step["4"].detach())
    codes = (y / s).detach()
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.min() >= -8 and codes.max() <= 7.0001
    q.set_bits(8)
    y8 = q(x)
    assert _sqnr(x, y8) > 35 > 22 > _sqnr(x, y) > 12  # ~6 dB per bit
    y8.square().sum().backward()
    assert q.step["8"].grad is not None and q.step["8"].grad.abs() > 0
    with pytest.raises(ValueError, match="bits 5"):
        q.set_bits(5)


# --------------------------------------------------------------------------- space
def test_paper_space_has_act_and_attention_bits_depth_width_resolution(paper_sn):
    sp = paper_sn.space
    assert sp["act_bits"]["blocks.0.attn.qkv"] == [4, 8, 16]
    assert sp["act_bits"]["blocks.0.attn"] == [4, 8, 16]  # Q, K, V, P of the attention
    assert sp["linear"]["blocks.0.mlp.fc1"]["w_bits"] == [2, 3, 4, 8]
    assert sp["resolution"] == [24, 32]
    assert sp["mlp"]["blocks.0.mlp"] == [32, 64, 96, 128]
    assert sp["depth"]["blocks.1"] == [False, True] and sp["depth"]["blocks.0"] == [True]
    genes = SearchSpace(paper_sn).genes
    assert "act_bits:blocks.2.attn" in genes and "act_bits:blocks.2.mlp.fc2" in genes
    with pytest.raises(ValueError, match="act_bits.blocks.0.attn: 5"):
        paper_sn.set_active({"act_bits": {"blocks.0.attn": 5}})


def test_attention_fake_quant_follows_bits(paper_sn):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    cfg = paper_sn.max_config()
    paper_sn.set_active(cfg)
    with torch.no_grad():
        ref = paper_sn(x)
        attn = paper_sn.model.blocks[0].attn
        assert attn.attn_quant.bits == 16
        for bits, lo in ((8, 25.0), (4, 3.0)):
            c = paper_sn.max_config()
            c["act_bits"]["blocks.0.attn"] = bits
            paper_sn.set_active(c)
            assert attn.attn_quant.bits == bits
            out = paper_sn(x)
            assert not torch.equal(out, ref)
            assert _sqnr(ref, out) > lo, (bits, _sqnr(ref, out))
    paper_sn.set_active(cfg)


def test_profile_counts_attention_and_activation_bits(paper_sn):
    cfg = paper_sn.max_config()
    p16 = cost.profile(paper_sn, (1, 3, 32, 32), config=cfg)
    cfg["act_bits"]["blocks.0.attn"] = 4
    cfg["act_bits"]["blocks.0.attn.qkv"] = 8
    p4 = cost.profile(paper_sn, (1, 3, 32, 32), config=cfg)
    row = p4.layer("model.blocks.0.attn (activation x activation)")
    # 17 tokens (16 patches + class), 2 heads of 32: q k^T and P v are 17 * 17 * 64 MACs each
    assert row.macs == 2 * 17 * 17 * 64 and (row.w_bits, row.a_bits) == (4, 4)
    assert p4.total_macs == p16.total_macs  # bits change BitOPs, not MACs
    qkv = p4.layer("model.blocks.0.attn.qkv")
    assert (qkv.w_bits, qkv.a_bits) == (8, 8)
    saved = row.macs * (256 - 16) + qkv.macs * 8 * (16 - 8)
    assert p16.total_bitops - p4.total_bitops == saved


def test_extract_keeps_activation_quantizers(paper_sn):
    torch.manual_seed(2)
    with torch.no_grad():  # learned weight steps away from min-max: extract must use them
        for el in paper_sn.elastic_linears().values():
            if "w_step" in el._modules:
                for p in el.w_step.values():
                    p.normal_(0, 0.2)
    cfg = paper_sn.min_config()
    sub = paper_sn.extract(cfg)
    qkv = sub.blocks[0].attn.qkv
    assert qkv.input_quant.bits == 4 and sub.blocks[0].attn.attn_quant.bits == 4
    x = torch.randn(2, 3, 24, 24)
    paper_sn.set_active(cfg)
    with torch.no_grad():
        a, b = paper_sn(x), sub(x)
    with torch.no_grad():
        for el in paper_sn.elastic_linears().values():
            if "w_step" in el._modules:
                for p in el.w_step.values():
                    p.zero_()
    paper_sn.set_active(paper_sn.max_config())
    # the subnet packs the weights with the learned steps: the same function up to rounding
    assert _sqnr(a, b) > 60, _sqnr(a, b)


def test_grouped_adapters_switch_with_weight_bits(paper_sn):
    el = paper_sn.model.blocks[0].attn.qkv
    assert len(el.lora_bank) == 6  # (8), (3, 4), (2): a pair each
    seen = {}
    for bits in (2, 3, 4, 8):
        c = paper_sn.max_config()
        c["linear"]["blocks.0.attn.qkv"]["w_bits"] = bits
        paper_sn.set_active(c)
        seen[bits] = id(el.lora_a)
    assert seen[3] == seen[4] and len({seen[2], seen[4], seen[8]}) == 3
    paper_sn.set_active(paper_sn.max_config())


def test_training_updates_adapters_and_step_sizes_only():
    data = [(torch.randn(3, 32, 32), i % 5) for i in range(8)]
    model = tiny_vit()
    sn, hist = mplora.train_mplora(
        model, data, preset="paper", steps=3, batch_size=4, group_size=32, lr=1e-2
    )
    assert hist["boundaries"] == [0, 1, 2]  # paper preset: stages at 0, 25%, 50%
    trained = {n for n, p in sn.named_parameters() if p.requires_grad}
    assert any(".w_step." in n for n in trained) and any("input_quant.step" in n for n in trained)
    assert not any(n.endswith(".weight") for n in trained)
    # frozen parameters are those of a fresh conversion (MLP units reordered by importance)
    fresh = dict(mplora.mplora_supernet(model, preset="paper", group_size=32).named_parameters())
    for n, p in sn.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, fresh[n]), n
    moved = [n for n, p in sn.named_parameters() if ".w_step." in n and p.detach().abs().sum() > 0]
    assert moved  # the learned weight steps left their start (factor 1)


def test_progressive_activation_bits_come_down_with_the_stages(paper_sn):
    s = mplora.ProgressiveBitsSampler(((8,), (4, 8), (2, 3, 4, 8)), total_steps=12,
                                      fractions=(0.0, 0.25, 0.5))  # fmt: skip
    assert s.boundaries == [0, 3, 6]
    assert s.act_bits_at(0, [4, 8, 16]) == [16]
    assert s.act_bits_at(3, [4, 8, 16]) == [8, 16]
    assert s.act_bits_at(6, [4, 8, 16]) == [4, 8, 16]
    rng = random.Random(0)
    for step in (0, 3, 6):
        for cfg in s(step, rng, paper_sn):
            assert set(cfg["act_bits"].values()) <= set(s.act_bits_at(step, [4, 8, 16]))
            ws = {c["w_bits"] for c in cfg["linear"].values() if c["w_bits"] != 16}
            assert ws <= set(s.bits_at(step))


# --------------------------------------------------------------------------- SAM ViT-B
@pytest.mark.slow
def test_sam_vit_b_floor_under_10_percent_and_5_percent_search():
    sam = pytest.importorskip("segment_anything")
    with torch.device("meta"):
        enc = sam.build_sam_vit_b(checkpoint=None).image_encoder
    enc = enc.to_empty(device="cpu")
    # The profiler reads shapes only, but the supernet orders MLP neurons by weight magnitude:
    # uninitialized memory can hold NaN or inf, so give the weights values (seeded, ~1 s).
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    sn = mplora.mplora_supernet(enc, preset="paper", lora=False)
    cm = CostModel(sn, (1, 3, 1024, 1024))
    dense = cm.reference("dense", "bitops")
    floor = cm.costs(sn.min_config(), ("bitops",))["bitops"] / dense
    assert floor <= 0.10, floor
    # bits alone (every block, full width): still at most 10%
    cfg = sn.max_config()
    for c in cfg["linear"].values():
        c["w_bits"] = 2
    cfg["act_bits"] = dict.fromkeys(cfg["act_bits"], 4)
    assert cm.costs(cfg, ("bitops",))["bitops"] / dense <= 0.10

    def evaluate(model):  # a stand-in metric (no SAM forward at 1024 on a CPU): blocks kept
        return float(sum(model.active_config()["depth"].values()))

    res = search(sn, evaluate, (1, 3, 1024, 1024), budget="bitops <= 0.05 * dense",
                 population=3, generations=1, seed=0, progress=False)  # fmt: skip
    ok = [r for r in res.history if r["status"] == "ok"]
    assert ok and all(r["bitops"] <= 0.05 * dense for r in ok)
    assert res.best["bitops"] <= 0.05 * dense
