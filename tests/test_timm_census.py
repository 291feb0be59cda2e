"""Census of the ViT-like families timm ships: each converts exactly (the supernet at its max
config computes the original's function, empty batches included) or is refused with an error
naming the layer and the reason; the same for ``quantize_model``. Tiny random models on the CPU.

Families whose attention reads ``self.qkv.weight`` directly (BEiT, EVA, Swin V2) must come out
with those layers left as they were and listed in ``skipped`` / the report's skipped layers.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from helpers.numerics import rel_norm as rel

import supernet_kernels as sk

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")

V = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
H4 = {"depths": (1, 1, 1, 1), "embed_dims": (16, 16, 16, 16), "num_heads": (1, 1, 1, 1)}
SW = {"img_size": 32, "patch_size": 4, "window_size": 4, "embed_dim": 16, "depths": (1, 1)}

# family -> (timm name or class path, constructor kwargs, image size). One tiny instance per
# family of transformer (ViT-like) image models in timm.
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", V, 32),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", V, 32),
    "vit_relpos": ("vit_relpos_small_patch16_224", V, 32),
    "vit_siglip": ("vit_base_patch16_siglip_224", V, 32),
    "vit_rope_reg": ("vit_base_patch16_rope_reg1_gap_256", V, 32),
    "beit": ("beit_base_patch16_224", V, 32),
    "eva02": ("eva02_tiny_patch14_224", {**V, "img_size": 28, "patch_size": 14}, 28),
    "cait": ("cait_xxs24_224", {**V, "depth_token_only": 1}, 32),
    "xcit": ("xcit_nano_12_p16_224", {**V, "patch_size": 16}, 32),
    "convit": ("convit_tiny", {**V, "local_up_to_layer": 1}, 32),
    "crossvit": (
        "crossvit_tiny_240",
        {
            "img_size": [32, 32],
            "patch_size": [8, 16],
            "embed_dim": [32, 32],
            "depth": [[1, 1, 0]],
            "num_heads": [2, 2],
            "mlp_ratio": [2, 2, 1],
        },
        32,
    ),
    "pit": (
        "pit_ti_224",
        {"img_size": 32, "patch_size": 8, "stride": 4, "base_dims": [16, 16], "depth": [1, 1]}
        | {"heads": [2, 2]},
        32,
    ),
    "levit": (
        "levit_128s",
        {"img_size": 32, "embed_dim": (16, 32), "key_dim": 8, "num_heads": (2, 2)}
        | {"depth": (1, 1)},
        32,
    ),
    "pvt_v2": ("pvt_v2_b0", H4, 32),
    "twins": ("twins_pcpvt_small", {**H4, "img_size": 32}, 32),
    "swin": ("swin_tiny_patch4_window7_224", {**SW, "num_heads": (1, 2)}, 32),
    "swinv2": ("swinv2_tiny_window8_256", {**SW, "num_heads": (1, 2)}, 32),
    "swinv2_cr": (
        "swinv2_cr_tiny_224",
        {"img_size": (32, 32), "window_size": 4, "embed_dim": 16, "depths": (1, 1)}
        | {"num_heads": (1, 2)},
        32,
    ),
    "davit": ("davit_tiny", {**H4, "window_size": 4}, 32),
    "hiera": ("hiera_tiny_224", {"img_size": 64, "embed_dim": 16, "stages": (1, 1, 1, 1)}, 64),
    "tiny_vit": ("tiny_vit_5m_224", {**H4, "window_sizes": (4, 4, 4, 4)}, 64),
    "tnt": (
        "tnt_s_patch16_224",
        {"img_size": 32, "patch_size": 8, "embed_dim": 32, "inner_dim": 8, "depth": 1}
        | {"num_heads_inner": 1, "num_heads_outer": 2},
        32,
    ),
    "efficientformer": (
        "efficientformer_l1",
        {"depths": (1, 1, 1, 1), "embed_dims": (16, 16, 16, 16), "num_vit": 1},
        224,  # its last stage's attention bias is fixed at 7x7 tokens
    ),
    "nest": (
        "timm.models.nest.Nest",
        {"img_size": 32, "patch_size": 4, "embed_dims": (16, 16, 16), "num_heads": (1, 1, 1)}
        | {"depths": (1, 1, 1)},
        32,
    ),
}

# Families whose attention computes F.linear(x, self.qkv.weight, ...): that layer is skipped.
READS_QKV_WEIGHT = {"beit", "eva02", "swinv2"}


def build(family: str) -> tuple[torch.nn.Module, torch.Tensor]:
    name, kwargs, size = FAMILIES[family]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name.startswith("timm."):
            mod, _, cls = name.rpartition(".")
            model = getattr(__import__(mod, fromlist=[cls]), cls)(num_classes=10, **kwargs)
        else:
            model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    with torch.no_grad():  # zero-initialized heads (hiera) would make every output 0
        for p in model.parameters():
            if p.dtype.is_floating_point and not p.any():
                p.normal_(0, 0.02)
    return model.eval(), torch.randn(2, 3, size, size)


def _run(model, x):
    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_convert_exact_or_refused(family):
    model, x = build(family)
    ref = _run(model, x)
    try:
        sn = sk.convert(model)
    except (ValueError, TypeError) as exc:  # refused: the message names what and why
        assert "convert" in str(exc) and len(str(exc)) > 40, str(exc)
        return
    assert sn.space["linear"], f"{family}: nothing converted"
    assert rel(_run(sn, x), ref) <= 1e-4
    if family in READS_QKV_WEIGHT:
        reads = [n for n, r in sn.skipped.items() if "qkv.weight" in r]
        assert reads and all(n.endswith("attn.qkv") for n in reads), sn.skipped
    # Empty batches run as through the original (timm's dynamic size switch included).
    try:
        empty = _run(model, x[:0])
    except RuntimeError:
        return  # the original itself refuses an empty batch
    assert _run(sn, x[:0]).shape == empty.shape


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_quantize_model_exact_or_refused(family):
    model, x = build(family)
    ref = _run(model, x)
    q = copy.deepcopy(model)
    report = sk.quantize_model(q, bits=8, group_size=-1)
    if family in READS_QKV_WEIGHT:
        assert any(n.endswith("attn.qkv") and "qkv.weight" in r for n, r in report.skipped)
    out = _run(q, x)
    # 8-bit per-channel weights: the output's SQNR stays above 25 dB on these random models.
    err = (out.double() - ref.double()).norm() / ref.double().norm()
    assert report.quantized and err < 10 ** (-25 / 20), (family, float(err))


def test_convert_refuses_a_meta_device_model():
    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **V)
    with pytest.raises(ValueError, match="meta device.*blocks|meta device"):
        sk.convert(model)


def test_census_summary_names_the_skipped_layers():
    """The qkv of BEiT / EVA / Swin V2 is left dense and named with the reason; every other
    linear of those models is converted."""
    for family in sorted(READS_QKV_WEIGHT):
        model, _ = build(family)
        sn = sk.convert(model)
        n_qkv = sum(n.endswith("attn.qkv") for n, _ in model.named_modules())
        assert len([r for r in sn.skipped.values() if "reads self.qkv.weight" in r]) == n_qkv
        assert any(n.endswith("attn.proj") for n in sn.space["linear"])


def test_generic_path_warns_when_the_space_is_nearly_empty():
    cnn = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    with pytest.warns(UserWarning, match="nearly empty"):
        sn = sk.convert(cnn)
    assert sn.build == {"kind": "timm", "name": "resnet10t", "kwargs": {"num_classes": 10}}


def test_any_timm_model_by_name_gets_a_build_record(tmp_path):
    model, x = build("beit")
    assert sk.convert(model).build is None  # built with architecture kwargs: not by name
    model = timm.create_model("levit_128s", pretrained=False, num_classes=3).eval()
    with pytest.warns(UserWarning, match="nearly empty"):  # every layer dense 16-bit
        sn = sk.convert(model, space={"linear": {"*": {"rank": [None]}}})
    assert sn.build["name"] == "levit_128s" and sn.build["kwargs"]["num_classes"] == 3
    sub = sn.extract()
    sk.save(sub, tmp_path / "s.safetensors")
    back = sk.load(tmp_path / "s.safetensors")  # no skeleton needed
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(back(x), sub(x))


class _Hidden(torch.nn.Module):
    """Reads its linear's weight through getattr, which the source scan cannot see."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)
        self.out = torch.nn.Linear(16, 4)

    def forward(self, x):
        w = getattr(self.fc, "wei" + "ght")
        return self.out(torch.nn.functional.linear(x, w))


def test_a_read_the_scan_misses_names_the_problem():
    torch.manual_seed(0)
    sn = sk.convert(_Hidden())
    with pytest.raises(AttributeError, match="reads this layer's weight directly"):
        sn(torch.randn(2, 16))


def test_direct_read_scan_sees_the_parents_methods():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))

    class Reader(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.head = torch.nn.Linear(4, 2)

        def _mix(self, x):
            return torch.nn.functional.linear(x, self.proj.weight, self.proj.bias)

        def forward(self, x):
            return self.head(self._mix(x))

    from supernet_kernels._direct_reads import direct_reads

    assert set(direct_reads(Reader())) == {"proj"}
    assert direct_reads(model) == {}
