"""Backend selection, dispatch tables, verified kernels, tuning store, import hygiene, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import supernet_kernels as sk
from supernet_kernels import backends, dispatch, tuning

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_context_manager_nests_and_restores(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert sk.get_backend() == "auto"
    with sk.backend("torch"):
        assert sk.get_backend() == "torch"
        with sk.backend("triton"):
            assert sk.get_backend() == "triton"
        assert sk.get_backend() == "torch"
    assert sk.get_backend() == "auto"


def test_env_var_and_bad_names(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "Torch")
    assert sk.get_backend() == "torch"
    monkeypatch.setenv(backends.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="SUPERNET_KERNELS_BACKEND must be one of"):
        sk.get_backend()
    with pytest.raises(ValueError, match="backend must be one of"), sk.backend("cudnn"):
        pass


def test_explicit_unavailable_backend_raises(monkeypatch):
    # Not monkeypatch.delenv: triton.language decides interpreted-or-compiled for its own
    # functions when first imported, and torch may import it during this test.
    monkeypatch.setattr(backends, "triton_interpret", lambda: False)
    x, u, v = torch.randn(2, 8), torch.randn(6, 4), torch.randn(4, 8)
    with sk.backend("triton"), pytest.raises(sk.BackendUnavailable, match="TRITON_INTERPRET=1"):
        sk.ops.lowrank_linear(x, u, v, 2)
    with sk.backend("cuda"), pytest.raises(sk.BackendUnavailable, match="cuda"):
        sk.ops.lowrank_linear(x, u, v, 2)


def test_kernels_reject_float64_with_reason():
    reason = backends.unavailable_reason("triton", torch.device("cpu"), torch.float64)
    assert "float32, float16 or bfloat16" in reason


def test_auto_is_torch_on_cpu_even_with_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert (
        backends.resolve("lowrank_linear", torch.device("cpu"), torch.float16, 4096, rank=64)
        == "torch"
    )


def test_auto_uses_table_only_for_verified_kernels(monkeypatch, tmp_path):
    """A table naming an unverified kernel falls back to torch; once verified, it is used."""
    monkeypatch.setenv("SUPERNET_KERNELS_CONFIG_DIR", str(tmp_path))
    dispatch._load_table.cache_clear()
    dispatch.verified_kernels.cache_clear()
    dispatch.write_dispatch_table(
        "Fake GPU 9000",
        "lowrank_linear",
        [{"dtype": "float16", "m_max": 256, "rank_max": 128, "backend": "triton"}],
        {"commit": "abc"},
        config_dir=tmp_path,
    )
    monkeypatch.setattr(backends, "_gpu_name", lambda index: "Fake GPU 9000")
    monkeypatch.setattr(backends, "unavailable_reason", lambda *a, **k: None)
    dev = torch.device("cuda", 0)
    assert dispatch.lookup("lowrank_linear", "Fake GPU 9000", "float16", 197, rank=64) == "triton"
    assert (
        backends.resolve("lowrank_linear", dev, torch.float16, 197, rank=64) == "torch"
    )  # unverified
    (tmp_path / "verified.json").write_text(
        json.dumps({"lowrank_linear": {"triton": [{"gpu": "Fake GPU 9000", "commit": "abc"}]}})
    )
    dispatch.verified_kernels.cache_clear()
    try:
        assert backends.resolve("lowrank_linear", dev, torch.float16, 197, rank=64) == "triton"
        assert (
            backends.resolve("lowrank_linear", dev, torch.float16, 4096, rank=64) == "torch"
        )  # no entry
        assert backends.resolve("lowrank_linear", dev, torch.bfloat16, 197, rank=64) == "torch"
    finally:
        dispatch.verified_kernels.cache_clear()
        dispatch._load_table.cache_clear()


def test_dispatch_table_validation_and_corruption(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="lacks"):
        dispatch.write_dispatch_table("G", "op", [{"dtype": "float16"}], {}, config_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown backend"):
        dispatch.write_dispatch_table(
            "G",
            "op",
            [{"dtype": "float16", "m_max": 1, "rank_max": 1, "backend": "x"}],
            {},
            config_dir=tmp_path,
        )
    (tmp_path / "dispatch").mkdir()
    (tmp_path / "dispatch" / "broken-gpu.json").write_text('{"lowrank_linear": [')
    monkeypatch.setenv("SUPERNET_KERNELS_CONFIG_DIR", str(tmp_path))
    dispatch._load_table.cache_clear()
    try:
        with pytest.raises(ValueError, match="broken-gpu.json is not valid JSON"):
            dispatch.lookup("lowrank_linear", "Broken GPU", "float16", 1, rank=1)
    finally:
        dispatch._load_table.cache_clear()


def test_tuning_store_round_trip_and_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERNET_KERNELS_CACHE_DIR", str(tmp_path))
    store = tuning._Store("lowrank_fused")
    k = tuning.key("float16", 197, 768, 3072, 64)
    assert k == "float16:m256:k768:n3072:r64"
    assert store.get("GPU X", k) is None
    cfg = tuning.LowRankConfig(64, 128, 64, num_warps=8, num_stages=3)
    path = store.put("GPU X", k, cfg)
    assert path.exists()
    fresh = tuning._Store("lowrank_fused")  # a new process: read back from disk
    assert fresh.get("GPU X", k) == cfg
    path.write_text(
        json.dumps({"lowrank_fused": {k: {"block_m": 48, "block_n": 64, "block_k": 32}}})
    )
    with pytest.raises(ValueError, match="block_m must be a power of two"):
        tuning._Store("lowrank_fused").get("GPU X", k)
    path.write_text(
        json.dumps({"lowrank_fused": {k: {"block_m": 64, "block_n": 64, "block_k": 32, "tile": 1}}})
    )
    with pytest.raises(ValueError, match="unknown configuration keys"):
        tuning._Store("lowrank_fused").get("GPU X", k)


@pytest.mark.parametrize("m,n", [(1, 3072), (197, 768), (16384, 3072), (5, 7)])
def test_split_count_fills_gpu_without_empty_splits(m, n):
    cfg = tuning.default_config(m, 64, interpret=False)
    s = tuning.split_count(m, n, cfg, num_sms=132)
    n_tiles = -(-n // cfg.block_n)
    assert 1 <= s <= n_tiles
    programs = -(-m // cfg.block_m) * s
    assert programs >= min(2 * 132, -(-m // cfg.block_m) * n_tiles)


def test_import_touches_neither_cuda_nor_triton():
    code = (
        "import sys, torch, supernet_kernels, supernet_kernels.nn, supernet_kernels.ops;"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised at import';"
        "assert 'triton' not in sys.modules, 'triton imported at import';"
        "assert 'supernet_kernels._C' not in sys.modules, 'native loaded at import'"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_info_reports_everything(capsys):
    from supernet_kernels import cli

    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for needle in (
        "torch",
        "native extension",
        "GPU",
        "backends usable here",
        "verified on a real GPU",
        "lowrank_linear",
    ):
        assert needle in out
    # Nothing is verified until a GPU run records it (configs/verified.json).
    if not dispatch.verified_kernels().get("lowrank_linear", {}).get("triton"):
        assert "lowrank_linear   triton  UNVERIFIED" in out


def test_shipped_verified_record_and_dispatch_tables_name_real_kernels():
    """The packaged configs only name ops and backends that exist (backends.KERNELS), and every
    verified record says on which GPU and commit, and which tests passed."""
    import json

    from supernet_kernels.backends import KERNELS

    configs = dispatch.PACKAGE_CONFIGS
    verified = json.loads((configs / "verified.json").read_text())
    for op, by_backend in verified.items():
        for be, runs in by_backend.items():
            assert be in KERNELS[op], (op, be)
            for run in runs:
                assert {"gpu", "commit", "tests"} <= set(run), (op, be, run)
    for path in (configs / "dispatch").glob("*.json"):
        table = json.loads(path.read_text())
        for op, entries in table.items():
            if op == "meta":
                continue
            for e in entries:
                assert e["backend"] == "torch" or e["backend"] in KERNELS[op], (path.name, op, e)
                assert e["m_max"] < 2**31 - 1, "a bucket past twice the largest measured M"
