"""Build script for supernet-kernels.

The native extension ``supernet_kernels._C`` is optional:

* ``SUPERNET_KERNELS_NO_NATIVE=1`` skips native code entirely (torch and Triton paths only).
* ``SUPERNET_KERNELS_NO_CUDA=1`` builds the C++ part only.
* Otherwise the CUDA kernels are compiled whenever torch has CUDA and a CUDA toolkit with
  nvcc is found. No GPU is needed to compile.
* ``TORCH_CUDA_ARCH_LIST`` (e.g. ``"9.0"`` or ``"8.0;9.0+PTX"``) picks the architectures;
  the default is the list in csrc/cuda_archs.txt (which CMakeLists.txt reads too), each kept
  only if this nvcc supports it, with PTX embedded for the newest so later GPUs can JIT it.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# The architectures, one a line; CMakeLists.txt reads the same file.
ARCH_FILE = os.path.join(ROOT, "csrc", "cuda_archs.txt")


def _default_archs() -> list[str]:
    if not os.path.exists(ARCH_FILE):
        raise RuntimeError(f"{ARCH_FILE} is missing: build from a full checkout, or set "
                           "TORCH_CUDA_ARCH_LIST")  # fmt: skip
    with open(ARCH_FILE, encoding="utf-8") as f:
        return [ln.strip() for ln in f if re.match(r"\d+\.\d+", ln.strip())]


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _log(msg: str) -> None:
    print(f"[supernet-kernels setup] {msg}", file=sys.stderr)


def _nvcc_supported_archs(nvcc: str) -> set[str]:
    """Compute capabilities this nvcc can compile for, e.g. {'8.0', '9.0'}."""
    try:
        out = subprocess.run(
            [nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    archs = set()
    for m in re.finditer(r"compute_(\d+)([a-z]?)\b", out):
        if m.group(2):  # arch-specific variants such as 90a are opt-in, not defaults
            continue
        num = m.group(1)
        archs.add(f"{num[:-1]}.{num[-1]}")
    return archs


def _arch_flags(nvcc: str) -> tuple[list[str], list[int]]:
    """-gencode flags and the list of SASS architectures (as ints, e.g. 90) compiled in."""
    requested = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    entries = [a for a in re.split(r"[;, ]+", requested) if a] if requested else _default_archs()
    supported = _nvcc_supported_archs(nvcc)
    flags, archs = [], []
    wanted = []
    for entry in entries:
        ptx = entry.endswith("+PTX")
        arch = entry.removesuffix("+PTX")
        if supported and arch not in supported:
            _log(f"nvcc does not support sm_{arch.replace('.', '')}: skipped")
            continue
        wanted.append((arch, ptx))
    if not wanted:
        raise RuntimeError(f"none of the CUDA architectures {entries} is supported by {nvcc}")
    if not any(ptx for _, ptx in wanted):
        # PTX for the newest architecture, so GPUs newer than any we list still run.
        wanted[-1] = (wanted[-1][0], True)
    for arch, ptx in wanted:
        num = arch.replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
        archs.append(int(num))
    return flags, archs


def _extensions():
    if _flag("SUPERNET_KERNELS_NO_NATIVE"):
        _log("SUPERNET_KERNELS_NO_NATIVE set: no native extension (torch and Triton paths only)")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        _log("torch is not importable at build time: no native extension")
        return [], {}

    # torch >= 2.10 headers need C++20 (std::strong_ordering, requires-clauses).
    cxx_flags = ["-O3", "-std=c++20"]
    sources = ["csrc/bindings.cpp", "csrc/quant_bindings.cpp"]
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    want_cuda = not _flag("SUPERNET_KERNELS_NO_CUDA")
    has_cuda = (
        want_cuda and torch.version.cuda is not None and nvcc is not None and os.path.exists(nvcc)
    )
    if want_cuda and not has_cuda:
        why = "torch has no CUDA" if torch.version.cuda is None else "no CUDA toolkit (nvcc) found"
        _log(f"{why}: building the C++ part only; CUDA kernels unavailable")
    if not has_cuda:
        ext = CppExtension(
            "supernet_kernels._C",
            sources,
            extra_compile_args={"cxx": cxx_flags},
        )
        return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}

    gencode, archs = _arch_flags(nvcc)
    _log(f"CUDA kernels for sm_{', sm_'.join(map(str, archs))} with {nvcc}")
    arch_macro = f"-DSK_CUDA_ARCH_LIST={','.join(map(str, archs))}"
    sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
    nvcc_flags = [
        "-O3",
        "-std=c++17",
        "-lineinfo",
        "--expt-relaxed-constexpr",
        # torch adds -D__CUDA_NO_HALF_OPERATORS__ and friends; our kernels use the
        # cuda_fp16 / cuda_bf16 operators, so undo them (as flash-attention does).
        "-U__CUDA_NO_HALF_OPERATORS__",
        "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_OPERATORS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-U__CUDA_NO_HALF2_OPERATORS__",
        "-U__CUDA_NO_BFLOAT162_OPERATORS__",
        arch_macro,
        *gencode,
    ]
    ext = CUDAExtension(
        "supernet_kernels._C",
        sources,
        define_macros=[("SK_WITH_CUDA", "1")],
        extra_compile_args={"cxx": [*cxx_flags, arch_macro], "nvcc": nvcc_flags},
    )
    # Parallel compile of the .cu files: each is a separate nvcc process.
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
