"""CPU tests of the benchmark harness (benchmarks/harness/): arithmetic, result files, the
per-call roofline, the report and dispatch derivation (on fake records and on the committed
records of earlier GPU runs), and the CPU smoke run of bench_lowrank.py end to end. No GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import dispatch_from_results as D  # noqa: E402
import harness as H  # noqa: E402
import report  # noqa: E402

from supernet_kernels.cost import formulas as FM  # noqa: E402

RESULTS = BENCH_DIR / "results"

# The smoke runs take ~10-40 s alone on 2 cores; the timeout only catches a hang (a wall-clock
# bound would be a timed unit test, and flaky on a shared machine).
SMOKE_BUDGET_S = 150


# --------------------------------------------------------------------------- arithmetic


def test_roofline_floor_and_percent():
    # 1 GB at 2 TB/s = 0.5 ms; 1 TFLOP at 500 TFLOP/s = 2 ms: compute-bound, floor 2 ms.
    floor = H.time_floor_s(bytes_moved=1e9, flops=1e12, bw_bytes_per_s=2e12, peak_flops=5e14)
    assert floor == pytest.approx(2e-3)
    assert H.percent_of_roofline(floor_s=floor, measured_s=4e-3) == pytest.approx(50.0)
    # Memory-bound side wins when bytes dominate.
    floor = H.time_floor_s(bytes_moved=4e9, flops=1e9, bw_bytes_per_s=2e12, peak_flops=5e14)
    assert floor == pytest.approx(2e-3)
    assert H.tflops(2e12, 0.5) == pytest.approx(4.0)
    assert H.gbps(3e9, 2.0) == pytest.approx(1.5)


def test_rotation_count_exceeds_twice_l2():
    l2 = 50 * 2**20
    n = H.rotation_count(set_bytes=3 * 2**20, l2_bytes=l2)
    assert n * 3 * 2**20 > 2 * l2
    assert H.rotation_count(set_bytes=10**9, l2_bytes=l2) == 2  # at least two sets
    assert H.rotation_count(set_bytes=1, l2_bytes=l2) == H.MAX_ROTATE


def test_lowrank_formulas_by_hand():
    # M=197, K=768, N=3072, r=64, fp16, bias.
    assert FM.lowrank_flops(m=197, k=768, n=3072, rank=64) == 2 * 197 * 64 * 3840 == 96_829_440
    expected = 2 * (197 * 768 + 197 * 3072 + 64 * 768 + 3072 * 64 + 3072)
    assert expected == 2 * (151_296 + 605_184 + 49_152 + 196_608 + 3072) == 2_010_624
    assert FM.lowrank_bytes(m=197, k=768, n=3072, rank=64, elem=2, bias=True) == expected
    assert FM.lowrank_bytes(m=197, k=768, n=3072, rank=64, elem=2, bias=False) == expected - 6144
    assert FM.matmul_flops(m=197, k=768, n=3072) == 929_562_624
    assert FM.dense_bytes(m=4, k=8, n=16, elem=4, bias=True) == 4 * (32 + 128 + 64 + 16)
    # ViT-B attention proj at rank 384 does as many FLOPs as dense: ratio 1.
    assert FM.lowrank_flops_ratio(k=768, n=768, rank=384) == pytest.approx(1.0)
    assert FM.lowrank_flops_ratio(k=768, n=3072, rank=32) == pytest.approx(768 * 3072 / (32 * 3840))


def test_rel_err():
    ref = torch.tensor([3.0, 4.0])
    assert H.rel_err(ref.clone(), ref) == 0.0
    assert H.rel_err(torch.tensor([3.0, 4.5]), ref) == pytest.approx(0.1)
    assert not H.rel_err(torch.tensor([float("nan"), 0.0]), ref) <= 1.0  # NaN never passes


def test_bucket_bounds_geometric_midpoints():
    assert H.bucket_bounds([4096, 197, 4096]) == [(197, 898), (4096, 8192)]
    assert H.bucket_bounds([32, 128]) == [(32, 64), (128, 256)]
    assert H.bucket_bounds([1]) == [(1, 2)]  # one measured M: no extrapolation to all M
    assert H.bucket_bounds([32, 128], last=2**31 - 1)[-1] == (128, 2**31 - 1)


# --------------------------------------------------------------------------- result files


def test_append_results_appends_json_lines(tmp_path):
    path = tmp_path / "sub" / "lowrank.jsonl"
    H.append_results(path, [{"a": 1, "x": float("nan")}, {"dtype": torch.float16}])
    H.append_results(path, [{"a": 2}])
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"a": 1, "x": None},
        {"dtype": "torch.float16"},
        {"a": 2},
    ]
    assert H.read_results(path)[2] == {"a": 2}
    assert H.read_results(tmp_path / "missing.jsonl") == []


def test_environment_fields():
    env = H.environment(torch.device("cpu"))
    assert env["device"] == "cpu" and env["commit"] and "T" in env["date"]


# --------------------------------------------------------------------------- timers


def test_bench_cpu_median():
    calls = []
    timing = H.bench_cpu(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and timing.method == "cpu_perf_counter_median" and timing.median_s >= 0


def test_bench_gpu_rotates_input_sets(monkeypatch):
    """The do_bench plumbing, with do_bench and synchronize faked so it runs on a CPU."""
    triton_testing = pytest.importorskip("triton.testing")
    seen = []

    def fake_do_bench(fn, warmup, rep, return_mode):
        assert return_mode == "median"
        for _ in range(7):
            fn()
        return 0.25

    monkeypatch.setattr(triton_testing, "do_bench", fake_do_bench)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    timing, graph = H.bench_gpu(lambda i: lambda: seen.append(i), 3)
    assert graph is None and timing.median_us == pytest.approx(250.0)
    assert seen[:3] == [0, 1, 2]  # warm-up of every set
    assert seen[3:] == [0, 1, 2, 0, 1, 2, 0]  # do_bench cycles through the sets


# --------------------------------------------------------------------------- report logic


def _fake_records():
    """GPU-like records: triton wins at large M, cuda at M=197 for small ranks."""
    recs = []
    for m in (197, 4096):
        for k, n in ((768, 3072), (3072, 768)):
            dense_us = 10.0 if m == 197 else 100.0
            for rank in (32, 128, 384):
                us = {
                    "torch": 20.0,
                    "triton": 5.0 + rank / 100,
                    "cuda": 4.0 if rank <= 128 else 9.0,
                }
                if m == 4096:
                    us = {"torch": 90.0, "triton": 40.0, "cuda": 50.0}
                for backend, t in us.items():
                    status = (
                        "incorrect" if (backend == "cuda" and m == 4096 and k == 3072) else "ok"
                    )
                    recs.append(dict(
                        dtype="float16", M=m, K=k, N=n, rank=rank, backend=backend, status=status,
                        median_us=t, dense_us=dense_us, speedup_vs_dense=dense_us / t,
                        pct_roofline=90.0 if backend == "triton" else 50.0, flops_ratio=2.0,
                        gpu="FAKE GPU", commit="abc", date="2026-01-01T00:00:00+00:00",
                    ))  # fmt: skip
    return recs


def _bucket(entries, dtype, m, rank):
    from supernet_kernels import dispatch

    return next((e for e in entries if dispatch._matches(e, dtype, m, {"rank": rank})), None)


def _register_fake_cuda(monkeypatch):
    """The fake records time a "cuda" low-rank kernel: register one for the test's length."""
    import dataclasses

    from supernet_kernels import registry

    impls = registry.implementations("lowrank_linear")
    fake = dataclasses.replace(impls["triton"], name="cuda")
    monkeypatch.setitem(registry._IMPLS, "lowrank_linear", {**impls, "cuda": fake})


