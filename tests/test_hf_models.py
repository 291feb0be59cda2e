"""Hugging Face transformers ViT and SAM as first-class families (tiny random configs, CPU):
depth, MLP width, heads (ViT), rank and bits; exact at the max config; extracted subnets equal
the supernet and save / load exactly without a skeleton; save_pretrained refuses models holding
our layers (transformers would re-initialize them silently)."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import supernet_kernels as sk
from supernet_kernels.nn import ElasticLinear, LowRankLinear, QuantLinear

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def hf_vit():
    cfg = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, num_labels=5,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(cfg).eval()


def hf_sam():
    vc = transformers.SamVisionConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64, patch_size=16,
        mlp_dim=64, output_channels=16, window_size=2, global_attn_indexes=[1],
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.SamModel(transformers.SamConfig(vision_config=vc.to_dict())).eval()


def vit_out(m, x):
    return m(pixel_values=x).logits


def sam_out(m, x):
    return m.get_image_embeddings(x)


FAMILIES = {
    "hf_vit": (hf_vit, vit_out, (2, 3, 32, 32)),
    "hf_sam": (hf_sam, sam_out, (1, 3, 64, 64)),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request):
    make, run, shape = FAMILIES[request.param]
    model = make()
    return request.param, model, sk.convert(model), run, shape


def test_family_space_and_max_config(fam):
    name, model, sn, run, shape = fam
    assert sn.family == name and sn.build is not None and sn.build["kind"] == "hf"
    sp = sn.space
    factorized = [n for n, s in sp["linear"].items() if s["rank"] != [None]]
    quantizable = [n for n, s in sp["linear"].items() if len(s["w_bits"]) > 1]
    assert len(sp["mlp"]) == (3 if name == "hf_vit" else 4)
    assert any(False in c for c in sp["depth"].values())
    assert factorized and quantizable
    if name == "hf_vit":
        assert all(c == [2, 3, 4] for c in sp["heads"].values())
    x = torch.randn(*shape)
    with torch.no_grad():
        ref, out = run(model, x), run(sn.model, x)
    assert ((out - ref).norm() / ref.norm()).item() <= 1e-5


def test_sampled_subnets_extract_and_load_exactly(fam, tmp_path):
    name, model, sn, run, shape = fam
    rng = random.Random(0)
    kinds = set()
    for i, cfg in enumerate([sn.min_config()] + [sn.sample_config(rng) for _ in range(3)]):
        sn.set_active(cfg)
        sub = sn.extract()
        x = torch.randn(*shape)
        with torch.no_grad():
            a, b = run(sn.model, x), run(sub, x)
        assert torch.isfinite(a).all() and ((a - b).norm() / a.norm()).item() <= 1e-5
        assert not any(isinstance(m, ElasticLinear) for m in sub.modules())
        kinds |= {type(m) for m in sub.modules()}
        path = sk.save(sub, tmp_path / f"s{i}.safetensors")
        back = sk.load(path)  # the build record rebuilds it: no skeleton
        with torch.no_grad():
            assert torch.equal(run(back, x), b)
    assert LowRankLinear in kinds and QuantLinear in kinds
    sn.set_active(sn.max_config())


def test_save_pretrained_refuses_instead_of_reinitializing(fam, tmp_path):
    name, model, sn, run, shape = fam
    sub = sn.extract(sn.min_config())
    for m in (sub, sn.model):
        with pytest.raises(NotImplementedError, match="supernet_kernels.save"):
            m.save_pretrained(tmp_path / "p")
    assert not (tmp_path / "p").exists()
    model.save_pretrained(tmp_path / "orig")  # the user's own model is untouched


def test_whole_supernet_round_trip(fam, tmp_path):
    name, model, sn, run, shape = fam
    sk.save(sn, tmp_path / "sn")
    back = sk.load(tmp_path / "sn")
    x = torch.randn(*shape)
    cfg = sn.sample_config(3)
    sn.set_active(cfg)
    back.set_active(cfg)
    with torch.no_grad():
        assert torch.equal(run(back.model, x), run(sn.model, x))
    sn.set_active(sn.max_config())


def test_quantized_hf_vit_saves_through_the_documented_path(tmp_path):
    model = hf_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = vit_out(model, x)
    q = copy.deepcopy(model)
    report = sk.quantize_model(q, bits=8, group_size=-1)
    assert report.quantized
    with pytest.raises(NotImplementedError, match="save_quantized"):
        q.save_pretrained(tmp_path / "p")
    path = sk.save_quantized(q, tmp_path / "q.safetensors")
    back = sk.load_quantized(hf_vit(), path)
    with torch.no_grad():
        out = vit_out(back, x)
        assert torch.equal(out, vit_out(q, x))
    assert ((out - ref).norm() / ref.norm()).item() < 10 ** (-25 / 20)


def test_hf_record_with_absurd_layer_count_is_refused(tmp_path):
    sn = sk.convert(hf_vit())
    path = sk.save(sn.extract(sn.min_config()), tmp_path / "s.safetensors")
    with safe_open(str(path), framework="pt") as f:
        doc = json.loads(f.metadata()["supernet_kernels"])
    doc["build"]["kwargs"]["num_hidden_layers"] = 10**7
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(path)), str(bad), metadata={"supernet_kernels": json.dumps(doc)})
    with pytest.raises(ValueError, match="num_hidden_layers|blocks"):
        sk.load(bad)


def test_empty_batch_through_the_hf_vit_supernet():
    """transformers' own ViT cannot run B = 0 (view with -1 heads); the supernet can."""
    sn = sk.convert(hf_vit())
    for cfg in (sn.max_config(), sn.min_config()):
        sn.set_active(cfg)
        with torch.no_grad():
            out = sn(pixel_values=torch.randn(0, 3, 32, 32)).logits
        assert out.shape == (0, 5)
