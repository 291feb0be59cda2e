"""Cost model: flop formulas of our ops, profile() rows and totals, agreement with
FlopCounterMode on timm / segment-anything models (built on the meta device, counted under
FakeTensorMode: seconds, no real arithmetic), and the latency table's logic on CPU."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import supernet_kernels.cost as cost
from supernet_kernels.cost.profile import OTHER_ACT
from supernet_kernels.nn import ElasticLowRankLinear, LowRankLinear, QuantLinear
from supernet_kernels.quant.packing import packed_width

# --------------------------------------------------------------------------- formulas


def _flops(fn, *args):
    with FlopCounterMode(display=False) as fc:
        fn(*args)
    return fc.get_total_flops()


def test_flop_formulas_of_our_ops():
    m, k, n, r = 6, 32, 24, 5
    x = torch.randn(2, 3, k)
    u, v = torch.randn(n + 4, 8), torch.randn(8, k)
    f = _flops(lambda: torch.ops.supernet_kernels.lowrank_linear(x, u, v, r, n, None))
    assert f == 2 * m * r * (k + n)
    q = QuantLinear(k, n, bits=4, group_size=16)
    assert _flops(q, x) == 2 * m * n * k
    w8, s8 = torch.zeros(n, k, dtype=torch.int8), torch.ones(n)
    assert _flops(lambda: torch.ops.supernet_kernels.int8_linear(x, w8, s8, None)) == 2 * m * n * k
    from torch._subclasses import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):  # fp8 matmul: shapes only
        wf = torch.zeros(n, k, dtype=torch.float8_e4m3fn)
        f8 = _flops(lambda: torch.ops.supernet_kernels.fp8_linear(x, wf, s8, None))
    assert f8 == 2 * m * n * k


def test_flop_formula_of_attention_op():
    if not hasattr(torch.ops.supernet_kernels, "attention"):
        pytest.skip("no supernet_kernels::attention op in this build")
    b, h, t, d = 1, 2, 12, 8
    q = k = v = torch.randn(b, h, t, d)
    f = _flops(lambda: torch.ops.supernet_kernels.attention(q, k, v, None, None, 0.5))
    assert f == 2 * 2 * b * h * t * t * d


# --------------------------------------------------------------------------- profile


def test_two_layer_mlp_hand_formula():
    b, t, k, h, n = 2, 5, 16, 40, 12
    model = nn.Sequential(nn.Linear(k, h), nn.GELU(), nn.Linear(h, n))
    p = cost.profile(model, (b, t, k))
    m = b * t
    assert p.total_macs == m * (k * h + h * n)
    assert p.total_params == sum(q.numel() for q in model.parameters())
    assert [r.name for r in p.layers] == ["0", "2"]
    assert p.layer("0").macs == m * k * h and p.layer("2").macs == m * h * n
    assert p.total_bitops == p.total_macs * 16 * 16
    assert p.total_weight_bytes == 4 * p.total_params  # fp32 storage
    p32 = cost.profile(model, torch.randn(b, t, k), base_bits=32)
    assert p32.total_bitops == p.total_macs * 32 * 32
    d = p.to_dict()
    assert json.loads(json.dumps(d))["total_macs"] == p.total_macs
    assert "total" in str(p) and "GBitOPs" in str(p)


def test_quantlinear_bitops_and_bytes():
    k, n, m = 256, 64, 10
    q = QuantLinear(k, n, bits=4, group_size=128, act_bits=16, bias=False)
    p = cost.profile(q, (m, k))
    (row,) = p.layers
    assert (row.type, row.w_bits, row.a_bits) == ("QuantLinear", 4, 16)
    assert row.macs == m * n * k
    assert row.bitops == row.macs * 4 * 16 == row.macs * 64
    packed = n * packed_width(k, 4) * 4
    scales = zeros = n * (k // 128) * 4
    assert row.weight_bytes == packed + scales + zeros == q.weight_nbytes
    assert row.params == n * k
    q8 = QuantLinear(k, n, bits=8, group_size=None, act_bits=8, bias=True)
    (r8,) = cost.profile(q8, (m, k)).layers
    assert r8.bitops == r8.macs * 64
    assert r8.weight_bytes == q8.weight_nbytes + 4 * n


def test_lowrank_macs_params_bytes():
    m, k, n, r = 7, 48, 32, 6
    layer = LowRankLinear(k, n, r)
    (row,) = cost.profile(layer, (m, k)).layers
    assert row.macs == m * r * (k + n)
    assert row.params == r * (k + n) + n
    el = ElasticLowRankLinear(k, n, max_rank=16)
    el.set_active(rank=4, out_features=20, in_features=40)
    (erow,) = cost.profile(el, (m, 40)).layers
    assert erow.macs == m * 4 * (40 + 20)
    assert erow.params == 4 * (40 + 20) + 20
    assert erow.weight_bytes == 4 * erow.params  # active slice, fp32


def test_attention_counts_as_activation_products_on_cpu():
    """Real CPU weights, CPU input: F.scaled_dot_product_attention runs the CPU flash kernel,
    which torch's counter does not know; formulas.py counts it."""
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=64)
    p = cost.profile(model, torch.randn(1, 3, 64, 64))
    tokens, dim = 17, 192
    assert p.other_ops == {
        "aten._scaled_dot_product_flash_attention_for_cpu": 2 * 2 * tokens * tokens * dim
    }
    other = p.layer(OTHER_ACT)
    assert other.bitops == other.macs * 256
    for r in p.layers:
        if r.type == "Linear" and r.name.startswith("blocks."):
            lin = model.get_submodule(r.name)
            assert r.macs == tokens * lin.in_features * lin.out_features