def test_derive_dispatch_leaves_out_implementations_no_longer_registered():
    # No low-rank "cuda" implementation is registered: its records do not reach the table.
    entries = D.lowrank_entries(_fake_records(), "9.0")
    assert entries and all("cuda" not in e["times_us"] for e in entries)
    assert all("cuda" not in e["ranked"] for e in entries)


def test_derive_dispatch_ranks_every_implementation(monkeypatch):
    _register_fake_cuda(monkeypatch)
    entries = D.lowrank_entries(_fake_records(), "9.0")
    keys = {"dtype", "m_max", "rank_max", "rank_by", "ranked", "times_us", "dense_us", "pick"}
    assert all(set(e) == keys | {"shapes"} for e in entries)
    e = _bucket(entries, "float16", 197, 32)
    assert e["ranked"][0] == "cuda" and e["rank_by"] == "eager"
    assert e["dense_us"]["eager"] == pytest.approx(10.0)  # from the records' dense_us
    assert e["times_us"]["torch_two_gemm"] == e["times_us"]["torch"]
    assert e["pick"] == "torch_dense"  # no low-rank kernel is verified
    assert _bucket(entries, "float16", 197, 384)["ranked"][0] == "triton"
    assert _bucket(entries, "float16", 500, 384)["m_max"] < 4096  # 500 < sqrt(197*4096)
    # cuda is wrong on one shape at M=4096: no time there, never ranked first.
    e = _bucket(entries, "float16", 4096, 64)
    assert e["times_us"]["cuda"]["eager"] is None and e["ranked"][0] == "triton"
    assert _bucket(entries, "float16", 8192, 768) is not None  # last buckets: 2x the largest
    assert _bucket(entries, "float16", 10**6, 10**4) is None  # no extrapolation
    assert _bucket(entries, "bfloat16", 197, 32) is None
    from supernet_kernels import dispatch

    monkeypatch.setattr(dispatch, "is_verified", lambda *a, **k: True)
    verified = D.lowrank_entries(_fake_records(), "9.0")
    assert _bucket(verified, "float16", 197, 32)["pick"] == "cuda"


