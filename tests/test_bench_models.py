"""Fast CPU tests of benchmarks/bench_models.py (counts only; no real DeiT-B / SAM forward)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path[:0] = [p for p in (str(BENCH), str(ROOT)) if p not in sys.path]

pytest.importorskip("timm")
B = pytest.importorskip("bench_models")
R = pytest.importorskip("models_report")


@pytest.fixture(scope="module")
def deit():
    """DeiT-B materialized on CPU without initialization, its dense profile and supernets."""
    from supernet_kernels.cost import profile

    spec = B.MODELS["deit_b"]
    model = B.build_model(spec, torch.device("cpu"))
    dense = profile(model, (1, 3, 224, 224))
    return spec, model, dense, B.make_supernets(model)


@pytest.mark.slow
def test_rank_for_half_flops_within_10_percent(deit):
    spec, model, dense, sns = deit
    e, est, table = B.choose_rank_ratio(sns.lowrank.space, dense, B.linear_dims(model))
    assert abs(est - 0.5) <= 0.05
    assert all(abs(table[e] - 0.5) <= abs(v - 0.5) for v in table.values())
    v = next(v for v in B.variants(spec, model, sns, dense) if v.name == "lowrank50")
    c = B.count(v, model)
    ratio = c["linear_macs"] / B.linear_macs(dense)
    assert abs(ratio - 0.5) <= 0.05, ratio  # within 10% of the 50% target
    assert abs(ratio - est) < 1e-3


@pytest.mark.slow
def test_counts_match_profile_of_extracted_subnet(deit):
    from supernet_kernels.cost import profile

    spec, model, dense, sns = deit
    vs = B.variants(spec, model, sns, dense)
    by = {(v.mode, v.name): v for v in vs if v.kind == "config"}
    assert {m for m, _ in by} == set(B.MODES)
    assert [n for m, n in by if m != "ours"] == ["dense", "dense"]  # library model: dense only
    for name in ("cut", "lowrank50", "w8a8"):
        v = by[("ours", name)]
        c = B.count(v, model)
        sub = v.make()  # sn.extract(config): the model the GPU run times
        p = profile(sub, (4, 3, 224, 224))
        s = B.scaled(c, 4)
        assert s["macs"] == p.total_macs, name
        assert s["bitops"] == p.total_bitops, name
        assert c["params"] == p.total_params, name
        assert c["weight_bytes"] == p.total_weight_bytes, name
    cut = by[("ours", "cut")]
    assert [b for b, on in cut.config["depth"].items() if not on] == [
        f"blocks.{i}" for i in B.CUT_BLOCKS
    ]
    assert set(cut.config["mlp"].values()) == {B.CUT_MLP_HIDDEN}
    # the library's dense model: its own profile; our dense subnet counts the same
    c = B.count(by[("eager", "dense")], model, dense)
    assert (c["macs"], c["bitops"]) == (dense.total_macs, dense.total_bitops)
    ours = B.count(by[("ours", "dense")], model)
    assert (ours["macs"], ours["bitops"], ours["params"]) == (
        dense.total_macs, dense.total_bitops, dense.total_params,
    )  # fmt: skip
    # the subnets run our attention
    from supernet_kernels.supernet.attention import uses_our_attention

    assert uses_our_attention(by[("ours", "dense")].make())
    assert not uses_our_attention(by[("eager", "dense")].make())


def test_quick_plan(deit):
    spec, model, dense, sns = deit
    vs = B.variants(spec, model, sns, dense)
    args = B.parse_args(["--quick"])
    got = [(v.mode, v.name, b) for v, b in B.plan(spec, vs, args, gpu=True)]
    assert got == [("eager", "dense", (1,)), ("ours", "dense", (1,))]
    full = B.plan(spec, vs, B.parse_args([]), gpu=True)
    assert ("compile", "dense") in {(v.mode, v.name) for v, _ in full}
    assert all(b == (1, 64, 256) for v, b in full if v.kind == "config")
    cpu = B.plan(spec, vs, B.parse_args(["--smoke"]), gpu=False)
    assert "compile" not in {v.mode for v, _ in cpu}


def test_quant_counts_match_quantize_model_on_small_vit():
    """The supernet-based W8A8 / W4A16 counts equal the profile of quantize_model's output."""
    from timm.models.vision_transformer import VisionTransformer

    from supernet_kernels.cost import profile
    from supernet_kernels.quant import quantize_model

    torch.manual_seed(0)
    # Widths divisible by 128 (as DeiT-B / SAM's), so quantize_model uses group 128 everywhere.
    model = VisionTransformer(img_size=64, embed_dim=256, depth=2, num_heads=4).eval()
    sns = B.make_supernets(model)
    shape = (1, 3, 64, 64)
    for sn, kw, (wb, ab) in (
        (sns.per_channel, dict(bits=8, group_size=None, act_bits=8), (8, 8)),
        (sns.dense, dict(bits=4, group_size=128, act_bits=16), (4, 16)),
    ):
        got = profile(sn, shape, config=B.uniform_bits(sn, wb, ab))
        q = B.copy.deepcopy(model)
        quantize_model(q, **kw)
        want = profile(q, shape)
        assert got.total_bitops == want.total_bitops
        assert got.total_macs == want.total_macs
        assert got.total_weight_bytes == want.total_weight_bytes


