"""Result records: one schema for every benchmark, JSON lines, and the per-call roofline.

Every record is one (configuration, implementation) of one benchmark, flat, with the fields of
:data:`RECORD_FIELDS` (None where not measured) plus the op's own (``rank``; ``w_bits``,
``a_bits``, ``group_size``; ``B``, ``H``, ``T``, ``d``, ``pass``...). Records written before
this schema (benchmarks/results/h100_run*/) are read through :func:`normalize`, which fills
the fields they lack from the ones they have.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from supernet_kernels.cost import formulas as F

from .timers import RESULTS_DIR

# The fields every record has; the op's own fields come beside them.
__all__ = [
    "RECORD_FIELDS",
    "call_roofline_us",
    "add_derived",
    "normalize",
    "append_results",
    "copy_dispatch",
    "read_results",
    "jsonable",
    "format_table",
    "bucket_bounds",
]

RECORD_FIELDS = {
    "bench": "the benchmark (lowrank, quant, attention, mlp_block): the report's and plot's key",
    "op": "the registered op timed (None: dense layer, bare GEMM or peer outside the registry)",
    "role": "ours (an implementation registered for the op), dense (the 16-bit layer every "
    "ratio is against), peer (another library's complete layer), gemm (a bare GEMM baseline)",
    "kind": "role, except attention rows (kind 'attention', what the census reads)",
    "backend": "the implementation's name (a registered one, 'dense', or the peer's)",
    "dtype": "activation dtype of the benchmark (float16, bfloat16, float32 on the CPU)",
    "M": "rows of x (tokens)",
    "K": "in features",
    "N": "out features",
    "status": "ok | incorrect (failed the check) | skipped | error",
    "reason": "why not ok",
    "rel_err": "error against the fp32/fp64 reference",
    "tol": "its bound",
    "correct": "",
    "median_us": "do_bench median, eager (CPU: perf_counter median)",
    "graph_us": "CUDA-graph replay per call (M <= --graph-max-m)",
    "first_call_ms": "first synchronized call, JIT included",
    "flops": "cost.formulas count",
    "bytes": "cost.formulas minimal traffic",
    "tflops": "",
    "gbps": "",
    "dense_us": "the dense row's median_us",
    "dense_graph_us": "its graph_us",
    "speedup_vs_dense": "dense_us / median_us: ratio to fp16 (the dtype's dense layer)",
    "graph_speedup_vs_dense": "the same on graph replay",
    "roofline_us": "per-call roofline: launch cost + max(bytes / copy ceiling, flops / peak)",
    "roofline_frac": "roofline_us / median_us",
    "roofline_frac_graph": "roofline_us / graph_us",
    "pct_roofline": "100 * max(bytes / measured HBM, flops / measured peak) / median_us",
}


# --------------------------------------------------------------------------- per-call roofline


def _gpu_params(gpu: str | None) -> dict[str, float] | None:
    """The census's constants for the GPU a record names (benchmarks/census_model.GPUS: the one
    place the copy ceiling, peak and per-launch cost are written down); None on a CPU."""
    import census_model

    if not gpu or gpu.startswith("cpu"):
        return None
    for name, params in census_model.GPUS.items():
        if name in gpu.upper():
            return params
    return census_model.GPUS["H100"]  # an unknown GPU: the project's reference machine


def call_roofline_us(rec: dict[str, Any]) -> float | None:
    """The least time one call of ``rec`` can take (``cost.formulas.per_call_roofline_us``):
    the census's per-launch cost plus the bytes at the copy ceiling or the FLOPs at the peak,
    whichever is larger. The copy ceiling and the peaks are those measured in the record's run
    where it recorded them (``ceilings``), else the census's for that GPU; the peak is twice the
    16-bit one for 8-bit activations (int8 / fp8 tensor cores). None without bytes or on a CPU."""
    params = _gpu_params(rec.get("gpu"))
    if params is None or not rec.get("bytes") or rec.get("device") == "cpu":
        return None
    ceil = rec.get("ceilings") or {}
    copy = (ceil.get("hbm_gbps") or params["copy_tbs"] * 1e3) * 1e9
    peaks = ceil.get("peak_tflops") or {}
    base = rec.get("dtype") if rec.get("dtype") in ("float16", "bfloat16") else "float16"
    peak = (peaks.get(base) or params["fp16_tflops"]) * 1e12
    if rec.get("a_bits") == 8:
        int8 = peaks.get("int8") if rec.get("op") != "fp8_linear" else None
        peak = int8 * 1e12 if int8 else 2 * peak
    # A call of several kernels (the MLP block: `launches`, [bytes, FLOPs] each) pays each
    # launch's fixed cost and is bound per kernel: their rooflines add up.
    launches = rec.get("launches") or [(rec["bytes"], rec.get("flops") or 0)]
    return sum(
        F.per_call_roofline_us(
            bytes_moved=b,
            flops=f,
            copy_bytes_per_s=copy,
            peak_flops=peak,
            launch_us=params["launch_us"],
        )  # fmt: skip
        for b, f in launches
    )


def add_derived(rec: dict[str, Any]) -> dict[str, Any]:
    """Fill the per-call roofline fields of a timed record (in place; returns it)."""
    roof = call_roofline_us(rec)
    if roof is not None:
        rec["roofline_us"] = roof
        if rec.get("median_us"):
            rec["roofline_frac"] = roof / rec["median_us"]
        if rec.get("graph_us"):
            rec["roofline_frac_graph"] = roof / rec["graph_us"]
    return rec


def normalize(rec: dict[str, Any], bench: str | None = None) -> dict[str, Any]:
    """A record in this schema, from one written by any earlier version of the benchmarks
    (a copy; ``bench`` names the benchmark where the record does not)."""
    r = dict(rec)
    if r.get("bench") is None and "variant" in r and "eager_us" in r:
        _normalize_mlp_block(r)
    if r.get("bench") is None:
        if r.get("kind") in ("attention", "attention_sweep"):
            r["bench"] = "attention"
        elif "w_bits" in r:
            r["bench"] = "quant"
        elif "rank" in r:
            r["bench"] = "lowrank"
        else:
            r["bench"] = bench
    if r.get("role") is None:
        kind = r.get("kind")
        if r.get("backend") == "dense" or kind == "dense":
            r["role"] = "dense"
        elif kind in ("peer", "gemm"):
            r["role"] = kind
        elif str(r.get("backend")).startswith("torch_"):
            r["role"] = "peer"  # torch's registered paths (written as "ours" before the schema)
        elif r["bench"] == "attention":
            r["role"] = "dense" if r.get("backend") == "sdpa" else "ours"  # SDPA: the bar
        else:
            r["role"] = "ours"
    if r.get("op") is None and r["role"] == "ours":
        r["op"] = {"lowrank": "lowrank_linear", "attention": "attention"}.get(r["bench"])
    if r["bench"] == "attention" and r.get("bytes") is None and r.get("T") and r.get("dtype"):
        elem = 4 if r["dtype"] == "float32" else 2  # bytes the attention rows moved, by formula
        r["bytes"] = F.attention_bytes(
            b=r["B"], h=r["H"], t=r["T"], d=r["d"], elem=elem, rel=bool(r.get("rel"))
        )
    if "roofline_us" not in r and r.get("bytes"):
        add_derived(r)
    return r


# bench_mlp_block.py's variants (its records before the harness named rows by `variant` only):
# the backend and role each is recorded under now.
MLP_BLOCK_VARIANTS = {
    "dense": ("dense", "dense"),
    "torch_lowrank": ("torch", "ours"),
    "ours": ("triton", "ours"),
    "ours_2launch": ("triton_2launch", "ours"),
}


def _normalize_mlp_block(r: dict[str, Any]) -> None:
    """An MLP-block record of the runner before the harness (variant, eager_us, ok): in place."""
    backend, role = MLP_BLOCK_VARIANTS.get(r["variant"], (r["variant"], "ours"))
    r.update(bench="mlp_block", backend=backend, role=role, kind=role, median_us=r["eager_us"])
    r["op"] = "lowrank_mlp" if role == "ours" else None
    if "status" not in r:
        r["status"] = "ok" if r.get("ok") else "incorrect"
        r["correct"] = bool(r.get("ok"))


# --------------------------------------------------------------------------- JSON lines


def append_results(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> Path:
    """Append records as JSON lines. A bare name (no folder) goes under benchmarks/results/."""
    target = Path(path)
    if target.parent == Path("."):
        target = RESULTS_DIR / target
    if target.suffix != ".jsonl":
        target = target.with_suffix(".jsonl")
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(jsonable(rec), sort_keys=True) + "\n")
    return target


def copy_dispatch(path: str | os.PathLike[str], out: Path) -> None:
    """Copy a written dispatch table into --out (so a GPU run's $OUT brings it back)."""
    path = Path(path)
    if out.resolve() != path.parent.resolve():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / f"dispatch_{path.name}")


def read_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    target = Path(path)
    if not target.exists():
        return []
    with target.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def jsonable(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf; None reads as "not measured"
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    return obj


# --------------------------------------------------------------------------- tables, buckets


def format_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Plain fixed-width table (numbers right-aligned) for terminal logs."""
    cells = [[str(h) for h in header]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def bucket_bounds(values: Iterable[int], *, last: int | None = None) -> list[tuple[int, int]]:
    """(measured value, inclusive upper bound) per bucket. Bounds sit at geometric midpoints
    between measured values (sizes scale multiplicatively); the last bucket ends at ``last``,
    by default twice the largest measured value: a table does not extrapolate further (the
    second H100 run measured quant_linear at M = 1 only, and an open-ended bucket would have
    sent M = 4096 to a GEMV kernel). Beyond it "auto" falls back to torch."""
    vs = sorted(set(values))
    if last is None:
        last = 2 * vs[-1] if vs else 0
    return [
        (v, int(math.sqrt(v * vs[i + 1])) if i + 1 < len(vs) else last) for i, v in enumerate(vs)
    ]
