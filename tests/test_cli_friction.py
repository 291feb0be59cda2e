"""Command-line friction a new user met: where `bench --suite` writes, `--bench-args '--smoke'`,
a tight but feasible budget under TPE / NSGA-II, `bench --image-size` on a SAM subnet, `export`
reading its config before building the supernet, images upsampled by `search`, the refusal of
a pickled checkpoint, and timings that disagree by orders of magnitude."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import supernet_kernels as sk
from supernet_kernels import cli

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).parent / "data" / "cli_supernet_v1"  # tiny ViT, 32x32, 5 classes


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def fake_suites(tmp_path, monkeypatch):
    """A benchmarks/ folder with two suites; subprocess.call records the command and cwd."""
    bench = tmp_path / "repo" / "benchmarks"
    bench.mkdir(parents=True)
    for s in ("lowrank", "attention"):
        (bench / f"bench_{s}.py").write_text("")
    monkeypatch.setattr(cli.bench, "_repo_benchmarks", lambda: bench)
    calls = []
    import subprocess

    monkeypatch.setattr(subprocess, "call", lambda cmd, **kw: calls.append((cmd, kw)) or 0)
    return calls


def test_bench_args_starting_with_a_dash(capsys, fake_suites, tmp_path, monkeypatch):
    """The help's own example exited 2: argparse took '--smoke' for an option."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "bench", "--suite", "lowrank", "--bench-args", "--smoke")
    assert code == 0, err
    cmd, kw = fake_suites[-1]
    assert "--smoke" in cmd


def test_bench_suite_results_go_to_the_cwd_or_out(capsys, fake_suites, tmp_path, monkeypatch):
    """They went into the package's benchmarks/results by default."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert run(capsys, "bench", "--suite", "lowrank")[0] == 0
    cmd, kw = fake_suites[-1]
    assert cmd[cmd.index("--out") + 1] == str(work) and kw.get("cwd") is None
    assert run(capsys, "bench", "--suite", "attention", "--out", tmp_path / "r")[0] == 0
    cmd, _ = fake_suites[-1]
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "r" / "attention.jsonl")
    # the user's own --out in --bench-args wins
    assert run(capsys, "bench", "--suite", "lowrank", "--bench-args", "--out x")[0] == 0
    cmd, _ = fake_suites[-1]
    assert cmd.count("--out") == 1 and cmd[cmd.index("--out") + 1] == "x"


def _npz(path: Path, size: int, n: int = 8) -> Path:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=g)
    np.savez(path, images=images.numpy(), labels=(torch.arange(n) % 5).numpy())
    return path


@pytest.mark.parametrize("algorithm", ["tpe", "nsga2"])
def test_tight_feasible_budget_says_none_met_it(capsys, tmp_path, algorithm):
    """The smallest subnet is ~10% of dense BitOPs, random draws 20-50%: the samplers' few
    trials all miss a 12% budget. This exited 1 saying no candidate was evaluated."""
    data = _npz(tmp_path / "d.npz", 16)
    code, out, err = run(
        capsys, "search", DATA, "--data", data, "--algorithm", algorithm, "--trials", "3",
        "--population", "3", "--budget", "bitops <= 0.12 * dense", "--out", tmp_path / "s",
        "--no-progress", "--device", "cpu",
    )  # fmt: skip
    assert code == 4, err
    assert "no candidate met the budget" in err and "evaluated successfully" not in err
    # search says it upsamples the 16x16 images to the supernet's 32x32
    assert "16x16" in out and "upsampled" in out


@pytest.fixture(scope="module")
def sam_subnet(tmp_path_factory):
    pytest.importorskip("segment_anything")
    from helpers.models import tiny_sam_encoder

    sn = sk.convert(tiny_sam_encoder(depth=2))
    return sk.save(sn.extract(sn.min_config()), tmp_path_factory.mktemp("sam") / "s.safetensors")


def test_bench_image_size_checked_against_a_sam_subnet(capsys, sam_subnet):
    code, _, err = run(capsys, "bench", sam_subnet, "--image-size", "32", "--device", "cpu")
    assert code == 2 and "--image-size 32" in err and "64x64" in err and "SAM" in err
    assert "Traceback" not in err


def test_bench_warns_when_runs_disagree(capsys, sam_subnet, monkeypatch):
    monkeypatch.setattr(
        cli.bench,
        "time_forward",
        lambda model, x, repeats, warmup: {
            "median_ms": 2.0,
            "min_ms": 1.0,
            "max_ms": 500.0,
            "mean_ms": 30.0,
            "repeats": repeats,
        },  # fmt: skip
    )
    code, out, err = run(
        capsys, "bench", sam_subnet, "--device", "cpu", "--batch-sizes", "1", "--repeats", "5"
    )
    assert code == 0, err
    assert "disagree by 500x" in err
    monkeypatch.setattr(
        cli.bench,
        "time_forward",
        lambda model, x, repeats, warmup: {
            "median_ms": 1.1,
            "min_ms": 1.0,
            "max_ms": 1.3,
            "mean_ms": 1.1,
            "repeats": repeats,
        },  # fmt: skip
    )
    code, out, err = run(capsys, "bench", sam_subnet, "--device", "cpu", "--batch-sizes", "1")
    assert code == 0 and "disagree" not in err


def test_export_reads_the_config_before_building(capsys, tmp_path, monkeypatch):
    def never(path):
        raise AssertionError("export built the supernet before reading the config")

    monkeypatch.setattr(cli.export, "load_supernet", never)
    bad = tmp_path / "c.json"
    bad.write_text("{broken")
    code, _, err = run(capsys, "export", DATA, "--subnet-config", bad, "--out", tmp_path / "o")
    assert code == 3 and str(bad) in err
    bad.write_text(json.dumps({"mlp": {"blocks.9.mlp": 8}}))
    code, _, err = run(capsys, "export", DATA, "--subnet-config", bad, "--out", tmp_path / "o")
    assert code == 3 and "blocks.9.mlp" in err
    bad.write_text(json.dumps({"widths": {}}))
    code, _, err = run(capsys, "export", DATA, "--subnet-config", bad, "--out", tmp_path / "o")
    assert code == 3 and "widths" in err


def test_pickled_checkpoint_refusal_gives_no_unsafe_advice(tmp_path):
    import argparse

    p = tmp_path / "ck.pt"
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=0.1)}, p)
    with pytest.raises(cli.InputFileError) as info:
        cli._read_state_dict(p)
    msg = str(info.value)
    assert "weights_only=False" not in msg and "weights_only" not in msg
    assert "pickled" in msg and "state dict" in msg and str(p) in msg
