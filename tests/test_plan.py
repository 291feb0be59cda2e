"""supernet_kernels.plan and `supernet-kernels plan`: what auto runs per layer on a named GPU,
answered from the shipped tables on the CPU.

Small random-weight models stand in for DeiT-B and SAM ViT-B: converting the full ones takes
minutes on two CPU cores (their plans on a named H200, made once with the CLI, are under
benchmarks/results/plans_recorded/)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.models import tiny_sam_encoder, tiny_timm_vit

import supernet_kernels as sk
from supernet_kernels import cli, registry

TOP = {"gpu", "capability", "layers"}
LAYER = {
    "name", "op", "shape", "implementation", "reason", "times_us", "dense_us",
    "slower_than_dense",
}  # fmt: skip


def _check_plan(p: dict, gpu: str | None) -> None:
    assert set(p) == TOP and p["gpu"] == gpu
    assert p["layers"], "a plan lists the model's layers"
    json.dumps(p)  # plain JSON
    for lay in p["layers"]:
        assert set(lay) == LAYER, lay
        if lay["op"] == "linear":
            assert lay["implementation"] == "dense" and lay["times_us"] == {}
            continue
        impls = registry.implementations(lay["op"])
        assert set(lay["times_us"]) == set(impls)
        assert lay["implementation"] in impls
        if gpu is not None:
            assert not impls[lay["implementation"]].reference, "no GPU runs the oracle"
        t, dense = lay["times_us"][lay["implementation"]], lay["dense_us"]
        assert lay["slower_than_dense"] == (t is not None and dense is not None and t > dense)
        if dense is not None:
            assert "not measured here" in lay["reason"] or gpu is None


@pytest.mark.parametrize("config", ["max", "min"])
def test_plan_converted_vit_on_named_gpu(config):
    model = tiny_timm_vit(embed_dim=64, depth=2, num_heads=2, img_size=32, patch_size=16)
    sn = sk.convert(model)
    cfg = sn.max_config() if config == "max" else sn.min_config()
    sn.set_active(cfg)
    res = cfg.get("resolution") or 32
    p = sk.plan(sn, torch.randn(2, 3, res, res), gpu="NVIDIA H200", capability="9.0")
    _check_plan(p, "NVIDIA H200")
    assert p["capability"] == "9.0"
    ops = {lay["op"] for lay in p["layers"]}
    assert "attention" in ops
    if config == "min":  # factorized layers run the low-rank op
        assert "lowrank_linear" in ops
    names = [lay["name"] for lay in p["layers"]]
    assert len(names) == len(set((lay["name"], lay["op"]) for lay in p["layers"]))


@pytest.mark.parametrize("config", ["max", "min"])
def test_plan_converted_sam_encoder_has_relpos_attention(config):
    pytest.importorskip("segment_anything")
    sn = sk.convert(tiny_sam_encoder(depth=2))
    cfg = sn.max_config() if config == "max" else sn.min_config()
    sn.set_active(cfg)
    res = cfg.get("resolution") or 64
    p = sk.plan(sn, torch.randn(1, 3, res, res), gpu="NVIDIA H100 80GB HBM3", dtype=torch.bfloat16)
    _check_plan(p, "NVIDIA H100 80GB HBM3")
    assert p["capability"] == "9.0"  # the H100's own table records it
    att = [lay for lay in p["layers"] if lay["op"] == "attention"]
    assert att and all(lay["shape"]["rel"] == 1 for lay in att)
    # The H100 table has bf16 rel-pos buckets: the Triton kernel is unverified, so SDPA with
    # the rel-pos mask (attention's dense-equivalent) runs, and the plan says why.
    assert all(lay["implementation"] == "torch_sdpa" for lay in att)
    assert all("dense-equivalent" in lay["reason"] for lay in att)
    assert any(lay["times_us"]["triton"] is not None for lay in att)


def test_plan_of_a_quantized_model_and_on_the_cpu():
    model = tiny_timm_vit(embed_dim=64, depth=1, num_heads=2, img_size=32, patch_size=16)
    sk.quantize_model(model, bits=4, group_size=32)
    x = torch.randn(1, 3, 32, 32)
    p = sk.plan(model, x, gpu="NVIDIA H200", capability="9.0", dtype=torch.bfloat16)
    _check_plan(p, "NVIDIA H200")
    q = [lay for lay in p["layers"] if lay["op"] == "quant_linear"]
    assert q and all(lay["shape"]["bits"] == 4 for lay in q)
    # No bf16 bucket in the sm90 table: torch's fastest path, its int4 kernel where N % 16 == 0
    # (the 1000-class head is not: the dense-equivalent path).
    for lay in q:
        want = "torch_int4pack" if lay["shape"]["n"] % 16 == 0 else "torch_dense"
        assert lay["implementation"] == want, lay
    cpu = sk.plan(model, x)
    _check_plan(cpu, None)
    assert cpu["capability"] is None
    assert all(lay["implementation"] in ("torch", "dense") for lay in cpu["layers"])


def test_plan_refuses_bad_targets_clearly():
    model = tiny_timm_vit(embed_dim=64, depth=1, num_heads=2, img_size=32, patch_size=16)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="give capability too"):
        sk.plan(model, x, gpu="Mystery GPU")
    with pytest.raises(ValueError, match="capability must look like"):
        sk.plan(model, x, gpu="Mystery GPU", capability="nine")
    with pytest.raises(ValueError, match="needs gpu"):
        sk.plan(model, x, capability="9.0")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        sk.plan(lambda t: t, x)
    # An architecture without a table: torch's fastest paths, said so.
    sk.quantize_model(model, bits=4, group_size=32)
    p = sk.plan(model, x, gpu="Some Future GPU", capability="12.0", dtype=torch.bfloat16)
    q = [lay for lay in p["layers"] if lay["op"] == "quant_linear"]
    assert q and all("no dispatch table" in lay["reason"] for lay in q)


def test_cli_plan_prints_and_writes_the_same_plan(tmp_path, capsys, monkeypatch):
    # A small ViT in place of timm's vit_tiny (12 blocks: minutes to convert on two cores).
    small = tiny_timm_vit(embed_dim=64, depth=2, num_heads=2, img_size=32, patch_size=16)
    monkeypatch.setattr(cli.plan, "_make_model", lambda args: (small, {"image_size": 32}))
    out = tmp_path / "plan.json"
    argv = [
        "plan", "--model", "vit_tiny_patch16_224", "--config", "min", "--gpu", "NVIDIA H200",
        "--capability", "9.0", "--json", str(out), "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    p = json.loads(out.read_text())
    _check_plan(p, "NVIDIA H200")
    for lay in p["layers"]:
        assert lay["name"] in text and str(lay["implementation"]) in text
    assert "slower than their dense layer" in text
    assert cli.main(["plan", "--model", "vit_tiny_patch16_224", "--capability", "9.0"]) != 0
    assert "give --gpu too" in capsys.readouterr().err
