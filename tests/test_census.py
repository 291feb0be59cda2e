"""The kernel census (benchmarks/census*.py): SASS reading, occupancy, time model, gates, and one
real sm_90 compile of a Triton kernel through the census's own driver."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import census_model as cm  # noqa: E402
import census_sass as cs  # noqa: E402
import census_scenarios as scen  # noqa: E402

# A hand-written sm_90 kernel in cuobjdump's layout: a prologue, an outer K loop (0x0100 ..
# 0x0300) that stages a tile with synchronous loads, waits at a barrier and runs an inner MMA
# loop (0x0200 .. 0x0280), then an epilogue loop that stores without tensor cores.
SASS = """
        code for sm_90
                Function : _Z6kernelPKhPf
        .headerflags    @"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/   LDC R1, c[0x0][0x28] ; /* 0x00000a00ff017b82 */
        /*0010*/   S2R R0, SR_TID.X ; /* 0x0000000000007919 */
        /*0020*/   LDG.E.CONSTANT R2, desc[UR4][R4.64] ; /* 0x0000000404027981 */
        /*0030*/   STL [R1], R2 ; /* 0x0000000201007387 */
        /*0100*/   LDG.E.128 R8, desc[UR4][R6.64] ; /* 0x0000000406087981 */
        /*0110*/   LDG.E.U16 R12, desc[UR4][R10.64] ; /* 0x000000040a0c7981 */
        /*0120*/   LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R6.64] ;
        /*0130*/   LDGSTS.E [R3+0x10], desc[UR4][R6.64+0x10] ;
        /*0140*/   STS.128 [R3], R8 ; /* 0x0000000803007388 */
        /*0150*/   BAR.SYNC.DEFER_BLOCKING 0x0 ; /* 0x0000000000007b1d */
        /*0200*/   LDSM.16.M88.4 R16, [R3] ; /* 0x000000000310783b */
        /*0210*/   HMMA.16816.F32 R20, R16, R18, R20 ; /* 0x000000121014723c */
        /*0220*/   HMMA.16816.F32 R24, R16, R19, R24 ; /* 0x000000131018723c */
        /*0230*/   LDL R2, [R1] ; /* 0x0000000001027983 */
        /*0240*/   ISETP.NE.AND P0, PT, R0, RZ, PT ; /* 0x000000ff0000720c */
        /*0280*/   @P0 BRA 0x200 ; /* 0xfffffffc00d00947 */
        /*0290*/   BAR.SYNC.DEFER_BLOCKING 0x0 ; /* 0x0000000000007b1d */
        /*02a0*/   UTMALDG.2D [UR8], [UR4] ; /* 0x00000004080075b4 */
        /*0300*/   @!P0 BRA 0x100 ; /* 0xfffffffc00008947 */
        /*0400*/   STG.E.128 desc[UR4][R6.64], R20 ; /* 0x0000001406007986 */
        /*0410*/   LDG.E.64 R30, desc[UR4][R6.64] ; /* 0x000000040e1e7981 */
        /*0420*/   @P0 BRA 0x400 ; /* 0xfffffffc00d00947 */
        /*0430*/   EXIT ; /* 0x000000000000794d */
        /*0440*/   BRA 0x440; /* 0xfffffffc00fc7947 */
"""

RES = """
Resource usage:
 Common:
  GLOBAL:0
 Function _Z6kernelPKhPf:
  REG:96 STACK:16 SHARED:1024 LOCAL:0 CONSTANT[0]:568 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def _insns():
    return cs.parse_sass(SASS)["_Z6kernelPKhPf"]


