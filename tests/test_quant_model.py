"""quantize_model on plain, timm ViT and SAM image-encoder models; per-layer settings; the
report; save_quantized / load_quantized round trips and refusals."""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import rel_err
from torch import nn

from supernet_kernels.nn import FakeQuantLinear, QuantLinear
from supernet_kernels.quant import quantize_weight
from supernet_kernels.transform import (
    QuantizeReport,
    load_quantized,
    quantize_model,
    save_quantized,
)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, 128),
        nn.GELU(),
        nn.Linear(128, 96),
        nn.GELU(),
        nn.Linear(96, 10),
    ).eval()


def _tiny_vit(seed=0):
    vt = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(seed)
    return vt.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10
    ).eval()


def _tiny_sam_encoder(seed=0):
    sam = pytest.importorskip("segment_anything.modeling.image_encoder")
    torch.manual_seed(seed)
    return sam.ImageEncoderViT(
        img_size=64,
        patch_size=16,
        embed_dim=64,
        depth=2,
        num_heads=2,
        out_chans=32,
        use_rel_pos=True,
        window_size=2,
        global_attn_indexes=(1,),
    ).eval()


def _weight_rel_err(model_before: dict, model: nn.Module, names) -> float:
    """Worst relative error of the quantized weights against the float ones."""
    mods = dict(model.named_modules())
    return max(
        rel_err(mods[n].dequantize(torch.float32), model_before[f"{n}.weight"]) for n in names
    )