class _ToySupernet(nn.Module):
    """Duck-typed stand-in for the Supernet API: set_active(config) / active_config()."""

    def __init__(self):
        super().__init__()
        self.fc1 = ElasticLowRankLinear(32, 32, max_rank=16)
        self.fc2 = ElasticLowRankLinear(32, 8, max_rank=8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

    def set_active(self, config):
        self.fc1.set_active(rank=config["r1"])
        self.fc2.set_active(rank=config["r2"])

    def active_config(self):
        return {"r1": self.fc1.active_rank, "r2": self.fc2.active_rank}


def test_profile_config_is_applied_and_restored():
    net = _ToySupernet()
    net.set_active({"r1": 12, "r2": 6})
    p = cost.profile(net, (4, 32), config={"r1": 2, "r2": 3})
    assert p.layer("fc1").macs == 4 * 2 * (32 + 32)
    assert p.layer("fc2").macs == 4 * 3 * (32 + 8)
    assert p.config == {"r1": 2, "r2": 3}
    assert net.active_config() == {"r1": 12, "r2": 6}
    with pytest.raises(TypeError, match="set_active"):
        cost.profile(nn.Linear(4, 4), (1, 4), config={"r1": 1})


class _Bits(nn.Module):
    """Any module with cost_bits() reports its bits (ElasticLinear's duck type)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 32))

    def cost_bits(self):
        return 3, 8

    def active_weight_params(self):
        return 8 * 32

    def forward(self, x):
        return x @ self.weight[:8].T


class _Skip(nn.Module):
    def __init__(self, inner, active):
        super().__init__()
        self.inner, self.active = inner, active

    def forward(self, x):
        return self.inner(x) if self.active else x


def test_duck_typed_bits_and_inactive_blocks():
    model = nn.Sequential(_Bits(), _Skip(nn.Linear(8, 8), active=False))
    p = cost.profile(model, (5, 32))
    row = p.layer("0")
    assert (row.w_bits, row.a_bits, row.params) == (3, 8, 256)
    assert row.bitops == 5 * 8 * 32 * 24
    assert row.weight_bytes == math.ceil(256 * 3 / 8)
    skipped = p.layer("1.inner")
    assert (skipped.active, skipped.params, skipped.macs, skipped.weight_bytes) == (False, 0, 0, 0)
    assert p.total_params == 256


def test_elastic_linear_and_block():
    elastic = pytest.importorskip("supernet_kernels.nn.elastic")
    lin = elastic.ElasticLinear(64, 32, w_bits_choices=(4, 16), a_bits_choices=(8, 16))
    lin.set_active(out=16, in_features=48, w_bits=4, a_bits=8)
    (row,) = cost.profile(lin, (3, 48)).layers
    assert (row.w_bits, row.a_bits) == (4, 8)
    assert row.macs == 3 * 16 * 48
    assert row.bitops == row.macs * 32
    assert row.params == lin.active_weight_params() == 16 * 48 + 16
    g = lin.quant_group_size()  # 48 % 128 != 0: per-channel
    assert row.weight_bytes == 16 * packed_width(48, 4) * 4 + 2 * 16 * (48 // g) * 4 + 16 * 4
    fact = elastic.ElasticLinear(64, 32, rank_choices=(8, 16))
    fact.set_active(rank=8)
    (frow,) = cost.profile(fact, (3, 64)).layers
    assert frow.macs == 3 * 8 * (64 + 32)
    model = nn.Sequential(fact, elastic.ElasticBlock(nn.Linear(32, 32), active=False))
    p = cost.profile(model, (3, 64))
    assert p.total_macs == frow.macs
    skipped = p.layer("1.block")
    assert (skipped.active, skipped.params, skipped.macs) == (False, 0, 0)
    assert p.total_params == fact.active_weight_params()


# --------------------------------------------------------------------------- dense models

MODELS = [
    ("deit_tiny_patch16_224", 224),
    ("deit_small_patch16_224", 224),
    ("deit_base_patch16_224", 224),
    ("swin_base_patch4_window7_224", 224),
    ("sam_vit_b_image_encoder", 1024),
]


def _build_meta(name):
    with torch.device("meta"):
        if name == "sam_vit_b_image_encoder":
            from segment_anything import build_sam_vit_b

            return build_sam_vit_b(checkpoint=None).image_encoder
        import timm

        return timm.create_model(name, pretrained=False)


@pytest.mark.parametrize("name,size", MODELS, ids=[m for m, _ in MODELS])
def test_macs_agree_with_flop_counter(name, size):
    """profile (FakeTensorMode, per-layer attribution) vs a plain FlopCounterMode run on the
    meta device (where SDPA decomposes into counted matmuls): within 1%."""
    model = _build_meta(name)
    shape = (1, 3, size, size)
    p = cost.profile(model, shape)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.randn(*shape, device="meta"))
    ref = fc.get_total_flops() / 2
    assert abs(p.total_macs - ref) / ref < 0.01, (p.total_macs, ref)
    assert p.total_params == sum(q.numel() for q in model.parameters())
    assert p.other_ops  # attention products are attributed outside the weight layers
    if name == "sam_vit_b_image_encoder":
        assert abs(p.total_macs / 1e9 - 486) / 486 < 0.01
    if name == "deit_tiny_patch16_224":  # per-layer hand formula: 197 tokens
        for r in p.layers:
            if r.type == "Linear" and r.name.startswith("blocks."):
                lin = model.get_submodule(r.name)
                assert r.macs == 197 * lin.in_features * lin.out_features


# --------------------------------------------------------------------------- latency


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = ElasticLowRankLinear(32, 64, max_rank=16)
        self.norm = nn.LayerNorm(64)
        self.fc2 = nn.Linear(64, 16)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


def _table(model):
    with pytest.warns(UserWarning, match="CPU times"):
        return cost.LatencyTable.build(
            model, (8, 32), "cpu", choices={"fc1": [{"rank": 4}, {"rank": 16}]}, warmup=1, reps=3
        )


def test_latency_build_predict_save_load(tmp_path):
    torch.manual_seed(0)
    model = _Tiny()
    model.fc1.set_active(rank=16)
    table = _table(model)
    assert model.fc1.active_rank == 16  # restored
    assert set(table.layers) == {"fc1", "fc2"}
    assert len(table.layers["fc1"]) == 2 and list(table.layers["fc2"]) == ["static"]
    assert table.device_name == "cpu" and table.other_ms >= 0
    k4 = "in_features=32,out_features=64,rank=4"
    k16 = "in_features=32,out_features=64,rank=16"
    fc2 = table.layers["fc2"]["static"]
    assert table.predict(model) == pytest.approx(table.layers["fc1"][k16] + fc2 + table.other_ms)
    model.fc1.set_active(rank=4)
    low = table.predict(model)
    assert low == pytest.approx(table.layers["fc1"][k4] + fc2 + table.other_ms)
    assert table.predict({"fc1": {"rank": 4}}) == pytest.approx(low)
    model.fc1.set_active(rank=5)
    with pytest.raises(KeyError, match="rank=5"):
        table.predict(model)
    path = tmp_path / "lat.json"
    table.save(path)
    loaded = cost.LatencyTable.load(path)
    assert loaded.layers == table.layers and loaded.other_ms == table.other_ms
    assert json.loads(path.read_text())["tables"]["cpu"]["current"]["fc1"] == k16
    measured = cost.LatencyTable.measure(
        model.fc1.set_active(rank=16) or model, (8, 32), "cpu", warmup=1, reps=3
    )
    assert cost.compare(table.predict(model), measured) >= 0
    assert cost.compare(1.1, 1.0) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        cost.compare(1.0, 0.0)


def test_latency_predict_config_restores():
    net = _ToySupernet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = cost.LatencyTable.build(
            net, (4, 32), "cpu", choices={"fc1": [{"rank": 2}, {"rank": 16}]}, warmup=0, reps=1
        )
    assert table.predict({"r1": 2, "r2": 8}, model=net) > 0
    assert net.active_config() == {"r1": 16, "r2": 8}
    with pytest.raises(ValueError, match="model="):
        table.predict({"r1": 2, "r2": 8})


def test_latency_table_takes_a_supernets_config_names():
    """Choices named as in the supernet's config reach layers inside droppable blocks, whose
    module path has an extra ``.block`` (the first GPU run's DeiT-B table failed on them)."""
    from helpers.models import tiny_timm_vit

    import supernet_kernels as sk

    sn = sk.convert(tiny_timm_vit(depth=4, img_size=32, patch_size=16))
    wrapped = [n for n, m in sn.model.named_modules() if n.endswith(".block")]
    assert wrapped, "the tiny ViT has a droppable (wrapped) block"
    names = [n for n, d in sn.space["linear"].items() if d["rank"] != [None]]
    rank = min(sn.space["linear"][names[0]]["rank"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = cost.LatencyTable.build(
            sn, (1, 3, 32, 32), "cpu", choices={n: [{"rank": rank}] for n in names}, warmup=0,
            reps=1,
        )  # fmt: skip
    measured = {n for n, entry in table.layers.items() if any(f"rank={rank}," in k for k in entry)}
    assert len(measured) == len(names) and any(".block." in n for n in measured)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"format": "other"}',
        '{"format": "supernet-kernels-latency-v1", "tables": '
        '{"cpu": {"layers": {"a": {"static": -1}}, "current": {"a": "static"}, "other_ms": 0}}}',
    ],
    ids=["bad-json", "bad-format", "negative-time"],
)
def test_corrupt_latency_file_raises(tmp_path, content):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="broken.json"):
        cost.LatencyTable.load(path)


def test_elastic_linear_counts_its_deployable_cost():
    """A supernet layer at a high rank runs as one dense weight: profile counts tokens * in *
    out for it (not the u @ v product formed in the forward), and equals its extracted layer."""
    from supernet_kernels.nn import ElasticLinear

    torch.manual_seed(0)
    layer = ElasticLinear.from_linear(torch.nn.Linear(48, 40), rank_choices=[8, 40])
    for r in (8, 40):
        layer.set_active(rank=r)
        got = cost.profile(layer, (3, 5, 48)).total_macs
        assert got == 15 * min(48 * 40, r * 88)
        assert got == cost.profile(layer.extract(), (3, 5, 48)).total_macs
