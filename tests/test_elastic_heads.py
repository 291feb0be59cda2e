"""Elastic attention heads: the "heads" config key of timm ViT / DeiT and SAM supernets, head
importance ordering (head-major qkv), extraction, save / load, cost, and bad configs."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import supernet_kernels as sk
from supernet_kernels import cost
from supernet_kernels.cost.profile import OTHER_ACT
from supernet_kernels.nn import LowRankLinear, QuantLinear
from supernet_kernels.nn.importance import magnitude_head_importance, reorder_heads
from supernet_kernels.search import SearchSpace
from supernet_kernels.supernet.attention import SKSamAttention, SKViTAttention, prioritize_heads

timm = pytest.importorskip("timm")
pytest.importorskip("segment_anything")

from helpers.models import tiny_sam_encoder, tiny_timm_vit  # noqa: E402
from helpers.numerics import rel_norm as rel  # noqa: E402

HEADS = 4  # both tiny models: 4 heads of 16 channels


pytestmark = pytest.mark.usefixtures("one_thread")


def make_vit(**kw) -> nn.Module:
    return tiny_timm_vit(
        img_size=32, patch_size=8, depth=3, embed_dim=64, num_heads=HEADS, num_classes=10, **kw
    )


def make_sam() -> nn.Module:
    return tiny_sam_encoder(depth=2, num_heads=HEADS)


FAMILIES = {
    "timm_vit": (make_vit, SKViTAttention, lambda: torch.randn(2, 3, 32, 32)),
    "sam": (make_sam, SKSamAttention, lambda: torch.randn(1, 3, 64, 64)),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request):
    make, cls, inputs = FAMILIES[request.param]
    model = make()
    torch.manual_seed(1)
    return request.param, model, sk.convert(model), cls, inputs()


def attn_of(sn, i: int) -> nn.Module:
    """Block i's attention in a supernet (droppable blocks are wrapped in an ElasticBlock)."""
    blk = sn.model.blocks[i]
    return getattr(blk, "block", blk).attn


def attn_names(model: nn.Module) -> list[str]:
    return [f"blocks.{i}.attn" for i in range(len(model.blocks))]


def few_heads_config(sn, heads: list[int]) -> dict:
    """The max config with the given head counts per block (the resolution of the inputs)."""
    cfg = sn.max_config()
    for a, h in zip(sorted(cfg["heads"]), heads, strict=True):
        cfg["heads"][a] = h
    return cfg


# --------------------------------------------------------------------------- space / configs
def test_space_and_configs_include_heads(fam):
    name, model, sn, cls, x = fam
    names = attn_names(model)
    assert sn.space["heads"] == {a: [2, 3, 4] for a in names}  # ceil(4 / 2) .. 4
    assert sn.max_config()["heads"] == dict.fromkeys(names, 4)
    assert sn.min_config()["heads"] == dict.fromkeys(names, 2)
    drawn = {h for s in range(8) for h in sn.sample_config(s)["heads"].values()}
    assert drawn == {2, 3, 4}
    genes = SearchSpace(sn)
    assert all(genes.genes[f"heads:{a}"] == [2, 3, 4] for a in names)
    cfg = sn.sample_config(3)
    assert genes.decode(genes.encode(cfg)) == cfg


