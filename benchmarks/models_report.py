"""Tables, notes and the scatter plot of ``bench_models.py``: pure functions of its JSONL records
(matplotlib is imported inside :func:`plot_scatter` only)."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

import harness as H

# Shared measurement on an H200 (segment-anything ViT-B encoder, 1024x1024, fp16, batch 1):
# nn.Linear layers take ~8.5% of its GPU time; the rest is attention with decomposed relative
# position terms, windowing / padding, norms, the conv neck and elementwise work.
SAM_LINEAR_SHARE = 0.085
SAM_NOTE = (
    "note: segment-anything's ViT-B encoder at 1024x1024 spends only ~8.5% of its GPU time in "
    "linear layers (shared measurement, H200), so cuts to linear-layer BitOPs barely move its "
    "latency: compare the bitops_ratio and latency_ratio columns."
)
LATENCY_NEEDS_GPU = "latency needs a GPU: counts only (params, MACs, BitOPs, weight bytes)"

# --------------------------------------------------------------------------- op families
# GPU time by op family, from a short torch.profiler run of the forward. Rule (first match):
#  1. the innermost profiler scope the benchmark opens around modules (record_function
#     "sk_family::<family>", from forward hooks): a linear layer (nn.Linear, QuantLinear,
#     LowRankLinear, Elastic*) -> "linear"; an attention module (timm / SAM Attention, ours)
#     outside its qkv / proj linears -> "attention" (so the bmm / einsum / softmax / rel-pos bias
#     / layout copies it launches count as attention);
#  2. an enclosing attention op (aten scaled_dot_product_attention / flash / efficient
#     attention, supernet_kernels::attention and its backward) -> "attention";
#  3. the kernel's name: convolution kernels (the patch embedding, SAM's neck) -> "other";
#     flash / fmha / attention / attn / sdpa / softmax -> "attention"; gemm / matmul / mm /
#     cublas / cutlass / nvjet / xmma / gemv / our low-rank and quant kernels -> "linear";
#  4. everything else (norms, GELU, adds, copies, memcpy / memset) -> "other".
# Scopes exist only where the hooks run: eager forwards (the graph-captured configs are
# profiled on their eager forward, same kernels). torch.compile'd code runs no hooks, so there
# rule 3 decides: inductor's fused softmax kernels count as attention, but the attention bmms it
# hands to cuBLAS count as linear.
FAMILIES = ("linear", "attention", "other")
FAMILY_SCOPE = "sk_family::"
_ATTN_OP = re.compile(
    r"scaled_dot_product|flash_attention|efficient_attention|cudnn_attention|"
    r"supernet_kernels::(_attention|attention)"
)
_CONV = re.compile(r"conv|fprop|dgrad|wgrad|winograd|im2col")
_ATTN_KERNEL = re.compile(r"flash|fmha|attention|attn|sdpa|softmax")
_LINEAR_KERNEL = re.compile(
    r"gemm|gemv|matmul|(^|[^a-z])b?mm([^a-z]|$)|_mm_|cublas|cutlass|nvjet|xmma|splitk|"
    r"lowrank|quant|int8"
)


def op_family(kernel: str, scopes: Sequence[str] = ()) -> str:
    """The op family of one GPU kernel: "linear", "attention" or "other" (rule above).
    ``scopes``: the names of the profiler events enclosing its launch, innermost first."""
    for s in scopes:
        if s.startswith(FAMILY_SCOPE):
            fam = s[len(FAMILY_SCOPE) :]
            if fam in FAMILIES:
                return fam
        if _ATTN_OP.search(s):
            return "attention"
    name = kernel.lower()
    if _CONV.search(name):
        return "other"
    if _ATTN_KERNEL.search(name):
        return "attention"
    if _LINEAR_KERNEL.search(name):
        return "linear"
    return "other"


def family_split(kernels: Iterable[tuple[str, float, Sequence[str]]], calls: int = 1) -> dict:
    """(kernel name, GPU microseconds, scopes) of ``calls`` forwards -> per-forward ms by
    family, their sum (``kernel_ms``), shares in %, and the 6 costliest kernels."""
    ms = dict.fromkeys(FAMILIES, 0.0)
    by_name: dict[tuple[str, str], float] = {}
    for name, us, scopes in kernels:
        fam = op_family(name, scopes)
        ms[fam] += us / 1e3 / calls
        by_name[(name, fam)] = by_name.get((name, fam), 0.0) + us / 1e3 / calls
    total = sum(ms.values())
    out = {f"{f}_ms": ms[f] for f in FAMILIES}
    out["kernel_ms"] = total
    for f in FAMILIES:
        out[f"{f}_pct"] = 100 * ms[f] / total if total else None
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:6]
    out["top_kernels"] = [[n[:80], fam, round(t, 4)] for (n, fam), t in top]
    return out


# --------------------------------------------------------------------------- targets
SAM_SPEEDUP_TARGET = 4.0
GRAPH_OVERHEAD_TARGET = 1.2
TARGETS = {
    "sam_dense_4x": (
        f"SAM ViT-B encoder b1 fp16: our dense path (graph) >= {SAM_SPEEDUP_TARGET:g}x faster "
        "than segment-anything eager"
    ),
    "deit_graph_1.2x": (
        f"DeiT-B b1 fp16: our dense graph-captured latency <= {GRAPH_OVERHEAD_TARGET:g}x the sum "
        "of its kernels' GPU time (profiler)"
    ),
}


def _find(records, **kw) -> dict | None:
    got = [r for r in records if all(r.get(k) == v for k, v in kw.items())]
    return got[-1] if got else None


def evaluate_targets(records: Sequence[dict]) -> dict:
    """{key: {target, pass (True / False / None: not measured), value, detail}}."""
    out = {}
    eager = _find(records, model="sam_vit_b", batch=1, dtype="float16", mode="eager",
                  config="dense", kind="config")  # fmt: skip
    ours = _find(records, model="sam_vit_b", batch=1, dtype="float16", mode="ours",
                 config="dense", kind="config")  # fmt: skip
    sp = ratio(eager and eager.get("latency_ms"), ours and ours.get("latency_ms"))
    out["sam_dense_4x"] = {
        "target": TARGETS["sam_dense_4x"],
        "pass": None if sp is None else sp >= SAM_SPEEDUP_TARGET,
        "value": sp,
        "detail": "speedup = eager latency / ours latency"
        + ("" if ours is None or ours.get("graph_ms") else " (ours not graph-captured)"),
    }
    deit = _find(records, model="deit_b", batch=1, dtype="float16", mode="ours",
                 config="dense", kind="config")  # fmt: skip
    ov = ratio(deit and deit.get("graph_ms"), deit and deit.get("kernel_ms"))
    out["deit_graph_1.2x"] = {
        "target": TARGETS["deit_graph_1.2x"],
        "pass": None if ov is None else ov <= GRAPH_OVERHEAD_TARGET,
        "value": ov,
        "detail": "graph_ms / kernel_ms",
    }
    return out


def verdict(p) -> str:
    return {True: "PASS", False: "MISS", None: "N/A"}[p]


def format_targets(targets: dict) -> str:
    lines = []
    for t in targets.values():
        v = t.get("value")
        shown = "-" if v is None else f"{v:.2f}"
        lines.append(f"  {verdict(t['pass']):<4} {t['target']}: {shown} ({t.get('detail')})")
    return "\n".join(lines)


def giga(v) -> float | None:
    return None if v is None else v / 1e9


def mib(v) -> float | None:
    return None if v is None else v / 2**20


def ratio(a, b) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def amdahl_latency_ratio(linear_share: float, linear_bitops_ratio: float) -> float:
    """The latency ratio if only the linear layers got faster, in proportion to their BitOPs."""
    return 1.0 - linear_share + linear_share * linear_bitops_ratio


def main_rows(records: Iterable[dict]) -> list[list]:
    rows = []
    for r in records:
        if r.get("kind") != "config":
            continue
        rows.append(
            [
                r["model"], r["batch"], short_dtype(r.get("dtype")), r.get("mode") or "eager",
                r["config"], giga(r.get("macs")), r.get("bitops") and r["bitops"] / 1e12,
                mib(r.get("weight_bytes")), r.get("bitops_ratio"), r.get("eager_ms"),
                r.get("graph_ms"), r.get("latency_ms", r.get("median_ms")),
                r.get("images_per_s"), mib(r.get("peak_mem_bytes")), r.get("latency_ratio"),
                r.get("speedup_vs_eager"), r.get("linear_pct"), r.get("attention_pct"),
                r.get("other_pct"), r.get("rel_err"), r.get("status"),
            ]
        )  # fmt: skip
    return rows


MAIN_HEADER = (
    "model", "batch", "dtype", "mode", "config", "GMACs", "TBitOPs", "weights MiB",
    "bitops_ratio", "eager ms", "graph ms", "latency ms", "img/s", "peak MiB", "latency_ratio",
    "x eager", "lin %", "attn %", "other %", "rel_err", "status",
)  # fmt: skip


def short_dtype(d) -> str:
    return {"float16": "fp16", "bfloat16": "bf16", None: "fp16"}.get(d, str(d))


def format_main(records: Iterable[dict]) -> str:
    """Configs side by side. ``latency ms`` is the mode's own: eager (library model), the
    compiled call (compile), the graph replay (ours; eager where capture failed).
    latency_ratio: against dense in the same mode, model, batch and dtype; x eager: the library's
    eager dense latency over this one."""
    return H.format_table(MAIN_HEADER, main_rows(records))


STUDY_HEADER = (
    "model", "batch", "operator", "level", "bitops_ratio", "bitops cut %", "latency_ratio",
    "latency cut %", "status",
)  # fmt: skip


def format_study(records: Iterable[dict]) -> str:
    """Seed-paper search-space study: each operator alone, BitOPs cut vs measured latency cut."""
    rows = []
    for r in records:
        if r.get("kind") != "study":
            continue
        br, lr = r.get("bitops_ratio"), r.get("latency_ratio")
        rows.append(
            [
                r["model"], r["batch"], r["operator"], r["level"], br,
                None if br is None else 100 * (1 - br), lr,
                None if lr is None else 100 * (1 - lr), r.get("status"),
            ]
        )  # fmt: skip
    return H.format_table(STUDY_HEADER, rows)


def _key(r: dict, mode: str | None = None) -> tuple:
    return (r.get("model"), r.get("batch"), r.get("dtype") or "float16", mode or _mode(r))


def _mode(r: dict) -> str:
    return r.get("mode") or "eager"


def add_ratios(records: Sequence[dict]) -> None:
    """In place: macs/bitops/weight-byte/latency ratios against the model's dense row in the same
    mode at the same batch and dtype (the study's rows too; a config without a dense row of its
    mode is compared with the eager one), and speedup_vs_eager: the library's eager dense
    latency over this row's latency."""
    base = {_key(r): r for r in records if r.get("kind") == "config" and r.get("config") == "dense"}
    for r in records:
        if r.get("kind") not in ("config", "study"):
            continue
        d = base.get(_key(r)) or base.get(_key(r, "eager"))
        e = base.get(_key(r, "eager"))
        lat = r.get("latency_ms", r.get("median_ms"))
        if e is not None:
            r["speedup_vs_eager"] = ratio(e.get("latency_ms", e.get("median_ms")), lat)
        if d is None:
            continue
        for key in ("macs", "bitops", "weight_bytes"):
            r[f"{key}_ratio"] = ratio(r.get(key), d.get(key))
        r["latency_ratio"] = ratio(lat, d.get("latency_ms", d.get("median_ms")))
        r["graph_latency_ratio"] = ratio(r.get("graph_ms"), d.get("graph_ms"))


