"""Supernets from timm ViT / Swin, the SAM image encoder and generic models: max-config
equality with the original, extraction equal to the supernet, config validation, save / load."""

from __future__ import annotations

import copy
import gc
import json
import random

import pytest
import torch
from torch import nn

import supernet_kernels as sk
from supernet_kernels.nn import ElasticBlock, ElasticLinear, LowRankLinear, QuantLinear

timm = pytest.importorskip("timm")

from helpers.models import tiny_sam_encoder, tiny_timm_vit  # noqa: E402
from helpers.numerics import rel_norm as rel  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- tiny models
def make_vit() -> nn.Module:
    return tiny_timm_vit(
        img_size=32,
        patch_size=8,
        depth=3,
        embed_dim=64,
        num_heads=4,
        num_classes=10,
    )


def make_swin() -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(
        img_size=32,
        patch_size=4,
        embed_dim=32,
        depths=(2, 3),
        num_heads=(2, 4),
        window_size=2,
        num_classes=10,
    ).eval()


def make_sam() -> nn.Module:
    return tiny_sam_encoder(depth=3)


class GenBlock(nn.Module):
    def __init__(self, d: int = 32, h: int = 64):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))

    def forward(self, x):
        x = x + torch.tanh(self.q(self.norm(x)))
        return x + self.ff(x)