def _records():
    base = dict(
        kind="config", model="sam_vit_b", batch=1, dtype="float16", params=90e6, weight_bytes=1.7e8
    )
    return [
        dict(base, mode="eager", config="dense", macs=4.9e11, bitops=1.2e14, latency_ms=40.0,
             eager_ms=40.0, status="ok"),
        dict(base, mode="ours", config="dense", macs=4.9e11, bitops=1.2e14, latency_ms=8.0,
             eager_ms=9.0, graph_ms=8.0, status="ok", rel_err=3e-3, linear_pct=30.0,
             attention_pct=50.0, other_pct=20.0),
        dict(base, mode="ours", config="w8a8", macs=4.9e11, bitops=5.5e13, latency_ms=7.6,
             eager_ms=7.6, status="ok", graph_ms=None,
             graph_reason="RuntimeError: capture failed"),
        dict(kind="study", model="sam_vit_b", batch=1, dtype="float16", mode="ours",
             operator="depth", level="-2 blocks", macs=4.2e11, bitops=1.0e14, latency_ms=6.8,
             status="ok"),
    ]  # fmt: skip


def test_report_formatting(tmp_path):
    recs = _records()
    R.add_ratios(recs)
    assert recs[2]["bitops_ratio"] == pytest.approx(5.5e13 / 1.2e14)
    assert recs[2]["latency_ratio"] == pytest.approx(0.95)  # vs ours dense, same mode
    assert recs[3]["latency_ratio"] == pytest.approx(0.85)
    assert recs[1]["speedup_vs_eager"] == pytest.approx(5.0)
    assert recs[0]["speedup_vs_eager"] == pytest.approx(1.0)
    table = R.format_main(recs)
    head = table.splitlines()[0]
    for col in ("bitops_ratio", "latency_ratio", "TBitOPs", "GMACs", "weights MiB", "mode",
                "img/s", "peak MiB", "x eager", "lin %", "attn %", "rel_err"):  # fmt: skip
        assert col in head
    assert "w8a8" in table and len(table.splitlines()) == 5  # header, rule, 3 configs
    study = R.format_study(recs)
    assert "depth" in study and "-2 blocks" in study and "15.0" in study  # latency cut %
    assert "capture failed" in R.format_failures(recs)
    assert "8.5%" in R.SAM_NOTE
    assert R.amdahl_latency_ratio(0.085, 0.25) == pytest.approx(1 - 0.085 * 0.75)
    png = R.plot_scatter(recs, tmp_path / "p.png")
    assert png is not None and png.stat().st_size > 0
    assert R.plot_scatter([dict(recs[0], latency_ms=None)], tmp_path / "q.png") is None


