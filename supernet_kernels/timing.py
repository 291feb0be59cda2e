"""The package's one timer: wall-clock milliseconds of a call, CUDA-synchronized on a GPU.

* :func:`wall_times`: each of ``repeats`` calls timed with ``time.perf_counter`` after
  ``warmup`` untimed ones, the GPU synchronized after every call (so a call's time includes
  its kernels, not just their launch);
* :func:`time_forward`: ``model(x)`` under ``no_grad``: median / min / max / mean (the command
  line's ``bench``, the quickstart's latency column);
* :func:`time_ms`: the median of a callable, through Triton's ``do_bench`` (CUDA-graph replay
  where asked) on a GPU (the latency tables of :mod:`supernet_kernels.cost.latency`).

Speed claims live in ``benchmarks/``; these numbers are for a model as a whole, where a
few microseconds of timer overhead do not matter.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable

import torch


def wall_times(fn: Callable[[], object], repeats: int, warmup: int = 3, device=None) -> list:
    """Milliseconds of each of ``repeats`` calls of ``fn()``, after ``warmup`` untimed calls;
    ``device``: a CUDA device to synchronize after every call (None or a CPU device: none)."""
    device = torch.device(device) if device is not None else None
    cuda = device is not None and device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(int(warmup)):
        fn()
    sync()
    times = []
    for _ in range(max(1, int(repeats))):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def summarize(times: list) -> dict:
    """``{"median_ms", "min_ms", "max_ms", "mean_ms", "repeats"}`` of per-call milliseconds."""
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "mean_ms": statistics.fmean(times),
        "repeats": len(times),
    }


def time_forward(model, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> dict:
    """Median / min / max / mean milliseconds of ``model(x)`` (no_grad; CUDA synchronized on
    ``x``'s device): :func:`summarize` of :func:`wall_times`."""
    with torch.no_grad():
        return summarize(wall_times(lambda: model(x), repeats, warmup, x.device))


def time_ms(fn: Callable[[], object], device, warmup, reps, use_cuda_graphs: bool = False) -> float:
    """Median milliseconds of ``fn()``. On a GPU: Triton's ``do_bench`` (``warmup`` and
    ``reps`` in its units, milliseconds of running), with CUDA-graph replay if
    ``use_cuda_graphs`` (launch overhead removed; falls back to plain timing with a warning
    where the capture fails); on the CPU: the median of ``reps`` calls after ``warmup``."""
    device = torch.device(device)
    if device.type == "cuda":
        import triton.testing as tt

        fn()  # compile / autotune outside of any graph capture
        torch.cuda.synchronize(device)
        if use_cuda_graphs:
            try:
                with torch.cuda.device(device):
                    return float(tt.do_bench_cudagraph(fn, rep=reps, return_mode="median"))
            except Exception as exc:  # capture can fail (a sync inside fn): measure plainly
                warnings.warn(
                    f"LatencyTable: CUDA graph replay failed ({exc}); timing without graphs",
                    stacklevel=3,
                )
        return float(tt.do_bench(fn, warmup=warmup, rep=reps, return_mode="median"))
    return statistics.median(wall_times(fn, reps, warmup))