def _normalized(recs):
    return [H.normalize(r, "lowrank") for r in recs]


def test_evaluate_targets():
    targets = report.evaluate_targets("lowrank", _normalized(_fake_records()))
    big, small = targets["roofline85_m_ge_4096"], targets["beats_dense_m197_rank_le_128"]
    assert big["pass"] is True and big["n"] == 6
    assert small["pass"] is True and small["n"] == 4 and small["worst"]["backend"] == "cuda"
    assert "PASS" in report.format_targets(targets)
    assert report.evaluate_targets("lowrank", [])["roofline85_m_ge_4096"]["pass"] is None
    slow = _normalized(_fake_records())
    for r in slow:
        if r["M"] == 197:
            r["speedup_vs_dense"] = 0.5
    assert report.evaluate_targets("lowrank", slow)["beats_dense_m197_rank_le_128"]["pass"] is False


def test_format_table_marks_incorrect():
    text = report.format_table("lowrank", _normalized(_fake_records()))
    assert "triton_us" in text and "!" in text and "FAKE" not in text and "x_fp16" in text


def test_plot_from_fake_records(tmp_path):
    pytest.importorskip("matplotlib")
    import plot

    results = tmp_path / "lowrank.jsonl"
    H.append_results(results, _fake_records())
    assert plot.main(["lowrank", "--results", str(results), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "lowrank_speedup_fake_gpu_float16.png").stat().st_size > 0


# --------------------------------------------------------------------------- per-call roofline


def test_per_call_roofline_by_hand():
    # Issue 16's bound: a 4-bit 4096x11008 weight with fp16 group scales is ~24 MB; on the
    # H100 (census_model: 3.0 TB/s copy, 3.5 us per launch) one call takes >= 3.5 + 8 us.
    rec = dict(gpu="NVIDIA H100 80GB HBM3", dtype="float16", bytes=24e6, flops=2 * 4096 * 11008,
               median_us=23.0, graph_us=11.5)  # fmt: skip
    assert H.call_roofline_us(rec) == pytest.approx(11.5)
    H.add_derived(rec)
    assert rec["roofline_frac"] == pytest.approx(0.5) and rec["roofline_frac_graph"] == 1.0
    # compute-bound: 2 * 4096^3 FLOPs at 690 TFLOP/s (fp16), twice that for 8-bit activations
    big = dict(rec, bytes=1.0, flops=2 * 4096**3)
    assert H.call_roofline_us(big) == pytest.approx(3.5 + 1e6 * 2 * 4096**3 / 690e12)
    a8 = dict(big, a_bits=8)
    assert H.call_roofline_us(a8) == pytest.approx(3.5 + 1e6 * 4096**3 / 690e12)
    # the run's own measured ceilings win over the census's constants
    measured = dict(rec, ceilings={"hbm_gbps": 2000.0, "peak_tflops": {"float16": 600.0}})
    assert H.call_roofline_us(measured) == pytest.approx(3.5 + 12.0)
    assert H.call_roofline_us(dict(rec, gpu="NVIDIA H200")) == pytest.approx(3.5 + 24 / 4.25)
    assert H.call_roofline_us(dict(rec, device="cpu", gpu="cpu (x86_64, 2 cores)")) is None


# --------------------------------------------------------------------------- earlier GPU runs


def test_old_records_normalize_to_the_schema():
    low = H.normalize(H.read_results(RESULTS / "h100_run1" / "lowrank.jsonl")[0])
    assert low["bench"] == "lowrank" and low["role"] in ("dense", "ours")
    quant = [H.normalize(r) for r in H.read_results(RESULTS / "h100_run2" / "quant.jsonl")]
    assert {r["bench"] for r in quant} == {"quant"}
    assert {r["role"] for r in quant} == {"dense", "ours", "peer", "gemm"}
    timed = [r for r in quant if r.get("median_us") and r.get("bytes")]
    assert timed and all(r["roofline_frac"] > 0 for r in timed)
    att = [
        H.normalize(r) for r in H.read_results(RESULTS / "h100_run2" / "attention_after_fix.jsonl")
    ]
    assert {r["bench"] for r in att} == {"attention"}


def test_report_reads_the_earlier_gpu_runs(capsys):
    runs = [("lowrank", RESULTS / "h100_run1" / "lowrank.jsonl")]
    runs += [("quant", RESULTS / "h100_run2" / "quant.jsonl")]  # run 1's quant.jsonl is empty
    runs += [("attention", RESULTS / "h100_run2" / "attention_after_fix.jsonl")]
    for bench, path in runs:
        assert report.main([bench, str(path)]) == 0, path
    out = capsys.readouterr().out
    # run 2, 4096x11008 at M = 1: torch's int4 kernel 20.9 us eager beside ours (issue 16)
    assert "torch_int4pack 20.9" in out and "x_fp16" in out and "%roof" in out
    rows = report.best_rows("quant", report.load([runs[1][1]], "quant"), "graph_us")
    w4 = next(r for r in rows if (r["M"], r["K"], r["w_bits"], r["a_bits"]) == (1, 4096, 4, 16))
    assert w4["graph_us"] == pytest.approx(45.3, abs=0.05)  # the Triton kernel of run 2
    assert w4["best_peer"] == "torch_int4pack"
    assert w4["best_peer_us"] == pytest.approx(14.9, abs=0.05)
    # attention (run 2): the ratio to SDPA, which those records did not keep, from its row
    att = report.load([runs[2][1]], "attention")
    tri = next(r for r in att if (r["backend"], r["T"], r["pass"]) == ("triton", 4096, "fwd"))
    assert tri["speedup_vs_dense"] == pytest.approx(117.0 / 215.6, rel=1e-3)
    assert 0 < tri["roofline_frac"] < 1


def test_dispatch_tables_regenerate_identically(tmp_path, monkeypatch):
    """The shipped tables are dispatch_from_results.py's output on the committed records."""
    from supernet_kernels import dispatch

    shipped = Path(dispatch.PACKAGE_CONFIGS) / "dispatch"
    meta = json.loads((shipped / "sm90.json").read_text())["meta"]
    monkeypatch.chdir(BENCH_DIR)  # the tables name their sources relative to benchmarks/
    args = ["--gpu", meta["lowrank_linear"]["gpu"], "--capability", "9.0",
            "--config-dir", str(tmp_path), "--note", meta["lowrank_linear"]["note"]]  # fmt: skip
    for flag, op in (("--lowrank", "lowrank_linear"), ("--quant", "quant_linear"),
                     ("--attention", "attention")):  # fmt: skip
        args += [flag, meta[op]["source"]]
    try:
        assert D.main(args) == 0
    finally:
        dispatch.clear_caches()
    for name in ("sm90.json", "nvidia-h100-80gb-hbm3.json"):
        assert (tmp_path / "dispatch" / name).read_bytes() == (shipped / name).read_bytes(), name


# --------------------------------------------------------------------------- smoke run


def run_smoke(script: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, float, Path]:
    """benchmarks/<script> --smoke into tmp_path on the CPU path (also used by
    test_bench_quant); returns the process, its wall time and the --summary-json path."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run is the CPU path even on a GPU machine
    summary = tmp_path / "summary.json"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / script), "--smoke", "--out", str(tmp_path),
         "--summary-json", str(summary)],
        capture_output=True, text=True, timeout=SMOKE_BUDGET_S * 2, env=env,
    )  # fmt: skip
    return proc, time.perf_counter() - t0, summary


@pytest.mark.slow
def test_smoke_run_exits_zero_within_budget(tmp_path):
    proc, _, summary = run_smoke("bench_lowrank.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = H.read_results(tmp_path / "lowrank.jsonl")
    assert records and all(r["device"] == "cpu" for r in records)
    timed = [r for r in records if r["status"] == "ok"]
    assert {"dense", "torch"} <= {r["backend"] for r in timed}, proc.stdout
    assert all(r["correct"] and r["median_us"] > 0 for r in timed)
    skipped = [r for r in records if r["status"] == "skipped"]
    assert all(r["reason"] for r in skipped)
    assert json.loads(summary.read_text())["records"] == len(records)
    # one schema: every record carries the common fields (None where not measured)
    common = {"bench", "op", "role", "kind", "backend", "dtype", "M", "K", "N", "status"}
    assert all(common <= set(r) and r["bench"] == "lowrank" for r in records)
    dense = [r for r in timed if r["role"] == "dense"]
    assert dense and all(r["speedup_vs_dense"] > 0 for r in timed)


def test_write_dispatch_from_a_run(tmp_path, monkeypatch):
    """The harness's --write-dispatch path (GPU only) on fake records: the GPU's table and its
    architecture's, written where the package reads them, and a copy in --out."""
    import argparse
    import types

    from supernet_kernels import dispatch

    monkeypatch.setattr(dispatch, "PACKAGE_CONFIGS", tmp_path / "configs")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    out = tmp_path / "out"
    ctx = H.Context(
        types.SimpleNamespace(NAME="lowrank"), argparse.Namespace(out=out), torch.device("cpu"),
        H.BenchSettings(), None, {"gpu": "FAKE GPU", "commit": "abc"}, "run",
    )  # fmt: skip
    monkeypatch.setattr(H.Context, "gpu", property(lambda self: True))
    try:
        paths = H.write_dispatch(ctx, _fake_records(), [H.Sweep("quick", ("float16",))])
    finally:
        dispatch.clear_caches()
    table = json.loads(Path(paths[0]).read_text())
    assert Path(paths[0]).name == "fake-gpu.json" and table["lowrank_linear"]
    assert table["meta"]["lowrank_linear"]["source"] == "benchmarks/bench_lowrank.py"
    assert (tmp_path / "configs" / "dispatch" / "sm90.json").exists()
    assert json.loads((out / "dispatch_fake-gpu.json").read_text()) == table
