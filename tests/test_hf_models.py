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
import torch.nn.functional as F
from helpers.train import seg_data
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
    model = transformers.SamModel(transformers.SamConfig(vision_config=vc.to_dict())).eval()
    with torch.no_grad():  # the encoder's init (std 1e-10, zero rel-pos tables) hides errors
        for name, p in model.vision_encoder.named_parameters():
            if "layer_norm" not in name and p.dim() > 1:
                p.normal_(0, p.shape[-1] ** -0.5)
    return model


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


def test_hf_record_with_unknown_attention_implementation_is_refused(tmp_path):
    """The record's attention implementation picks which transformers class is built: only
    transformers' own names pass, before anything is built."""
    sn = sk.convert(hf_sam())
    path = sk.save(sn.extract(sn.min_config()), tmp_path / "s.safetensors")
    with safe_open(str(path), framework="pt") as f:
        doc = json.loads(f.metadata()["supernet_kernels"])
    assert doc["build"]["attn_implementation"] == "sdpa"
    doc["build"]["attn_implementation"] = "flash_attention_2"
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(path)), str(bad), metadata={"supernet_kernels": json.dumps(doc)})
    with pytest.raises(ValueError, match="attn_implementation 'flash_attention_2'"):
        sk.load(bad)


def test_empty_batch_through_the_hf_vit_supernet():
    """transformers' own ViT cannot run B = 0 (view with -1 heads); the supernet can."""
    sn = sk.convert(hf_vit())
    for cfg in (sn.max_config(), sn.min_config()):
        sn.set_active(cfg)
        with torch.no_grad():
            out = sn(pixel_values=torch.randn(0, 3, 32, 32)).logits
        assert out.shape == (0, 5)


# --------------------------------------------------------------------------- SAM heads
def sam_f64(attn_implementation="sdpa", heads=4):
    """A float64 transformers SAM whose vision encoder has windowed layers (window 3 on an
    8 x 8 grid: padded windows) and a global layer, with random weights of unit scale and
    random relative-position tables (transformers initializes the encoder's weights with a
    std of 1e-10 and the tables to zero, which would make every attention uniform and hide a
    wrong score or bias)."""
    vc = transformers.SamVisionConfig(
        hidden_size=24, num_hidden_layers=3, num_attention_heads=heads, image_size=64,
        patch_size=8, mlp_dim=40, output_channels=8, window_size=3, global_attn_indexes=[1],
    )  # fmt: skip
    torch.manual_seed(1)
    cfg = transformers.SamConfig(vision_config=vc.to_dict())
    model = transformers.SamModel._from_config(cfg, attn_implementation=attn_implementation)
    with torch.no_grad():
        for name, p in model.vision_encoder.named_parameters():
            if "layer_norm" not in name:
                p.normal_(0, 0.5 if p.dim() > 1 else 0.1)
    return model.double().eval()


def encoder_states(model, x, **kw):
    return model.vision_encoder(x, output_hidden_states=True, **kw)