@pytest.mark.parametrize(
    "name, scopes, family",
    [
        ("sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x64", (), "linear"),
        ("nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_TNN", (), "linear"),
        ("ampere_fp16_s16816gemm_fp16_256x128_ldg8_f2f_stages_64x3_tn", (), "linear"),
        ("cutlass_80_tensorop_f16_s16816gemm_relu_f16_256x128_32x3_nn_align8", (), "linear"),
        ("_quant_matmul_kernel", (), "linear"),
        ("quant_gemv_kernel", (), "linear"),
        ("_lowrank_fused_kernel", (), "linear"),
        ("quantize_rows_int8_kernel", (), "linear"),
        ("triton_tem_fused_mm_0", (), "linear"),
        ("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>", (), "attention"),
        ("fmha_cutlassF_f16_aligned_64x64_rf_sm80", (), "attention"),
        ("_attn_fwd_kernel", (), "attention"),
        ("triton_per_fused__softmax_0", (), "attention"),
        ("void (anonymous namespace)::softmax_warp_forward<c10::Half>", (), "attention"),
        ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwc", (), "other"),  # patch conv
        ("cudnn::ln_fwd_kernel", (), "other"),
        ("void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>", (), "other"),
        ("Memcpy DtoD (Device -> Device)", (), "other"),
        # scopes (innermost first) decide before the name
        ("sm90_xmma_gemm_f16f16", ("cudaLaunchKernel", "aten::bmm", "sk_family::attention",
                                   "sk_family::linear"), "attention"),
        ("sm90_xmma_gemm_f16f16", ("aten::addmm", "aten::linear", "sk_family::linear",
                                   "sk_family::attention"), "linear"),
        ("void at::native::elementwise_kernel", ("aten::add", "sk_family::attention"),
         "attention"),
        ("sm90_xmma_gemm_f16f16", ("aten::bmm", "aten::scaled_dot_product_attention"),
         "attention"),
        ("whatever_kernel", ("supernet_kernels::attention",), "attention"),
    ],
)  # fmt: skip
def test_op_family(name, scopes, family):
    assert R.op_family(name, scopes) == family


def test_family_split_and_kernel_rows():
    from types import SimpleNamespace as NS

    from torch.autograd import DeviceType

    def cpu(i, name, parent=None, kernels=()):
        return NS(id=i, name=name, device_type=DeviceType.CPU, cpu_parent=parent,
                  kernels=list(kernels))  # fmt: skip

    def dev(name, us, corr):
        return NS(id=0, name=name, device_type=DeviceType.CUDA, linked_correlation_id=corr,
                  time_range=NS(elapsed_us=lambda us=us: us), kernels=[])  # fmt: skip

    scope = cpu(0, "sk_family::linear")
    mm = cpu(0, "aten::mm", scope)
    launch = cpu(7, "cudaLaunchKernel", mm, kernels=["k"])
    # the scope on the GPU timeline (a user annotation spanning its kernels) is not a kernel
    annotation = dev("sk_family::linear", 900.0, 0)
    annotation.is_user_annotation = True
    events = [scope, mm, launch, dev("nvjet_gemm", 300.0, 7), dev("ln_fwd_kernel", 100.0, 99),
              annotation, dev("_attn_fwd_kernel", 600.0, 0)]  # fmt: skip
    rows = B.kernel_rows(events)
    assert len(rows) == 3
    assert rows[0] == ("nvjet_gemm", 300.0, ["cudaLaunchKernel", "aten::mm", "sk_family::linear"])
    assert rows[1][2] == [] and rows[2][2] == []
    split = R.family_split(rows, calls=2)
    assert split["linear_ms"] == pytest.approx(0.15)
    assert split["attention_ms"] == pytest.approx(0.3)
    assert split["other_ms"] == pytest.approx(0.05)
    assert split["kernel_ms"] == pytest.approx(0.5)
    assert split["attention_pct"] == pytest.approx(60.0)
    assert split["top_kernels"][0] == ["_attn_fwd_kernel", "attention", 0.3]
    # older profilers: kernels only on their launcher
    old = [scope, mm, cpu(7, "cudaLaunchKernel", mm, [NS(name="nvjet_gemm", duration=5.0)])]
    assert B.kernel_rows(old) == [("nvjet_gemm", 5.0, ["cudaLaunchKernel", "aten::mm",
                                                      "sk_family::linear"])]  # fmt: skip