def test_parse_sass_and_whole_kernel_census():
    insns = _insns()
    assert len(insns) == 24
    assert insns[2].opcode == "LDG.E.CONSTANT" and insns[15].predicated
    c = cs.census(insns)
    assert c["loads"] == {"LDG.128": 1, "LDG.16": 1, "LDG.32": 1, "LDG.64": 1,
                          "LDGSTS.128": 1, "LDGSTS.32": 1, "TMA": 1}  # fmt: skip
    assert c["mma"] == {"HMMA": 2}
    assert (c["barriers"], c["shared_stores"], c["shared_loads"]) == (2, 1, 1)
    assert (c["local_ops"], c["local_bytes"]) == (2, 8)
    assert cs.mma_kind(c) == "mma.sync:HMMA"
    assert cs.mma_kind({"mma": {"HMMA": 1, "HGMMA": 4}}) == "wgmma:HGMMA"
    assert cs.mma_kind({"mma": {}}) == "none"


def test_polled_counters_are_not_operand_loads():
    text = """
                Function : _Z1kv
        /*0000*/   LDG.E.STRONG.GPU R2, desc[UR4][R4.64] ;
        /*0010*/   LDG.E.128.STRONG.GPU R8, desc[UR4][R6.64] ;
        /*0020*/   LDG.E.STRONG.SM R3, desc[UR4][R4.64] ;
        /*0030*/   EXIT ;
"""
    c = cs.census(cs.parse_sass(text)["_Z1kv"])
    # a 32-bit acquire load at GPU scope polls a hand-off counter; t read through L2 (.cg) is
    # a 16-byte operand load; a CTA-scope strong load is an ordinary 4-byte load
    assert c["loads"] == {"FLAG": 1, "LDG.128": 1, "LDG.32": 1}
    gate = dict(name="wide", check="wide_loads", where={})
    rec = _rec(main_loop_loads={"FLAG": 2, "LDG.128": 17})
    assert cm.evaluate([rec], dict(gates=[gate], waivers=[]))[0] == []
    rec = _rec(main_loop_loads={"LDG.32": 2, "LDG.128": 17})
    assert len(cm.evaluate([rec], dict(gates=[gate], waivers=[]))[0]) == 1


def test_loops_and_main_loop_prefers_the_tensor_core_loop():
    insns = _insns()
    # backward branches: inner MMA loop, outer K loop, epilogue loop; the self-branch after
    # EXIT (a trap loop) is a loop without work
    spans = [(insns[a].addr, insns[b].addr) for a, b in cs.loops(insns)]
    assert spans == [(0x200, 0x280), (0x100, 0x300), (0x400, 0x420), (0x440, 0x440)]
    loop = cs.main_loop(insns)
    assert (loop[0].addr, loop[-1].addr) == (0x200, 0x280)  # innermost loop with the MMAs
    c = cs.census(loop)
    assert c["instructions"] == 6 and c["mma"] == {"HMMA": 2} and c["local_ops"] == 1
    assert c["alu"] == {"ISETP": 1}


def test_main_loop_without_tensor_cores_follows_the_widest_load():
    text = SASS.replace("HMMA.16816.F32", "FFMA")
    insns = cs.parse_sass(text)["_Z6kernelPKhPf"]
    loop = cs.main_loop(insns)
    # TMA (the outer loop) is the widest load; the inner loop has no load at all
    assert (loop[0].addr, loop[-1].addr) == (0x100, 0x300)
    assert cs.census(loop)["barriers"] == 2


def test_res_usage_and_names():
    assert cs.parse_res_usage(RES) == {
        "_Z6kernelPKhPf": dict(registers=96, stack_bytes=16, shared_bytes=1024, local_bytes=0)
    }
    name = ("void supernet_kernels::(anonymous namespace)::quant_gemv_kernel<4, 1>"
            "(supernet_kernels::(anonymous namespace)::GemvParams)")  # fmt: skip
    assert cs.short_name(name) == "quant_gemv_kernel<4, 1>"
    assert cs.short_name("_attn_fwd_kernel") == "_attn_fwd_kernel"


