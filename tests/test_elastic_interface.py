"""The one interface of every elastic layer (``set_active(**choice)``, ``active_choice()``,
``choices()``), ``ElasticLinear.add_lora``, the 8-bit activation rule's one home, the family
table and ``Supernet.module``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import supernet_kernels as sk
from supernet_kernels.nn import ElasticBlock, ElasticLinear, ElasticLowRankLinear
from supernet_kernels.nn.elastic import A_BITS, W_BITS, bits_compatible


def _elastic_layers():
    torch.manual_seed(0)
    lin = nn.Linear(40, 24)
    return [
        ElasticLinear.from_linear(lin, w_bits_choices=(4, 8, 16), a_bits_choices=(8, 16)),
        ElasticLinear.from_linear(lin, rank_choices=[4, 12, 24]),
        ElasticLowRankLinear.from_linear(lin, max_rank=20),
        ElasticBlock(nn.Identity()),
    ]


@pytest.mark.parametrize("index", range(4))
def test_every_choice_round_trips_through_set_active(index):
    layer = _elastic_layers()[index]
    first = layer.active_choice()
    seen = []
    for choice in layer.choices():
        layer.set_active(**choice)
        now = layer.active_choice()
        assert all(now[k] == v for k, v in choice.items()), (choice, now)
        seen.append(now)
    assert len({tuple(sorted(s.items())) for s in seen}) == len(layer.choices()) > 1
    layer.set_active(**first)
    assert layer.active_choice() == first


def test_choice_keys_are_the_latency_table_keys():
    # Stored latency tables name choices by these keys: they must not change.
    dense, fact, lowrank, _ = _elastic_layers()
    assert sorted(dense.active_choice()) == ["a_bits", "in_features", "out", "rank", "w_bits"]
    assert sorted(lowrank.active_choice()) == ["in_features", "out_features", "rank"]
    assert fact.choices() == [{"rank": r, "w_bits": 16, "a_bits": 16} for r in (4, 12, 24)]
    assert {(c["w_bits"], c["a_bits"]) for c in dense.choices()} == {
        (4, 8), (4, 16), (8, 8), (8, 16), (16, 16)
    }  # fmt: skip
    assert lowrank.choices() == [{"rank": r} for r in (5, 10, 15, 20)]


def test_width_has_one_name_for_both_layers():
    dense, _, lowrank, _ = _elastic_layers()
    dense.set_active(out_features=10)
    lowrank.set_active(out=10)
    assert dense.active_out == 10 and lowrank.active_out_features == 10
    x = torch.randn(3, 40)
    assert dense(x).shape == lowrank(x).shape == (3, 10)
    with pytest.raises(ValueError, match="name the same width"):
        dense.set_active(out=5, out_features=6)
    with pytest.raises(ValueError, match="name the same width"):
        lowrank.set_active(out=5, out_features=6)
    dense.set_active(7)  # the old positional signature
    assert dense.active_out == 7


def test_add_lora_matches_the_constructor_and_keeps_the_function():
    torch.manual_seed(1)
    lin = nn.Linear(32, 16)
    layer = ElasticLinear.from_linear(lin, rank_choices=[8, 16])
    x = torch.randn(4, 32)
    before = layer(x)
    layer.add_lora(4, alpha=8)
    assert layer.lora_a.shape == (4, 32) and layer.lora_b.shape == (16, 4)
    assert layer.lora_scaling == 2.0
    assert not layer.u.requires_grad and not layer.v.requires_grad and layer.lora_a.requires_grad
    torch.testing.assert_close(layer(x), before)  # lora_b is zero
    with pytest.raises(ValueError, match="already has LoRA"):
        layer.add_lora(4)
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        ElasticLinear.from_linear(lin).add_lora(0)


def test_bits_rule_has_one_answer_everywhere():
    for w in W_BITS:
        for a in A_BITS:
            ok = bits_compatible(w, a)
            assert ok == (a == 16 or w <= 8)
            layer = ElasticLinear(16, 8, w_bits_choices=W_BITS, a_bits_choices=A_BITS)
            if ok:
                layer.set_active(w_bits=w, a_bits=a)
            else:
                with pytest.raises(ValueError, match="a_bits 8 needs w_bits <= 8"):
                    layer.set_active(w_bits=w, a_bits=a)


def test_fake_quant_linear_moved_with_the_old_import_kept():
    from supernet_kernels.nn import FakeQuantLinear
    from supernet_kernels.quant.fake import FakeQuantLinear as Old

    assert Old is FakeQuantLinear and FakeQuantLinear.__module__ == "supernet_kernels.nn.fake_quant"


def test_family_table_and_module_paths():
    from supernet_kernels.supernet.families import FAMILIES, detect_family

    assert list(FAMILIES)[-1] == "generic" and detect_family(nn.Linear(2, 2)) == "generic"
    model = nn.Sequential(
        nn.Linear(16, 16), nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    )
    sn = sk.convert(model, space={"depth": {"1": [False, True]}, "mlp": {"1": [16, 32]}})
    assert sn.module("0") == "model.0"
    assert sn.module("1") == "model.1.block"
    assert sn.module("1.0") == "model.1.block.0"
    assert sn.get_submodule(sn.module("1.2")) is sn.elastic_linears()["1.2"]


def _attention_modules():
    pytest.importorskip("timm")
    pytest.importorskip("segment_anything")
    from segment_anything.modeling.image_encoder import Attention as SamAttention
    from timm.layers.attention import Attention
    from timm.models.swin_transformer import WindowAttention

    from supernet_kernels.supernet.attention import SKSamAttention, SKViTAttention
    from supernet_kernels.supernet.swin_attention import SKSwinAttention

    torch.manual_seed(0)
    return (
        SKViTAttention.from_module(Attention(32, num_heads=4)),
        SKSamAttention.from_module(SamAttention(32, num_heads=4, input_size=(2, 2))),
        SKSwinAttention.from_module(WindowAttention(32, num_heads=4, window_size=2)),
    )


def test_attention_heads_are_the_common_interface():
    vit, sam, swin = _attention_modules()
    x = torch.randn(1, 4, 32)
    for att in (vit, sam):
        assert att.choices() == [{"heads": h} for h in (1, 2, 3, 4)]
        for choice in att.choices():
            att.set_active(**choice)
            assert att.active_choice() == choice and att.num_heads == choice["heads"]
        with pytest.raises(ValueError, match="heads 5 exceeds the module's 4"):
            att.set_active(heads=5)
        with pytest.raises(ValueError, match="heads must be an int >= 1, got True"):
            att.set_active(heads=True)
        with pytest.warns(DeprecationWarning, match="set_active"):
            att.set_heads(2)
        assert att.active_choice() == {"heads": 2}
    # Swin: one choice, all heads (elastic heads are not implemented there).
    assert swin.choices() == [swin.active_choice()] == [{"heads": 4}]
    swin.set_active(heads=4)
    with pytest.raises(ValueError, match="must be the module's 4"):
        swin.set_active(heads=2)
    with torch.no_grad():
        assert swin(x).shape == x.shape
