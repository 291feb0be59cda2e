"""The census's GPU parameters, occupancy, roofline time model and gates.

Time model of one call (microseconds)::

    predicted = launches * launch_us + max(bytes / copy, flops / tensor peak, issue, latency)
                + hand-offs * handoff_us
    roofline  = launches * launch_us + max(bytes / copy, flops / tensor peak)

``bytes`` and ``flops`` are the op's minimal traffic and work (each operand read once, the
output written once); the tensor peak is the dense fp16 peak for wgmma, ``mma_sync_fraction``
of it for mma.sync, twice it for 8-bit operands, the fp32 FMA peak without tensor cores.
``issue`` is the main loop's SASS instructions over the whole call, issued by the SMs that have
work at ``issue_efficiency`` of 4 warp-instructions per clock. ``latency``: main loops that
load synchronously and meet a barrier before using the data (no ``cp.async`` / TMA pipeline)
pay ``round_trip_us`` per trip, trips per CTA times the waves (a nested loop's trips multiply:
the plan's trip count where the launcher states it, else the main loop's FLOPs or codes).
``hand-offs``: waits inside one launch for other CTAs' results, which no other work overlaps:
the two-phase low-rank kernel (t's partial sums, then the output tiles), the low-rank MLP
kernel (t1, then h's chunks into t2, then the output), the split-K ticket reductions of the
quantized kernels (partials, ticket, the last CTA sums them). Each costs ``handoff_us``, added
to the time rather than overlapped. The per-launch cost was fitted
through cuBLAS fp16 and fp8 graph replays on the H100 (2026-11-26): 3.5 us plus the bytes at
2.9 TB/s (benchmarks/results/h100_run2/quant.jsonl, the fp16 and fp8 rows).
"""

from __future__ import annotations

import fnmatch
import math
import re

# Measured ceilings (the project's GPU runs and ANCHORS.md); clock: the boost clock that
# the dense peaks imply (H100 SXM 1.755 GHz, H200 1.98 GHz).
GPUS = {
    "H100": dict(sms=132, copy_tbs=3.00, fp16_tflops=690.0, launch_us=3.5, clock_ghz=1.755,
                 fp32_fma_tflops=59.0),
    "H200": dict(sms=132, copy_tbs=4.25, fp16_tflops=750.0, launch_us=3.5, clock_ghz=1.98,
                 fp32_fma_tflops=67.0),
}  # fmt: skip
MODEL = dict(
    issue_efficiency=0.6,  # realistic share of the 4 warp-instructions per SM per clock
    mma_sync_fraction=0.6,  # mma.sync on sm_90 reaches about 60% of the wgmma peak
    int8_speedup=2.0,  # 8-bit wgmma: twice the fp16 rate
    # one global-memory round trip exposed per trip of a loop that loads synchronously and
    # syncs before use (loaded HBM latency plus the barrier): fitted on the CUDA int8 GEMM at
    # M = 1, 4096x11008 (64 such trips per CTA, one wave, two launches: 111.1 us in graph
    # replay on the H100 -> (111.1 - 7) / 64 = 1.6 us)
    round_trip_us=1.6,
    # one in-kernel hand-off: the producer's fence and atomic at L2, the consumer's polling
    # load seeing it, and its reload of the partial results from L2: three dependent L2 round
    # trips of ~0.2-0.3 us under load on an H100 (a loaded L2 hit costs ~400-500 clocks at
    # 1.755 GHz). Not measured: a first GPU run checks it (benchmarks/gpu_check.sh prints
    # the census's prediction beside each measured call).
    handoff_us=0.8,
)
SM90 = dict(regs_per_sm=65536, threads_per_sm=2048, ctas_per_sm=32, smem_per_sm=228 * 1024,
            smem_reserved_per_cta=1024, reg_unit=256, max_regs_per_thread=255)  # fmt: skip