def test_occupancy_on_sm90():
    # 128 registers x 256 threads = 32768 per CTA: 2 CTAs in 64K registers
    assert cm.occupancy(128, 256, 27648) == (2, "registers")
    # 64 registers x 128 threads, 36 KB of shared memory (+1 KB reserved): 6 CTAs by smem
    assert cm.occupancy(64, 128, 36864) == (6, "smem")
    # registers round up to 8 per thread (256 per warp): 193 -> 200 x 256 threads -> 1 CTA
    assert cm.occupancy(193, 256, 49152) == (1, "registers")
    assert cm.occupancy(16, 64, 0)[0] == 32  # the 32-CTA and 2048-thread limits


def test_mma_flops():
    assert cm.mma_flops_per_warp("HMMA.16816.F32.BF16") == 2 * 16 * 8 * 16
    assert cm.mma_flops_per_warp("IMMA.16832.S8.S8.SAT") == 2 * 16 * 8 * 32
    # a warpgroup instruction: each of the 4 warps issues a quarter of the product
    assert cm.mma_flops_per_warp("HGMMA.64x128x16.F32") == 2 * 64 * 128 * 16 // 4
    assert cm.mma_flops_per_warp("FFMA") == 0


def test_time_model_on_known_numbers():
    h100 = cm.GPUS["H100"]
    # 24 MB at 3.00 TB/s = 8 us, plus one launch: the W4 GEMV floor of ANCHORS.md (~11.8 us)
    pred, roof, bound = cm.predict(h100, 1, 24e6, 9e7, 690.0)
    assert pred == pytest.approx(11.5) and roof == pytest.approx(11.5) and bound == "memory"
    # an instruction-bound call: the issue term decides predicted, not the roofline
    pred, roof, bound = cm.predict(h100, 1, 24e6, 9e7, 690.0, issue=30.0)
    assert (pred, roof, bound) == (pytest.approx(33.5), pytest.approx(11.5), "issue")
    # issue time: 132 SMs x 4 warp-instructions per clock x 1.755 GHz x 60%
    assert cm.issue_us(h100, 132 * 4 * 1755 * 0.6, 132) == pytest.approx(1.0)
    assert cm.issue_us(h100, 132 * 4 * 1755 * 0.6, 66) == pytest.approx(2.0)
    # tiny work: the launch bounds it
    assert cm.predict(h100, 2, 1e3, 1e3, 690.0)[2] == "launch"
    b, f = cm.op_traffic("quant_linear", dict(m=1, k=4096, n=11008, bits=4, group=128))
    assert b == 11008 * 512 * 4 + 2 * 11008 * 32 * 4 + 4096 * 2 + 11008 * 2
    assert f == 2 * 4096 * 11008
    assert cm.ratio_flag(10.0, 25.0) == (2.5, True)
    assert cm.ratio_flag(10.0, 15.0) == (1.5, False)


def test_in_kernel_handoffs_add_to_the_time():
    h100, hand = cm.GPUS["H100"], cm.MODEL["handoff_us"]
    # the hand-offs are serial: added to the largest term, not overlapped with it
    pred, roof, bound = cm.predict(h100, 1, 24e6, 9e7, 690.0, handoffs=2)
    assert pred == pytest.approx(11.5 + 2 * hand) and roof == pytest.approx(11.5)
    assert bound == "memory"
    # a tiny call of the MLP kernel (two hand-offs): they, not the bytes, are what it waits on
    pred, _, bound = cm.predict(h100, 1, 1e5, 1e6, 690.0, handoffs=2)
    assert pred == pytest.approx(3.5 + 1e5 / 3.0e6 + 2 * hand) and bound == "hand-off"


def test_mlp_block_traffic():
    s = dict(m=197, k=768, h=3072, n=768, rank=64)
    b1, f1 = cm.op_traffic("lowrank_mlp", s)
    # x, the four factors, both biases and y once; h stays on chip
    assert b1 == 2 * (197 * 768 + 64 * (768 + 3072) * 2 + 3072 + 768 + 197 * 768)
    assert f1 == 2.0 * 197 * 64 * (768 + 3072) * 2
    # two launches write h and read it back
    b2, f2 = cm.op_traffic("lowrank_mlp", s, launches=2)
    assert (b2 - b1, f2) == (2 * 197 * 3072 * 2, f1)
    bd, fd = cm.op_traffic("lowrank_mlp", dict(s, dense_fc1=True))
    assert fd == 2.0 * 197 * 768 * 3072 + 2.0 * 197 * 64 * (3072 + 768)
    assert bd - b1 == 2 * (3072 * 768 - 64 * (768 + 3072))
    # executed: rows padded to the 64-row tile
    assert cm.executed_flops("lowrank_mlp", s, 64) == pytest.approx(f1 * 256 / 197)


