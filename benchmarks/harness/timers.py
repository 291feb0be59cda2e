"""Timers, measured ceilings and provenance: the runner's measuring half.

do_bench medians over rotating input sets (so that L2 does not flatter), CUDA-graph replay for
small launches, a CPU fallback for the smoke runs; the copy and matmul ceilings measured in the
run; the GPU, commit and versions every record carries. Triton is imported lazily.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEFAULT_L2_BYTES",
    "MAX_ROTATE",
    "REPO_ROOT",
    "RESULTS_DIR",
    "BenchSettings",
    "Timing",
    "Ceilings",
    "time_floor_s",
    "percent_of_roofline",
    "tflops",
    "gbps",
    "rotation_count",
    "l2_cache_bytes",
    "device_name",
    "git_commit",
    "git_dirty",
    "iso_date",
    "environment",
    "bench_gpu",
    "bench_cpu",
    "first_call_s",
    "measure_ceilings",
    "report_ceilings",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

# Used when the driver does not report an L2 size; 50 MB is the H100's L2.
DEFAULT_L2_BYTES = 50 * 1024 * 1024
# Keep the rotating set bounded so tiny problems do not allocate thousands of buffers.
MAX_ROTATE = 256


@dataclass(frozen=True)
class BenchSettings:
    """do_bench budgets (milliseconds) and CUDA-graph options."""

    warmup_ms: int = 10
    rep_ms: int = 40
    # Minimum number of op calls captured in one CUDA graph; replay time is divided by it.
    graph_calls: int = 32


@dataclass(frozen=True)
class Timing:
    """One measurement. ``method`` says which timer produced ``median_s``."""

    median_s: float
    method: str  # "do_bench_median" | "cuda_graph_median" | "cpu_perf_counter_median"
    n_rotate: int
    samples: int = 0

    @property
    def median_us(self) -> float:
        return self.median_s * 1e6


@dataclass(frozen=True)
class Ceilings:
    """Measured machine ceilings, from the same process as the benchmark."""

    hbm_bytes_per_s: float
    # dtype name ("float16", "bfloat16") -> dense tensor-core FLOP/s from a large matmul.
    peak_flops: dict[str, float] = field(default_factory=dict)
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "hbm_gbps": self.hbm_bytes_per_s / 1e9,
            "peak_tflops": {k: v / 1e12 for k, v in self.peak_flops.items()},
            "method": self.method,
        }


# --------------------------------------------------------------------------- roofline maths


def time_floor_s(
    *, bytes_moved: float, flops: float, bw_bytes_per_s: float, peak_flops: float
) -> float:
    """Roofline lower bound: the op cannot be faster than its memory or its math."""
    return max(bytes_moved / bw_bytes_per_s, flops / peak_flops)


def percent_of_roofline(*, floor_s: float, measured_s: float) -> float:
    return 100.0 * floor_s / measured_s


def tflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e12


def gbps(bytes_moved: float, seconds: float) -> float:
    return bytes_moved / seconds / 1e9


def rotation_count(
    *, set_bytes: int, l2_bytes: int, minimum: int = 2, maximum: int = MAX_ROTATE
) -> int:
    """Number of independent input sets so that the rotating working set exceeds 2x L2.

    Cycling through more data than the cache holds means each call sees cold inputs,
    as it would inside a real network where other layers evict them.
    """
    if set_bytes <= 0:
        raise ValueError("set_bytes must be positive")
    needed = math.ceil(2 * l2_bytes / set_bytes) + 1
    return max(minimum, min(maximum, needed))


# --------------------------------------------------------------------------- environment


def l2_cache_bytes(device: torch.device) -> int:
    props = torch.cuda.get_device_properties(device)
    size = getattr(props, "L2_cache_size", 0) or 0
    return int(size) if size > 0 else DEFAULT_L2_BYTES


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else "unknown"


def git_dirty() -> bool | None:
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def iso_date() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def environment(device: torch.device) -> dict[str, Any]:
    """Provenance attached to every record."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - Triton missing or broken is a fact to record, not an error
        triton_version = None
    return {
        "device": device.type,
        "gpu": device_name(device),
        "commit": git_commit(),
        "dirty": git_dirty(),
        "date": iso_date(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- timers


def _cycle(fns: Sequence[Callable[[], Any]]) -> Callable[[], Any]:
    """One callable that runs the next input set on every call."""
    state = {"i": 0}

    def run() -> Any:
        i = state["i"]
        state["i"] = (i + 1) % len(fns)
        return fns[i]()

    return run


def bench_gpu(
    fn_factory: Callable[[int], Callable[[], Any]],
    n_rotate: int,
    *,
    settings: BenchSettings = BenchSettings(),
    cuda_graph: bool = False,
) -> tuple[Timing, Timing | None]:
    """Median GPU time of one call, rotating among ``n_rotate`` input sets.

    ``fn_factory(i)`` allocates input set ``i`` and returns a zero-argument closure running
    the op on it. Returns (do_bench timing, CUDA-graph timing or None). The do_bench number
    is the primary one (it includes per-call launch work that the GPU cannot hide); the
    graph number replays many calls captured in one graph, so it is GPU execution time
    without CPU launch overhead, useful for small launches.
    """
    from triton.testing import do_bench

    fns = [fn_factory(i) for i in range(n_rotate)]
    for f in fns:  # warm-up: JIT compile, allocator, cuBLAS heuristics
        f()
    torch.cuda.synchronize()
    ms = do_bench(_cycle(fns), warmup=settings.warmup_ms, rep=settings.rep_ms, return_mode="median")
    primary = Timing(median_s=ms * 1e-3, method="do_bench_median", n_rotate=n_rotate)
    graph = _bench_graph(fns, settings=settings) if cuda_graph else None
    return primary, graph


def _bench_graph(fns: Sequence[Callable[[], Any]], *, settings: BenchSettings) -> Timing | None:
    from triton.testing import do_bench

    calls = max(settings.graph_calls, len(fns))
    try:
        # Warm up and capture on the same side stream: the low-rank and quantized kernels keep
        # their scratch and split-K tickets per stream, and a capture on a stream that has not
        # run them allocates its own inside the graph (a memset node per replay, timed with the
        # kernel); torch.cuda.graph's default capture stream would be such a stream.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # capture needs a warm-up on a non-default stream
            for f in fns:
                f()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            for i in range(calls):
                fns[i % len(fns)]()
        graph.replay()
        torch.cuda.synchronize()
        ms = do_bench(
            graph.replay, warmup=settings.warmup_ms, rep=settings.rep_ms, return_mode="median"
        )
    except Exception:  # noqa: BLE001 - an op that cannot be captured just has no graph number
        torch.cuda.synchronize()
        return None
    return Timing(
        median_s=ms * 1e-3 / calls, method="cuda_graph_median", n_rotate=len(fns), samples=calls
    )


def bench_cpu(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 20) -> Timing:
    """CPU fallback for the smoke run: median of time.perf_counter over repeats."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing(
        median_s=statistics.median(samples),
        method="cpu_perf_counter_median",
        n_rotate=1,
        samples=repeats,
    )


def first_call_s(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall time of one synchronized call (includes JIT compile if it is the first)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


# --------------------------------------------------------------------------- ceilings


def measure_ceilings(
    device: torch.device,
    *,
    copy_bytes: int = 1 << 30,
    matmul_size: int = 8192,
    dtypes: Iterable[torch.dtype] = (torch.float16, torch.bfloat16),
) -> Ceilings:
    """HBM bandwidth (device-to-device copy, bytes read + written) and tensor-core peak
    (dense square matmul), measured now so that % of roofline uses what this GPU delivers."""
    from triton.testing import do_bench

    bw = 2 * copy_bytes / (_copy_ms(device, copy_bytes) * 1e-3)

    peaks: dict[str, float] = {}
    n = matmul_size
    for dtype in dtypes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        ms = do_bench(lambda a=a, b=b: a @ b, warmup=25, rep=200, return_mode="median")
        peaks[str(dtype).removeprefix("torch.")] = 2 * n**3 / (ms * 1e-3)
        del a, b
    torch.cuda.empty_cache()
    return Ceilings(
        hbm_bytes_per_s=bw,
        peak_flops=peaks,
        method=f"copy {copy_bytes >> 20} MiB d2d; matmul {n}^3; do_bench median",
    )


def _copy_ms(device: torch.device, nbytes: int) -> float:
    from triton.testing import do_bench

    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    return do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")


def report_ceilings(
    device: torch.device,
    env: dict[str, Any],
    *,
    extend: Callable[[Ceilings], Ceilings] | None = None,
    describe: Callable[[BaseException], str] = lambda exc: f"{type(exc).__name__}: {exc}",
    missing: str = "no % roofline",
    unit: str = "TFLOP/s",
) -> tuple[Ceilings | None, dict[str, Any]]:
    """A GPU run's header line, then the measured ceilings (``extend`` may add peaks to them).
    Returns the ceilings (None when they could not be measured) and env with them added."""
    print(f"[bench] {env['gpu']}  commit {env['commit'][:12]}  torch {env['torch']}", end="")
    print(f"  triton {env['triton']}")
    ceilings = None
    try:
        ceilings = measure_ceilings(device)
        if extend is not None:
            ceilings = extend(ceilings)
    except Exception as exc:  # noqa: BLE001 - timings stay useful without % of roofline
        print(f"[bench] ceilings not measured ({describe(exc)}): {missing}")
    if ceilings is not None:
        c = ceilings.to_dict()
        print(
            f"[bench] ceilings: HBM {c['hbm_gbps']:.0f} GB/s, "
            + ", ".join(f"{k} {v:.0f} {unit}" for k, v in c["peak_tflops"].items())
        )
        env = dict(env, ceilings=c)
    return ceilings, env