def test_family_scopes_on_cpu_profile():
    """The hooks open one scope per linear / attention forward (a CPU profile shows them)."""
    from timm.models.vision_transformer import VisionTransformer
    from torch.profiler import ProfilerActivity, profile

    model = VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=1, num_heads=2)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with B.family_scopes(model), torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as p:
        model(x)
    prof = p
    names = [e.name for e in prof.events()]
    assert names.count("sk_family::attention") == 1
    assert names.count("sk_family::linear") == 5  # qkv, proj, fc1, fc2, head
    mm = [e for e in prof.events() if e.name == "aten::addmm"]
    assert mm and all("sk_family::linear" in B._scopes(e) for e in mm)
    # hooks removed afterwards
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_targets_on_fake_records():
    def rec(model, mode, **kw):
        return dict(kind="config", model=model, batch=1, dtype="float16", mode=mode,
                    config="dense", **kw)  # fmt: skip

    recs = [
        rec("sam_vit_b", "eager", latency_ms=40.0),
        rec("sam_vit_b", "ours", latency_ms=9.0, graph_ms=9.0),
        rec("deit_b", "ours", latency_ms=1.3, graph_ms=1.3, kernel_ms=1.0),
    ]
    t = R.evaluate_targets(recs)
    assert t["sam_dense_4x"]["pass"] is True
    assert t["sam_dense_4x"]["value"] == pytest.approx(40 / 9)
    assert t["deit_graph_1.2x"]["pass"] is False
    assert t["deit_graph_1.2x"]["value"] == pytest.approx(1.3)
    recs[1]["latency_ms"] = 11.0
    recs[2]["graph_ms"] = 1.1
    t = R.evaluate_targets(recs)
    assert (t["sam_dense_4x"]["pass"], t["deit_graph_1.2x"]["pass"]) == (False, True)
    text = R.format_targets(t)
    assert "MISS" in text and "PASS" in text
    t = R.evaluate_targets([])  # nothing measured
    assert {v["pass"] for v in t.values()} == {None}
    assert "N/A" in R.format_targets(t)


def test_rel_err_and_latest_run():
    a = torch.tensor([1.0, -2.0, 4.0])
    assert B.rel_err(a, a) == 0
    assert B.rel_err(a + torch.tensor([0.0, 0.04, 0.0]), a) == pytest.approx(0.01)
    recs = [dict(run_id="1", kind="config"), dict(run_id="2", kind="config"),
            dict(run_id="a", kind="attention"), dict(run_id="b", kind="attention")]  # fmt: skip
    assert [r["run_id"] for r in R.latest_run(recs)] == ["2", "b"]


@pytest.mark.slow
def test_smoke_counts_only_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_models.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "latency needs a GPU" in proc.stdout
    assert "8.5%" in proc.stdout
    recs = [json.loads(line) for line in (tmp_path / "models.jsonl").read_text().splitlines()]
    configs = {(r["model"], r["mode"], r["config"]) for r in recs if r["kind"] == "config"}
    for m in ("deit_b", "sam_vit_b"):
        assert (m, "eager", "dense") in configs
        for c in ("dense", "w8a8", "w4a16", "lowrank50", "cut", "mixed"):
            assert (m, "ours", c) in configs
    assert {r["batch"] for r in recs if r["model"] == "deit_b"} == {1, 64, 256}
    assert {r["status"] for r in recs} == {"counts_only"}
    assert all(r["commit"] and r["date"] and r["bitops"] > 0 for r in recs)
    assert {r["operator"] for r in recs if r["kind"] == "study"} >= {
        "resolution", "mlp_width", "depth", "rank", "bits",
    }  # fmt: skip


# --------------------------------------------------------------------------- the harness's runner


def _fake_bench(tmp_path, records, *, fail_after=None, problems=()):
    """A whole-model benchmark module declaring only what harness.model_main asks for."""
    import types

    def gen(ctx):
        for i, rec in enumerate(records):
            if fail_after is not None and i == fail_after:
                raise KeyboardInterrupt  # gpu_check's timeout: SIGINT
            yield dict(rec, status="not_run" if ctx.over_budget() else rec["status"])

    mod = types.SimpleNamespace(
        NAME="models", DOC="fake", RESULTS="models", records=gen,
        summary=lambda ctx, recs: {"n_config": sum(r["kind"] == "config" for r in recs)},
        problems=lambda ctx, recs: list(problems),
    )  # fmt: skip
    return mod


def test_model_main_stamps_keeps_and_summarizes(tmp_path, capsys):
    import harness as H

    recs = [
        dict(kind="config", model="deit_b", batch=1, dtype="float32", mode="ours",
             config=c, status="counts_only", macs=1e9, bitops=2.56e11, params=1e6,
             weight_bytes=2e6)
        for c in ("dense", "w8a8", "w4a16")
    ]  # fmt: skip
    summary = tmp_path / "s.json"
    mod = _fake_bench(tmp_path, recs, fail_after=2)
    code = H.model_main(mod, ["--smoke", "--out", str(tmp_path), "--summary-json", str(summary)])
    assert code == 0
    got = H.read_results(tmp_path / "models.jsonl")
    # interrupted after two records: both kept, with the harness's provenance
    assert [r["config"] for r in got] == ["dense", "w8a8"]
    assert all(r["bench"] == "models" and r["commit"] and r["run_id"] == got[0]["run_id"]
               for r in got)  # fmt: skip
    s = json.loads(summary.read_text())
    assert s["records"] == 2 and s["n_config"] == 2 and s["errors"] == [] and s["env"]["date"]
    assert "interrupted" in capsys.readouterr().out
    # an error record or a problem the module reports makes the exit status 1
    bad = [dict(recs[0], status="error", reason="boom")]
    assert H.model_main(_fake_bench(tmp_path, bad), ["--smoke", "--out", str(tmp_path)]) == 1
    mod = _fake_bench(tmp_path, recs, problems=["sam_vit_b failed"])
    assert H.model_main(mod, ["--smoke", "--out", str(tmp_path / "x.jsonl")]) == 1
    assert len(H.read_results(tmp_path / "x.jsonl")) == 3


