"""What the quickstart runs on: the machine, the kernel paths, and its latency measurement."""

from __future__ import annotations

import os
import platform

import torch

from ..timing import time_forward


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def measure_latency(model, x, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``model(x)`` under no_grad (CUDA-synchronized on a GPU)."""
    return time_forward(model, x, repeats, warmup)["median_ms"]


def kernel_paths() -> dict:
    """Which implementation the ops dispatch uses here, and the Triton interpreter's status."""
    from ..backends import backend_status, get_backend, triton_interpret

    st = backend_status("cpu")
    tri_ok, tri_why = st["triton"]
    return {
        "backend_setting": get_backend(),
        "cpu": "torch (the ops dispatch's 'auto' on the CPU is the PyTorch reference)",
        "triton_interpreter": (
            "active (TRITON_INTERPRET=1): the Triton kernels run on the CPU, for tests only"
            if triton_interpret()
            else "available for tests only: TRITON_INTERPRET=1 runs the Triton kernels on the "
            "CPU through the interpreter (orders of magnitude slower; not timed)"
        )
        + ("" if tri_ok or "TRITON_INTERPRET" in tri_why else f" [{tri_why}]"),
        "cuda": "available" if torch.cuda.is_available() else "no GPU here",
    }