def test_user_space_narrows_heads():
    model = make_vit()
    sn = sk.convert(model, space={"heads": {"blocks.*.attn": [1, 4], "blocks.2.attn": [4]}})
    assert sn.space["heads"] == {
        "blocks.0.attn": [1, 4],
        "blocks.1.attn": [1, 4],
        "blocks.2.attn": [4],
    }
    # only the elastic ones are reordered head-major
    assert [attn_of(sn, i).qkv_layout for i in range(3)] == ["head", "head", "qkv"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel(sn(x), model(x)) <= 1e-5
    # 1 head: qkv has 48 rows, so its rank must come down from 64 too
    sn.set_active({"heads": {"blocks.0.attn": 1}, "linear": {"blocks.0.attn.qkv": {"rank": 48}}})
    assert attn_of(sn, 0).num_heads == 1
    assert attn_of(sn, 0).qkv.active_out == 3 * 16
    assert attn_of(sn, 0).proj.active_in == 16
    # the model's own attention runs all heads: fixed at all, fewer is an error
    orig = sk.convert(model, attention="original")
    assert orig.space["heads"] == dict.fromkeys(attn_names(model), [4])
    msg = r'space.heads.blocks.0.attn: fewer heads .*attention="ours"'
    with pytest.raises(ValueError, match=msg):
        sk.convert(model, space={"heads": {"blocks.0.attn": [2, 4]}}, attention="original")


def test_scale_norm_keeps_all_heads_and_qk_norm_is_elastic():
    """A norm over all heads' channels (scale_attn_norm) does not slice per head: no heads
    entry; q / k norms act per head, so those heads stay elastic."""
    sn = sk.convert(make_vit(scale_attn_norm=True))
    assert sn.space["heads"] == {}
    model = make_vit(qk_norm=True)
    with torch.no_grad():  # non-trivial per-head norms
        for b in model.blocks:
            b.attn.q_norm.weight.normal_(1, 0.2)
            b.attn.k_norm.bias.normal_(0, 0.2)
    sn = sk.convert(model)
    assert sn.space["heads"]["blocks.0.attn"] == [2, 3, 4]
    x = torch.randn(2, 3, 32, 32)
    cfg = few_heads_config(sn, [2, 3, 2])
    sub = sn.extract(cfg)
    sn.set_active(cfg)
    with torch.no_grad():
        assert rel(sn(x), model(x)) > 1e-3  # fewer heads change the output ...
        assert rel(sub(x), sn(x)) <= 1e-5  # ... and the subnet matches the supernet
    sn.set_active(sn.max_config())
    with torch.no_grad():
        assert rel(sn(x), model(x)) <= 1e-5


# --------------------------------------------------------------------------- importance
def test_reorder_heads_moves_whole_heads_head_major():
    torch.manual_seed(0)
    width, d = 64, 16
    qkv, proj = nn.Linear(32, 3 * width), nn.Linear(width, 32)
    with torch.no_grad():  # head 2 the most important, then 0, 3, 1
        for h, f in ((2, 8.0), (0, 4.0), (3, 2.0)):
            for s in range(3):
                qkv.weight[s * width + h * d : s * width + (h + 1) * d] *= f
            proj.weight[:, h * d : (h + 1) * d] *= f
    w, b, pw = qkv.weight.clone(), qkv.bias.clone(), proj.weight.clone()
    scores = magnitude_head_importance(qkv, proj, 4)
    perm = reorder_heads(qkv, proj, 4)
    assert perm.tolist() == [2, 0, 3, 1] == torch.argsort(scores, descending=True).tolist()
    for i, old in enumerate(perm.tolist()):
        for s in range(3):  # new head i: its q, k, v rows together, each an intact block
            new_rows = slice((3 * i + s) * d, (3 * i + s + 1) * d)
            old_rows = slice(s * width + old * d, s * width + (old + 1) * d)
            assert torch.equal(qkv.weight[new_rows], w[old_rows])
            assert torch.equal(qkv.bias[new_rows], b[old_rows])
        assert torch.equal(proj.weight[:, i * d : (i + 1) * d], pw[:, old * d : (old + 1) * d])
    with pytest.raises(ValueError, match="size num_heads=4"):
        reorder_heads(qkv, proj, 4, torch.ones(3))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        reorder_heads(qkv, proj, 5)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_prioritized_module_computes_the_same(name):
    make, cls, _ = FAMILIES[name]
    model = make()
    orig = model.blocks[1].attn
    ours = copy.deepcopy(cls.from_module(orig))  # from_module shares orig's layers: a copy
    perm = prioritize_heads(ours)
    assert sorted(perm.tolist()) == [0, 1, 2, 3] and ours.qkv_layout == "head"
    x = torch.randn(2, 4, 4, 64) if name == "sam" else torch.randn(2, 5, 64)
    with torch.no_grad():
        assert (ours(x) - orig(x)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="already prioritized"):
        prioritize_heads(ours)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_fewer_heads_drop_the_least_important(name):
    """At full ranks and 16 bits, h heads of the supernet are exactly the original model with
    the other heads' outputs removed (their proj input columns zeroed), the heads removed being
    the least important by magnitude: the prefix is the best slice."""
    make, _, inputs = FAMILIES[name]
    model = make()
    sn = sk.convert(model)
    keep = [2, 3, 2, 3][: len(model.blocks)]
    sn.set_active(few_heads_config(sn, keep))
    masked = make()
    d = 64 // HEADS
    with torch.no_grad():
        for blk, h in zip(masked.blocks, keep, strict=True):
            scores = magnitude_head_importance(blk.attn.qkv, blk.attn.proj, HEADS)
            for old in torch.argsort(scores, descending=True, stable=True)[h:].tolist():
                blk.attn.proj.weight[:, old * d : (old + 1) * d] = 0
        x = inputs()
        assert rel(sn(x), masked(x)) <= 1e-5
        assert rel(sn(x), model(x)) > 1e-3


def test_activation_and_custom_head_importance():
    model = make_vit()
    batches = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    sn = sk.convert(model, importance="activation", calib_batches=batches)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel(sn(x), model(x)) <= 1e-5
    # a user hook (qkv, proj, num_heads) -> scores; here: the last head first
    calls = []

    def last_first(qkv, proj, n):
        calls.append(n)
        return torch.arange(n, dtype=torch.float32)

    sn = sk.convert(model, head_importance=last_first)
    assert calls == [HEADS] * 3
    full = sn.model.blocks[0].attn.proj
    w = full.weight[:, :16]  # proj is dense by default: its first 16 columns are head 3's
    assert torch.allclose(w, model.blocks[0].attn.proj.weight[:, 48:64])
    with pytest.raises(ValueError, match="head_importance must be"):
        sk.convert(model, head_importance="l2")
    with pytest.raises(ValueError, match="needs calib_batches"):
        sk.convert(model, head_importance="activation")


# --------------------------------------------------------------------------- extract / io
def test_fewer_heads_extract_equals_supernet(fam):
    name, model, sn, cls, x = fam
    n = len(model.blocks)
    cfg = few_heads_config(sn, [2, 3, 2, 3][:n])
    # with low rank on qkv and 4-bit proj on the first block: slicing composes with both
    cfg["linear"]["blocks.0.attn.qkv"]["rank"] = 8
    cfg["linear"]["blocks.0.attn.proj"]["w_bits"] = 4
    sub = sn.extract(cfg)
    assert sn.active_config() == sn.max_config()  # extract leaves the supernet as it was
    d = 64 // HEADS
    for blk, h in zip(sub.blocks, cfg["heads"].values(), strict=True):
        assert isinstance(blk.attn, cls) and blk.attn.num_heads == h
        assert blk.attn.qkv.out_features == 3 * h * d and blk.attn.proj.in_features == h * d
    assert isinstance(sub.blocks[0].attn.qkv, LowRankLinear)
    assert isinstance(sub.blocks[0].attn.proj, QuantLinear)
    sn.set_active(cfg)
    try:
        with torch.no_grad():
            y, ys = sn(x), sub(x)
        assert rel(ys, y) <= 1e-5
        assert sub.sk_subnet["config"]["heads"] == cfg["heads"]
        dense = sk.convert(model).extract()
        assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in dense.parameters())
    finally:
        sn.set_active(sn.max_config())


