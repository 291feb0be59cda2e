"""Kernel census: every GPU kernel of every op, read from its sm_90 code, without a GPU.

    python benchmarks/census.py [--out benchmarks/results] [--gates benchmarks/census_gates.json]

For every scenario of benchmarks/census_scenarios.py (op, implementation, entry point, the
benchmark shapes): the Triton launchers are called on meta tensors with ``JITFunction.run``
recorded, each launch is specialised as Triton's runtime would (Triton's own argument binder:
integers equal to 1 become constants, pointers and integers divisible by 16 are marked so) and
compiled once per distinct specialisation for ``GPUTarget("cuda", 90, 32)``; the CUDA kernels
are read from the sm_90 cubins of the built extension, with the launch plans the plan headers
compute (benchmarks/census_plan_probe.cpp). ``cuobjdump`` (shipped with Triton) gives the SASS
and resource usage; benchmarks/census_sass.py counts it and benchmarks/census_model.py turns it
into occupancy, a predicted time, and gates.

Writes census_sm90.json (one record per kernel launch and shape) and census_sm90.md (the table,
the comparison with the last committed census, predicted vs measured on the H100 runs of
2026-11-26, gate results), and exits 1 when a gate fails (each failure names the gate, kernel,
shape and figure). Runs in a few minutes on 2 cores, never touches a GPU or the network.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRATCH = Path(tempfile.gettempdir()) / "supernet_kernels_census"
# before any Triton import: compile for the GPU (not the interpreter), cache in the scratch
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_CACHE_DIR", str(SCRATCH / "triton"))
os.environ["SUPERNET_KERNELS_CACHE_DIR"] = str(SCRATCH / "tuning-empty")  # no local tunings
sys.path[:0] = [str(HERE), str(ROOT)]

import census_model as cm  # noqa: E402
import census_sass as cs  # noqa: E402
import census_scenarios as scen  # noqa: E402

QUANT_OPS = ("quant_linear", "int8_linear", "fp8_linear")
MEASURED = ("h100_run1", "h100_run2")  # the H100 runs of 2026-11-26
# What those runs measured that still runs unchanged: the Triton and CUDA quant kernels and
# the low-rank kernels were rewritten since (their old records say nothing of the new code),
# the CUDA low-rank kernel and int8 GEMM removed. A run of this commit (--measured) is
# compared in full.
UNCHANGED_SINCE_MEASURED = {("attention", "triton")}


def _tool(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"{name}: not shipped with Triton and not on PATH")


def _run(cmd: list[str], **kw) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def analyse(sass_text: str, res_text: str) -> dict[str, dict]:
    """Short kernel name -> resource usage and SASS counts of the kernel and its main loop."""
    funcs = cs.parse_sass(sass_text)
    res = cs.parse_res_usage(res_text)
    names = cs.demangle(list(funcs))
    out = {}
    for fn, insns in funcs.items():
        loop = cs.main_loop(insns)
        out[cs.short_name(names[fn])] = dict(
            res=res.get(fn, {}), all=cs.census(insns), loop=cs.census(loop),
            loop_mma_flops_per_warp=sum(cm.mma_flops_per_warp(i.opcode) for i in loop),
        )  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------
# Triton


def specialise(launch: scen.Launch, backend):
    """(signature, constexprs, attrs, options) exactly as JITFunction.run would compile."""
    from triton.runtime.jit import create_function_from_signature

    fn = launch.fn
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = fn._pack_args(
        backend, dict(launch.kwargs), bound, spec, opts
    )
    return bound, signature, constexprs, attrs, options


def TARGET():  # noqa: N802 - a constant that needs Triton imported
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", 90, 32)


def _disk(key: str) -> Path:
    """Where the SASS and resource-usage text of one specialisation is kept (by a hash of the
    specialisation and Triton's version), so that a rerun only re-reads it."""
    import triton

    digest = hashlib.sha256((key + triton.__version__).encode()).hexdigest()
    return SCRATCH / "sass" / (digest + ".json")


def _compile_to_disk(job: tuple) -> str:
    """Compile one specialisation for sm_90 and keep its SASS text (run in a worker process:
    the kernel is named by module and name, the rest is plain data)."""
    import importlib

    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    module, name, signature, constexprs, attrs, options, disk = job
    fn = getattr(importlib.import_module(module), name)
    k = triton_compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET(),
                       options=options)  # fmt: skip
    cub = Path(disk).with_suffix(f".{os.getpid()}.cubin")
    cub.parent.mkdir(parents=True, exist_ok=True)
    try:
        cub.write_bytes(k.asm["cubin"])
        cuobjdump = _tool("cuobjdump")
        raw = dict(sass=_run([cuobjdump, "-sass", str(cub)]),
                   res=_run([cuobjdump, "-res-usage", str(cub)]),
                   num_warps=k.metadata.num_warps, num_stages=options["num_stages"],
                   dynamic_smem=k.metadata.shared)  # fmt: skip
    finally:
        cub.unlink(missing_ok=True)
    _atomic_write(Path(disk), json.dumps(raw))
    return name