def _rec(**kw):
    rec = dict(op="quant_linear", implementation="triton", kernel="_quant_matmul_kernel",
               shape=dict(m=1, k=4096, n=4096, bits=4), shape_label="M=1 4096x4096 W4A16",
               main_loop_local_ops=0, instr_per_code=2.5, mma="wgmma:HGMMA",
               main_loop_loads={"LDGSTS.128": 4}, tile_m=128)  # fmt: skip
    rec.update(kw)
    return rec


SPEC = dict(
    gates=[
        dict(name="per_code", check="max", figure="instr_per_code", max=3,
             where=dict(op="quant_linear", bits=4)),
        dict(name="wide", check="wide_loads", where=dict(op="quant_*")),
        dict(name="wgmma", check="mma_is", value="wgmma", where=dict(tile_m_min=64)),
        dict(name="spills", check="max", figure="main_loop_local_ops", max=0, where={}),
    ],
    waivers=[],
)  # fmt: skip


def test_gates_pass_and_fail_naming_kernel_shape_and_figure():
    assert cm.evaluate([_rec()], SPEC) == ([], [], [])
    bad = _rec(instr_per_code=19.6, main_loop_loads={"LDGSTS.32": 10, "LDGSTS.128": 2},
               mma="mma.sync:HMMA", main_loop_local_ops=4)  # fmt: skip
    failures, waived, unused = cm.evaluate([bad, _rec(shape=dict(bits=2))], SPEC)
    assert [f["gate"] for f in failures] == ["per_code", "wide", "wgmma", "spills"]
    f = failures[0]
    assert (f["kernel"], f["shape"]) == ("_quant_matmul_kernel", "M=1 4096x4096 W4A16")
    assert "instr_per_code = 19.6" in f["figure"] and "<= 3" in f["figure"]
    assert "LDGSTS.32" in failures[1]["figure"]
    assert "mma.sync:HMMA" in failures[2]["figure"]
    # a small tile is not held to wgmma
    assert cm.evaluate([_rec(mma="mma.sync:HMMA", tile_m=16)], SPEC)[0] == []


def test_waivers_suppress_and_unused_waivers_are_reported():
    spec = dict(SPEC, waivers=[
        dict(gate="per_code", where=dict(kernel=["_quant_*"]), reason="dequant via smem",
             issue=16),
        dict(gate="spills", where=dict(kernel="gone_kernel"), reason="fixed", issue=16),
    ])  # fmt: skip
    failures, waived, unused = cm.evaluate([_rec(instr_per_code=10.0)], spec)
    assert failures == []
    assert waived[0]["gate"] == "per_code" and waived[0]["issue"] == 16
    assert [w["where"]["kernel"] for w in unused] == ["gone_kernel"]
    # the waiver names its kernel: another kernel with the same violation still fails
    failures, _, _ = cm.evaluate([_rec(instr_per_code=10.0, kernel="new_kernel")], spec)
    assert [f["kernel"] for f in failures] == ["new_kernel"]


def test_committed_gates_are_well_formed():
    spec = json.loads((ROOT / "benchmarks" / "census_gates.json").read_text())
    names = {g["name"] for g in spec["gates"]}
    assert len(names) == len(spec["gates"])
    for g in spec["gates"]:
        assert g["check"] in ("max", "equals", "wide_loads", "mma_is"), g
    for w in spec["waivers"]:
        assert w["gate"] in names, w
        assert w["reason"] and isinstance(w["issue"], int) and w["where"].get("kernel"), w


