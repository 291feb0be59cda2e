"""`supernet-kernels info`."""

from __future__ import annotations

import platform

from ._common import EXIT_OK, add_command


def _versions() -> list[tuple[str, str]]:
    import torch

    from .._version import __version__

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

    from .. import dispatch
    from .._native import native_info
    from ..backends import backend_status, triton_interpret

    lines = ["supernet-kernels info", ""]
    lines += [f"  {k:<18} {v}" for k, v in _versions()]

    nat = native_info()
    lines += ["", "native extension (supernet_kernels._C)"]
    if nat.loaded:
        archs = ", ".join(f"sm_{a}" for a in nat.cuda_archs) or "none"
        lines.append("  loaded: yes")
        lines.append(f"  CUDA kernels compiled: {'yes' if nat.has_cuda else 'no (C++ only build)'}")
        lines.append(f"  CUDA architectures: {archs}")
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

    lines += ["", "implementations per op (the registry), and where our kernels are verified"]
    lines.append("  (every test of the op and kernel passed on a real GPU of that architecture)")
    from .. import registry

    verified = dispatch.verified_kernels(strict=False)
    for op in registry.ops():
        lines.append(f"  {op}")
        for name, impl in registry.implementations(op).items():
            if not impl.kernel:
                kind = "reference (CPU path, test oracle)" if impl.reference else "torch path"
                if impl.dense_equivalent:
                    kind += ", dense-equivalent"
                lines.append(f"    {name:<16} {kind}: {impl.doc}")
                continue
            by_arch = verified.get(op, {}).get(name, {})
            if any(by_arch.values()):
                where = "; ".join(
                    f"{tag} ({', '.join(sorted({str(r.get('gpu')) for r in runs}))} @ "
                    f"{str(runs[0].get('commit', '?'))[:10]})"
                    for tag, runs in sorted(by_arch.items())
                    if runs
                )
                lines.append(f"    {name:<16} kernel, verified on {where}")
            else:
                lines.append(
                    f"    {name:<16} kernel, UNVERIFIED: its tests never all passed on a real "
                    "GPU; 'auto' will not pick it"
                )
    tables = sorted(p.stem for p in (dispatch.PACKAGE_CONFIGS / "dispatch").glob("*.json"))
    lines += ["", f"dispatch tables shipped: {', '.join(tables) or 'none'}"]
    lines.append(
        "  (per architecture smXY, refined per GPU where measured; ranked by CUDA-graph time "
        "where recorded; auto keeps within 1.10x of the dense layer)"
    )
    return "\n".join(lines)


def run(args) -> int:
    print(info_text())
    return EXIT_OK


def add_parser(sub):
    p = add_command(
        sub,
        "info",
        "versions, usable backends, compiled CUDA architectures, GPU, "
        "and which kernels are verified on a real GPU",
        "Versions, the native extension, the GPU, usable backends and verified kernels.",
    )
    p.set_defaults(func=run)
    return p
