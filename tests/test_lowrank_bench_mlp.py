"""The MLP-block benchmark (benchmarks/bench_mlp_block.py): its CPU smoke run end to end and
its roofline arithmetic. No GPU needed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_mlp_block as B  # noqa: E402


def test_smoke_run_checks_every_variant(tmp_path, capsys):
    out = tmp_path / "mlp.jsonl"
    assert B.main(["--smoke", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    variants = {r["variant"] for r in records}
    assert {"dense", "torch_lowrank"} <= variants
    assert all(r["ok"] and r["rel_err"] < 1e-4 for r in records)
    assert "x dense (graph)" in capsys.readouterr().out


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