def occupancy(registers: int, threads: int, smem_bytes: int) -> tuple[int, str]:
    """(CTAs per SM, limiting resource) on sm_90; smem_bytes excludes the 1 KB reserved."""
    warps = max(1, -(-threads // 32))
    regs_warp = -(-max(registers, 1) * 32 // SM90["reg_unit"]) * SM90["reg_unit"]
    limits = {
        "registers": SM90["regs_per_sm"] // (regs_warp * warps),
        "threads": SM90["threads_per_sm"] // (warps * 32),
        "smem": SM90["smem_per_sm"] // (smem_bytes + SM90["smem_reserved_per_cta"]),
        "cta_slots": SM90["ctas_per_sm"],
    }
    limiter = min(limits, key=lambda k: (limits[k], k != "registers"))
    return limits[limiter], limiter


_HMMA = re.compile(r"^[HI]MMA\.(16|8)(8|16)(\d+)")
_GMMA = re.compile(r"^[HIQ]GMMA\.(\d+)x(\d+)x(\d+)")


def mma_flops_per_warp(opcode: str) -> int:
    """FLOPs one warp's issue of a tensor-core instruction performs (0 if unknown)."""
    m = _GMMA.match(opcode)
    if m:  # a warpgroup instruction: the 4 warps of the group each issue it
        a, b, c = (int(g) for g in m.groups())
        return 2 * a * b * c // 4
    m = _HMMA.match(opcode)
    if m:
        a, b, c = (int(g) for g in m.groups())
        return 2 * a * b * c
    return 0


def tensor_peak_tflops(gpu: dict, mma: str, eight_bit: bool) -> float:
    if mma == "none":
        return gpu["fp32_fma_tflops"]
    peak = gpu["fp16_tflops"] * (MODEL["int8_speedup"] if eight_bit else 1.0)
    return peak * (MODEL["mma_sync_fraction"] if mma.startswith("mma.sync") else 1.0)


def issue_us(gpu: dict, warp_instructions: float, active_sms: int) -> float:
    rate = max(1, min(active_sms, gpu["sms"])) * 4 * gpu["clock_ghz"] * 1e3  # per us
    return warp_instructions / (rate * MODEL["issue_efficiency"])


def predict(
    gpu: dict,
    launches: int,
    bytes_: float,
    flops: float,
    peak_tflops: float,
    issue: float = 0.0,
    latency: float = 0.0,
    handoffs: int = 0,
) -> tuple[float, float, str]:
    """(predicted_us, roofline_us, what bounds it) of one call; issue and latency in us;
    ``handoffs``: in-kernel waits on other CTAs' results, each ``handoff_us`` added."""
    base = launches * gpu["launch_us"]
    terms = dict(
        memory=bytes_ / (gpu["copy_tbs"] * 1e6),
        tensor=flops / (peak_tflops * 1e6) if peak_tflops else 0.0,
        issue=issue,
        latency=latency,
    )
    bound = max(terms, key=terms.get)
    if terms[bound] < base * 0.25:
        bound = "launch"
    serial = handoffs * MODEL["handoff_us"]
    if serial > max(terms.values()) and serial >= base * 0.25:
        bound = "hand-off"
    pred = base + max(terms.values()) + serial
    return pred, base + max(terms["memory"], terms["tensor"]), bound


def op_traffic(op: str, s: dict, launches: int = 1) -> tuple[float, float]:
    """(bytes, flops) of one call: operands read once, output written once (fp16 activations);
    the intermediate of a block that takes more than one launch written and read once."""
    e = 2 if s.get("dtype", "float16") in ("float16", "bfloat16") else 4
    if op == "quant_linear":
        m, k, n, bits, g = s["m"], s["k"], s["n"], s["bits"], s["group"]
        words = -(-k // (32 // bits))
        wbytes = n * words * 4 + 2 * n * (k // g) * 4  # codes + fp32 scales and zeros
        return wbytes + m * k * e + m * n * e, 2.0 * m * n * k
    if op in ("int8_linear", "fp8_linear"):
        m, k, n = s["m"], s["k"], s["n"]
        return n * k + n * 4 + m * k * e + m * n * e + n * e, 2.0 * m * n * k
    if op == "lowrank_linear":
        m, k, n, r = s["m"], s["k"], s["n"], s["rank"]
        return (m * k + r * k + n * r + m * n + n) * e, 2.0 * m * r * (k + n)
    if op == "lowrank_mlp":
        # x, fc1's factors (or dense weight), fc2's factors, both biases, y once; h (M x H)
        # stays on chip in the one-launch kernel; ``launches`` > 1 writes h and reads it back
        m, k, h, n, r = s["m"], s["k"], s["h"], s["n"], s["rank"]
        w1, f1 = (
            (h * k, 2.0 * m * k * h) if s.get("dense_fc1") else (r * (k + h), 2.0 * m * r * (k + h))
        )
        byts = (m * k + w1 + r * (h + n) + h + n + m * n) * e
        if launches > 1:
            byts += 2 * m * h * e
        return byts, f1 + 2.0 * m * r * (h + n)
    if op.startswith("attention"):
        gh, gw = s["grid"]
        t, bh, d = gh * gw, s["b"] * s["h"], s["d"]
        rel = 2 * bh * t * (gh + gw) * e if s.get("rel") else 0
        bias = s["bias"] * s["h"] * t * t * e if s.get("bias") else 0
        if op == "attention":  # q, k, v read, out written, lse
            return 4 * bh * t * d * e + rel + bias + bh * t * 4, 4.0 * bh * t * t * d
        # backward: q, k, v, out-grad read, dq, dk, dv written, lse and delta read; five
        # T x T x d products (S recomputed, dP, dV, dQ, dK)
        return 7 * bh * t * d * e + 2 * rel + 2 * bias + 2 * bh * t * 4, 10.0 * bh * t * t * d
    raise ValueError(f"no traffic model for op {op!r}")


def executed_flops(op: str, s: dict, block_m: int | None, recompute: int = 1) -> float:
    """FLOPs the kernels actually run: M padded to the row tile, and for the fused low-rank
    kernel t = x v^T recomputed by each of the ``recompute`` programs of a row tile."""
    flops = op_traffic(op, s)[1]
    if op not in ("lowrank_linear", "lowrank_mlp") or not block_m:
        return flops
    m_pad = -(-s["m"] // block_m) * block_m
    if op == "lowrank_mlp":
        return flops * m_pad / max(1, s["m"])
    return 2.0 * m_pad * s["rank"] * (s["k"] * max(1, recompute) + s["n"])


# ----------------------------------------------------------------------------------------------
# Gates: properties every record must have, with budgets and waivers kept as data
# (benchmarks/census_gates.json). A gate applies to the records matching its "where"
# (field -> value or list of values; "kernel" and "op" take fnmatch patterns).


def _matches(rec: dict, where: dict) -> bool:
    for key, want in where.items():
        have = rec.get(key, rec.get("shape", {}).get(key))
        if key in ("kernel", "op", "implementation", "shape_label"):
            pats = want if isinstance(want, list) else [want]
            if not any(fnmatch.fnmatchcase(str(have), p) for p in pats):
                return False
        elif key.endswith("_min"):
            h = rec.get(key[:-4], rec.get("shape", {}).get(key[:-4]))
            if h is None or h < want:
                return False
        elif isinstance(want, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def _check(gate: dict, rec: dict) -> tuple[bool, str] | None:
    """(passed, figure text) or None when the record lacks the figure."""
    kind = gate["check"]
    fig = gate.get("figure")
    val = rec.get(fig) if fig else None
    if kind == "max":
        if val is None:
            return None
        return val <= gate["max"], f"{fig} = {_fmt(val)} (budget <= {gate['max']})"
    if kind == "equals":
        if val is None:
            return None
        return val == gate["value"], f"{fig} = {_fmt(val)} (must be {gate['value']})"
    if kind == "wide_loads":
        loads = rec.get("main_loop_loads")
        if not loads:
            return None
        # FLAG: a counter polled in an in-kernel hand-off, not an operand
        narrow = {
            k: v for k, v in loads.items() if not (k.endswith(".128") or k in ("TMA", "FLAG"))
        }
        return not narrow, f"main-loop global loads {loads} (16-byte or TMA only)"
    if kind == "mma_is":
        mma = rec.get("mma")
        if mma is None:
            return None
        return mma.startswith(gate["value"]), f"mma = {mma} (must be {gate['value']})"
    raise ValueError(f"unknown gate check {kind!r}")


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def evaluate(records: list[dict], spec: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """(failures, waived, unused waivers). Each failure names gate, kernel, shape and figure."""
    waivers = spec.get("waivers", [])
    used = [False] * len(waivers)
    failures, waived = [], []
    for gate in spec["gates"]:
        for rec in records:
            if not _matches(rec, gate.get("where", {})):
                continue
            res = _check(gate, rec)
            if res is None or res[0]:
                continue
            item = dict(gate=gate["name"], op=rec["op"], implementation=rec["implementation"],
                        kernel=rec["kernel"], shape=rec["shape_label"], figure=res[1])  # fmt: skip
            hit = next(
                (i for i, w in enumerate(waivers)
                 if w["gate"] == gate["name"] and _matches(rec, w.get("where", {}))),
                None,
            )  # fmt: skip
            if hit is None:
                failures.append(item)
            else:
                used[hit] = True
                waived.append(dict(item, reason=waivers[hit]["reason"],
                                   issue=waivers[hit]["issue"]))  # fmt: skip
    unused = [w for w, u in zip(waivers, used, strict=True) if not u]
    return failures, waived, unused


def ratio_flag(predicted: float, measured: float) -> tuple[float, bool]:
    """(measured / predicted, off by more than 2x either way)."""
    r = measured / predicted
    return r, not (0.5 <= r <= 2.0) or math.isnan(r)
