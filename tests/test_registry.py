"""The implementation registry, auto's choice per architecture, and the 1.10x rule over every
shipped dispatch table (torch.cuda mocked: no GPU is needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import supernet_kernels as sk
from supernet_kernels import backends, dispatch, registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = torch.device("cuda", 0)


@pytest.fixture
def fake_gpu(monkeypatch):
    """``fake_gpu(name, (major, minor))``: torch.cuda answers as that GPU. Our kernels' own
    availability (driver, native build) is taken as given: what is tested is the choice."""

    def make(name: str, capability: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(backends, "unavailable_reason", lambda *a, **k: None)
        backends._gpu_info.cache_clear()

    yield make
    backends._gpu_info.cache_clear()


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERNET_KERNELS_CONFIG_DIR", str(tmp_path))
    dispatch._load_table.cache_clear()
    dispatch.verified_kernels.cache_clear()
    dispatch._WARNED.clear()
    yield tmp_path
    dispatch._load_table.cache_clear()
    dispatch.verified_kernels.cache_clear()


# --------------------------------------------------------------------------- one source


def test_everything_derives_from_the_registry():
    """KERNELS, the explicit-backend errors, the verified record and the tables all agree with
    the registry; nothing else lists implementations."""
    ops = registry.ops()
    assert {"quant_linear", "int8_linear", "fp8_linear", "lowrank_linear", "attention"} <= set(ops)
    assert registry.kernels() == backends.KERNELS
    x = torch.randn(2, 8)
    calls = {
        "lowrank_linear": dict(m=2, rank=2, k=8, n=6),
        "quant_linear": dict(m=2, bits=4, act_bits=16, group_size=8, k=8, n=4),
        "int8_linear": dict(m=2, k=8, n=4),
        "fp8_linear": dict(m=2, k=8, n=4),
        "attention": dict(m=4, bh=2, t_k=4, d=8, rel=0, bias=0),
        "lowrank_mlp": dict(m=2, rank=2),
    }
    assert set(ops) == set(calls), "a new op needs its dispatch keys here"
    for op in ops:
        impls = registry.implementations(op)
        assert sum(i.reference for i in impls.values()) == 1, op
        assert registry.reference(op).name == "torch"
        for be in ("triton", "cuda"):
            if be not in backends.KERNELS[op]:
                with sk.backend(be), pytest.raises(sk.BackendUnavailable, match=f"no {be} impl"):
                    backends.select(op, x.device, x.dtype, **calls[op])
        for name in impls:
            assert backends._check_name(name, "backend") == name  # every name can be chosen
    for op, by_impl in dispatch.verified_kernels().items():
        assert set(by_impl) <= set(backends.KERNELS[op]), op


def test_registering_twice_is_refused_and_unknown_names_are_clear():
    with pytest.raises(ValueError, match="already registered"):
        registry.register("lowrank_linear", "torch", kernel=False)(lambda *a: None)
    with pytest.raises(KeyError, match="has no implementation 'nope'"):
        registry.get("lowrank_linear", "nope")
    with pytest.raises(ValueError, match="implementation name"), sk.backend("nope"):
        pass


def test_legacy_style_op_still_resolves(monkeypatch):
    """An op not in the registry that calls backends.resolve and branches on the three names."""
    monkeypatch.setitem(backends.LEGACY_KERNELS, "new_op", ("triton",))
    monkeypatch.setattr(backends, "triton_interpret", lambda: False)
    cpu = torch.device("cpu")
    assert backends.resolve("new_op", cpu, torch.float16, 8, rank=4) == "torch"
    assert backends.KERNELS["new_op"] == ("triton",)
    with sk.backend("cuda"), pytest.raises(sk.BackendUnavailable, match="no cuda kernel"):
        backends.resolve("new_op", cpu, torch.float16, 8)
    with sk.backend("triton"), pytest.raises(sk.BackendUnavailable, match="TRITON_INTERPRET"):
        backends.resolve("new_op", cpu, torch.float16, 8)


# --------------------------------------------------------------------------- per architecture

QUANT_M1 = dict(m=1, bits=4, act_bits=16, group_size=128, k=4096, n=11008)


def _verified(path: Path, op: str, impl: str) -> None:
    run = {"capability": "9.0", "gpu": "NVIDIA H100 80GB HBM3", "commit": "0" * 40, "tests": "-"}
    (path / "verified.json").write_text(json.dumps({op: {impl: {"sm90": [run]}}}))


def _arch_table(path: Path, op: str, entries: list[dict]) -> None:
    (path / "dispatch").mkdir(exist_ok=True)
    (path / "dispatch" / "sm90.json").write_text(json.dumps({op: entries}))


def test_h200_uses_sm90_verified_kernels_from_the_architecture_table(fake_gpu, config_dir):
    """An sm_90 GPU never measured ("NVIDIA H200") reads the sm_90 table; the CUDA quant kernel,
    verified on sm_90 (H100 runs, configs/verified.json), serves it; the faster Triton kernel,
    unverified, does not; an sm_80 GPU has no verified kernel and gets torch's path."""
    times = {"triton": {"eager": 30.0, "graph": 20.0}, "cuda": {"eager": 31.0, "graph": 25.0}}
    _verified(config_dir, "quant_linear", "cuda")
    _arch_table(config_dir, "quant_linear", [{
        "dtype": "float16", "m_max": 2, "bits": 4, "act_bits": 16, "rank_by": "graph",
        "ranked": ["triton", "cuda", "torch_dense"], "times_us": {
            **times, "torch_dense": {"eager": 46.7, "graph": 34.7}},
        "dense_us": {"eager": 46.7, "graph": 34.7}, "pick": "cuda",
    }])  # fmt: skip
    fake_gpu("NVIDIA H200", (9, 0))
    choice = backends.select("quant_linear", CUDA, torch.float16, **QUANT_M1)
    assert choice.name == "cuda"
    assert "verified on sm90" in choice.reason and "sm90 architecture table" in choice.reason
    assert "triton: not verified on sm90" in choice.reason
    # A named backend is the user's: served even where auto would not.
    with sk.backend("triton"):
        assert backends.select("quant_linear", CUDA, torch.float16, **QUANT_M1).name == "triton"
    # An sm_80 GPU: no table, no verification: torch's fastest path (fp16: the int4 kernel
    # takes bfloat16 only, so the dense-equivalent; bfloat16: torch's int4 kernel).
    fake_gpu("NVIDIA A100-SXM4-80GB", (8, 0))
    with pytest.warns(dispatch.DispatchWarning, match="no dispatch table for NVIDIA A100"):
        choice = backends.select("quant_linear", CUDA, torch.float16, **QUANT_M1)
    assert choice.name == "torch_dense" and "no dispatch table" in choice.reason
    assert backends.select("quant_linear", CUDA, torch.bfloat16, **QUANT_M1).name == (
        "torch_int4pack"
    )


