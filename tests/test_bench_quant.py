"""CPU tests of the quantized-linear benchmark (benchmarks/bench_quant.py and its report):
byte / BitOPs formulas by hand (cost/formulas.py), target evaluation and dispatch derivation on
fake records, the plot, and the --smoke run end to end. No GPU needed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import dispatch_from_results as D  # noqa: E402
import harness as H  # noqa: E402
import report  # noqa: E402

from supernet_kernels.cost import formulas as R  # noqa: E402

# The smoke runs take ~10-40 s alone on 2 cores; the timeout only catches a hang (a wall-clock
# bound would be a timed unit test, and flaky on a shared machine).
SMOKE_BUDGET_S = 150


# --------------------------------------------------------------------------- formulas


def test_quant_bytes_by_hand():
    # 4-bit, group 128, K=4096, N=11008: 512 words per row, 32 groups.
    w = 11008 * 512 * 4 + 2 * 11008 * 32 * 4
    assert w == 22_544_384 + 2_818_048 == 25_362_432
    assert R.quant_weight_bytes(k=4096, n=11008, bits=4, group_size=128) == w
    # M=1 fp16: x 4096*2, y 11008*2.
    assert R.quant_bytes(m=1, k=4096, n=11008, bits=4, group_size=128, elem=2) == w + 8192 + 22016
    # 3-bit packs 10 codes per word: K=64 -> 7 words; 2-bit 16 per word; 8-bit 4 per word.
    assert R.packed_width(64, 3) == 7 and R.packed_width(64, 2) == 4 and R.packed_width(64, 8) == 16
    assert R.quant_weight_bytes(k=64, n=48, bits=3, group_size=32) == 48 * 7 * 4 + 2 * 48 * 2 * 4
    # 8-bit per-channel (G = K): one scale and zero per row.
    assert R.quant_weight_bytes(k=768, n=3072, bits=8, group_size=768) == 3072 * 192 * 4 + 3072 * 8
    assert R.int8_bytes(m=16, k=768, n=3072, elem=2) == 768 * 3072 + 4 * 3072 + 2 * 16 * 3840
    assert R.dense_bytes(m=4, k=8, n=16, elem=2) == 2 * (128 + 32 + 64)
    assert R.nominal_bytes(m=1, k=256, n=8, bits=4, group_size=128, elem=2) == (
        1024 + 2 * 2 * 8 * 2 + 2 * 264
    )


def test_baseline_bytes_by_hand():
    # bare int8 GEMM at M = 32, 4096x11008: int8 x and weight read, int32 y written
    assert R.raw8_gemm_bytes(m=32, k=4096, n=11008, out_elem=4) == (
        11008 * 4096 + 32 * 4096 + 4 * 32 * 11008
    )
    # nf4: half a byte per weight plus one fp32 absmax per 64 weights, fp16 x and y
    assert R.nf4_bytes(m=1, k=4096, n=11008, elem=2) == (
        4096 * 11008 // 2 + 4 * 4096 * 11008 // 64 + 2 * (4096 + 11008)
    )


def test_bitops_and_flops_by_hand():
    assert R.matmul_flops(m=16, k=4096, n=11008) == 2 * 16 * 4096 * 11008 == 1_442_840_576
    assert R.bitops(m=1, k=4096, n=11008, w_bits=4, a_bits=16) == 4096 * 11008 * 64
    assert R.bitops_ratio(w_bits=16, a_bits=16) == 1.0
    assert R.bitops_ratio(w_bits=4, a_bits=16) == 4.0
    assert R.bitops_ratio(w_bits=8, a_bits=8) == 4.0
    assert R.bitops_ratio(w_bits=2, a_bits=16) == 8.0
    assert R.bitops_ratio(w_bits=3, a_bits=8) == pytest.approx(256 / 24)


# --------------------------------------------------------------------------- fake records


def _rec(kind, backend, m, k, n, wb, ab, us, *, op=None, g=128, status="ok", **kw):
    dense_us = {1: 40.0, 16: 42.0, 4096: 1000.0}[m]
    return dict(
        dtype="float16", M=m, K=k, N=n, kind=kind, backend=backend, w_bits=wb, a_bits=ab,
        op=op, group_size=g, status=status, median_us=us, dense_us=dense_us,
        speedup_vs_dense=dense_us / us, gpu="FAKE GPU", **kw,
    )  # fmt: skip


def _fake_records():
    """triton wins at small M, cuda at M=4096 except where it is incorrect."""
    recs = []
    for m in (1, 16, 4096):
        for k, n in ((4096, 11008), (768, 3072)):
            recs.append(_rec("dense", "dense", m, k, n, 16, 16, {1: 40.0, 16: 42.0}.get(m, 1e3)))
            for wb, ab in ((4, 16), (2, 16), (8, 8), (4, 8)):
                small = m <= 16
                us = {
                    "torch": 200.0 if small else 2000.0,
                    "triton": 8.0 if small else 900.0,
                    "cuda": 15.0 if small else 500.0,
                }
                for b, t in us.items():
                    bad = b == "cuda" and m == 4096 and k == 768 and wb == 2
                    recs.append(_rec(
                        "ours", b, m, k, n, wb, ab, t, op="quant_linear",
                        status="incorrect" if bad else "ok",
                        pct_hbm=90.0 if small and b == "triton" else 30.0,
                        graph_speedup_vs_dense=6.0,
                    ))  # fmt: skip
            recs.append(_rec("ours", "triton", 4096, k, n, 8, 8, 400.0, op="int8_linear", g=k))
            recs.append(_rec("peer", "gemlite_w4a16", m, k, n, 4, 16, 9.0 if m <= 16 else 950.0))
            recs.append(_rec("gemm", "torch_int_mm", m, k, n, 8, 8, 1.0))  # not a peer
    return recs


def _targets(recs):
    """Targets on the records, each given a graph time (its eager one) where it has none."""
    recs = [dict(r, graph_us=r.get("graph_us", r["median_us"])) for r in recs]
    return report.evaluate_targets("quant", [H.normalize(r, "quant") for r in recs])


def test_evaluate_targets_on_fake_records():
    t = _targets(_fake_records())
    # graph-replay bars at small M, K,N >= 4096 (4096x11008 only): 6x everywhere.
    for name in ("w4a16_m1_2.6x", "w2a16_m1_4x", "w4a16_m16_2.5x"):
        assert t[name]["pass"] is True and t[name]["n"] == 1, name
    assert t["w8a16_m1_1.7x"]["pass"] is None  # W8A16 not in the fake records
    # A16 at M=4096: cuda 500 us vs 1000 us = 2x; W2 on 768 falls back to triton (900): 1.11x.
    assert t["a16_large_m_0.95x"]["pass"] is True and t["a16_large_m_0.95x"]["n"] == 4
    # W8A8 at M=4096: int8_linear 400 us -> 2.5x.
    assert t["w8a8_large_m_1.5x"]["pass"] is True
    assert t["w8a8_large_m_1.5x"]["worst"]["op"] == "int8_linear"
    # The best peer at 4-bit: gemlite 9 us on graph replay too against our 8 us.
    assert t["w4a16_m1_vs_int4"]["pass"] is True
    assert t["fp8_large_m_vs_scaled_mm"]["pass"] is None  # no fp8 rows
    text = report.format_targets(t)
    assert "PASS" in text and "MISS" not in text


def test_targets_miss_and_not_applicable():
    recs = _fake_records()
    for r in recs:
        if r["kind"] == "ours" and r["w_bits"] == 4 and r["a_bits"] == 16 and r["M"] == 1:
            r["graph_us"], r["graph_speedup_vs_dense"] = 20.0, 2.0  # slower than gemlite's 9 us
    t = _targets(recs)
    assert t["w4a16_m1_2.6x"]["pass"] is False and t["w4a16_m1_2.6x"]["worst"]["M"] == 1
    assert t["w4a16_m1_vs_int4"]["pass"] is False
    assert "MISS" in report.format_targets(t)
    empty = _targets([])
    assert all(v["pass"] is None for v in empty.values())
    assert "N/A" in report.format_targets(empty)


def test_fp8_target_against_scaled_mm():
    recs = [
        _rec("dense", "dense", 4096, 4096, 4096, 16, 16, 1000.0),
        _rec("ours", "triton", 4096, 4096, 4096, 8, 8, 500.0, op="fp8_linear", g=4096),
        _rec("gemm", "torch_scaled_mm_fp8", 4096, 4096, 4096, 8, 8, 600.0),
        _rec("gemm", "torch_int_mm", 4096, 4096, 4096, 8, 8, 100.0),  # int8: another key
    ]
    t = _targets(recs)["fp8_large_m_vs_scaled_mm"]
    assert t["pass"] is True and t["worst"]["x_best_peer"] == pytest.approx(1.2)


def _bucket(entries, dtype, m, **keys):
    """dispatch's matching rule: <key>_max bounds, exact <key> pins, first match wins."""
    from supernet_kernels import dispatch

    return next((e for e in entries if dispatch._matches(e, dtype, m, keys)), None)