def _compiled(key: str, name: str) -> dict:
    """Kernel facts of one specialisation compiled before (:func:`_compile_to_disk`); the
    analysis itself always runs."""
    raw = json.loads(_disk(key).read_text())
    (_, f), *_ = analyse(raw["sass"], raw["res"]).items()
    f.update(kernel=name, num_warps=raw["num_warps"], num_stages=raw["num_stages"],
             dynamic_smem=raw["dynamic_smem"])  # fmt: skip
    return f


def _jobs() -> int:
    env = os.environ.get("CENSUS_JOBS")
    return max(1, int(env)) if env else max(1, len(os.sched_getaffinity(0)))


def compile_triton(calls: list[scen.Call], tmp: Path, log=print) -> dict[int, dict]:
    """id(launch) -> kernel facts; each distinct specialisation is compiled once, those not
    kept from an earlier run in parallel (CENSUS_JOBS processes, default one per core)."""
    import concurrent.futures
    import multiprocessing

    from triton.compiler.compiler import make_backend

    del tmp  # cubins go beside their SASS text in the scratch folder, one per worker
    backend = make_backend(TARGET())
    specs: list[tuple] = []
    todo: dict[str, tuple] = {}
    for call in calls:
        for ln in call.launches:
            bound, signature, constexprs, attrs, options = specialise(ln, backend)
            key = repr((ln.fn.__name__, ln.fn.cache_key, sorted(signature.items()),
                        sorted((str(k), repr(v)) for k, v in constexprs.items()),
                        sorted((str(k), repr(v)) for k, v in attrs.items()),
                        sorted(options.__dict__.items())))  # fmt: skip
            specs.append((ln, key, bound, signature))
            if key not in todo and not _disk(key).exists():
                todo[key] = (ln.fn.fn.__module__, ln.fn.__name__, signature, constexprs, attrs,
                             dict(options.__dict__), str(_disk(key)))  # fmt: skip
    t0 = time.time()
    jobs = min(_jobs(), len(todo))
    if jobs > 1:
        # fork: the workers inherit the imported modules and the scratch settings (no CUDA is
        # ever initialised here, so forking is safe)
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            list(pool.map(_compile_to_disk, todo.values()))
    else:
        for job in todo.values():
            _compile_to_disk(job)
    cache: dict[str, dict] = {}
    out = {}
    for ln, key, bound, signature in specs:
        if key not in cache:
            cache[key] = _compiled(key, ln.fn.__name__)
        facts = dict(cache[key])
        facts["config"] = {
            p.name: bound[p.name]
            for p in ln.fn.params
            if p.is_constexpr and isinstance(bound[p.name], (int, bool))
        }
        # integer arguments the runtime turned into constants (equal to 1)
        facts["ones"] = sorted(
            p.name
            for p in ln.fn.params
            if not p.is_constexpr and signature.get(p.name) == "constexpr"
        )
        out[id(ln)] = facts
    per: dict[str, int] = {}
    for f in cache.values():
        per[f["kernel"]] = per.get(f["kernel"], 0) + 1
    log(
        f"  {len(cache)} distinct Triton specialisations ({len(todo)} compiled in "
        f"{time.time() - t0:.0f} s on {max(jobs, 1)} process(es), the rest kept from an earlier "
        "run): " + ", ".join(f"{k} {v}" for k, v in sorted(per.items()))
    )
    return out


# ----------------------------------------------------------------------------------------------
# CUDA


