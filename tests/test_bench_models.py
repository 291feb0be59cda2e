"""Fast CPU tests of benchmarks/bench_models.py (counts only; no real DeiT-B / SAM forward)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path[:0] = [p for p in (str(BENCH), str(ROOT)) if p not in sys.path]

pytest.importorskip("timm")
B = pytest.importorskip("bench_models")
R = pytest.importorskip("models_report")


@pytest.fixture(scope="module")
def deit():
    """DeiT-B materialized on CPU without initialization, its dense profile and supernets."""
    from supernet_kernels.cost import profile

    spec = B.MODELS["deit_b"]
    model = B.build_model(spec, torch.device("cpu"))
    dense = profile(model, (1, 3, 224, 224))
    return spec, model, dense, B.make_supernets(model)


def test_rank_for_half_flops_within_10_percent(deit):
    spec, model, dense, sns = deit
    e, est, table = B.choose_rank_ratio(sns.lowrank.space, dense, B.linear_dims(model))
    assert abs(est - 0.5) <= 0.05
    assert all(abs(table[e] - 0.5) <= abs(v - 0.5) for v in table.values())
    v = next(v for v in B.variants(spec, model, sns, dense) if v.name == "lowrank50")
    c = B.count(v, model)
    ratio = c["linear_macs"] / B.linear_macs(dense)
    assert abs(ratio - 0.5) <= 0.05, ratio  # within 10% of the 50% target
    assert abs(ratio - est) < 1e-3


def test_counts_match_profile_of_extracted_subnet(deit):
    from supernet_kernels.cost import profile

    spec, model, dense, sns = deit
    vs = {v.name: v for v in B.variants(spec, model, sns, dense)}
    for name in ("cut", "lowrank50"):
        v = vs[name]
        c = B.count(v, model)
        sub = v.make()  # sn.extract(config): the model the GPU run times
        p = profile(sub, (4, 3, 224, 224))
        s = B.scaled(c, 4)
        assert s["macs"] == p.total_macs, name
        assert s["bitops"] == p.total_bitops, name
        assert c["params"] == p.total_params, name
        assert c["weight_bytes"] == p.total_weight_bytes, name
    cut = vs["cut"]
    assert [b for b, on in cut.config["depth"].items() if not on] == [
        f"blocks.{i}" for i in B.CUT_BLOCKS
    ]
    assert set(cut.config["mlp"].values()) == {B.CUT_MLP_HIDDEN}
    # dense row: the original model's profile itself
    c = B.count(vs["dense"], model, dense)
    assert (c["macs"], c["bitops"]) == (dense.total_macs, dense.total_bitops)


def test_quant_counts_match_quantize_model_on_small_vit():
    """The supernet-based W8A8 / W4A16 counts equal the profile of quantize_model's output."""
    from timm.models.vision_transformer import VisionTransformer

    from supernet_kernels.cost import profile
    from supernet_kernels.quant import quantize_model

    torch.manual_seed(0)
    # Widths divisible by 128 (as DeiT-B / SAM's), so quantize_model uses group 128 everywhere.
    model = VisionTransformer(img_size=64, embed_dim=256, depth=2, num_heads=4).eval()
    sns = B.make_supernets(model)
    shape = (1, 3, 64, 64)
    for sn, kw, (wb, ab) in (
        (sns.per_channel, dict(bits=8, group_size=None, act_bits=8), (8, 8)),
        (sns.dense, dict(bits=4, group_size=128, act_bits=16), (4, 16)),
    ):
        got = profile(sn, shape, config=B.uniform_bits(sn, wb, ab))
        q = B.copy.deepcopy(model)
        quantize_model(q, **kw)
        want = profile(q, shape)
        assert got.total_bitops == want.total_bitops
        assert got.total_macs == want.total_macs
        assert got.total_weight_bytes == want.total_weight_bytes


def _records():
    base = dict(kind="config", model="sam_vit_b", batch=1, params=90e6, weight_bytes=1.7e8)
    return [
        dict(base, config="dense", macs=4.9e11, bitops=1.2e14, median_ms=40.0, status="ok"),
        dict(base, config="w8a8", macs=4.9e11, bitops=5.5e13, median_ms=38.0, status="ok",
             graph_ms=None, graph_reason="RuntimeError: capture failed"),
        dict(kind="study", model="sam_vit_b", batch=1, operator="depth", level="-2 blocks",
             macs=4.2e11, bitops=1.0e14, median_ms=34.0, status="ok"),
    ]  # fmt: skip


def test_report_formatting(tmp_path):
    recs = _records()
    R.add_ratios(recs)
    assert recs[1]["bitops_ratio"] == pytest.approx(5.5e13 / 1.2e14)
    assert recs[1]["latency_ratio"] == pytest.approx(0.95)
    assert recs[2]["latency_ratio"] == pytest.approx(0.85)
    table = R.format_main(recs)
    head = table.splitlines()[0]
    for col in ("bitops_ratio", "latency_ratio", "TBitOPs", "GMACs", "weights MiB"):
        assert col in head
    assert "w8a8" in table and len(table.splitlines()) == 4  # header, rule, 2 configs
    study = R.format_study(recs)
    assert "depth" in study and "-2 blocks" in study and "15.0" in study  # latency cut %
    assert "capture failed" in R.format_failures(recs)
    assert "8.5%" in R.SAM_NOTE
    assert R.amdahl_latency_ratio(0.085, 0.25) == pytest.approx(1 - 0.085 * 0.75)
    png = R.plot_scatter(recs, tmp_path / "p.png")
    assert png is not None and png.stat().st_size > 0
    assert R.plot_scatter([dict(recs[0], median_ms=None)], tmp_path / "q.png") is None


def test_smoke_counts_only_run(tmp_path):
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_models.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert elapsed < 60, elapsed
    assert "latency needs a GPU" in proc.stdout
    assert "8.5%" in proc.stdout
    recs = [json.loads(line) for line in (tmp_path / "models.jsonl").read_text().splitlines()]
    configs = {(r["model"], r["config"]) for r in recs if r["kind"] == "config"}
    for m in ("deit_b", "sam_vit_b"):
        for c in ("dense", "w8a8", "w4a16", "lowrank50", "cut", "mixed"):
            assert (m, c) in configs
    assert {r["status"] for r in recs} == {"counts_only"}
    assert all(r["commit"] and r["date"] and r["bitops"] > 0 for r in recs)
    assert {r["operator"] for r in recs if r["kind"] == "study"} >= {
        "resolution", "mlp_width", "depth", "rank", "bits",
    }  # fmt: skip