def _check_model(model, x, bits, group_size, max_quantized_err):
    """Quantize; every reported layer is a QuantLinear; output error is bounded by the weight
    error the bit-width gives (measured independently) and the reported bytes add up."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    with torch.no_grad():
        y0 = model(x)
    report = quantize_model(model, bits=bits, group_size=group_size)
    assert isinstance(report, QuantizeReport)
    names = [q[0] for q in report.quantized]
    assert sorted(names + [s[0] for s in report.skipped]) == sorted(linears)
    mods = dict(model.named_modules())
    for n, b, g, a in report.quantized:
        assert isinstance(mods[n], QuantLinear) and (mods[n].bits, mods[n].group_size) == (b, g)
        assert a == 16
    for n, _ in report.skipped:
        assert type(mods[n]) is nn.Linear
    before = sum(m.weight.numel() * 4 for m in linears.values())
    assert report.weight_bytes_before == before
    after = sum(mods[n].weight_nbytes for n in names) + sum(
        linears[n].weight.numel() * 4 for n, _ in report.skipped
    )
    assert report.weight_bytes_after == after < before
    e_w = _weight_rel_err(sd, model, names)
    with torch.no_grad():
        y = model(x)
    e = rel_err(y, y0)
    assert e < max_quantized_err, (e, e_w)
    return report, e, e_w


def test_plain_sequential_8bit():
    model = _mlp(1)
    x = torch.randn(16, 64)
    report, e, e_w = _check_model(model, x, 8, 32, 2e-2)
    assert [q[0] for q in report.quantized] == ["0", "2", "4"]
    assert e_w < 5e-3  # 8-bit min-max, group 32: ~1e-3


def test_plain_sequential_4bit_error_larger_than_8bit():
    x = torch.randn(16, 64)
    _, e8, _ = _check_model(_mlp(2), x, 8, 32, 2e-2)
    _, e4, e_w4 = _check_model(_mlp(2), x, 4, 32, 0.3)
    assert e8 < e4 / 4  # 4 fewer bits: ~16x larger steps


def test_timm_vit():
    model = _tiny_vit(3)
    x = torch.randn(2, 3, 32, 32)
    report, e, _ = _check_model(model, x, 8, 64, 2e-2)
    names = {q[0] for q in report.quantized}
    assert {"blocks.0.attn.qkv", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2", "head"} <= names
    assert report.skipped == []


def test_timm_vit_group_128_skips_narrow_layers():
    model = _tiny_vit(4)
    report = quantize_model(model, bits=4, group_size=128)
    skipped = dict(report.skipped)
    # embed_dim 64 < 128: only fc2 (in 256) can take groups of 128
    assert {q[0] for q in report.quantized} == {"blocks.0.mlp.fc2", "blocks.1.mlp.fc2"}
    assert skipped["blocks.0.attn.qkv"] == "in_features 64 not divisible by group_size 128"
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_sam_image_encoder():
    model = _tiny_sam_encoder(5)
    x = torch.randn(1, 3, 64, 64)
    report, e, _ = _check_model(model, x, 8, 64, 2e-2)
    names = {q[0] for q in report.quantized}
    assert {"blocks.0.attn.qkv", "blocks.1.attn.proj", "blocks.1.mlp.lin2"} <= names


def test_per_layer_dict_patterns():
    model = _tiny_vit(6)
    report = quantize_model(
        model,
        bits={"head": None, "blocks.*.mlp.*": 8, "*": 4},
        group_size={"blocks.*.mlp.fc2": 128, "*": 32},
        act_bits={"blocks.1.*": 8},
    )
    got = {n: (b, g, a) for n, b, g, a in report.quantized}
    assert got["blocks.0.mlp.fc1"] == (8, 32, 16)
    assert got["blocks.0.mlp.fc2"] == (8, 128, 16)
    assert got["blocks.0.attn.qkv"] == (4, 32, 16)
    assert got["blocks.1.attn.proj"] == (4, 32, 8)
    assert got["blocks.1.mlp.fc2"] == (8, 128, 8)
    assert dict(report.skipped) == {"head": "bits=None (full precision)"}
    assert isinstance(model.head, nn.Linear) and model.blocks[1].mlp.fc2.act_bits == 8


def test_dict_without_default_leaves_unmatched_layers():
    model = _mlp(7)
    report = quantize_model(model, bits={"0": 4}, group_size=None)
    assert [q[:2] for q in report.quantized] == [("0", 4)]
    assert report.quantized[0][2] == 64  # per-channel: the group is in_features
    assert dict(report.skipped) == {"2": "matched no key of bits", "4": "matched no key of bits"}


def test_callable_specs_and_skip():
    model = _mlp(8)
    report = quantize_model(
        model,
        bits=lambda name, m: 8 if m.out_features == 10 else 3,
        group_size=lambda name, m: 32,
        act_bits=lambda name, m: 8 if name == "2" else 16,
        skip=["0"],
    )
    assert report.quantized == [("2", 3, 32, 8), ("4", 8, 32, 16)]
    assert report.skipped == [("0", "matched skip")]


def test_unknown_keys_raise():
    with pytest.raises(ValueError, match=r"bits keys match no nn.Linear module: \['blocks.\*'\]"):
        quantize_model(_mlp(), bits={"blocks.*": 4})
    with pytest.raises(ValueError, match=r"group_size keys .*\['fc9'\]"):
        quantize_model(_mlp(), group_size={"fc9": 32})
    with pytest.raises(ValueError, match=r"act_bits keys"):
        quantize_model(_mlp(), act_bits={"nope": 8})
    with pytest.raises(ValueError, match=r"skip patterns match no nn.Linear module: \['x'\]"):
        quantize_model(_mlp(), skip="x")
    with pytest.raises(ValueError, match=r"bits for '0' must be one of"):
        quantize_model(_mlp(), bits=5)
    model = _mlp()
    with pytest.raises(ValueError, match=r"act_bits for '4' must be one of"):
        quantize_model(model, act_bits=lambda name, m: 4 if name == "4" else 16)
    assert all(type(m) is not QuantLinear for m in model.modules())  # checked before changing
    model = _mlp()
    with pytest.raises(ValueError):
        quantize_model(model, bits={"0": 4, "zzz": 2})
    assert all(type(m) is not QuantLinear for m in model.modules())  # nothing changed


def test_unquantizable_layers_listed_with_reasons():
    torch.manual_seed(9)
    tied = nn.Linear(64, 64)

    class Custom(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.ModuleDict(
        {
            "tiny": nn.Linear(4, 2),
            "half_group": nn.Linear(48, 8),
            "ints": nn.Linear(64, 8),
            "custom": Custom(64, 8),
            "mha": nn.MultiheadAttention(64, 2),
            "tied_a": tied,
            "emb": nn.Embedding(64, 64),
            "ok": nn.Linear(64, 32),
        }
    )
    model["emb"].weight = tied.weight
    model["ints"].weight = nn.Parameter(
        torch.randint(-8, 8, (8, 64), dtype=torch.int8), requires_grad=False
    )
    report = quantize_model(model, bits=4, group_size={"tiny": 2, "*": 32})
    reasons = dict(report.skipped)
    assert reasons["tiny"].startswith("too small")
    assert reasons["half_group"] == "in_features 48 not divisible by group_size 32"
    assert reasons["ints"] == "weight dtype torch.int8 is not floating point"
    assert reasons["custom"] == "Custom overrides nn.Linear.forward"
    assert reasons["mha.out_proj"].startswith("out_proj of nn.MultiheadAttention")
    assert reasons["tied_a"] == "weight is shared with another module (tied)"
    assert [q[0] for q in report.quantized] == ["ok"]
    text = str(report)
    for name in reasons:
        assert name in text
    assert "1 quantized, 6 skipped" in text
    d = report.to_dict()
    assert d["quantized"] == [{"name": "ok", "bits": 4, "group_size": 32, "act_bits": 16}]
    assert {s["name"] for s in d["skipped"]} == set(reasons)
    assert d["compression"] == pytest.approx(d["weight_bytes_before"] / d["weight_bytes_after"])


def test_shared_module_replaced_everywhere():
    torch.manual_seed(10)
    shared = nn.Linear(64, 64)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    report = quantize_model(model, bits=8, group_size=64)
    assert [q[0] for q in report.quantized] == ["0"]
    assert model[0] is model[2] and isinstance(model[0], QuantLinear)


def test_fake_quant_linear_exported_with_learned_scales():
    torch.manual_seed(11)
    model = nn.Sequential(FakeQuantLinear(64, 32, bits=3, group_size=32), nn.Linear(32, 64))
    with torch.no_grad():
        model[0].weight_quantizer.scale.mul_(0.8)
    x = torch.randn(4, 64)
    want = model[0].weight_quantizer(model[0].weight).detach()
    report = quantize_model(model, bits=8, group_size=32)
    assert report.quantized == [("0", 3, 32, 16), ("1", 8, 32, 16)]
    assert torch.equal(model[0].dequantize(torch.float32), want)
    assert model(x).shape == (4, 64)


# --------------------------------------------------------------------------- save / load
def _quantized_vit(seed):
    model = _tiny_vit(seed)
    quantize_model(
        model, bits={"blocks.0.*": 3, "head": None, "*": 4}, group_size=32, act_bits={"*fc2": 8}
    )
    return model


def test_save_load_round_trip_bit_exact(tmp_path):
    model = _quantized_vit(12)
    path = save_quantized(model, tmp_path / "vit.safetensors")
    assert path.exists() and not list(tmp_path.glob(".*.tmp"))  # no temp file left
    skeleton = _tiny_vit(99)  # other random float weights: all must be overwritten
    assert load_quantized(skeleton, path) is skeleton
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(skeleton(x), model(x))
    assert isinstance(skeleton.head, nn.Linear)
    assert skeleton.blocks[0].attn.qkv.bits == 3 and skeleton.blocks[1].mlp.fc2.act_bits == 8
    # loading again into the now-quantized model works too
    load_quantized(skeleton, path)


def test_save_load_half_model(tmp_path):
    model = _quantized_vit(13).half()
    save_quantized(model, tmp_path / "h.safetensors")
    skeleton = _tiny_vit(14).half()
    load_quantized(skeleton, tmp_path / "h.safetensors")
    assert skeleton.blocks[0].attn.qkv.scales.dtype == torch.float32
    x = torch.randn(1, 3, 32, 32, dtype=torch.float16)
    with torch.no_grad():
        assert torch.equal(skeleton(x), model(x))


def test_load_refuses_other_model(tmp_path):
    path = save_quantized(_quantized_vit(15), tmp_path / "vit.safetensors")
    vt = pytest.importorskip("timm.models.vision_transformer")
    wider = vt.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=96, depth=2, num_heads=2, num_classes=10
    )
    msg = r"layer 'blocks.0.attn.\w+'.*\(96, 96, True\).*from another model"
    with pytest.raises(ValueError, match=msg):
        load_quantized(wider, path)
    deeper = vt.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2, num_classes=10
    )
    with pytest.raises(ValueError, match=r"missing keys \['blocks.2"):
        load_quantized(deeper, path)
    assert all(type(m) is not QuantLinear for m in deeper.modules())  # checked before changing
    with pytest.raises(ValueError, match="no module of that name"):
        load_quantized(_mlp(), path)


def test_load_refuses_other_config_into_quantized_model(tmp_path):
    path = save_quantized(_quantized_vit(16), tmp_path / "vit.safetensors")
    model = _tiny_vit(17)
    quantize_model(model, bits={"head": None, "*": 8}, group_size=32)
    with pytest.raises(
        ValueError,
        match=r"layer 'blocks.0.attn.\w+'.*another configuration: bits=3 \(model has 8\)",
    ):
        load_quantized(model, path)


def test_load_refuses_truncated_and_foreign_files(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    path = save_quantized(_quantized_vit(18), tmp_path / "vit.safetensors")
    data = path.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 3):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            load_quantized(_tiny_vit(19), bad)
    plain = tmp_path / "plain.safetensors"
    st.save_file({"w": torch.randn(3)}, str(plain))
    with pytest.raises(ValueError, match="not written by save_quantized"):
        load_quantized(_tiny_vit(20), plain)
    corrupt = tmp_path / "corrupt.safetensors"
    st.save_file({"w": torch.randn(3)}, str(corrupt), metadata={"supernet_kernels": "{oops"})
    with pytest.raises(ValueError, match="corrupt metadata"):
        load_quantized(_tiny_vit(21), corrupt)
    with pytest.raises(FileNotFoundError):
        load_quantized(_tiny_vit(22), tmp_path / "missing.safetensors")


def test_save_without_quant_layers_refused(tmp_path):
    with pytest.raises(ValueError, match="no QuantLinear"):
        save_quantized(_mlp(), tmp_path / "x.safetensors")


def test_quantized_weights_match_quantize_weight():
    """quantize_model uses the same quantizer as quantize_weight (no drift between paths)."""
    model = _mlp(23)
    w = model[2].weight.detach().clone()
    quantize_model(model, bits=4, group_size=32, symmetric=True, clip_search=True)
    q = quantize_weight(w, 4, 32, symmetric=True, clip_search=True)
    assert torch.equal(model[2].packed, q.packed) and torch.equal(model[2].scales, q.scales)