def cuda_plans(shapes: list[tuple[str, dict]], tmp: Path) -> tuple[list[list[dict]] | None, str]:
    """The launches of each CUDA call, from the plan headers (None and why, if unavailable)."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if not cxx:
        return None, "no host C++ compiler"
    exe = tmp / "plan_probe"
    try:
        subprocess.run([cxx, "-std=c++17", "-O1", f"-I{ROOT / 'csrc'}",
                        str(HERE / "census_plan_probe.cpp"), "-o", str(exe)],
                       check=True, capture_output=True, text=True)  # fmt: skip
    except subprocess.CalledProcessError as e:
        return None, "plan probe does not compile against csrc/: " + e.stderr[-600:]
    lines = []
    for op, s in shapes:
        extra = f"{s['bits']} {s['group']}" if "bits" in s else s.get("rank", "")
        lines.append(f"{op} {s['m']} {s['k']} {s['n']} {extra}".strip())
    out = _run([str(exe)], input="\n".join(lines) + "\n")
    plans, cur = [], []
    for line in out.splitlines():
        d = json.loads(line)
        if d.get("end"):
            plans.append(cur)
            cur = []
        else:
            cur.append(d)
    return plans, ""


def cuda_kernels(tmp: Path) -> tuple[dict[str, dict], str]:
    sos = sorted(glob.glob(str(ROOT / "supernet_kernels" / "_C*.so")))
    if not sos:
        return {}, "no built extension (supernet_kernels/_C*.so)"
    cuobjdump = _tool("cuobjdump")
    return analyse(_run([cuobjdump, "-sass", sos[0]]), _run([cuobjdump, "-res-usage", sos[0]])), ""


# ----------------------------------------------------------------------------------------------
# Records


def _static_smem(res: dict) -> int:
    # cuobjdump counts the 1 KB the driver reserves per CTA on sm_90 in SHARED
    return max(0, res.get("shared_bytes", 0) - cm.SM90["smem_reserved_per_cta"])


def kernel_record(op, impl, shape, label, f, grid, threads, dyn_smem, tile, m_tiles,
                  reads_weight, plan_trips=0, mma_share=1.0, recompute=1) -> dict:  # fmt: skip
    res = f["res"]
    smem = _static_smem(res) + dyn_smem
    regs = res.get("registers", 0)
    ctas, limiter = cm.occupancy(regs, threads, smem)
    loop = f["loop"]
    mma = cs.mma_kind(f["all"])
    rec = dict(
        op=op, implementation=impl, kernel=f["kernel"], shape=shape, shape_label=label,
        config=f.get("config", {}), grid=grid, threads=threads,
        registers=regs, spill_bytes=f["all"]["local_bytes"], stack_bytes=res.get("stack_bytes", 0),
        smem_bytes=smem, ctas_per_sm=ctas, occupancy_limit=limiter,
        waves=round(grid / (ctas * cm.GPUS["H100"]["sms"]), 3) if grid and ctas else None,
        loads=f["all"]["loads"], main_loop_loads=loop["loads"], mma=mma,
        main_loop_instructions=loop["instructions"], barriers_per_iter=loop["barriers"],
        shared_stores_per_iter=loop["shared_stores"], main_loop_local_ops=loop["local_ops"],
        mbarrier_ops_per_iter=loop["mbarrier_ops"], main_loop_alu=loop["alu"],
    )  # fmt: skip
    rec["reads_weight"] = bool(reads_weight) or op not in QUANT_OPS
    rec["tile_m"] = tile.get("BLOCK_M")
    rec["_warp_instr"] = _main_loop_warp_instructions(
        rec, f, threads, tile, m_tiles, reads_weight, mma_share, recompute
    )
    # a loop that loads synchronously and meets a barrier before using the data exposes one
    # memory round trip per trip (no cp.async / TMA pipeline to hide it)
    async_copies = any(k.startswith("LDGSTS") or k == "TMA" for k in loop["loads"])
    if plan_trips or (rec.get("_trips") and grid):
        # the plan's trip count where it has one (a static body may hold code for every rank)
        rec["trips_per_cta"] = round(plan_trips or rec["_trips"] / grid, 1)
    if rec.get("trips_per_cta") and loop["loads"] and (loop["barriers"] or async_copies):
        # a CTA's trips are sequential: each exposes a memory round trip, shared by the
        # stages of a cp.async / TMA pipeline
        stages = f.get("num_stages", 1) if async_copies else 1
        waves = math.ceil(max(rec["waves"] or 1, 1))
        rec["exposed_round_trips"] = round(rec["trips_per_cta"] * waves / max(1, stages), 1)
    return rec


def _main_loop_warp_instructions(
    rec, f, threads, tile, m_tiles, reads_weight, mma_share, recompute
) -> float | None:
    """Main-loop warp-instructions over the whole launch; sets instr_per_code / _per_tile.

    Quantized ops: instructions per weight code = loop instructions / codes each thread
    dequantizes per iteration (BLOCK_N * BLOCK_K / threads when the kernel names its tile so,
    else the bytes of its widest global loads in the loop: the streamed weight), times the
    codes N * K dequantized once per M tile. Other ops: loop trips = FLOPs / the loop's
    tensor-core FLOPs per CTA per iteration, the op's FLOPs shared equally by the call's
    launches with tensor-core loops (the two GEMMs of the unfused low-rank path, the
    attention backward kernels)."""
    op, s, loop = rec["op"], rec["shape"], f["loop"]
    n_instr = loop["instructions"]
    if not n_instr:
        return None
    warps = max(1, threads // 32)
    if op in QUANT_OPS:
        if not reads_weight:  # e.g. the activation quantizer: light next to the GEMM
            return None
        bits = s.get("bits", 8)
        bn, bk = tile.get("BLOCK_N"), tile.get("BLOCK_K")
        if bn and bk:
            codes = bn * bk / threads
        else:
            loads = loop["loads"]
            widest = max((int(k.split(".")[1]) for k in loads if k[-1].isdigit()), default=0)
            wbytes = sum(v * widest // 8 for k, v in loads.items() if k.endswith(f".{widest}"))
            codes = wbytes * 8 / bits
        if not codes:
            return None
        rec["instr_per_code"] = round(n_instr / codes, 2)
        rec["_trips"] = s["n"] * s["k"] * m_tiles / (codes * threads)
        return n_instr / codes * s["n"] * s["k"] * m_tiles / 32
    per_iter = f["loop_mma_flops_per_warp"] * warps
    if not per_iter:
        return None
    flops = cm.executed_flops(op, s, tile.get("BLOCK_M"), recompute) * mma_share
    rec["_trips"] = flops / per_iter
    total = flops / per_iter * n_instr * warps
    if op == "lowrank_linear" and tile.get("BLOCK_M") and tile.get("BLOCK_N"):
        tiles = math.ceil(s["m"] / tile["BLOCK_M"]) * math.ceil(s["n"] / tile["BLOCK_N"])
        rec["instr_per_tile"] = round(total / tiles, 1)
    return total


def _tile(config: dict) -> dict:
    return {k: v for k, v in config.items() if k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")}


def _arg(ln: scen.Launch, name: str):
    """A launch argument by its parameter name (positional or keyword)."""
    names = [p.name for p in ln.fn.params]
    i = names.index(name)
    return ln.args[i] if i < len(ln.args) else ln.kwargs.get(name)


# Kernels whose programs share one row tile's t = x v^T by a split along K, summed in an fp32
# scratch (each K slice computed once), and the in-kernel hand-offs each call waits on.
_K_SPLIT_T = {"_lowrank_two_phase_kernel": 1, "_lowrank_mlp_kernel": 2}


def _t_per_row_tile(c: scen.Call, facts: dict) -> int | None:
    """How many times each row tile's t = x v^T is computed by a call's low-rank kernel."""
    if c.op not in ("lowrank_linear", "lowrank_mlp"):
        return None
    for ln in c.launches:
        name = ln.fn.__name__
        cfg = facts[id(ln)]["config"]
        bm = cfg.get("BLOCK_M")
        if name in _K_SPLIT_T:
            # K slices of k_per_split columns, K_SPLITS of them, each taken by one program:
            # t is computed once if the slices tile K without overlap
            per, splits, k = _arg(ln, "k_per_split"), cfg.get("K_SPLITS"), _arg(ln, "K")
            return 1 if splits and per and (splits - 1) * per < k <= splits * per else splits
        if name == "_lowrank_persistent_kernel" and ln.grid and bm:
            # programs stride over row tiles, each computing its tile's t once
            return max(1, math.prod(ln.grid) // math.ceil(c.shape["m"] / bm))
        if name == "_lowrank_fused_kernel" and ln.grid and bm:  # every N split recomputes t
            return math.prod(ln.grid) // math.ceil(c.shape["m"] / bm)
    return None  # two GEMMs: t is written once by the first


def _handoffs(ln: scen.Launch, f: dict) -> int:
    """In-kernel waits of one launch on other programs' results (see census_model.MODEL)."""
    if ln.fn.__name__ in _K_SPLIT_T:
        return _K_SPLIT_T[ln.fn.__name__]
    split = f["config"].get("SPLIT_K")
    return 1 if split and split > 1 else 0