def test_shipped_h100_table_ranks_by_graph_time(fake_gpu):
    """int8_linear at M = 1: the Triton kernel is fastest replayed (26 us) but unverified: the
    dense-equivalent (34.7 us) runs."""
    entry, source = dispatch.find_entry(
        "int8_linear", "NVIDIA H100 80GB HBM3", (9, 0), "float16", 1, k=4096, n=11008
    )
    assert source and entry["rank_by"] == "graph"
    assert entry["ranked"][0] == "triton"
    assert entry["dense_us"]["graph"] == pytest.approx(34.71, abs=0.01)
    for gpu in ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA H100 PCIe"):
        fake_gpu(gpu, (9, 0))
        choice = backends.select("int8_linear", CUDA, torch.float16, m=1, k=4096, n=11008)
        assert choice.name == "torch_dense", (gpu, choice)
        assert "dense-equivalent" in choice.reason


def test_choices_are_remembered_until_the_tables_change(fake_gpu, config_dir):
    fake_gpu("NVIDIA H200", (9, 0))
    call = dict(m=1, k=4096, n=11008)
    first = backends.select("int8_linear", CUDA, torch.float16, **call)
    assert backends.select("int8_linear", CUDA, torch.float16, **call) is first
    _verified(config_dir, "int8_linear", "triton")
    _arch_table(config_dir, "int8_linear", [{
        "dtype": "float16", "m_max": 2, "rank_by": "graph", "ranked": ["triton"],
        "times_us": {"triton": {"eager": 20.0, "graph": 10.0}},
        "dense_us": {"eager": 46.7, "graph": 34.7}, "pick": "triton",
    }])  # fmt: skip
    dispatch.clear_caches()
    assert backends.select("int8_linear", CUDA, torch.float16, **call).name == "triton"


def test_unknown_gpu_unsupported_capability_and_bad_files_fall_back(fake_gpu, config_dir):
    fake_gpu("Some Future GPU", (12, 0))
    with pytest.warns(dispatch.DispatchWarning, match="no dispatch table for Some Future GPU"):
        choice = backends.select("int8_linear", CUDA, torch.float16, m=64, k=4096, n=4096)
    assert choice.name == "torch_int_mm" and "no dispatch table" in choice.reason
    (config_dir / "dispatch").mkdir()
    (config_dir / "dispatch" / "sm90.json").write_text("{not json")
    (config_dir / "verified.json").write_text('{"int8_linear": {"cuda": 3}}')
    fake_gpu("NVIDIA H200", (9, 0))
    with pytest.warns(dispatch.DispatchWarning) as rec:
        choice = backends.select("quant_linear", CUDA, torch.bfloat16, **QUANT_M1)
    assert choice.name == "torch_int4pack"
    assert any("sm90.json" in str(w.message) for w in rec)
    with pytest.raises(ValueError, match="capability must look like"):
        dispatch.capability_tag("nine")


