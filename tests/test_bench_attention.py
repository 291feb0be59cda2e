"""Fast CPU tests of benchmarks/bench_attention.py (tiny shapes; the GPU numbers need a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path[:0] = [p for p in (str(BENCH), str(ROOT)) if p not in sys.path]

A = pytest.importorskip("bench_attention")
import harness as H  # noqa: E402
import report  # noqa: E402

from supernet_kernels.cost import formulas as FM  # noqa: E402


def test_flops_and_bytes_formulas():
    assert FM.attention_flops(b=1, h=12, t=4096, d=64) == 4 * 12 * 4096**2 * 64
    assert FM.attention_flops(b=2, h=3, t=5, d=8, pass_="bwd") == 10 * 2 * 3 * 25 * 8
    assert FM.attention_flops(b=2, h=3, t=5, d=8, pass_="fwd_bwd") == 14 * 2 * 3 * 25 * 8
    # q, k, v read and o written; with rel pos also rel_h and rel_w (T x grid each)
    assert FM.attention_bytes(b=1, h=2, t=16, d=8, elem=2, rel=False) == 2 * 2 * 4 * 16 * 8
    assert FM.attention_bytes(b=1, h=2, t=16, d=8, elem=2, rel=True) == 2 * 2 * (512 + 2 * 64)
    g, w = A.QUICK_SHAPES
    assert (g.t, g.b, g.h, g.d) == (4096, 1, 12, 64)
    assert (w.t, w.b, w.h, w.d) == (196, 25, 12, 64)
    # SAM b1 windows: the 64 x 64 grid padded to 70 x 70 -> 25 windows of 14 x 14
    assert w.b == (-(-64 // 14)) ** 2


def _row(pct, **kw):
    base = dict(kind="attention", backend="triton", T=4096, dtype="bfloat16", pct_bf16_peak=pct,
                B=1, H=12, d=64, rel=True, status="ok", median_us=100.0)  # fmt: skip
    base["pass"] = "fwd"
    return H.normalize(dict(base, **kw))


def _target(rows):
    return report.evaluate_targets("attention", rows)["attention_fwd_40pct"]


def test_target_on_fake_records():
    t = _target([_row(45.0), _row(10.0, B=4)])
    assert t["pass"] is False and t["n"] == 2  # every batch counts
    assert _target([_row(45.0)])["pass"] is True
    assert _target([_row(39.9)])["pass"] is False
    # other rows do not count: reference backend, fp16, window shape, backward
    others = [_row(90.0, backend="reference"), _row(90.0, dtype="float16"), _row(90.0, T=196),
              _row(90.0, **{"pass": "bwd"})]  # fmt: skip
    assert _target(others)["pass"] is None


def test_inputs_and_rel_error():
    s = A.Shape("global", 2, 3, 4, 16)
    q, k, v, rh, rw = A.make_inputs(s, torch.float32, torch.device("cpu"), rel=True)
    assert q.shape == (2, 3, 16, 16) and rh.shape == rw.shape == (2, 3, 16, 4)
    assert A.make_inputs(s, torch.float32, torch.device("cpu"), rel=False)[3] is None
    assert A.rel_error(q, q) == 0
    assert A.op_backend("reference") == "torch" and A.op_backend("triton_norel") == "triton"


def test_format_attention():
    recs = [dict(_row(41.0), shape="global", median_us=900.0, tflops=300.0, rel_err=1e-3)]
    table = report.format_table("attention", recs)
    assert "triton_us" in table.splitlines()[0] and "global" in table and "900" in table


@pytest.mark.slow
def test_smoke_run(tmp_path):
    out = tmp_path / "att.jsonl"
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_attention.py"), "--smoke", "--out", str(out),
         "--summary-json", str(tmp_path / "s.json")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["kind"] for r in recs} == {"attention"} and {r["bench"] for r in recs} == {
        "attention"
    }
    # The base rows and one pair per other registered implementation (torch_sdpa).
    assert {r["backend"] for r in recs} == set(A.BACKENDS) | set(A.registered_rows())
    assert {"torch_sdpa", "torch_sdpa_norel"} <= set(A.registered_rows())
    triton_ok = any(r["backend"] == "triton" and r["status"] == "ok" for r in recs)
    skipped = [r for r in recs if r["status"] == "skipped"]
    assert triton_ok or skipped  # Triton missing: rows skipped with the reason
    for r in recs:
        assert r["status"] in ("ok", "skipped"), r
        if r["status"] == "ok" and r["backend"] != "reference":
            assert r["rel_err"] <= A.TOL
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["targets"]["attention_fwd_40pct"]["pass"] is None  # no % of peak on a CPU
    assert {r["role"] for r in recs if r["backend"] == "sdpa"} == {"dense"}