ENTRY_KEYS = {"dtype", "m_max", "rank_by", "ranked", "times_us", "dense_us", "pick", "shapes"}


def test_derive_dispatch_on_fake_records(tmp_path, monkeypatch, request):
    from supernet_kernels import dispatch

    request.addfinalizer(dispatch.clear_caches)
    # the CUDA quant kernel as verified on sm_90 (the shipped record has none since its rewrite)
    run = {"capability": "9.0", "gpu": "NVIDIA H100 80GB HBM3", "commit": "0" * 40, "tests": "-"}
    (tmp_path / "verified.json").write_text(json.dumps({"quant_linear": {"cuda": {"sm90": [run]}}}))
    monkeypatch.setenv("SUPERNET_KERNELS_CONFIG_DIR", str(tmp_path))
    dispatch.clear_caches()
    tables = D.quant_entries(_fake_records(), "9.0")
    q = tables["quant_linear"]
    assert all(ENTRY_KEYS | {"bits", "act_bits"} == set(e) for e in q)
    e = _bucket(q, "float16", 1, bits=4, act_bits=16)
    assert e["rank_by"] == "eager"  # no graph times recorded
    assert e["ranked"][:2] == ["triton", "cuda"] and e["times_us"]["triton"]["eager"] == 8.0
    assert e["dense_us"]["eager"] == pytest.approx(40.0) and "torch_dense" in e["times_us"]
    # triton is faster but unverified; cuda is verified on sm90 and within 1.10x of dense.
    assert e["pick"] == "cuda"
    assert _bucket(q, "float16", 200, bits=4, act_bits=16)["m_max"] < 4096  # sqrt(16*4096)
    assert _bucket(q, "float16", 4096, bits=4, act_bits=16)["pick"] == "cuda"
    # No CUDA kernel for act_bits=8, and triton unverified: the dense-equivalent path.
    assert _bucket(q, "float16", 4096, bits=4, act_bits=8)["pick"] == "torch_dense"
    # cuda is fastest at M=4096 for W2A16 but wrong on one shape: it has no time there, and
    # triton is unverified: the dense-equivalent path.
    e = _bucket(q, "float16", 4096, bits=2, act_bits=16)
    assert e["times_us"]["cuda"]["eager"] is None and e["ranked"][0] == "triton"
    assert e["pick"] == "torch_dense"
    assert _bucket(q, "float16", 10**6, bits=4, act_bits=8) is None  # no extrapolation
    assert _bucket(q, "float16", 1, bits=3, act_bits=16) is None  # not measured
    assert _bucket(q, "bfloat16", 1, bits=4, act_bits=16) is None
    i8 = tables["int8_linear"]
    big = _bucket(i8, "float16", 4096)
    assert big["ranked"][0] == "torch_int_mm" and big["pick"] == "torch_int_mm"
    # torch._int_mm needs M > 16: at M = 1 the dense-equivalent path.
    assert _bucket(i8, "float16", 1)["pick"] == "torch_dense"