def test_sampled_configs_with_fewer_heads_equal_extract(fam):
    name, model, sn, cls, x = fam
    rng = random.Random(5)
    seen = set()
    for _ in range(4):
        cfg = sn.sample_config(rng)
        if "resolution" in cfg and cfg["resolution"] is not None:
            cfg["resolution"] = sn.max_config()["resolution"]
        seen |= set(cfg["heads"].values())
        sub = sn.extract(cfg)
        sn.set_active(cfg)
        with torch.no_grad():
            assert rel(sub(x), sn(x)) <= 1e-5
    sn.set_active(sn.max_config())
    assert min(seen) < HEADS


def test_save_load_round_trip(fam, tmp_path):
    name, model, sn, cls, x = fam
    cfg = few_heads_config(sn, [3, 2, 3, 2][: len(model.blocks)])
    cfg["linear"]["blocks.1.attn.qkv"]["rank"] = 8
    sub = sn.extract(cfg)
    path = sk.save(sub, tmp_path / f"{name}.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        doc = json.loads(f.metadata()["supernet_kernels"])
    assert doc["heads"]["blocks.0.attn"] == {"num_heads": 3, "qkv_layout": "head"}
    assert doc["heads"]["blocks.1.attn"] == {"num_heads": 2, "qkv_layout": "head"}
    back = sk.load(path)
    assert [b.attn.num_heads for b in back.blocks] == list(cfg["heads"].values())
    with torch.no_grad():
        assert torch.equal(back(x), sub(x))
    back2 = sk.load(path, skeleton=FAMILIES[name][0]())
    with torch.no_grad():
        assert torch.equal(back2(x), sub(x))


def test_load_checks_heads_records(tmp_path):
    from safetensors.torch import load_file, save_file

    sn = sk.convert(make_vit())
    sub = sn.extract(few_heads_config(sn, [2, 3, 4]))
    path = sk.save(sub, tmp_path / "v.safetensors")
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        doc = json.loads(f.metadata()["supernet_kernels"])
    for change, msg in [
        ({"blocks.0.attn": {"num_heads": 0, "qkv_layout": "head"}}, "bad num_heads 0"),
        ({"blocks.0.attn": {"num_heads": 2, "qkv_layout": "rows"}}, "bad qkv_layout"),
        ({"blocks.0.attn": {"num_heads": 5, "qkv_layout": "head"}}, "has 4; the file is from"),
        ({"blocks.0.mlp": {"num_heads": 2, "qkv_layout": "head"}}, "not our attention"),
    ]:
        bad = tmp_path / "bad.safetensors"
        meta = {**doc, "heads": {**doc["heads"], **change}}
        save_file(tensors, str(bad), metadata={"supernet_kernels": json.dumps(meta)})
        with pytest.raises(ValueError, match=msg):
            sk.load(bad)


def test_files_without_heads_records_load_all_heads(tmp_path):
    """Files written before elastic heads hold no "heads" field: all heads, original layout."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = make_vit()
    sn = sk.convert(model, space={"heads": {"*": [HEADS]}})
    sub = sn.extract()
    path = sk.save(sub, tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as f:
        doc = json.loads(f.metadata()["supernet_kernels"])
    doc.pop("heads")
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old), metadata={"supernet_kernels": json.dumps(doc)})
    back = sk.load(old)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), sub(x))
        assert rel(back(x), model(x)) <= 1e-5


# --------------------------------------------------------------------------- cost
def test_cost_counts_active_heads(fam):
    """profile at a config with fewer heads == FlopCounterMode on the extracted subnet; the
    attention products (q k^T, attn v) scale with the head count."""
    name, model, sn, cls, x = fam
    n = len(model.blocks)
    small = few_heads_config(sn, [2] * n)
    full = cost.profile(sn, x, config=sn.max_config())
    part = cost.profile(sn, x, config=small)
    assert sn.active_config() == sn.max_config()  # profile restores the active config
    sub = sn.extract(small)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        sub(x)
    assert part.total_macs == fc.get_total_flops() // 2
    assert part.total_params == cost.profile(sub, x).total_params
    # SAM's relative-position einsums are per head too: every activation product halves
    assert part.layer(OTHER_ACT).macs * 2 == full.layer(OTHER_ACT).macs
    d = 64 // HEADS
    rows = [r for r in part.layers if r.name.endswith((".attn.qkv", ".attn.proj"))]
    assert len(rows) == 2 * n
    for r in rows:
        assert r.macs * 2 == full.layer(r.name).macs
        if r.name.endswith("proj"):
            assert r.params == 2 * d * 64 + 64  # 2 heads' columns, plus the bias


# --------------------------------------------------------------------------- bad configs
BAD = [
    (
        {"heads": {"blocks.0.attn": 0}},
        "heads.blocks.0.attn: 0 is not one of [2, 3, 4] (the module has 4 heads)",
    ),
    ({"heads": {"blocks.0.attn": 5}}, "heads.blocks.0.attn: 5 is not one of [2, 3, 4]"),
    ({"heads": {"blocks.0.attn": 1}}, "heads.blocks.0.attn: 1 is not one of [2, 3, 4]"),
    ({"heads": {"blocks.0.attn": "2"}}, "heads.blocks.0.attn: '2' is not one of"),
    ({"heads": {"blocks.0.attn": 2.0}}, "heads.blocks.0.attn: 2.0 is not one of"),
    ({"heads": {"blocks.0.attn": True}}, "heads.blocks.0.attn: true is not one of"),
    ({"heads": {"blocks.0.attn": None}}, "heads.blocks.0.attn: null is not one of"),
    ({"heads": {"blocks.7.attn": 2}}, "heads.blocks.7.attn: unknown attention module"),
    ({"heads": [2, 2, 2]}, "heads: expected a dict"),
]


@pytest.mark.parametrize("bad,msg", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_head_configs_name_the_key_and_change_nothing(bad, msg):
    sn = _vit_sn()
    good = sn.sample_config(7)
    sn.set_active(good)
    with pytest.raises(ValueError) as info:
        sn.set_active(bad)
    assert msg in str(info.value), str(info.value)
    assert sn.active_config() == good
    assert attn_of(sn, 0).num_heads == good["heads"]["blocks.0.attn"]


_CACHE: dict = {}


def _vit_sn():
    if "vit" not in _CACHE:
        _CACHE["vit"] = sk.convert(make_vit())
    return _CACHE["vit"]


BAD_SPACES = [
    ({"heads": {"blocks.0.attn": [0, 4]}}, "space.heads.blocks.0.attn: 0 is not an int in 1..4"),
    ({"heads": {"blocks.0.attn": [2, 5]}}, "space.heads.blocks.0.attn: 5 is not an int in 1..4"),
    ({"heads": {"blocks.0.attn": ["2"]}}, "space.heads.blocks.0.attn: '2' is not an int"),
    ({"heads": {"blocks.0.attn": []}}, "space.heads.blocks.0.attn: expected a non-empty list"),
    ({"heads": {"blocks.0.mlp": [2]}}, "space.heads.blocks.0.mlp: matches no heads entry"),
    ({"heads": [2]}, "space.heads: expected a dict"),
    (
        {
            "heads": {"blocks.0.attn": [1, 4]},
            "linear": {"blocks.0.attn.proj": {"rank": [32, 64], "w_bits": [16]}},
        },
        "space.linear.blocks.0.attn.proj.rank: the smallest rank 32 exceeds min(in, out) = 16 "
        "at the smallest head count 1 of heads.blocks.0.attn",
    ),
]


@pytest.mark.parametrize("space,msg", BAD_SPACES, ids=[str(i) for i in range(len(BAD_SPACES))])
def test_bad_head_spaces(space, msg):
    with pytest.raises(ValueError) as info:
        sk.convert(make_vit(), space=space)
    assert msg in str(info.value), str(info.value)


def test_rank_cross_check_with_heads():
    """A rank above min(in, out) at the configured head count is refused; sampling and the
    search's repair keep ranks valid."""
    space = {
        "heads": {"blocks.*.attn": [1, 2, 4]},
        "linear": {"blocks.*.attn.proj": {"rank": [8, 32], "w_bits": [16]}},
    }
    sn = sk.convert(make_vit(), space=space)
    one = {"heads": {"blocks.0.attn": 1}}
    with pytest.raises(ValueError) as info:
        sn.set_active(one)  # qkv keeps rank 64 > 3 * 16 rows
    assert "linear.blocks.0.attn.qkv.rank: 64 exceeds min(in, out) = 48" in str(info.value)
    one["linear"] = {"blocks.0.attn.qkv": {"rank": 48}}
    with pytest.raises(ValueError) as info:
        sn.set_active(one)  # proj keeps rank 32 > 16 inputs
    assert "linear.blocks.0.attn.proj.rank: 32 exceeds min(in, out) = 16" in str(info.value)
    one["linear"]["blocks.0.attn.proj"] = {"rank": 8}
    sn.set_active(one)
    for s in range(10):
        sn.set_active(sn.sample_config(s))
    genes = SearchSpace(sn)
    g = genes.encode(sn.max_config())
    g["heads:blocks.0.attn"] = 1
    repaired = genes.decode(g)["linear"]
    assert repaired["blocks.0.attn.qkv"]["rank"] == 48  # the largest choice <= 48
    assert repaired["blocks.0.attn.proj"]["rank"] == 8


def test_cli_rebuilds_supernets_written_before_heads(tmp_path):
    """A supernet.json whose space has no "heads" (written before heads were elastic) holds qkv
    in the original row order: the CLI rebuilds it with all heads, fixed."""
    from supernet_kernels import cli

    kwargs = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": HEADS}
    argv = ["convert", "vit_tiny_patch16_224", "--model-kwargs", json.dumps(kwargs)]
    space = json.dumps({"heads": {"*": [HEADS]}})  # the state such a file holds
    assert cli.main([*argv, "--space", space, "--out", str(tmp_path), "--no-progress"]) == 0
    doc_path = tmp_path / "supernet.json"
    doc = json.loads(doc_path.read_text())
    for key in ("space", "max_config", "min_config"):
        doc[key].pop("heads")
    doc["space_override"].pop("heads")
    doc_path.write_text(json.dumps(doc))
    sn, _, _ = cli.load_supernet(tmp_path)
    assert sn.space["heads"] == {f"blocks.{i}.attn": [HEADS] for i in range(2)}
    assert all(attn_of(sn, i).qkv_layout == "qkv" for i in range(2))