def finish_call(recs: list[dict], n_launches: int, op: str, s: dict) -> None:
    """Call-level figures (bytes, flops, launches, predicted and roofline time) on each record."""
    bytes_, flops = cm.op_traffic(op, s, n_launches)
    handoffs = sum(r.get("handoffs") or 0 for r in recs)
    eight = op in ("int8_linear", "fp8_linear") or s.get("act_bits") == 8
    main = max(recs, key=lambda r: r.get("_warp_instr") or 0)
    for name, gpu in cm.GPUS.items():
        iss = sum(r.get("_warp_instr") or 0 for r in recs)
        lat = sum(r.get("exposed_round_trips") or 0 for r in recs) * cm.MODEL["round_trip_us"]
        # the call's issue time: each launch issues on the SMs that have its CTAs
        iss_us = sum(
            cm.issue_us(gpu, r["_warp_instr"], min(r["grid"] or gpu["sms"], gpu["sms"]))
            for r in recs
            if r.get("_warp_instr")
        )
        peak = cm.tensor_peak_tflops(gpu, main["mma"], eight)
        pred, roof, bound = cm.predict(gpu, n_launches, bytes_, flops, peak, iss_us, lat, handoffs)
        suffix = "" if name == "H100" else f"_{name.lower()}"
        for r in recs:
            r["predicted_us" + suffix] = round(pred, 2)
            r["roofline_us" + suffix] = round(roof, 2)
            if name == "H100":
                r["issue_us"] = round(iss_us, 2) if iss else None
                r["bound"] = bound
    for r in recs:
        r.update(bytes=int(bytes_), flops=int(flops), launches_per_call=n_launches,
                 main_kernel=r is main)  # fmt: skip