def test_model_args_shared_with_the_op_benchmarks():
    args = B.parse_args(["--dtypes", "bfloat16", "--time-budget-s", "5", "--no-graph"])
    assert args.dtypes == ("bfloat16",) and args.time_budget_s == 5 and args.no_graph
    assert (args.warmup_ms, args.rep_ms, args.backend) == (25, 200, "triton")
    assert B.parse_args(["--out", "r.jsonl"]).out.name == "r.jsonl"


@pytest.mark.parametrize("run", ["h100_run1", "h100_run2"])
def test_report_reads_the_committed_h100_records(run, tmp_path, capsys):
    """The whole-model records written before the harness still report and plot."""
    import report

    path = BENCH / "results" / run / "models.jsonl"
    assert R.main([str(path), "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "sam_vit_b" in out and "targets:" in out
    recs = R.latest_run(_read(path))
    assert any(r.get("latency_ms") for r in recs if r.get("kind") == "config")
    assert report.main(["latency_table", str(path)]) == 1  # none in those runs: says so


def _read(path):
    import harness as H

    return H.read_results(path)


def test_latency_table_report(tmp_path, capsys):
    import report

    path = tmp_path / "models.jsonl"
    rows = [
        dict(kind="latency_table", model="deit_b", dtype="float16", config_index=i, gpu="H100",
             predicted_ms=p, measured_ms=m, rel_err=(p - m) / m, other_ms=0.2, build_s=12.0,
             status="ok")
        for i, (p, m) in enumerate(((1.1, 1.0), (0.9, 1.0), (1.0, 1.0)))
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert report.main(["latency_table", str(path)]) == 0
    out = capsys.readouterr().out
    assert "predicted_ms" in out and '"configs": 3' in out
    s = R.latency_summary(rows)
    assert s["median_abs_err"] == pytest.approx(0.1) and s["max_abs_err"] == pytest.approx(0.1)
    assert s["table_build_s"] == 12.0 and s["device"] == "H100"


@pytest.mark.slow
def test_latency_table_smoke_run(tmp_path):
    import bench_latency_table as L

    summary = tmp_path / "s.json"
    argv = ["--smoke", "--configs", "2", "--out", str(tmp_path), "--summary-json", str(summary)]
    assert L.main(argv) == 0
    import harness as H

    recs = H.read_results(tmp_path / "models.jsonl")
    assert [r["config_index"] for r in recs] == [0, 1]
    assert all(r["kind"] == "latency_table" and r["bench"] == "latency_table" for r in recs)
    assert all(r["predicted_ms"] > 0 and r["measured_ms"] > 0 for r in recs)
    s = json.loads(summary.read_text())
    assert s["configs"] == 2 and s["max_abs_err"] == max(abs(r["rel_err"]) for r in recs)


def test_run_case_rules():
    """One rule for every whole-model record: counts only on a CPU, not_run after the budget,
    ok with what was measured, error with the reason (the next configuration still runs)."""
    from types import SimpleNamespace as NS

    import harness as H

    def ctx(gpu, over=False):
        return NS(gpu=gpu, over_budget=lambda: over)

    def boom():
        raise RuntimeError("capture failed")

    assert H.run_case(ctx(False), {}, boom)["status"] == "counts_only"
    assert H.run_case(ctx(True, over=True), {}, boom) == {"status": "not_run",
                                                          "reason": "time budget"}  # fmt: skip
    assert H.run_case(ctx(True), {"a": 1}, lambda: {"latency_ms": 2.0}) == {
        "a": 1, "latency_ms": 2.0, "status": "ok",
    }  # fmt: skip
    rec = H.run_case(ctx(True), {}, boom)
    assert rec["status"] == "error" and "RuntimeError: capture failed" in rec["reason"]
