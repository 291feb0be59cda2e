"""The quickstart's report: the table, summary.md and the accuracy / BitOPs plot."""

from __future__ import annotations

from pathlib import Path

from .settings import BUDGET, GOAL_RATIO


def _row_cells(r: dict, gpu: bool) -> list[str]:
    """One result row's formatted cells, in the column order of the text and markdown tables."""
    cells = [
        r["name"],
        f"{r['test_acc']:.2f}",
        f"{r['val_acc']:.2f}",
        f"{r['bitops'] / 1e6:.1f}",
        f"{r['bitops_ratio']:.3f}",
        f"{r['macs'] / 1e3:.1f}",
        f"{r['params']:,}",
        f"{r['weight_bytes'] / 1024:.1f}",
        f"{r['cpu_b1_ms']:.3f}",
        f"{r['cpu_b64_ms']:.3f}",
    ]
    if gpu:
        cells += [
            f"{r.get('gpu_b1_ms', float('nan')):.3f}",
            f"{r.get('gpu_b64_ms', float('nan')):.3f}",
        ]
    return cells


def _fmt_table(rows: list[dict], gpu: bool) -> str:
    head = [
        "subnet",
        "test acc %",
        "val acc %",
        "MBitOPs",
        "BitOPs/dense",
        "kMACs",
        "params",
        "weight KiB",
        "CPU b1 ms",
        "CPU b64 ms",
    ]
    if gpu:
        head += ["GPU b1 ms", "GPU b64 ms"]
    body = [_row_cells(r, gpu) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    out = [line(head), "  ".join("-" * w for w in widths)] + [line(b) for b in body]
    return "\n".join(out)


def _markdown(summary: dict, gpu: bool) -> str:
    m = summary["machine"]
    head = (
        "| subnet | test acc % | val acc % | MBitOPs | BitOPs / dense | kMACs | params | "
        "weight KiB | CPU b1 ms | CPU b64 ms |" + (" GPU b1 ms | GPU b64 ms |" if gpu else "")
    )
    sep = "|---" + "|---:" * (9 + (2 if gpu else 0)) + "|"
    lines = ["# supernet-kernels quickstart", "", summary["description"], "", head, sep]
    for r in summary["rows"]:
        lines.append("| " + " | ".join(_row_cells(r, gpu)) + " |")
    g = summary["goal"]
    lines += [
        "",
        f"**Goal** ({g['text']}): **{'met' if g['met'] else 'NOT met'}**. {g['explanation']}",
        "",
        f"Best subnet: `{summary['files']['subnet']}` (reload with `supernet_kernels.load`); "
        f"its config: {summary['best']['summary']}.",
        "",
        "Kernels: " + "; ".join(f"{k}: {v}" for k, v in summary["kernels"].items()) + ".",
        "",
        summary["latency_note"],
        "",
        "Times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in summary["times_s"].items()) + ".",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), torch {m['torch']} with "
        f"{m['torch_threads']} thread(s), GPU: {m['gpu'] or 'none'}; "
        f"{'--fast run' if summary['fast'] else 'full run'}, seed {summary['seed']}.",
        "",
    ]
    return "\n".join(lines)


def _describe_config(cfg: dict) -> str:
    kept = [b for b, on in cfg["depth"].items() if on]
    widths = [cfg["mlp"][m] for m in sorted(cfg["mlp"])]
    bits: dict[int, int] = {}
    for n, c in cfg["linear"].items():
        if n == "head":
            continue
        bits[c["w_bits"]] = bits.get(c["w_bits"], 0) + 1
    bits_s = ", ".join(f"{k}-bit x{v}" for k, v in sorted(bits.items()))
    return (
        f"{len(kept)}/{len(cfg['depth'])} blocks ({', '.join(kept)}), MLP widths {widths}, "
        f"weights {bits_s}"
    )


def _plot(path: Path, history: list[dict], rows: list[dict], dense_bitops: float) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    ok = [r for r in history if r["status"] == "ok" and r.get("bitops")]
    ax.scatter(
        [r["bitops"] / 1e6 for r in ok],
        [100.0 * r["metric"] for r in ok],
        s=12,
        c="0.65",
        label="searched subnets (validation)",
    )
    marks = {"dense": "s", "supernet max": "^", "supernet min": "v", "best found": "*"}
    for r in rows:
        ax.plot(
            [r["bitops"] / 1e6],
            [r["test_acc"]],
            marks.get(r["name"], "o"),
            ms=13 if r["name"] == "best found" else 8,
            label=f"{r['name']} (test)",
        )
    ax.axvline(GOAL_RATIO * dense_bitops / 1e6, ls="--", c="k", lw=1, label=BUDGET)
    ax.set_xlabel("MBitOPs per image")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("quickstart: digits ViT supernet, accuracy vs BitOPs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=120)
