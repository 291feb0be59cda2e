"""Search over a restricted space (joint genes, FLORA's filtered space), lower bounds in
budgets (a FLOPs window), FLORA-style evolution and the many-gene repair."""

from __future__ import annotations

import random

import pytest

from supernet_kernels.recipes import flora
from supernet_kernels.search import search
from supernet_kernels.search.objectives import parse_budget, violations
from supernet_kernels.search.space import SearchSpace
from supernet_kernels.supernet import convert

timm = pytest.importorskip("timm")

from helpers import models as _models  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sn():
    model = _models.tiny_timm_vit(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
        num_classes=5,
    )  # fmt: skip
    return convert(model, space=flora.flora_space(model))


def joint_space(sn, choices0):
    sp = sn.space
    layers = ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    sp["joint"] = {"blocks.0": {"layers": layers, "choices": choices0}}
    return sp


def test_parse_lower_and_upper_bounds():
    cs = parse_budget("macs >= 0.4 * dense and macs <= 0.5 * dense", "macs")
    assert [(c.op, c.factor, c.ref) for c in cs] == [(">=", 0.4, "dense"), ("<=", 0.5, "dense")]
    cs[0].limit, cs[1].limit = 40.0, 50.0
    assert violations(cs[:1], {"macs": 30.0})["macs"] == pytest.approx(0.25)  # 10 below 40
    assert violations(cs[:1], {"macs": 45.0})["macs"] < 0
    assert violations(cs[1:], {"macs": 55.0})["macs"] == pytest.approx(0.1)


def test_joint_genes_decode_encode_and_order(sn):
    choices = [[4, 8, 8], [8, 8, 16], [32, 32, 32]]
    ss = SearchSpace(sn, joint_space(sn, choices))
    assert ss.genes["joint:blocks.0"] == [0, 1, 2]
    assert "linear:blocks.0.attn.qkv:rank" not in ss.genes
    assert "linear:blocks.1.attn.qkv:rank" in ss.genes  # block 1 keeps per-layer genes
    cfg = ss.decode({"joint:blocks.0": 1})
    assert [cfg["linear"][n]["rank"] for n in ss.joint["blocks.0"]["layers"]] == [8, 8, 16]
    assert ss.encode(cfg)["joint:blocks.0"] == 1
    assert ss.min_config()["linear"]["blocks.0.mlp.fc1"]["rank"] == 8
    rng = random.Random(0)
    for _ in range(20):
        g = ss.mutate(ss.sample(rng), rng, 0.5)
        assert g["joint:blocks.0"] in (0, 1, 2)


def test_search_restricted_space_with_window_never_leaves_it(sn):
    choices = [[4, 8, 8], [8, 8, 16], [16, 16, 16], [32, 32, 32]]
    sp = joint_space(sn, choices)
    sp["linear"]["blocks.1.mlp.fc1"]["rank"] = [8, 32]  # a restricted per-layer gene too
    ev = lambda m: float(sum(c["rank"] or 0 for c in m.active_config()["linear"].values()))  # noqa: E731
    res = search(sn, ev, (1, 3, 16, 16), objective="macs", space=sp,
                 budget="macs >= 0.6 * dense and macs <= 0.9 * dense",
                 population=6, generations=2, parents=2, mutations=3, crossovers=3,
                 init="stratified", out_of_window="reject", progress=False)  # fmt: skip
    ok = [r for r in res.history if r["status"] == "ok"]
    assert ok
    dense = res.budget[1]["limit"] / 0.9
    allowed = {tuple(c) for c in choices}
    for r in ok:
        assert 0.6 * dense <= r["macs"] <= 0.9 * dense
        lin = r["config"]["linear"]
        assert tuple(lin[n]["rank"] for n in sp["joint"]["blocks.0"]["layers"]) in allowed
        assert lin["blocks.1.mlp.fc1"]["rank"] in (8, 32)
    assert {r["generation"] for r in ok} >= {0, 1}


def test_lower_bound_above_the_largest_subnet_is_refused(sn):
    with pytest.raises(ValueError, match="lower bound"):
        search(sn, lambda m: 0.0, (1, 3, 16, 16), objective="macs",
               budget="macs >= 2 * dense", progress=False)  # fmt: skip


def test_shrink_lowers_several_genes(sn):
    ss = SearchSpace(sn)
    top = ss.encode(sn.max_config())
    out = ss.shrink(top, random.Random(0), count=5)
    lowered = [k for k in top if out[k] != top[k]]
    assert len(lowered) == 5
    for k in lowered:
        assert ss.genes[k].index(out[k]) == ss.genes[k].index(top[k]) - 1


def test_profile_unchanged_without_quantizers(sn):
    from supernet_kernels import cost

    p = cost.profile(sn, (1, 3, 16, 16), config=sn.max_config())
    rows = [r for r in p.layers if r.name.endswith("(activation x activation)")]
    assert [r.name for r in rows] == [cost.profile.__globals__["OTHER_ACT"]]
    assert (rows[0].w_bits, rows[0].a_bits) == (16, 16)
    assert p.other_ops  # attention products stay in the shared row at 16 bits