class Gen(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.layers = nn.ModuleList([GenBlock() for _ in range(3)])
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = self.embed(x)
        for blk in self.layers:
            x = blk(x)
        return self.head(x)


def make_gen() -> nn.Module:
    torch.manual_seed(0)
    return Gen().eval()


GEN_SPACE = {  # declares the generic model's elastic MLPs and a droppable block
    "mlp": {f"layers.{i}.ff": [16, 32, 64] for i in range(3)},
    "depth": {"layers.1": [False, True]},
}

FAMILIES = {
    "timm_vit": (make_vit, None, lambda r: torch.randn(2, 3, r or 32, r or 32)),
    "timm_swin": (make_swin, None, lambda r: torch.randn(2, 3, 32, 32)),
    "sam": (
        make_sam,
        {
            "depth": {"blocks.1": [False, True]},
            "linear": {
                "blocks.*.mlp.lin2": {"rank": [None], "w_bits": [4, 8, 16], "a_bits": [8, 16]}
            },
        },
        lambda r: torch.randn(1, 3, 64, 64),
    ),
    "generic": (make_gen, GEN_SPACE, lambda r: torch.randn(2, 7, 16)),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request):
    make, space, inputs = FAMILIES[request.param]
    model = make()
    sn = sk.convert(model, space)
    return request.param, model, sn, inputs


# --------------------------------------------------------------------------- equality
def test_family_detected_and_max_config_matches_original(fam):
    name, model, sn, inputs = fam
    assert sn.family == name
    assert sn.active_config() == sn.max_config()
    torch.manual_seed(1)
    x = inputs(None)
    with torch.no_grad():
        ref, out = model(x), sn(x)
    assert rel(out, ref) <= 1e-5, rel(out, ref)
    # the user's model is untouched (convert works on a deep copy)
    assert not any(isinstance(m, ElasticLinear) for m in model.modules())


def test_sampled_configs_extract_equal_supernet(fam):
    name, model, sn, inputs = fam
    rng = random.Random(0)
    configs = [sn.sample_config(rng) for _ in range(5)] + [sn.min_config()]
    kinds = set()
    for cfg in configs:
        sn.set_active(cfg)
        assert sn.active_config() == cfg
        torch.manual_seed(2)
        x = inputs(cfg["resolution"])
        sub = sn.extract()
        with torch.no_grad():
            y, ys = sn(x), sub(x)
        assert torch.isfinite(y).all()
        assert rel(ys, y) <= 1e-5, (cfg, rel(ys, y))
        assert not any(isinstance(m, ElasticLinear | ElasticBlock) for m in sub.modules())
        kinds |= {type(m).__name__ for m in sub.modules()}
        assert sub.sk_subnet["config"] == cfg
    assert "LowRankLinear" in kinds
    if name in ("timm_vit", "timm_swin", "sam"):
        assert "QuantLinear" in kinds
    if name == "sam":  # W4A8 / W8A8 (int8 activations) among the samples
        assert any(c["a_bits"] == 8 for cfg in configs for c in cfg["linear"].values())
    sn.set_active(sn.max_config())


def test_empty_batch_runs_like_the_original(fam):
    """A zero-size batch runs through the supernet (max, min, and while training, backward
    included) and its extracted subnets as through the original model. The timm ViT failed
    before: convert's dynamic image size reshapes with view(B, -1, C)."""
    name, model, sn, inputs = fam
    x = inputs(None)[:0]
    try:
        with torch.no_grad():
            original = model(x).shape
    except RuntimeError:  # SAM's and Swin's own attention reshape with -1 too
        original = None
    for cfg in (sn.max_config(), sn.min_config()):
        sn.set_active(cfg)
        xe = inputs(cfg["resolution"])[:0]
        with torch.no_grad():
            y = sn(xe)
            assert y.shape[0] == 0 and y.shape[1:] == sn(inputs(cfg["resolution"])).shape[1:]
            if original is not None:
                assert sn.extract()(xe).shape == y.shape
    sn.set_active(sn.max_config())
    with torch.no_grad():
        assert original is None or sn(x).shape == original
    sn.train()
    try:
        xg = x.clone().requires_grad_(True)
        sn(xg).sum().backward()
        assert xg.grad is not None and xg.grad.shape == x.shape
    finally:
        sn.zero_grad(set_to_none=True)
        sn.eval()


def test_extract_with_config_keeps_active_and_removes_blocks(fam):
    name, model, sn, inputs = fam
    droppable = [b for b, c in sn.space["depth"].items() if False in c]
    assert droppable, name
    cfg = sn.min_config()
    before = sn.active_config()
    sub = sk.extract(sn, cfg)
    assert sn.active_config() == before
    n_before = sum(1 for m in sn.model.modules() if isinstance(m, ElasticBlock))
    assert n_before == len(droppable)
    # dropped blocks are gone from their container
    if name == "timm_vit":
        assert len(sub.blocks) == 3 - len(droppable)
    if name == "generic":
        assert len(sub.layers) == 2


def test_extract_is_standalone():
    sn = sk.convert(make_vit())
    cfg = sn.sample_config(3)
    sn.set_active(cfg)
    x = torch.randn(2, 3, cfg["resolution"], cfg["resolution"])
    with torch.no_grad():
        want = sn(x)
    sub = sn.extract()
    del sn
    gc.collect()
    with torch.no_grad():
        assert torch.equal(sub(x), want)
    ids = {id(p) for p in sub.parameters()}
    assert len(ids) == len(list(sub.parameters()))


def test_vit_resolution():
    model = make_vit()
    sn = sk.convert(model)
    assert sn.space["resolution"] == [24, 32]
    sn.set_active({"resolution": 24})
    with pytest.raises(ValueError, match="resolution is 24x24"):
        sn(torch.randn(1, 3, 32, 32))
    x = torch.randn(2, 3, 24, 24)
    sub = sn.extract()
    assert sub.pos_embed.shape[1] == 1 + 9 and sub.patch_embed.img_size == (24, 24)
    assert not sub.dynamic_img_size
    with torch.no_grad():
        assert rel(sub(x), sn(x)) <= 1e-6
    fixed = sk.convert(model, {"resolution": None})
    assert fixed.space["resolution"] == [32]


def test_inplace_and_activation_importance():
    model = make_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    batches = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    sn = sk.convert(model, importance="activation", calib_batches=batches, inplace=True)
    assert sn.model is model
    assert isinstance(model.blocks[0].mlp.fc1, ElasticLinear)
    with torch.no_grad():
        assert rel(sn(x), ref) <= 1e-5
    with pytest.raises(ValueError, match="calib_batches"):
        sk.convert(make_vit(), importance="activation")


def test_importance_orders_mlp_prefix():
    model = make_vit()
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight[200].mul_(100)  # make unit 200 the most important
    sn = sk.convert(model)
    w = sn.model.blocks[0].mlp.fc1
    u = w.u @ w.v
    assert torch.allclose(u[0], model.blocks[0].mlp.fc1.weight[200], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- validation
@pytest.fixture(scope="module")
def vit_sn():
    return sk.convert(make_vit())


BAD_CONFIGS = [
    ({"bogus": 1}, "config: unknown key 'bogus'"),
    ({"resolution": 31}, "resolution: 31 is not one of [24, 32]"),
    ({"resolution": "32"}, "resolution: '32' is not one of"),
    ({"depth": {"blocks.9": False}}, "depth.blocks.9: unknown block"),
    ({"depth": {"blocks.0": False}}, "depth.blocks.0: false is not one of [true]"),
    ({"depth": {"blocks.1": 0}}, "depth.blocks.1: 0 is not one of"),
    ({"depth": []}, "depth: expected a dict"),
    ({"mlp": {"blocks.0.mlp": 100}}, "mlp.blocks.0.mlp: 100 is not one of [64, 88"),
    ({"mlp": {"blocks.0.mlp": 64.0}}, "mlp.blocks.0.mlp: 64.0 is not one of"),
    ({"mlp": {"blocks.0.fc": 64}}, "mlp.blocks.0.fc: unknown MLP"),
    ({"linear": {"blocks.0.attn.qkv": {"rank": 999}}}, "linear.blocks.0.attn.qkv.rank: 999"),
    ({"linear": {"blocks.0.attn.qkv": {"rank": None}}}, "linear.blocks.0.attn.qkv.rank: null"),
    ({"linear": {"blocks.0.attn.qkv": {"w_bits": 4}}}, "linear.blocks.0.attn.qkv.w_bits: 4 is"),
    ({"linear": {"blocks.0.attn.proj": {"w_bits": 3}}}, "linear.blocks.0.attn.proj.w_bits: 3"),
    ({"linear": {"blocks.0.attn.proj": {"a_bits": 8}}}, "linear.blocks.0.attn.proj.a_bits: 8"),
    ({"linear": {"blocks.0.attn.proj": {"rank": 8}}}, "linear.blocks.0.attn.proj.rank: 8"),
    ({"linear": {"blocks.0.attn.proj": {"bits": 8}}}, "linear.blocks.0.attn.proj: unknown key"),
    ({"linear": {"blocks.0.attn.proj": 8}}, "linear.blocks.0.attn.proj: expected a dict"),
    ({"linear": {"blocks.0.attn.qkvv": {}}}, "linear.blocks.0.attn.qkvv: unknown layer"),
    ({"linear": {"blocks.0.attn.qkv": {"rank": True}}}, "linear.blocks.0.attn.qkv.rank: true"),
    # cross-check: fc1 rank 64 is fine at width 256, not at width 64 ... it is (min(64, 64));
    # fc2 of a narrower MLP: rank above the active input width
]


@pytest.mark.parametrize("bad,msg", BAD_CONFIGS, ids=[m.split(":")[0] for _, m in BAD_CONFIGS])
def test_bad_configs_name_the_key_and_change_nothing(vit_sn, bad, msg):
    sn = vit_sn
    good = sn.sample_config(7)
    sn.set_active(good)
    with pytest.raises(ValueError) as info:
        sn.set_active({**sn.min_config(), **bad})
    assert msg in str(info.value), str(info.value)
    assert sn.active_config() == good
    lin = sn.model.blocks[0].mlp.fc1
    assert lin.active_out == good["mlp"]["blocks.0.mlp"]
    assert lin.active_rank == good["linear"]["blocks.0.mlp.fc1"]["rank"]


def test_rank_cross_check_with_mlp_width():
    sn = sk.convert(make_gen(), GEN_SPACE)
    # fc2 of layers.0.ff: in = mlp width; rank choices of min(64, 32) = 32 -> [4..32]
    with pytest.raises(
        ValueError, match=r"linear.layers.0.ff.2.rank: 32 exceeds min\(in, out\) = 16"
    ):
        sn.set_active(
            {
                "mlp": {"layers.0.ff": 16},
                "linear": {"layers.0.ff.0": {"rank": 16}, "layers.0.ff.2": {"rank": 32}},
            }
        )
    sn.set_active(
        {
            "mlp": {"layers.0.ff": 16},
            "linear": {"layers.0.ff.0": {"rank": 16}, "layers.0.ff.2": {"rank": 16}},
        }
    )
    for seed in range(20):  # samples respect it
        sn.set_active(sn.sample_config(seed))


def test_partial_config_keeps_the_rest(vit_sn):
    sn = vit_sn
    sn.set_active(sn.max_config())
    sn.set_active({"linear": {"blocks.1.attn.proj": {"w_bits": 4}}})
    cfg = sn.active_config()
    assert cfg["linear"]["blocks.1.attn.proj"]["w_bits"] == 4
    assert cfg["mlp"] == sn.max_config()["mlp"]
    sn.set_active(sn.max_config())


def test_configs_and_space_are_json(vit_sn):
    sn = vit_sn
    for cfg in (sn.max_config(), sn.min_config(), sn.sample_config(5)):
        back = json.loads(json.dumps(cfg))
        assert back == cfg
        sn.set_active(back)
    assert json.loads(json.dumps(sn.space)) == sn.space
    assert sn.sample_config(11) == sn.sample_config(random.Random(11))
    sn.set_active(sn.max_config())


def test_default_space_shape(vit_sn):
    sp = vit_sn.space
    assert sp["linear"]["blocks.0.attn.qkv"]["rank"] == [8, 16, 24, 32, 40, 48, 56, 64]
    assert sp["linear"]["blocks.0.attn.proj"] == {
        "rank": [None],
        "w_bits": [4, 8, 16],
        "a_bits": [16],
    }
    assert sp["linear"]["head"] == {"rank": [None], "w_bits": [16], "a_bits": [16]}
    assert sp["mlp"]["blocks.0.mlp"] == [64, 88, 128, 192, 256]
    assert sp["depth"] == {"blocks.0": [True], "blocks.1": [False, True], "blocks.2": [True]}


def test_space_overrides():
    sn = sk.convert(
        make_vit(),
        {
            "linear": {
                "blocks.*.mlp.fc1": {"rank": [None], "w_bits": [4, 16], "a_bits": [8, 16]},
                "blocks.0.attn.qkv": {"rank": [16, 64]},
            },
            "mlp": {"blocks.2.mlp": [128, 256]},
            "depth": {"blocks.*": [False, True]},
            "resolution": [16, 32],
        },
    )
    sp = sn.space
    assert sp["linear"]["blocks.1.mlp.fc1"] == {
        "rank": [None],
        "w_bits": [4, 16],
        "a_bits": [8, 16],
    }
    assert sp["linear"]["blocks.0.attn.qkv"]["rank"] == [16, 64]
    assert sp["mlp"]["blocks.2.mlp"] == [128, 256]
    assert all(v == [False, True] for v in sp["depth"].values())
    assert sp["resolution"] == [16, 32]
    cfg = sn.min_config()
    assert cfg["linear"]["blocks.1.mlp.fc1"] == {"rank": None, "w_bits": 4, "a_bits": 8}
    sn.set_active(cfg)
    sub = sn.extract()
    assert len(sub.blocks) == 0
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert rel(sub(x), sn(x)) <= 1e-5


@pytest.mark.parametrize(
    "space,msg",
    [
        ({"linear": {"blocks.*.nope": {"rank": [8]}}}, "space.linear.blocks.*.nope: matches no"),
        ({"linear": {"blocks.0.attn.qkv": {"rank": [8, None]}}}, "either dense"),
        ({"linear": {"blocks.0.attn.qkv": {"w_bits": [8, 16]}}}, "runs 16-bit only"),
        ({"linear": {"blocks.0.attn.proj": {"w_bits": [16], "a_bits": [8]}}}, "a_bits 8 needs"),
        ({"linear": {"blocks.0.attn.qkv": {"rank": [65]}}}, "65 is not null or an int in 1..64"),
        ({"mlp": {"blocks.0.mlp": [0]}}, "space.mlp.blocks.0.mlp: 0 is neither a width in 1..256"),
        ({"mlp": {"blocks.0.mlp": [1.5]}}, "space.mlp.blocks.0.mlp: 1.5 is neither a width"),
        (
            {"mlp": {"blocks.0.mlp": [32]}, "linear": {"blocks.0.mlp.fc1": {"rank": [40]}}},
            "smallest rank 40 exceeds",
        ),
        ({"resolution": [30]}, "not a positive multiple of the patch size 8"),
        ({"depth": {"blocks.0": [1]}}, "space.depth.blocks.0: 1 is not a bool"),
        ({"depth": {"nope": [True]}}, "space.depth.nope: the model has no module"),
        ({"mlp": {"blocks.0": [8]}}, "exactly two"),
        ({"mlp": {"blocks.0.attn": [8]}}, "!= blocks.0.attn.proj.in_features (64)"),
        ({"extra": {}}, "space: unknown key 'extra'"),
    ],
)
def test_bad_spaces(space, msg):
    with pytest.raises(ValueError, match=None) as info:
        sk.convert(make_vit(), space)
    assert msg in str(info.value), str(info.value)


def test_space_mlp_accepts_fractions_as_the_readme_gives_them():
    sn = sk.convert(make_vit(), {"mlp": {"blocks.*.mlp": [0.25, 0.5, 1.0]}})
    assert sn.space["mlp"]["blocks.0.mlp"] == [64, 128, 256]  # hidden 256; configs take widths
    sn.set_active({"mlp": {"blocks.0.mlp": 64}})
    with pytest.raises(ValueError, match=r"mlp.blocks.0.mlp: 0.25 is not one of \[64, 128, 256\]"):
        sn.set_active({"mlp": {"blocks.0.mlp": 0.25}})


def test_generic_skips_weight_reading_parents():
    model = nn.Sequential(
        nn.Linear(8, 16), nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), nn.Linear(16, 4)
    ).eval()
    sn = sk.convert(model)
    assert set(sn.space["linear"]) == {"0", "2"}
    assert any("TransformerEncoderLayer" in r for r in sn.skipped.values())
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        assert rel(sn(x), model(x)) <= 1e-5


# --------------------------------------------------------------------------- save / load
def test_save_load_vit_by_name(tmp_path, vit_sn):
    sn = vit_sn
    assert sn.build == {
        "kind": "timm",
        "name": "vit_tiny_patch16_224",
        "kwargs": {
            "img_size": 32,
            "patch_size": 8,
            "num_classes": 10,
            "embed_dim": 64,
            "depth": 3,
            "num_heads": 4,
        },
    }
    cfg = sn.sample_config(4)
    cfg["resolution"] = 24
    cfg["depth"]["blocks.1"] = False
    cfg["linear"]["blocks.2.attn.proj"] = {"rank": None, "w_bits": 4, "a_bits": 16}
    cfg["linear"]["blocks.0.attn.qkv"]["rank"] = 8  # low enough for the factors to pay
    sub = sn.extract(cfg)
    path = sk.save(sub, tmp_path / "sub.safetensors")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    back = sk.load(path)
    assert len(back.blocks) == 2
    assert isinstance(back.blocks[1].attn.proj, QuantLinear)
    assert isinstance(back.blocks[0].attn.qkv, LowRankLinear)
    assert back.sk_subnet["config"] == cfg
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(back(x), sub(x))
    # a skeleton works too
    back2 = sk.load(path, skeleton=make_vit())
    with torch.no_grad():
        assert torch.equal(back2(x), sub(x))


def test_save_load_sam_by_class(tmp_path):
    model = make_sam()
    sn = sk.convert(model)
    assert sn.build["kind"] == "class" and sn.build["kwargs"]["global_attn_indexes"] == [1]
    sub = sn.extract(sn.sample_config(2))
    back = sk.load(sk.save(sub, tmp_path / "sam.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), sub(x))


def test_save_load_generic_with_skeleton(tmp_path):
    sn = sk.convert(make_gen(), GEN_SPACE)
    assert sn.build is None
    cfg = sn.sample_config(1)
    cfg["depth"]["layers.1"] = False
    sub = sn.extract(cfg)
    path = sk.save(sub, tmp_path / "gen.safetensors")
    with pytest.raises(ValueError, match="pass skeleton="):
        sk.load(path)
    back = sk.load(path, skeleton=Gen())
    assert len(back.layers) == 2
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        assert torch.equal(back(x), sub(x))


def test_save_refuses_non_subnets(tmp_path, vit_sn):
    with pytest.raises(ValueError, match="saved to a folder.*extract it first"):
        sk.save(vit_sn, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="not a subnet extracted"):
        sk.save(make_gen(), tmp_path / "x.safetensors")


def test_corrupt_and_foreign_files_refused(tmp_path, vit_sn):
    path = sk.save(vit_sn.extract(vit_sn.sample_config(9)), tmp_path / "v.safetensors")
    data = path.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        sk.load(trunc)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 32)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        sk.load(junk)
    # another model: a ViT file into a generic skeleton, and into a deeper / wider ViT
    with pytest.raises(ValueError, match="from another model"):
        sk.load(path, skeleton=make_gen())
    other = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=64,
        num_heads=4,
        num_classes=10,
    )
    with pytest.raises(ValueError, match="another model"):
        sk.load(path, skeleton=other)
    wide = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=3,
        embed_dim=32,
        num_heads=4,
        num_classes=10,
    )
    with pytest.raises(ValueError, match="another model"):
        sk.load(path, skeleton=wide)
    # corrupt metadata
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    for meta, msg in [
        ({}, "no 'supernet_kernels' metadata"),
        ({"supernet_kernels": "{not json"}, "corrupt metadata"),
        ({"supernet_kernels": json.dumps({"format": "sk-subnet-v9"})}, "corrupt metadata"),
    ]:
        bad = tmp_path / "bad.safetensors"
        save_file(tensors, str(bad), metadata=meta)
        with pytest.raises(ValueError, match=msg):
            sk.load(bad)
    # a quantized-model file is not a subnet file
    qm = nn.Sequential(nn.Linear(256, 256))
    sk.quantize_model(qm, bits=4)
    sk.save_quantized(qm, tmp_path / "q.safetensors")
    with pytest.raises(ValueError, match="sk-quant-model-v1"):
        sk.load(tmp_path / "q.safetensors")