def build_records(log=print) -> tuple[list[dict], list[str]]:
    notes: list[str] = []
    records: list[dict] = []
    SCRATCH.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmpd:
        tmp = Path(tmpd)
        t0 = time.time()
        calls = scen.record_calls()
        log(f"  recorded {sum(len(c.launches) for c in calls)} Triton launches from "
            f"{len(calls)} calls in {time.time() - t0:.0f} s")  # fmt: skip
        facts = compile_triton([c for c in calls if not c.error], tmp, log)
        for c in calls:
            if c.error:
                notes.append(f"{c.op}/{c.implementation} {c.label}: launcher failed: {c.error}")
                continue
            recs = []
            n_mma = sum(1 for ln in c.launches if facts[id(ln)]["loop_mma_flops_per_warp"])
            recompute = _t_per_row_tile(c, facts)
            for ln in c.launches:
                f = facts[id(ln)]
                grid = math.prod(ln.grid) if ln.grid else None
                tile = _tile(f["config"])
                m_tiles = math.ceil(c.shape["m"] / tile["BLOCK_M"]) if (
                    "m" in c.shape and tile.get("BLOCK_M")) else 1  # fmt: skip
                recs.append(kernel_record(c.op, c.implementation, c.shape, c.label, f, grid,
                                          f["num_warps"] * 32, f["dynamic_smem"], tile, m_tiles,
                                          ln.reads_weight, 0, 1 / max(1, n_mma),
                                          recompute or 1))  # fmt: skip
                recs[-1]["config"].update(num_warps=f["num_warps"], num_stages=f["num_stages"])
                recs[-1]["specialised_to_1"] = f["ones"]
                recs[-1]["handoffs"] = _handoffs(ln, f)
            if not recs:
                continue
            if recompute:
                for r in recs:
                    r["t_per_row_tile"] = recompute
            finish_call(recs, len(c.launches) + len(c.torch_kernels), c.op, c.shape)
            for r in recs:
                r["torch_kernels"] = c.torch_kernels
            records += recs
        records += cuda_records(tmp, notes, log)
    for r in records:
        r.pop("_warp_instr", None)
        r.pop("_trips", None)
    return records, notes


def cuda_records(tmp: Path, notes: list[str], log) -> list[dict]:
    kernels, why = cuda_kernels(tmp)
    if why:
        notes.append(f"CUDA kernels not read: {why}")
        return []
    calls = [(sc, s) for sc in scen.SCENARIOS if sc.implementation == "cuda" for s in sc.shapes]
    plans, why = cuda_plans([(sc.op, s) for sc, s in calls], tmp)
    if plans is None:
        notes.append(f"CUDA launch plans unavailable: {why}")
        return []
    out = []
    for (sc, s), plan in zip(calls, plans, strict=True):
        s = dict(s, dtype="float16")
        label = scen.shape_label(sc.op, s)
        recs = []
        for p in plan:
            if "error" in p:  # a call the CUDA kernel does not take
                notes.append(f"{sc.op}/cuda {label}: {p['error']}")
                continue
            if p["kernel"].startswith("torch:"):
                continue
            f = kernels.get(p["kernel"])
            if f is None:
                notes.append(f"{sc.op}/cuda {label}: plan names {p['kernel']}, not in the cubins")
                continue
            f = dict(f, kernel=p["kernel"])
            tile = dict(BLOCK_M=p["block_m"], BLOCK_N=p["block_n"])
            if p.get("block_k"):  # the plan names the codes per iteration (see the probe)
                tile["BLOCK_K"] = p["block_k"]
            rec = kernel_record(
                sc.op, "cuda", s, label, f, p["grid"], p["threads"], p["dynamic_smem"], tile,
                p["m_tiles"], bool(p["reads_weight"]), p.get("trips", 0),
            )  # fmt: skip
            rec["config"] = dict(block_m=p["block_m"], block_n=p["block_n"], threads=p["threads"])
            if sc.op == "lowrank_linear":
                rec["t_per_row_tile"] = p["grid"] // max(1, p["m_tiles"])
            recs.append(rec)
        if recs:
            finish_call(recs, len(plan), sc.op, s)
            out += recs
    log(f"  CUDA: {len(kernels)} kernels in the cubins, {len(out)} records")
    return out


# ----------------------------------------------------------------------------------------------
# Coverage, measurements, report


def coverage(records: list[dict]) -> list[str]:
    """Every GPU implementation the registry lists has census records (else a note)."""
    try:
        from supernet_kernels import registry

        listed = registry.kernels()
        source = "registry"
    except ImportError:
        from supernet_kernels import backends

        listed, source = backends.KERNELS, "backends.KERNELS"
    have = {(r["op"], r["implementation"]) for r in records}
    missing = [f"{op}/{impl}" for op, impls in listed.items() for impl in impls
               if (op, impl) not in have]  # fmt: skip
    return [f"no census records for {m} (listed in {source})" for m in missing]