def format_failures(records: Iterable[dict]) -> str:
    lines = []
    for r in records:
        if r.get("kind") == "attention":
            continue
        for key in ("reason", "graph_reason"):
            if r.get(key):
                what = r.get("config") or f"{r.get('operator')}={r.get('level')}"
                lines.append(
                    f"  {r['model']} b{r['batch']} {short_dtype(r.get('dtype'))} "
                    f"{_mode(r)} {what}: {key} {r[key]}"
                )
    return "\n".join(lines)


def format_sam_amdahl(records: Sequence[dict]) -> str:
    """Per SAM config that changes linear layers only: the latency ratio the linear BitOPs cut
    predicts at the linear share of the GPU time (the profiled share of our dense path where
    there is one, else the shared measurement's 8.5%), beside the measured ratio."""
    from models_configs import LINEAR_ONLY

    lines = ["  (Amdahl estimate for the configs that change linear layers only)"]
    sam = [r for r in records if r.get("model") == "sam_vit_b" and r.get("kind") == "config"]
    for r in sam:
        d = next(
            (x for x in sam if x["config"] == "dense" and x["mode"] == r["mode"]
             and x["batch"] == r["batch"] and x["dtype"] == r["dtype"]),
            None,
        )  # fmt: skip
        if d and r.get("linear_bitops") is not None and r["config"] in LINEAR_ONLY:
            lin_ratio = (r["linear_bitops"] / d["linear_bitops"]) if d["linear_bitops"] else 1
            share = (d.get("linear_pct") or 100 * SAM_LINEAR_SHARE) / 100
            exp = amdahl_latency_ratio(share, lin_ratio)
            lat = r.get("latency_ratio")
            measured = "-" if lat is None else f"x{lat:.2f}"
            lines.append(
                f"  {r['config']:<10} b{r['batch']} {r['dtype']}: linear BitOPs "
                f"x{lin_ratio:.2f} -> expected latency x{exp:.2f} at {100 * share:.1f}% "
                f"linear time; measured {measured}"
            )
    return "\n".join(lines)