def test_derive_dispatch_ranks_by_graph_time_where_recorded():
    recs = [r for r in _fake_records() if r["M"] == 1]
    for r in recs:  # graph replay reverses triton and cuda
        if r.get("op") == "quant_linear" and r["backend"] in ("triton", "cuda"):
            r["graph_us"] = {"triton": 30.0, "cuda": 10.0}[r["backend"]]
        if r["kind"] == "dense":
            r["graph_us"] = 35.0
    e = _bucket(D.quant_entries(recs, "9.0")["quant_linear"], "float16", 1, bits=4, act_bits=16)
    assert e["rank_by"] == "graph" and e["ranked"][:3] == ["cuda", "triton", "torch_dense"]
    assert e["times_us"]["triton"] == {"eager": 8.0, "graph": 30.0}
    assert e["dense_us"] == {"eager": pytest.approx(40.0), "graph": 35.0}


def test_tables_render():
    recs = [H.normalize(r, "quant") for r in _fake_records()]
    text = report.format_table("quant", recs)
    assert "W4A16" in text and "triton_us" in text and "!" in text and "gemlite_w4a16" in text
    assert "x_fp16" in text and "%roof" in text and "x_peer" in text
    assert "torch_int_mm" in report.format_baselines("quant", recs)
    recs[2]["first_call_ms"] = 12.5
    assert "12.5" in report.format_first_calls(recs)


