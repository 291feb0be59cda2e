"""The ``supernet-kernels`` command line."""

from __future__ import annotations

import argparse
import platform
import sys

KERNELS = {
    "attention": ("triton",),
    "lowrank_linear": ("triton", "cuda"),
    "quant_linear": ("triton", "cuda"),
    "int8_linear": ("triton", "cuda"),
    "fp8_linear": ("triton",),
}


def _versions() -> list[tuple[str, str]]:
    import torch

    from ._version import __version__

    rows = [
        ("supernet-kernels", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("torch CUDA", str(torch.version.cuda)),
    ]
    try:
        import triton

        rows.append(("triton", triton.__version__))
    except ImportError:
        rows.append(("triton", "not installed"))
    return rows


def info_text() -> str:
    """Everything ``supernet-kernels info`` prints, as one string (tested)."""
    import torch

    from . import dispatch
    from ._native import native_info
    from .backends import backend_status, triton_interpret

    lines = ["supernet-kernels info", ""]
    lines += [f"  {k:<18} {v}" for k, v in _versions()]

    nat = native_info()
    lines += ["", "native extension (supernet_kernels._C)"]
    if nat.loaded:
        archs = ", ".join(f"sm_{a}" for a in nat.cuda_archs) or "none"
        lines.append("  loaded: yes")
        lines.append(f"  CUDA kernels compiled: {'yes' if nat.has_cuda else 'no (C++ only build)'}")
        lines.append(f"  CUDA architectures: {archs}")
        if nat.has_cuda:
            lines.append(f"  fused low-rank kernel max rank: {nat.max_fused_rank}")
    else:
        lines.append(f"  loaded: no ({nat.error})")
        lines.append("  the torch and Triton paths work without it")

    lines += ["", "GPU"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(
                f"  cuda:{i} {p.name} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
                f"{p.total_memory / 2**30:.0f} GiB)"
            )
    else:
        lines.append("  none found")

    lines += ["", "backends usable here"]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for name, (ok, why) in backend_status(dev).items():
            lines.append(f"  {dev:<5} {name:<7} {'yes' if ok else 'no: ' + why}")
    if not triton_interpret():
        lines.append("  (set TRITON_INTERPRET=1 to run the Triton kernels on the CPU, for testing)")

    lines += ["", "kernels verified on a real GPU (the whole test suite passed there)"]
    verified = dispatch.verified_kernels()
    for op, backends in KERNELS.items():
        for be in backends:
            runs = verified.get(op, {}).get(be, [])
            if runs:
                where = "; ".join(
                    f"{r.get('gpu')} @ {str(r.get('commit', '?'))[:10]}" for r in runs
                )
                lines.append(f"  {op:<16} {be:<7} verified: {where}")
            else:
                lines.append(
                    f"  {op:<16} {be:<7} UNVERIFIED: never passed the test suite on a real "
                    "GPU; 'auto' will not pick it"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="supernet-kernels",
        description="ViT and SAM supernets on sliced low-rank and mixed-bit GPU kernels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "info",
        help="versions, usable backends, compiled CUDA architectures, GPU, "
        "and which kernels are verified on a real GPU",
    )
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info_text())
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
