"""The MLP-block benchmark (benchmarks/bench_mlp_block.py): its CPU smoke run end to end and
its roofline arithmetic. No GPU needed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_mlp_block as B  # noqa: E402


def test_smoke_run_checks_every_variant(tmp_path, capsys):
    out = tmp_path / "mlp.jsonl"
    assert B.main(["--smoke", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    timed = [r for r in records if r["status"] != "skipped"]
    variants = {r["variant"] for r in timed}
    assert {"dense", "torch_lowrank"} <= variants
    assert all(r["correct"] and r["rel_err"] < 1e-4 for r in timed)
    # the Triton rows run under the interpreter only; without it they say why they did not
    for r in records:
        if r["status"] == "skipped":
            assert r["backend"].startswith("triton") and "TRITON_INTERPRET" in r["reason"]
    # the harness's schema: one dense row per (M, rank), every ratio against it
    assert all(r["bench"] == "mlp_block" and r["sweep"] == "smoke" for r in records)
    assert {(r["M"], r["rank"]) for r in records if r["role"] == "dense"} == {(7, 8), (21, 8)}
    assert all(r["speedup_vs_dense"] > 0 for r in timed)
    assert all("N" not in r for r in records)  # the census tells them from lowrank_linear's
    torch_row = next(r for r in timed if r["variant"] == "torch_lowrank")
    assert torch_row["backend"] == "torch" and torch_row["op"] == "lowrank_mlp"
    assert sum(b for b, _ in torch_row["launches"]) == torch_row["bytes"]
    assert "triton_2launch_us" in capsys.readouterr().out


def test_records_before_the_harness_still_report(tmp_path, capsys):
    """The runner's own records (variant, eager_us, ok) read through harness.normalize."""
    import report

    old = [
        dict(M=197, K=768, H=3072, rank=64, dtype="float16", variant=v, eager_us=us,
             graph_us=g, rel_err=1e-3, ok=True, predicted_us=B.predicted_us(v, 197, 768, 3072, 64))
        for v, us, g in (("dense", 40.0, 30.0), ("torch_lowrank", 60.0, 45.0),
                         ("ours", 20.0, 10.0), ("ours_2launch", 25.0, 15.0))
    ]  # fmt: skip
    path = tmp_path / "mlp_block.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    recs = report.load([path], "mlp_block")
    by = {r["backend"]: r for r in recs}
    assert set(by) == {"dense", "torch", "triton", "triton_2launch"}
    assert by["dense"]["role"] == "dense" and by["triton"]["role"] == "ours"
    assert by["triton"]["graph_speedup_vs_dense"] == pytest.approx(3.0)
    assert by["triton_2launch"]["speedup_vs_dense"] == pytest.approx(40 / 25)
    assert report.main(["mlp_block", str(path)]) == 0
    out = capsys.readouterr().out
    assert "triton_2launch_us" in out and "20.0/10.0" in out


def test_block_roofline_adds_its_launches():
    """On a GPU record the per-call roofline is the sum of the launches' (census constants)."""
    import harness

    launches = B.FM.mlp_block_launches("dense", m=197, k=768, h=3072, rank=64)
    rec = dict(gpu="NVIDIA H100 80GB HBM3", device="cuda", dtype="float16", median_us=50.0,
               launches=launches, bytes=sum(b for b, _ in launches),
               flops=sum(f for _, f in launches))  # fmt: skip
    harness.add_derived(rec)
    assert rec["roofline_us"] == pytest.approx(B.predicted_us("dense", 197, 768, 3072, 64))
    assert rec["roofline_frac"] == pytest.approx(rec["roofline_us"] / 50.0)
    single = dict(rec, launches=None)
    single.pop("roofline_us")
    assert harness.call_roofline_us(single) < rec["roofline_us"]  # one launch, not three


def test_predicted_block_times():
    # One ViT-B image, rank 64, fp16: dense is three launches moving both 4.72 MB weights, x and
    # y (0.30 MB each) and the hidden activations four times (1.21 MB each: fc1 writes, GELU
    # reads and writes, fc2 reads); every launch is memory-bound. Ours in two launches moves
    # the factors (0.49 MB per linear), x, y and the hidden activations twice; in one launch
    # the hidden activations not at all.
    x, w, hid, fac = 197 * 768 * 2, 768 * 3072 * 2, 197 * 3072 * 2, 64 * (768 + 3072) * 2
    bias = (3072 + 768) * 2
    dense = B.predicted_us("dense", 197, 768, 3072, 64)
    two = B.predicted_us("ours_2launch", 197, 768, 3072, 64)
    one = B.predicted_us("ours", 197, 768, 3072, 64)
    assert dense == pytest.approx(3 * 3.5 + (2 * w + 2 * x + 4 * hid + bias) / 3e12 * 1e6)
    assert two == pytest.approx(2 * 3.5 + (2 * fac + 2 * x + 2 * hid + bias) / 3e12 * 1e6)
    assert one == pytest.approx(3.5 + (2 * fac + 2 * x + bias) / 3e12 * 1e6)
    assert dense / two > 1.8 and dense / one > 3


def test_census_finds_the_block_records():
    """The census compares its lowrank_mlp predictions with these records (by variant, M, K, H,
    rank), and never takes one for a lowrank_linear call (no N)."""
    # census.py sets the environment for its own compiles when imported (no interpreter, its
    # own caches): keep that out of this process's later tests
    saved = dict(os.environ)
    try:
        census = pytest.importorskip("census")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    rec = dict(bench="mlp_block", backend="triton", variant="ours", op="lowrank_mlp", M=197,
               K=768, H=3072, rank=64, status="ok", median_us=30.0, graph_us=20.0)  # fmt: skip
    mlp = dict(shape=dict(m=197, k=768, h=3072, rank=64, act="gelu"), op="lowrank_mlp",
               implementation="triton")  # fmt: skip
    assert census._measured_for(mlp, [rec]) is rec
    lin = dict(shape=dict(m=197, k=768, n=3072, rank=64), op="lowrank_linear",
               implementation="triton")  # fmt: skip
    assert census._measured_for(lin, [rec]) is None