def load_measured(results: Path, runs=MEASURED) -> list[dict]:
    """The "ok" records (JSON lines) of each run folder ``results / run`` (or a .jsonl file)."""
    out = []
    for run in runs:
        where = results / run
        for path in [where] if where.is_file() else sorted(where.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                # the MLP-block benchmark marks a checked output "ok": true, the others
                # "status": "ok"
                if r.get("status") == "ok" or (r.get("status") is None and r.get("ok") is True):
                    out.append(dict(r, _run=str(run), _file=path.name))
    return out


def _measured_for(rec: dict, measured: list[dict]) -> dict | None:
    s, op, impl = rec["shape"], rec["op"], rec["implementation"]
    for m in reversed(measured):  # the latest run first (run 2 re-measured after fixes)
        if op == "lowrank_mlp":  # benchmarks/bench_mlp_block.py: "ours" is the Triton op
            if impl == "triton" and m.get("variant") == "ours" and s.get("act") == "gelu" and (
                not s.get("dense_fc1")) and (m.get("M"), m.get("K"), m.get("H"), m.get(
                    "rank")) == (s["m"], s["k"], s["h"], s["rank"]):  # fmt: skip
                return m
            continue
        if op.startswith("attention"):
            if op != "attention" or m.get("kind") != "attention" or m.get("pass") != "fwd":
                continue
            want = "triton" if s.get("rel") else "triton_norel"
            gh, gw = s["grid"]
            if (m.get("backend"), m.get("B"), m.get("H"), m.get("T"), m.get("d")) == (
                want,
                s["b"],
                s["h"],
                gh * gw,
                s["d"],
            ):
                return m
            continue
        if m.get("backend") != impl or m.get("M") != s.get("m"):
            continue
        if (m.get("K"), m.get("N")) != (s.get("k"), s.get("n")):
            continue
        if op == "lowrank_linear" and m.get("rank") == s["rank"] and "w_bits" not in m:
            return m
        if m.get("op") == op and op == "quant_linear":
            if (m.get("w_bits"), m.get("a_bits"), m.get("group_size")) == (
                s["bits"],
                s["act_bits"],
                s["group"],
            ):
                return m
        elif m.get("op") == op:
            return m
    return None


def compare_measured(records: list[dict], measured: list[dict], only=None) -> list[dict]:
    """Records with a measurement of the same call (``only``: the (op, implementation) pairs
    whose measurements still apply); sets measured_us, ratio and model_error on them."""
    rows = []
    for r in records:
        if not r.get("main_kernel"):
            continue
        if only is not None and (r["op"], r["implementation"]) not in only:
            continue
        m = _measured_for(r, measured)
        if not m:
            continue
        t = m.get("graph_us") or m.get("median_us") or m.get("eager_us")
        if not t:
            continue
        how = "graph" if m.get("graph_us") else "eager"
        h200 = "H200" in str(m.get("gpu", ""))
        pred = r["predicted_us_h200" if h200 else "predicted_us"]
        ratio, off = cm.ratio_flag(pred, t)
        r.update(measured_us=round(t, 2), measured_how=how, ratio=round(ratio, 2),
                 model_error=off, measured_gpu="H200" if h200 else "H100",
                 predicted_for_measured=pred)  # fmt: skip
        rows.append(r)
    return rows


def _loads(d: dict) -> str:
    return " ".join(f"{k}:{v}" for k, v in d.items()) or "-"


def _key(r: dict) -> tuple:
    return (r["op"], r["implementation"], r["kernel"], r["shape_label"])


def markdown(
    records,
    failures,
    waived,
    unused,
    notes,
    cmp_rows,
    previous,
    rewritten=(),
    measured_title="H100, 2026-11-26: the kernels that still run unchanged",
) -> str:
    lines = [
        "# Kernel census, sm_90 (generated by benchmarks/census.py; do not edit)",
        "",
        "Figures read from the compiled code without a GPU. Main loop: the innermost "
        "backward-branch loop holding the kernel's tensor-core instructions or global loads "
        "(largest if several); counts are static (unrolled copies and not-taken paths "
        "included). Times are one call on an H100 (the time model in "
        "benchmarks/census_model.py): predicted = launches x 3.5 us + max(bytes at 3.00 TB/s, "
        "FLOPs at the tensor peak, main-loop instructions at 60% issue, exposed memory round "
        "trips) + in-kernel hand-offs x 0.8 us.",
        "",
        "| op | impl | kernel | shape | regs | spill B | smem KB | CTA/SM (limit) | waves | "
        "main-loop loads | mma | bar/it | STS/it | instr/code | instr/tile | launches | "
        "bound | predicted us | roofline us | H200 us |",
        "|" + "---|" * 20,
    ]
    for r in records:
        if not r.get("main_kernel"):
            continue
        lines.append(
            f"| {r['op']} | {r['implementation']} | {r['kernel']} | {r['shape_label']} | "
            f"{r['registers']} | {r['spill_bytes']} | {r['smem_bytes'] / 1024:.1f} | "
            f"{r['ctas_per_sm']} ({r['occupancy_limit']}) | {r['waves']} | "
            f"{_loads(r['main_loop_loads'])} | {r['mma']} | {r['barriers_per_iter']} | "
            f"{r['shared_stores_per_iter']} | {r.get('instr_per_code', '-')} | "
            f"{r.get('instr_per_tile', '-')} | {r['launches_per_call']} | {r['bound']} | "
            f"{r['predicted_us']} | {r['roofline_us']} | {r['predicted_us_h200']} |"
        )
    graph = [r for r in cmp_rows if r["measured_how"] == "graph"]
    summary = (
        f"{len(graph)} calls measured in CUDA-graph replay (what the model predicts: GPU time "
        f"per call), {sum(r['model_error'] for r in graph)} off by more than 2x; "
        f"{len(cmp_rows) - len(graph)} measured eagerly only (do_bench of the Python op: at "
        "small shapes that adds tens of microseconds of host time per call, e.g. Triton low "
        "rank M = 197 r = 32: 70.8 us eager, 7.6 us graph), "
        f"{sum(r['model_error'] for r in cmp_rows if r['measured_how'] != 'graph')} of them "
        "off by more than 2x."
    )
    lines += ["", f"## Predicted vs measured ({measured_title})", "", summary, "",
              "| op | impl | shape | predicted us | measured us | how | measured/predicted | |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in cmp_rows:
        flag = "MODEL ERROR (>2x)" if r["model_error"] else ""
        lines.append(f"| {r['op']} | {r['implementation']} | {r['shape_label']} | "
                     f"{r['predicted_for_measured']} | {r['measured_us']} | {r['measured_how']} | "
                     f"{r['ratio']} | {flag} |")  # fmt: skip
    lines += ["", "## Gates", ""]
    lines += [f"- FAIL {f['gate']}: {f['op']}/{f['implementation']} {f['kernel']} "
              f"[{f['shape']}]: {f['figure']}" for f in failures] or ["- no failures"]  # fmt: skip
    counts: dict = {}
    for w in waived:
        counts.setdefault((w["gate"], w["op"], w["implementation"], w["kernel"], w["issue"]),
                          []).append(w)  # fmt: skip
    lines += ["", "Waived (known violations, removed when the kernel is fixed):", ""]
    for (gate, op, impl, kernel, issue), ws in sorted(counts.items()):
        lines.append(f"- {gate}: {op}/{impl} {kernel}: {len(ws)} shapes, e.g. "
                     f"[{ws[0]['shape']}] {ws[0]['figure']} (issue {issue})")  # fmt: skip
    lines += [f"- unused waiver: {json.dumps(w)}" for w in unused]
    lines += list(rewritten)
    lines += ["", "## Changes since the committed census (see the before revision above)", ""]
    lines += previous or ["- none"]
    lines += ["", "## Notes", ""] + ([f"- {n}" for n in notes] or ["- none"])
    return "\n".join(lines) + "\n"


_DIFF_FIELDS = ("registers", "spill_bytes", "smem_bytes", "ctas_per_sm", "mma",
                "main_loop_loads", "barriers_per_iter", "instr_per_code", "instr_per_tile",
                "launches_per_call", "predicted_us")  # fmt: skip


def diff_previous(records: list[dict], path: Path, rev: str = "HEAD") -> list[str]:
    """What changed against the census committed at ``path`` (git ``rev``'s copy)."""
    old = _committed(path, rev)
    if old is None:
        return ["- no committed census to compare with"]
    before = {_key(r): r for r in old}
    now = {_key(r): r for r in records}
    out = []
    for k in sorted(now.keys() - before.keys()):
        out.append(f"- new: {' / '.join(k)}")
    for k in sorted(before.keys() - now.keys()):
        out.append(f"- gone: {' / '.join(k)}")
    for k in sorted(now.keys() & before.keys()):
        ch = [f"{f} {before[k].get(f)} -> {now[k].get(f)}" for f in _DIFF_FIELDS
              if before[k].get(f) != now[k].get(f)]  # fmt: skip
        if ch:
            out.append(f"- {' / '.join(k)}: " + "; ".join(ch))
    if len(out) > 200:
        out = out[:200] + [f"- ... {len(out) - 200} more"]
    return out


# The static targets of issues 16 (quantized matmul) and 17 (low rank): (op, shape label) ->
# predicted-time budget on the H100 parameters.
TIME_TARGETS = {
    ("quant_linear", "M=1 4096x11008 W4A16 g128"): 13.0,
    ("lowrank_linear", "M=16384 768x3072 r=64"): 50.0,
    ("lowrank_linear", "M=16384 3072x768 r=64"): 50.0,
}
REWRITTEN = ("quant_linear", "int8_linear", "fp8_linear", "lowrank_linear", "lowrank_mlp")


def _committed(path: Path, rev: str = "HEAD") -> list[dict] | None:
    try:
        rel = path.resolve().relative_to(ROOT)
        return json.loads(_run(["git", "-C", str(ROOT), "show", f"{rev}:{rel}"]))["records"]
    except (subprocess.CalledProcessError, ValueError, KeyError, FileNotFoundError):
        return None


def _brief(r: dict | None) -> str:
    if r is None:
        return "-"
    ipc = r.get("instr_per_code")
    return (f"{r['kernel']}: {r['registers']} regs, {r['spill_bytes']} B spill, "
            f"{_loads(r['main_loop_loads'])}, {r['mma']}"
            + (f", {ipc} instr/code" if ipc is not None else "")
            + f", {r['launches_per_call']} launch(es), {r['predicted_us']} us")  # fmt: skip


def rewritten_table(records: list[dict], old: list[dict] | None, rev: str = "HEAD") -> list[str]:
    """Before (the census committed at ``rev``) and after, per call of the rewritten quant and
    low-rank kernels: the main kernel's figures, predicted time and its target."""
    out = ["", f"## Rewritten kernels: before ({rev}) and after", ""]
    if old is None:
        return out + ["- no committed census to compare with"]
    out += [
        "Main kernel per call, fp16, the committed census (before) against this one (after); "
        "quant at 4096x11008, low rank at every shape; the CUDA low-rank kernel and "
        "int8 GEMM are removed (their last figures in the before column of the cuda rows).",
        "",
        "| op | impl | shape | before | after | target us |",
        "|---|---|---|---|---|---|",
    ]

    def keep(r):
        if not r.get("main_kernel") or r["op"] not in REWRITTEN:
            return False
        if r["shape"].get("dtype", "float16") != "float16":
            return False
        return r["op"].startswith("lowrank") or (r["shape"].get("k"), r["shape"].get("n")) == (
            4096,
            11008,
        )

    before = {(r["op"], r["implementation"], r["shape_label"]): r for r in old if keep(r)}
    after = {(r["op"], r["implementation"], r["shape_label"]): r for r in records if keep(r)}
    for key in sorted(before.keys() | after.keys()):
        tgt = TIME_TARGETS.get((key[0], key[2]), "")
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {_brief(before.get(key))} | "
                   f"{_brief(after.get(key))} | {tgt} |")  # fmt: skip
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--gates", type=Path, default=HERE / "census_gates.json")
    ap.add_argument(
        "--measured",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="compare every prediction with the records of a GPU run of this "
        "commit (folders of JSON lines, or .jsonl files) instead of the 2026-11-26 "
        "H100 runs; predictions for the GPU each record names (H100 or H200)",
    )
    ap.add_argument(
        "--from-json", type=Path, metavar="CENSUS_JSON",
        help="take the records of a census already written (e.g. the committed "
        "benchmarks/results/census_sm90.json) instead of compiling: seconds, for --measured on "
        "a GPU machine",
    )  # fmt: skip
    ap.add_argument(
        "--before", default="HEAD", metavar="REV",
        help="the git revision whose committed census the comparisons take as before (default "
        "HEAD; the rewrite of the quant and low-rank kernels: "
        "--before ba8d48a, the census of the merge that brought them)",
    )  # fmt: skip
    ap.add_argument(
        "--no-fail",
        action="store_true",
        help="exit 0 even when a gate fails (the GPU script: report, go on)",
    )
    a = ap.parse_args(argv)
    t0 = time.time()
    print("kernel census (sm_90)")
    if a.from_json:
        doc = json.loads(a.from_json.read_text())
        records, notes = doc["records"], [n for n in doc.get("notes", [])
                                          if not n.startswith("no census records")]  # fmt: skip
        notes.append(f"records read from {a.from_json} (not compiled in this run)")
    else:
        records, notes = build_records()
    notes += coverage(records)
    spec = json.loads(a.gates.read_text())
    failures, waived, unused = cm.evaluate(records, spec)
    if a.measured:
        title = "this commit's GPU run: " + ", ".join(str(p) for p in a.measured)
        cmp_rows = compare_measured(records, load_measured(Path.cwd(), a.measured))
    else:
        title = "H100, 2026-11-26: the kernels that still run unchanged"
        cmp_rows = compare_measured(records, load_measured(HERE / "results"),
                                    only=UNCHANGED_SINCE_MEASURED)  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = a.out / "census_sm90.json", a.out / "census_sm90.md"
    committed = HERE / "results" / "census_sm90.json"
    previous = diff_previous(records, committed, a.before)
    rewritten = rewritten_table(records, _committed(committed, a.before), a.before)
    import triton

    doc = dict(target="sm_90", triton=triton.__version__, gpus=cm.GPUS, model=cm.MODEL,
               records=records, gate_failures=failures, notes=notes)  # fmt: skip
    _atomic_write(jpath, json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    _atomic_write(mpath, markdown(records, failures, waived, unused, notes, cmp_rows, previous,
                                  rewritten, title))  # fmt: skip
    print(f"  {len(records)} records -> {jpath}, {mpath}")
    for r in cmp_rows:
        flag = "  MODEL ERROR (>2x)" if r["model_error"] else ""
        print(f"  {r['op']}/{r['implementation']} [{r['shape_label']}]: predicted "
              f"{r['predicted_for_measured']} us, measured {r['measured_us']} us "
              f"({r['measured_how']}, {r['measured_gpu']}), "
              f"ratio {r['ratio']}{flag}")  # fmt: skip
    for n in notes:
        print(f"  note: {n}")
    for w in unused:
        print(f"  unused waiver: {w}")
    print(f"  gates: {len(failures)} failures, {len(waived)} waived ({time.time() - t0:.0f} s)")
    for f in failures:
        print(f"  FAIL {f['gate']}: {f['op']}/{f['implementation']} {f['kernel']} "
              f"[{f['shape']}]: {f['figure']}")  # fmt: skip
    return 1 if failures and not a.no_fail else 0


if __name__ == "__main__":
    sys.exit(main())