def test_import_and_cpu_ops_survive_corrupt_configs(tmp_path):
    (tmp_path / "dispatch").mkdir()
    (tmp_path / "dispatch" / "sm90.json").write_text("[1, 2")
    (tmp_path / "verified.json").write_text("\x00garbage")
    code = (
        "import torch, supernet_kernels as sk;"
        "x, u, v = torch.randn(3, 8), torch.randn(5, 4), torch.randn(4, 8);"
        "print(sk.ops.lowrank_linear(x, u, v, 2).shape)"
    )
    env = {
        **os.environ,
        "SUPERNET_KERNELS_CONFIG_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "torch.Size([3, 5])" in out.stdout


# --------------------------------------------------------------------------- the 1.10x rule


def _call_for(op: str, entry: dict) -> dict:
    """A call that falls in ``entry``: its largest M, its pins, a shape it was measured at."""
    shape = entry["shapes"][0]
    call = {"m": entry["m_max"]}
    if op == "quant_linear":
        k, n = shape
        call |= dict(bits=entry["bits"], act_bits=entry["act_bits"], k=k, n=n)
        call["group_size"] = k if entry["bits"] == 8 else 128  # as the benchmark measured
    elif op in ("int8_linear", "fp8_linear"):
        call |= dict(k=shape[0], n=shape[1])
    elif op == "lowrank_linear":
        call |= dict(rank=entry["rank_max"], k=shape[0], n=shape[1])
    elif op == "attention":
        b, h, d = shape
        call |= dict(bh=b * h, t_k=entry["m_max"], d=d, rel=entry["rel"], bias=entry["bias"])
    return call


def _shipped_tables():
    out = []
    for path in sorted((dispatch.PACKAGE_CONFIGS / "dispatch").glob("*.json")):
        table = json.loads(path.read_text())
        for op, entries in table.items():
            if op == "meta":
                continue
            meta = table["meta"][op]
            gpu = meta["gpu"] if not path.stem.startswith("sm") else "An Unmeasured GPU"
            for i, _entry in enumerate(entries):
                out.append(
                    pytest.param(
                        path.stem, op, gpu, meta["capability"], i, id=f"{path.stem}-{op}-{i}"
                    )
                )  # noqa: E501
    return out


@pytest.mark.parametrize("table,op,gpu,capability,index", _shipped_tables())
def test_auto_keeps_within_110_percent_of_dense(fake_gpu, table, op, gpu, capability, index):
    """At every bucket of every shipped table, auto runs something whose recorded time is at
    most 1.10x the dense layer's, or the dense-equivalent path (and says so)."""
    entry = json.loads((dispatch.PACKAGE_CONFIGS / "dispatch" / f"{table}.json").read_text())[op][
        index
    ]
    fake_gpu(gpu, dispatch.capability_tuple(capability))
    dtype = getattr(torch, entry["dtype"])
    call = _call_for(op, entry)
    found, _ = dispatch.find_entry(
        op,
        gpu,
        capability,
        entry["dtype"],
        call["m"],
        **{k: v for k, v in call.items() if k != "m"},
    )
    assert found == entry  # the call lands in this bucket
    choice = backends.select(op, CUDA, dtype, **call)
    assert not choice.impl.reference, "the float32/float64 reference is not a GPU path"
    dense = dispatch.dense_time(entry)
    picked = dispatch.entry_time(entry, choice.name)
    if choice.impl.dense_equivalent:
        assert choice.name == entry["pick"] or "dense" in choice.reason
    else:
        assert picked is not None, (choice.name, "a pick without a recorded time")
        assert dense is None or picked <= dispatch.DENSE_SLACK * dense, (choice.name, picked, dense)
    # The table's own pick (what auto ran on the measured GPU) obeys the rule too.
    pick_t = dispatch.entry_time(entry, entry["pick"])
    assert (
        registry.get(op, entry["pick"]).dense_equivalent
        or dense is None
        or (pick_t is not None and pick_t <= dispatch.DENSE_SLACK * dense)
    )
    # Every candidate's time and the dense layer's are kept, both clocks.
    assert set(entry["dense_us"] or {"eager": 0, "graph": 0}) == {"eager", "graph"}
    assert all(set(t) == {"eager", "graph"} for t in entry["times_us"].values())