def test_scenarios_cover_every_listed_kernel():
    try:
        from supernet_kernels import registry

        listed = registry.kernels()
    except ImportError:
        from supernet_kernels.backends import KERNELS as listed
    have = {(s.op, s.implementation) for s in scen.SCENARIOS}
    for op, impls in listed.items():
        for impl in impls:
            assert (op, impl) in have, f"{op}/{impl} has no census scenario"
    # the removed CUDA low-rank kernel is not expected
    assert ("lowrank_linear", "cuda") not in have
    labels = {scen.shape_label(s.op, sh) for s in scen.SCENARIOS for sh in s.shapes}
    assert {"M=1 4096x11008 W4A16 g128", "M=16384 768x3072 r=64", "M=16 3072x768 r=128",
            "M=197 768x3072x768 r=64 gelu", "M=197 768x3072x768 r=64 gelu dense-fc1",
            "M=16384 768x3072x768 r=384 gelu"} <= labels  # fmt: skip
    for bits in (2, 3, 4, 8):
        for m in (1, 16, 197, 4096):
            assert f"M={m} 4096x11008 W{bits}A16 g128" in labels
            assert f"M={m} 4096x11008 W{bits}A8 g128" in labels


def test_compile_check_shapes_per_dtype():
    sc = next(s for s in scen.SCENARIOS if s.op == "lowrank_mlp")
    # float16 compiles are the census's (shared cache): every shape; the other dtypes a subset
    assert scen.compile_subset(sc, "float16") == sc.shapes
    sub = scen.compile_subset(sc, "bfloat16")
    assert sub and set(map(repr, sub)) < set(map(repr, sc.shapes))
    q = next(s for s in scen.SCENARIOS if s.op == "quant_linear" and s.implementation == "triton")
    assert scen.compile_subset(q, "bfloat16") == scen.compile_subset(q, "float16")


_REAL_RUN = r"""
import json, sys
sys.path[:0] = [sys.argv[1] + "/benchmarks", sys.argv[1]]
import census, census_scenarios as scen
from pathlib import Path
import tempfile
sc = next(s for s in scen.SCENARIOS if s.op == "quant_linear" and s.implementation == "triton")
shape = dict(m=1, k=4096, n=11008, bits=4, act_bits=16, group=128)
sc = scen.Scenario(sc.op, sc.implementation, sc.entry, (shape,), sc.dtypes)
calls = scen.record_calls([sc])
assert not calls[0].error, calls[0].error
with tempfile.TemporaryDirectory() as tmp:
    facts = census.compile_triton(calls, Path(tmp), log=lambda *a: None)
ln = next(x for x in calls[0].launches if x.reads_weight)
f = facts[id(ln)]
print(json.dumps(dict(kernel=f["kernel"], res=f["res"], loop=f["loop"], all=f["all"],
                      config=f["config"], ones=f["ones"], weight=ln.reads_weight,
                      n_launches=len(calls[0].launches), torch=calls[0].torch_kernels)))
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton not installed")
def test_real_sm90_compile_of_a_triton_kernel():
    import triton

    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not (tools / "cuobjdump").exists() or not (tools / "ptxas").exists():
        pytest.skip("Triton's NVIDIA tools (ptxas, cuobjdump) are not shipped here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _REAL_RUN, str(ROOT)], capture_output=True,
                          text=True, timeout=600, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads(proc.stdout.strip().splitlines()[-1])
    assert d["weight"] and d["res"]["registers"] > 0
    assert d["loop"]["instructions"] > 0  # a main loop was found
    # the weight stream goes through global loads of some width, and the kernel has a
    # tensor-core instruction (M = 1 is padded to a 16-row MMA tile)
    assert sum(d["all"]["loads"].values()) > 0 and d["all"]["mma"]
    # M = 1 is specialised to a constant, as the runtime does
    assert "M" in d["ones"]
    # one launch per call: the tile layout is made once per weight, not per call
    assert d["n_launches"] == 1 and d["torch"] == []