def print_run(records: Sequence[dict], *, gpu: bool) -> dict:
    """The report of one bench_models.py run (the harness prints it at the end); its targets."""
    print(format_main(records))
    if any(r.get("kind") == "study" for r in records):
        print("\nsearch-space study (each operator alone; ratios vs dense at the same batch):")
        print(format_study(records))
    if any(r.get("model") == "sam_vit_b" for r in records):
        print("\n" + SAM_NOTE)
        print(format_sam_amdahl(records))
    targets = evaluate_targets(records)
    print(
        "\n[models] targets:\n" + format_targets(targets)
        if gpu
        else f"\n[models] {LATENCY_NEEDS_GPU}"
    )
    fails = format_failures(records)
    if fails:
        print("\n[models] failures / graph capture:\n" + fails)
    return targets


# --------------------------------------------------------------------------- latency table


def latency_summary(records: Sequence[dict]) -> dict:
    """bench_latency_table.py's summary: the table's prediction error over the configs."""
    rows = [r for r in records if r.get("kind") == "latency_table"]
    errs = [abs(r["rel_err"]) for r in rows if r.get("rel_err") is not None]
    first = rows[0] if rows else {}
    return {
        "device": first.get("gpu") or first.get("device"),
        "table_build_s": None if not rows else round(first.get("build_s") or 0.0, 1),
        "configs": len(rows),
        "median_abs_err": statistics.median(errs) if errs else None,
        "max_abs_err": max(errs) if errs else None,
        "other_ms": first.get("other_ms"),
    }