DENSE = {"linear": {"*": {"rank": [None], "w_bits": [16]}}}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_hf_sam_attention_swapped_exact_at_max_config(impl):
    """Every layer (windowed and global) of the converted encoder equals transformers' own at
    all heads, in float64: to rounding against the SDPA class; against the eager class, whose
    softmax runs in fp32 even for float64 inputs, to fp32 rounding."""
    from supernet_kernels.supernet.hf_sam_attention import SKHFSamAttention

    model = sam_f64(impl)
    sn = sk.convert(model, DENSE)
    assert sn.build["attn_implementation"] == impl
    assert sn.space["heads"] == {f"vision_encoder.layers.{i}.attn": [2, 3, 4] for i in range(3)}
    attns = [m for m in sn.model.modules() if isinstance(m, SKHFSamAttention)]
    assert len(attns) == 3 and {m.qkv_layout for m in attns} == {"head"}
    orig = model.vision_encoder.layers[1].attn
    assert sorted(attns[1].state_dict()) == sorted(orig.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref, out = encoder_states(model, x), encoder_states(sn.model, x)
    tol = 1e-12 if impl == "sdpa" else 1e-6
    assert len(ref.hidden_states) == len(out.hidden_states) == 4
    for a, b in zip(ref.hidden_states, out.hidden_states, strict=True):
        assert ((b - a).norm() / a.norm()).item() <= tol
    err = (out.last_hidden_state - ref.last_hidden_state).norm() / ref.last_hidden_state.norm()
    assert err.item() <= tol


def _head_order(orig_attn, new_attn, heads: int) -> list[int]:
    """The original head each slot of the converted (head-major) qkv holds, found by matching
    the q rows."""
    d = orig_attn.qkv.out_features // (3 * heads)
    w0, w1 = orig_attn.qkv.weight, new_attn.qkv.weight
    order = []
    for j in range(heads):
        q = w1[j * 3 * d : j * 3 * d + d]
        match = [i for i in range(heads) if torch.equal(w0[i * d : (i + 1) * d], q)]
        assert len(match) == 1
        order.append(match[0])
    return order


def test_hf_sam_fewer_heads_equal_the_original_without_them(tmp_path):
    """h heads of the supernet compute transformers' SAM with the other heads' contribution
    removed (their proj columns zeroed), for windowed and global layers; the heads kept are
    the h of largest magnitude (L1, the default importance); the extracted subnet runs only
    them and saves / loads exactly."""
    heads = 4
    model = sam_f64()
    sn = sk.convert(model, DENSE)
    keep = {0: 2, 1: 3, 2: 2}  # layer 1 is the global-attention layer
    sn.set_active({"heads": {f"vision_encoder.layers.{i}.attn": h for i, h in keep.items()}})
    ref_model = copy.deepcopy(model)
    for i, h in keep.items():
        orig = model.vision_encoder.layers[i].attn
        new = sn.get_submodule(sn.module(f"vision_encoder.layers.{i}.attn"))
        order = _head_order(orig, new, heads)
        d = orig.qkv.out_features // (3 * heads)
        score = [
            orig.qkv.weight.reshape(3, heads, d, -1)[:, n].abs().sum().item()
            + orig.proj.weight[:, n * d : (n + 1) * d].abs().sum().item()
            for n in range(heads)
        ]
        assert order == sorted(range(heads), key=lambda n: -score[n])
        with torch.no_grad():
            for n in order[h:]:
                ref_model.vision_encoder.layers[i].attn.proj.weight[:, n * d : (n + 1) * d] = 0
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref, out = encoder_states(ref_model, x), encoder_states(sn.model, x)
        full = encoder_states(model, x)
    states = (ref.hidden_states[1:], out.hidden_states[1:], full.hidden_states[1:])
    for a, b, c in zip(*states, strict=True):
        assert ((b - a).norm() / a.norm()).item() <= 1e-12
        assert ((c - a).norm() / a.norm()).item() > 1e-3  # the dropped heads mattered
    sub = sn.extract()
    runs = [m.num_heads for m in sub.modules() if hasattr(m, "qkv_layout")]
    assert runs == [2, 3, 2]
    assert sub.vision_encoder.layers[1].attn.qkv.out_features == 3 * 3 * 24 // heads
    with torch.no_grad():
        b = sub.vision_encoder(x).last_hidden_state
    assert ((b - ref.last_hidden_state).norm() / b.norm()).item() <= 1e-12
    sub = sub.float()  # load rebuilds the architecture in float32
    path = sk.save(sub, tmp_path / "s.safetensors")
    back = sk.load(path)
    with torch.no_grad():
        assert torch.equal(back.vision_encoder(x.float()).last_hidden_state,
                           sub.vision_encoder(x.float()).last_hidden_state)  # fmt: skip


def test_hf_sam_attention_weights_when_asked():
    """output_attentions=True returns transformers' eager attention probabilities (one
    (batch * windows * heads, T, T) tensor per layer), also at fewer heads; none otherwise."""
    model = sam_f64("eager")
    sn = sk.convert(model, DENSE)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref = model.vision_encoder(x, output_attentions=True).attentions
        out = sn.model.vision_encoder(x, output_attentions=True)
        plain = sn.model.vision_encoder(x)
    assert plain.attentions is None
    assert len(out.attentions) == len(ref) == 3
    for i, (a, b) in enumerate(zip(ref, out.attentions, strict=True)):
        assert a.shape == b.shape
        # heads are reordered: compare each query's distribution as a multiset over heads
        n = 4
        a = a.reshape(-1, n, *a.shape[1:])
        new = sn.get_submodule(sn.module(f"vision_encoder.layers.{i}.attn"))
        order = _head_order(model.vision_encoder.layers[i].attn, new, n)
        b = b.reshape(-1, n, *b.shape[1:])
        assert (b - a[:, order]).abs().max().item() <= 1e-6
    sn.set_active({"heads": {"vision_encoder.layers.1.attn": 2}})
    with torch.no_grad():
        out = sn.model.vision_encoder(x, output_attentions=True).attentions
    assert out[1].shape == (2, 64, 64) and out[0].shape[0] == 9 * 4


def test_hf_sam_original_attention_keeps_heads_fixed():
    model = sam_f64()
    sn = sk.convert(model, attention="original")
    assert all(c == [4] for c in sn.space["heads"].values())
    with pytest.raises(ValueError, match='attention="ours"'):
        sk.convert(model, {"heads": {"vision_encoder.layers.0.attn": [2, 4]}}, attention="original")


# --------------------------------------------------------------------------- command line
def cli_run(capsys, *argv):
    from supernet_kernels import cli

    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", ["hf_vit", "hf_sam"])
def test_cli_converts_a_saved_transformers_model_end_to_end(capsys, tmp_path, name):
    """convert a save_pretrained folder (nothing downloaded), export the smallest subnet, load
    it without code: it computes what the supernet's smallest subnet computes, and the max
    config what the user's model computes."""
    make, run, shape = FAMILIES[name]
    model = make()
    model.save_pretrained(tmp_path / "model")
    code, out, err = cli_run(capsys, "convert", tmp_path / "model", "--out", tmp_path / "sn")
    assert code == 0, err
    assert f"supernet: {name}" in out + err
    doc = json.loads((tmp_path / "sn" / "supernet.json").read_text())
    assert doc["build"]["kind"] == "hf" and doc["source"] == str((tmp_path / "model").resolve())
    sn = sk.load(tmp_path / "sn")
    x = torch.randn(*shape)
    if name == "hf_sam":  # the CLI converts SamModel's vision encoder (a SamVisionModel)
        assert type(sn.model).__name__ == "SamVisionModel"
        assert doc["part"] == "vision_encoder"

        def run(m, x):
            return m(pixel_values=x).last_hidden_state

        ref = model.get_image_embeddings(x)
    else:
        ref = run(model, x)
    with torch.no_grad():
        assert ((run(sn.model, x) - ref).norm() / ref.norm()).item() <= 1e-5
    out = tmp_path / "sub.safetensors"
    code, log, err = cli_run(capsys, "export", tmp_path / "sn", "--preset", "min", "--out", out)
    assert code == 0, err
    assert "verified" in log + err
    back = sk.load(out)
    sn.set_active(sn.min_config())
    with torch.no_grad():
        want = run(sn.extract(), x)
        assert torch.equal(run(back, x), want)
    if name == "hf_sam":
        heads = [m.num_heads for m in back.modules() if hasattr(m, "qkv_layout")]
        assert heads and min(heads) < 2  # the smallest subnet runs fewer heads


def test_cli_converts_hf_class_with_config_fields(capsys, tmp_path):
    kw = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_labels": 3}
    kw = json.dumps(
        {**kw, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64}
    )
    code, _, err = cli_run(capsys, "convert", "hf:ViTForImageClassification", "--model-kwargs",
                           kw, "--out", tmp_path / "sn")  # fmt: skip
    assert code == 0, err
    sn = sk.load(tmp_path / "sn")
    assert sn.family == "hf_vit" and len(sn.space["mlp"]) == 3
    with torch.no_grad():
        assert sn(pixel_values=torch.randn(1, 3, 32, 32)).logits.shape == (1, 3)


def test_cli_refuses_transformers_sources_clearly(capsys, tmp_path):
    vit = hf_vit()
    vit.save_pretrained(tmp_path / "vit")
    cases = [
        # a class outside the first-class families: usage error naming the ones there are
        (("hf:BertModel",), 2, "not a first-class family"),
        # a folder of another model: from_pretrained would initialize the missing weights
        ((tmp_path / "vit", "--arch", "hf:SamVisionModel"), 3, "initialized afresh"),
        # pretrained weights are never downloaded
        (("hf:ViTModel", "--pretrained"), 2, "nothing is downloaded"),
    ]
    for argv, want, text in cases:
        code, _, err = cli_run(capsys, "convert", *argv, "--out", tmp_path / "o")
        assert code == want and text in err, (argv, code, err)
    # only pickled weights: refused, not unpickled
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text(
        (tmp_path / "vit" / "config.json").read_text()
    )
    torch.save(vit.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    code, _, err = cli_run(capsys, "convert", tmp_path / "pickled", "--out", tmp_path / "o")
    assert code == 3 and "safetensors" in err and "pytorch_model.bin" in err
    assert not (tmp_path / "o").exists()


def test_sources_api_without_the_command_line(tmp_path):
    from supernet_kernels.supernet.sources import ModelSourceError, make_model

    hf_vit().save_pretrained(tmp_path / "vit")
    model, info = make_model(str(tmp_path / "vit"))
    assert type(model).__name__ == "ViTForImageClassification"
    assert info["hf"] == "ViTForImageClassification" and info["num_classes"] == 5
    assert info["image_size"] == 32 and info["task"] == "classification"
    with pytest.raises(ModelSourceError, match="architectures") as err:
        cfg = json.loads((tmp_path / "vit" / "config.json").read_text())
        cfg.pop("architectures")
        (tmp_path / "vit" / "config.json").write_text(json.dumps(cfg))
        make_model(str(tmp_path / "vit"))
    assert err.value.kind == "usage"


# --------------------------------------------------------------------------- SuperSAM
def tiny_hf_sam():
    """A transformers SamModel whose prompt encoder and mask decoder fit its vision encoder
    (64 x 64 images, 8 x 8 embeddings of 16 channels), random weights."""
    cfg = transformers.SamConfig(
        vision_config=dict(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64,
            patch_size=8, mlp_dim=64, output_channels=16, num_pos_feats=8, window_size=3,
            global_attn_indexes=[2],
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8,
                                   mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=2,
                                 num_attention_heads=2, iou_head_hidden_dim=16),
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.SamModel(cfg)
    with torch.no_grad():
        # transformers initializes the encoder with a std of 1e-10, and the decoder's mask
        # logits come out near 1e-6 whatever the embeddings: give every matrix unit scale
        for name, p in model.named_parameters():
            if "layer_norm" not in name and p.dim() > 1:
                p.normal_(0, p.shape[-1] ** -0.5)
    return model.eval()


def test_supersam_trains_hf_sam_with_depth_mlp_and_heads_changing(monkeypatch):
    """SuperSAM through the public API on a transformers SamModel: the supernet is its vision
    encoder, the task runs its prompt encoder and mask decoder; two sandwich steps change the
    encoder's weights, the subnets differ in depth, MLP width and heads, and the user's model
    is untouched."""
    from supernet_kernels.recipes import supersam
    from supernet_kernels.train.hf_sam_task import HFSamSegmentationTask

    sam = tiny_hf_sam()
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    drawn = []
    call = supersam.SuperSAMSampler.__call__

    def record(self, step, rng, supernet):
        configs = call(self, step, rng, supernet)
        drawn.extend(configs)
        return configs

    monkeypatch.setattr(supersam.SuperSAMSampler, "__call__", record)
    sn, hist = supersam.train_supersam(
        sam, seg_data(), steps=2, batch_size=2, calib_batches=1, num_random=2, heads=True, lr=1e-2
    )
    assert sn.family == "hf_sam" and isinstance(hist["task"], HFSamSegmentationTask)
    assert len(hist["steps"]) == 2 and len(hist["steps"][0]["loss"]) == 4  # sandwich + 2
    assert all(torch.isfinite(torch.tensor(s["loss"])).all() for s in hist["steps"])
    layers = [f"vision_encoder.layers.{i}" for i in range(4)]
    sp = sn.space
    assert sorted(b for b, v in sp["depth"].items() if False in v) == layers[1:3]
    assert sp["mlp"][f"{layers[0]}.mlp"] == supersam.scaled_widths(64)
    assert all(c == [1, 2] for c in sp["heads"].values()) and len(sp["heads"]) == 4
    for dim in ("depth", "mlp", "heads"):
        assert len({json.dumps(c[dim], sort_keys=True) for c in drawn}) > 1, dim
    for k, v in sam.state_dict().items():  # the user's SamModel is untouched
        assert torch.equal(v, before[k]), k
    # trained: the encoder's layer norms (which no reordering touches) moved
    state = {k.replace(".block.", "."): v for k, v in sn.model.state_dict().items()}
    norms = [k for k in state if "layer_norm" in k and k in before]
    assert len(norms) == 4 * 2 * 2 + 4
    assert sum(not torch.equal(state[k], before[k]) for k in norms) >= len(norms) // 2
    sn.set_active(sn.min_config())
    sub = sn.extract()
    task = hist["task"]
    miou = task.metric(sub, seg_data(2, seed=1), batch_size=2)
    assert 0.0 <= miou <= 1.0
    assert task.metric(sn, seg_data(2, seed=1), batch_size=2) == pytest.approx(miou, abs=1e-6)


def test_hf_sam_task_matches_sammodel_prompt_by_prompt():
    """The task's masks and IoU predictions, prompt by prompt (points and boxes mixed, in the
    order of the ground truth), equal SamModel's own forward on the normalized image."""
    from supernet_kernels.supernet import hf
    from supernet_kernels.train.hf_sam_task import HFSamSegmentationTask

    sam = tiny_hf_sam()
    task = HFSamSegmentationTask(sam, point_prob=0.5)
    batch = task.prepare(task.collate(seg_data(3)), torch.Generator().manual_seed(3))
    assert 0 < int(batch["is_point"].sum()) < len(batch["is_point"])  # both kinds
    with torch.no_grad():
        out = task.forward(hf.vision_model(sam), batch)
        x = (batch["images"] * 255 - task.pixel_mean) / task.pixel_std
        for r in range(len(batch["gt"])):
            i = int(batch["img_idx"][r])
            if batch["is_point"][r]:
                kw = {"input_points": batch["points"][r].view(1, 1, 1, 2),
                      "input_labels": torch.ones(1, 1, 1, dtype=torch.long)}  # fmt: skip
            else:
                kw = {"input_boxes": batch["boxes"][r].view(1, 1, 4)}
            ref = sam(pixel_values=x[i : i + 1], multimask_output=False, **kw)
            mask = F.interpolate(ref.pred_masks[0, :, 0][:, None], size=(64, 64), mode="bilinear")
            torch.testing.assert_close(out["masks"][r], mask[0, 0])
            torch.testing.assert_close(out["iou"][r], ref.iou_scores[0, 0, 0])
    with pytest.raises(TypeError, match="SamModel"):
        HFSamSegmentationTask(hf_vit())


def test_empty_batch_through_the_hf_sam_supernet():
    """transformers' SAM cannot run B = 0 (its layers unpartition windows with -1 channels);
    the supernet can, positionally and by keyword, at the max and the min config."""
    from supernet_kernels.supernet import hf

    vision = hf.vision_model(tiny_hf_sam())
    x = torch.randn(0, 3, 64, 64)
    with pytest.raises(RuntimeError):
        vision(x)
    sn = sk.convert(vision)
    for cfg in (sn.max_config(), sn.min_config()):
        sn.set_active(cfg)
        with torch.no_grad():
            assert sn(x).last_hidden_state.shape == (0, 16, 8, 8)
            assert sn(pixel_values=x).last_hidden_state.shape == (0, 16, 8, 8)


def test_hf_sam_attention_takes_the_attention_quantizer():
    """The mixed-precision recipe's fake quantization of Q, K, V and P attaches to the
    transformers SAM attention as to segment-anything's: 16 bits is the op, 8 bits stays
    close to it (relative-position bias included)."""
    from supernet_kernels.supernet.attention import attach_attn_quant

    model = sam_f64().float()
    sn = sk.convert(model, DENSE)
    attn = sn.get_submodule(sn.module("vision_encoder.layers.1.attn"))  # the global layer
    x = torch.randn(1, 8, 8, 24)
    with torch.no_grad():
        ref, _ = attn(x)
        aq = attach_attn_quant(attn, (8, 16))
        aq.set_bits(16)
        assert torch.equal(attn(x)[0], ref)
        aq.set_bits(8)
        out, _ = attn(x)
    # 8-bit Q, K, V and P: each about 40 dB alone, compounded through the softmax (32.6 dB
    # seen); below 80 dB it did quantize
    sqnr = 20 * torch.log10(ref.norm() / (out - ref).norm())
    assert 25 < sqnr.item() < 80


def test_supersam_and_classification_task_on_hf_vit():
    """The recipe's classification path on a transformers ViT: its layers are the blocks, the
    task reads the logits off the ModelOutput and the number of classes off the classifier."""
    from supernet_kernels.recipes import supersam

    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(3, 32, 32, generator=g), int(torch.randint(5, (), generator=g)))
            for _ in range(8)]  # fmt: skip
    sn, hist = supersam.train_supersam(hf_vit(), data, steps=2, batch_size=4, calib_batches=1)
    assert sn.family == "hf_vit" and hist["task"].num_classes == 5
    assert [b for b, v in sn.space["depth"].items() if False in v] == ["vit.layers.1"]
    assert all(torch.isfinite(torch.tensor(s["loss"])).all() for s in hist["steps"])
    sn.set_active(sn.min_config())
    assert 0.0 <= hist["task"].metric(sn, data, batch_size=4) <= 1.0


def test_cli_trains_a_transformers_sam_for_segmentation(capsys, tmp_path):
    """convert a SamModel folder, then `train` on a segmentation folder: the task runs the
    folder's own prompt encoder and mask decoder (read again from it)."""
    import numpy as np
    from PIL import Image

    tiny_hf_sam().save_pretrained(tmp_path / "sam")
    (tmp_path / "seg" / "images").mkdir(parents=True)
    (tmp_path / "seg" / "masks").mkdir()
    for i, (img, masks) in enumerate(seg_data(2)):
        pixels = (img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "seg" / "images" / f"{i}.png")
        np.savez(tmp_path / "seg" / "masks" / f"{i}.npz", masks=masks.numpy())
    code, _, err = cli_run(capsys, "convert", tmp_path / "sam", "--out", tmp_path / "sn")
    assert code == 0, err
    assert json.loads((tmp_path / "sn" / "supernet.json").read_text())["task"] == "segmentation"
    code, out, err = cli_run(capsys, "train", tmp_path / "sn", "--data", tmp_path / "seg",
                             "--steps", 1, "--batch-size", 2, "--out", tmp_path / "tr")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "tr" / "supernet.json").is_file()
    # a model made from hf:SamModel has no decoder weights to train against: refused clearly
    kw = json.dumps({"vision_config": {"hidden_size": 32, "num_hidden_layers": 2,
                                       "num_attention_heads": 2, "image_size": 64}})  # fmt: skip
    code, _, err = cli_run(capsys, "convert", "hf:SamModel", "--model-kwargs", kw,
                           "--out", tmp_path / "fresh")  # fmt: skip
    assert code == 0, err
    code, _, err = cli_run(capsys, "train", tmp_path / "fresh", "--data", tmp_path / "seg",
                           "--steps", 1, "--out", tmp_path / "tr2")  # fmt: skip
    assert code == 3 and "fresh weights" in err
