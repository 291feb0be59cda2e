"""``supernet-kernels quickstart --fast``: runs end to end on the CPU and writes the table,
the plot and a summary whose numbers match the saved subnet's profile."""

from __future__ import annotations

import json

import pytest
import torch

import supernet_kernels as sk
from supernet_kernels import cli
from supernet_kernels.cost import profile

pytestmark = pytest.mark.slow  # subprocesses and whole pipelines: minutes on 2 cores


@pytest.mark.timeout(300)
def test_quickstart_fast(tmp_path, capsys):
    out = tmp_path / "qs"
    code = cli.main(["quickstart", "--fast", "--out", str(out), "--no-progress"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    for f in (
        "summary.json",
        "summary.md",
        "accuracy_vs_bitops.png",
        "subnet.safetensors",
        "search/front.json",
        "train_log.jsonl",
    ):
        assert (out / f).is_file(), f
    assert (out / "accuracy_vs_bitops.png").read_bytes()[:4] == b"\x89PNG"
    s = json.loads((out / "summary.json").read_text())
    names = [r["name"] for r in s["rows"]]
    assert names == ["dense", "supernet max", "supernet min", "best found"]
    # the table is printed and saved
    for name in names:
        assert name in printed and name in s["table"]
        assert f"| {name} |" in (out / "summary.md").read_text()
    assert "goal" in printed and s["goal"]["explanation"]
    assert s["machine"]["nproc"] >= 1 and s["machine"]["cpu"]
    assert s["fast"] is True and "smoke run" in s["goal"]["explanation"]

    # the summary's costs are profile() of the saved subnet (and of the dense model's ratio)
    sub = sk.load(out / "subnet.safetensors")
    prof = profile(sub, (1, 3, 16, 16))
    best = s["rows"][-1]
    assert best["bitops"] == prof.total_bitops
    assert best["params"] == prof.total_params
    assert best["macs"] == prof.total_macs
    assert best["weight_bytes"] == prof.total_weight_bytes
    assert best["bitops_ratio"] == pytest.approx(prof.total_bitops / s["dense_bitops"])
    assert best["bitops"] == pytest.approx(s["best"]["search_bitops"])
    assert best["bitops_ratio"] <= 0.5 + 1e-9  # the search budget
    assert sub.sk_subnet["config"] == s["best"]["config"]
    assert s["goal"]["met"] == (
        best["bitops_ratio"] <= 0.5 and s["rows"][0]["test_acc"] - best["test_acc"] <= 2.0
    )
    for r in s["rows"]:
        assert 0.0 <= r["test_acc"] <= 100.0
        assert r["cpu_b1_ms"] > 0 and r["cpu_b64_ms"] > 0
    dense_row = s["rows"][0]
    assert dense_row["bitops_ratio"] == 1.0 and dense_row["bitops"] == s["dense_bitops"]

    # the reloaded subnet's test accuracy is the one reported
    from supernet_kernels.quickstart import accuracy, load_digits_splits

    xte, yte = load_digits_splits(s["seed"])["test"]
    torch.set_num_threads(1)
    assert accuracy(sub, xte, yte) == pytest.approx(best["test_acc"])