def test_swin_build_record():
    sn = sk.convert(make_swin())
    assert sn.build is not None and sn.build["kind"] == "class"
    assert "layers.1.downsample.reduction" in sn.space["linear"]
    rebuilt = sk.supernet.families.rebuild(sn.build)
    assert type(rebuilt).__name__ == "SwinTransformer"


def test_deepcopy_of_supernet_is_independent(vit_sn):
    sn2 = copy.deepcopy(vit_sn)
    sn2.set_active(sn2.min_config())
    assert vit_sn.active_config() != sn2.active_config()


def test_generic_block_outside_a_container_becomes_identity(tmp_path):
    sn = sk.convert(make_gen(), {"depth": {"layers.2.q": [False, True]}})
    cfg = sn.max_config()
    cfg["depth"]["layers.2.q"] = False
    sub = sn.extract(cfg)
    assert isinstance(sub.layers[2].q, nn.Identity) and len(sub.layers) == 3
    sn.set_active(cfg)
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        assert rel(sub(x), sn(x)) <= 1e-5
        back = sk.load(sk.save(sub, tmp_path / "g.safetensors"), skeleton=Gen())
        assert torch.equal(back(x), sub(x))


def test_supernet_moves_like_a_module():
    """Supernet keeps nn.Module's _apply: .to() / .double() reach the converted model."""
    sn = sk.convert(make_vit())
    sn.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in sn.parameters())
