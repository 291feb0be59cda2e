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
    """A table naming an unverified kernel falls back to a torch path; verified on the GPU's
    architecture, it is used; verified on another architecture, it is not."""
    monkeypatch.setenv("SUPERNET_KERNELS_CONFIG_DIR", str(tmp_path))
    dispatch._load_table.cache_clear()
    dispatch.verified_kernels.cache_clear()
    bucket = {"dtype": "float16", "m_max": 256, "rank_max": 128, "ranked": ["triton", "torch"]}
    dispatch.write_dispatch_table(
        "Fake GPU 9000", "lowrank_linear", [{**bucket, "pick": "triton"}], {"commit": "abc"},
        config_dir=tmp_path,
    )  # fmt: skip
    monkeypatch.setattr(backends, "_gpu_info", lambda index: ("Fake GPU 9000", (9, 0)))
    monkeypatch.setattr(backends, "unavailable_reason", lambda *a, **k: None)
    dev = torch.device("cuda", 0)
    assert dispatch.lookup("lowrank_linear", "Fake GPU 9000", "float16", 197, rank=64) == "triton"
    resolve = backends.resolve
    assert resolve("lowrank_linear", dev, torch.float16, 197, rank=64) == "torch_dense"
    record = {"gpu": "Fake GPU 9000", "commit": "abc", "tests": "all"}
    (tmp_path / "verified.json").write_text(
        json.dumps({"lowrank_linear": {"triton": {"sm80": [record]}}})
    )
    dispatch.verified_kernels.cache_clear()
    try:
        assert resolve("lowrank_linear", dev, torch.float16, 197, rank=64) == "torch_dense"
        (tmp_path / "verified.json").write_text(
            json.dumps({"lowrank_linear": {"triton": {"sm90": [record]}}})
        )
        dispatch.verified_kernels.cache_clear()
        assert resolve("lowrank_linear", dev, torch.float16, 197, rank=64) == "triton"
        # No bucket (M past the table, another dtype): torch's fastest path, never the oracle.
        assert resolve("lowrank_linear", dev, torch.float16, 4096, rank=64) == "torch_dense"
        assert resolve("lowrank_linear", dev, torch.bfloat16, 197, rank=64) == "torch_dense"
    finally:
        dispatch.verified_kernels.cache_clear()
        dispatch._load_table.cache_clear()


def test_dispatch_table_validation_and_corruption(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="lacks"):
        dispatch.write_dispatch_table("G", "op", [{"dtype": "float16"}], {}, config_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown backend"):
        dispatch.write_dispatch_table(
            "G",
            "lowrank_linear",
            [{"dtype": "float16", "m_max": 1, "rank_max": 1, "backend": "x"}],
            {},
            config_dir=tmp_path,
        )
    (tmp_path / "dispatch").mkdir()
    (tmp_path / "dispatch" / "broken-gpu.json").write_text('{"lowrank_linear": [')
    monkeypatch.setenv("SUPERNET_KERNELS_CONFIG_DIR", str(tmp_path))
    dispatch._load_table.cache_clear()
    try:
        # The strict reader names the file; dispatch itself warns and runs torch's path.
        with pytest.raises(ValueError, match="broken-gpu.json is not valid JSON"):
            dispatch.lookup("lowrank_linear", "Broken GPU", "float16", 1, rank=1)
        monkeypatch.setattr(backends, "_gpu_info", lambda index: ("Broken GPU", (9, 0)))
        monkeypatch.setattr(backends, "unavailable_reason", lambda *a, **k: None)
        dispatch._WARNED.clear()
        with pytest.warns(dispatch.DispatchWarning, match="broken-gpu.json"):
            choice = backends.select(
                "lowrank_linear", torch.device("cuda", 0), torch.float16, m=1, rank=1, k=8, n=8
            )
        assert not choice.impl.kernel and not choice.impl.reference
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
        "implementations per op (the registry)",
        "dispatch tables shipped",
    ):
        assert needle in out
    from supernet_kernels import registry

    for op in registry.ops():  # every registered implementation, and nothing else, is listed
        assert f"\n  {op}\n" in out
        for name in registry.implementations(op):
            assert f"    {name} " in out, (op, name)
    # Nothing is verified until a GPU run records it (configs/verified.json).
    if not dispatch.verified_on("lowrank_linear", "triton"):
        assert "triton" in out and "UNVERIFIED" in out


def test_shipped_verified_record_and_dispatch_tables_name_real_kernels():
    """The packaged configs only name registered implementations; every verified record is per
    architecture and says on which GPU and commit, and which tests passed."""
    from supernet_kernels import registry

    configs = dispatch.PACKAGE_CONFIGS
    verified = json.loads((configs / "verified.json").read_text())
    for op, by_impl in verified.items():
        for impl, by_arch in by_impl.items():
            assert impl in backends.KERNELS[op], (op, impl)
            for tag, runs in by_arch.items():
                assert dispatch.capability_tag(tag) == tag, tag
                for run in runs:
                    assert {"gpu", "commit", "tests", "capability"} <= set(run), (op, impl, run)
    for path in (configs / "dispatch").glob("*.json"):
        table = json.loads(path.read_text())
        for op, entries in table.items():
            if op == "meta":
                continue
            impls = registry.implementations(op)
            for e in entries:
                assert e["pick"] in impls, (path.name, op, e["pick"])
                assert set(e["ranked"]) == set(e["times_us"]) and set(e["ranked"]) <= set(impls)
                assert e["rank_by"] in ("graph", "eager")
                assert e["m_max"] < 2**31 - 1, "a bucket past twice the largest measured M"