def test_plot_from_fake_records(tmp_path):
    pytest.importorskip("matplotlib")
    import plot

    results = tmp_path / "quant.jsonl"
    H.append_results(results, _fake_records())
    assert plot.main(["quant", "--results", str(results), "--out", str(tmp_path)]) == 0
    pngs = list(tmp_path.glob("quant_speedup_*.png"))
    assert pngs and all(p.stat().st_size > 0 for p in pngs)


# --------------------------------------------------------------------------- smoke run


@pytest.mark.slow
def test_smoke_run_exits_zero_within_budget(tmp_path):
    from test_bench_harness import run_smoke

    proc, _, summary = run_smoke("bench_quant.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = H.read_results(tmp_path / "quant.jsonl")
    assert records and all(r["device"] == "cpu" for r in records)
    timed = [r for r in records if r["role"] in ("ours", "peer") and r.get("median_us")]
    # Every registered implementation of the three ops that runs on the CPU (no kernels
    # without the interpreter): the reference as "ours", torch's paths as the peers; torch's
    # int4 kernel only where it applies (4-bit, 16-bit activations).
    from supernet_kernels import registry

    for op in ("quant_linear", "int8_linear", "fp8_linear"):
        on_cpu = {n for n, i in registry.implementations(op).items() if not i.kernel}
        mine = [r for r in timed if r["op"] == op]
        assert {r["backend"] for r in mine} >= on_cpu - {"torch_int_mm"}, op
        assert {r["role"] for r in mine if r["backend"] == "torch"} == {"ours"}
        assert {r["role"] for r in mine if r["backend"] != "torch"} == {"peer"}
    quant = [r for r in timed if r["op"] == "quant_linear"]
    for name in ("torch", "torch_dequant", "torch_dense"):
        assert {(r["w_bits"], r["a_bits"], r["M"]) for r in quant if r["backend"] == name} == {
            (b, a, m) for b in (4, 3, 8) for a in (16, 8) for m in (1, 5)
        }, name
    int4 = {(r["w_bits"], r["a_bits"]) for r in quant if r["backend"] == "torch_int4pack"}
    assert int4 == {(4, 16)}
    ours = [r for r in timed if r["role"] == "ours"]
    assert all(r["correct"] and r["rel_err"] <= r["tol"] and r["median_us"] > 0 for r in ours)
    assert all(r["reason"] for r in records if r["status"] == "skipped")
    data = json.loads(summary.read_text())
    assert data["records"] == len(records) and data["bad"] == []
    # every timed row carries its ratio to the dense layer of its group
    assert all(r["speedup_vs_dense"] > 0 for r in timed)


def test_registered_path_wins_over_the_bare_gemm_of_the_same_name():
    """torch_int_mm timed as the registered int8_linear path (with its activation quantizer)
    and as the benchmark's bare GEMM: the bucket keeps the registered path's time."""
    recs = [
        _rec("dense", "dense", 4096, 4096, 4096, 16, 16, 1000.0),
        _rec("peer", "torch_int_mm", 4096, 4096, 4096, 8, 8, 300.0, op="int8_linear", g=4096),
        _rec("gemm", "torch_int_mm", 4096, 4096, 4096, 8, 8, 100.0),
    ]
    e = _bucket(D.quant_entries(recs, "9.0")["int8_linear"], "float16", 4096)
    assert e["times_us"]["torch_int_mm"]["eager"] == 300.0
    # records of the bench's own row alone (before the schema) still count, as they did
    e = _bucket(D.quant_entries([recs[0], recs[2]], "9.0")["int8_linear"], "float16", 4096)
    assert e["times_us"]["torch_int_mm"]["eager"] == 100.0