def format_latency(records: Sequence[dict]) -> str:
    """One line per latency_table record (predicted, measured, error), then the summary."""
    rows = [
        [r.get("model"), r.get("dtype"), r.get("config_index"), r.get("predicted_ms"),
         r.get("measured_ms"), None if r.get("rel_err") is None else 100 * r["rel_err"]]
        for r in records if r.get("kind") == "latency_table"
    ]  # fmt: skip
    header = ["model", "dtype", "config", "predicted_ms", "measured_ms", "err %"]
    return H.format_table(header, rows) + "\nsummary " + json.dumps(latency_summary(records))


# --------------------------------------------------------------------------- attention op
def plot_scatter(records: Sequence[dict], path: Path) -> Path | None:
    """Latency (each mode's own) vs BitOPs, fp16, one marker per mode:config and batch, one
    panel per model. Returns the path, or None when no record has a latency."""
    pts = [
        dict(
            r, median_ms=r.get("latency_ms", r.get("median_ms")), config=f"{_mode(r)}:{r['config']}"
        )
        for r in records
        if r.get("kind") == "config"
        and r.get("latency_ms", r.get("median_ms"))
        and (r.get("dtype") or "float16") == "float16"
    ]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in pts})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    markers = "osD^v<>PX*"
    for ax, model in zip(axes[0], models, strict=True):
        rs = [r for r in pts if r["model"] == model]
        configs = list(dict.fromkeys(r["config"] for r in rs))
        for batch in sorted({r["batch"] for r in rs}):
            for i, cfg in enumerate(configs):
                sel = [r for r in rs if r["config"] == cfg and r["batch"] == batch]
                if not sel:
                    continue
                r = sel[-1]
                ax.scatter(
                    r["bitops"] / 1e12, r["median_ms"], marker=markers[i % len(markers)],
                    label=f"{cfg} (b{batch})", s=50,
                )  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("BitOPs (T)")
        ax.set_ylabel("latency, median (ms)")
        ax.set_title(f"{model}: latency vs BitOPs")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def latest_run(records: Sequence[dict]) -> list[dict]:
    """The records of the last run in an append-only JSONL: the last whole-model run and the
    last attention-op run (bench_attention.py may append to the same file)."""
    out = []
    for is_attn in (False, True):
        sel = [r for r in records if (r.get("kind") == "attention") == is_attn]
        if sel:
            last = sel[-1].get("run_id")
            out += [r for r in sel if r.get("run_id") == last]
    return out


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Tables and plot from bench_models.py's JSONL.")
    p.add_argument("jsonl", type=Path, nargs="?", default=H.RESULTS_DIR / "models.jsonl")
    p.add_argument("--plot", type=Path, default=H.RESULTS_DIR / "models_latency_vs_bitops.png")
    p.add_argument("--all-runs", action="store_true", help="every run, not just the last")
    args = p.parse_args(argv)
    records = H.read_results(args.jsonl)
    records = records if args.all_runs else latest_run(records)
    print(format_main(records))
    if any(r.get("kind") == "study" for r in records):
        print("\n" + format_study(records))
    if any(r.get("model") == "sam_vit_b" for r in records):
        print("\n" + SAM_NOTE)
    if any(r.get("kind") == "config" for r in records):
        print("\ntargets:\n" + format_targets(evaluate_targets(records)))
    if any(r.get("kind") == "attention" for r in records):
        import report  # the attention rows' own report (bench_attention.py's records)

        att = [H.normalize(r, "attention") for r in records if r.get("kind") == "attention"]
        print(
            "\nattention op alone (bench_attention.py):\n" + report.format_table("attention", att)
        )
    out = plot_scatter(records, args.plot)
    print(f"plot: {out}" if out else "no latency in these records: no plot")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
