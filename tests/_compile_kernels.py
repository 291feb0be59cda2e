"""Compile every Triton kernel configuration our launchers use, for sm_90, without a GPU.

Run by tests/test_triton_compile.py in a subprocess with TRITON_INTERPRET unset (the CPU
interpreter executes kernels as Python and accepts code the compiler refuses: the second H100
run found a key-grid attention kernel that reused a loop variable's name with another type,
which 237 interpreter tests had passed). The launch scenarios are the kernel census's table
(benchmarks/census_scenarios.py: op, implementation, entry point, shapes), here in every dtype
each launcher accepts: the launchers are called on meta tensors with ``JITFunction.run``
replaced by a recorder, so they pick their GPU configurations; each recorded launch is
specialised as Triton's runtime would (integers equal to 1 become constants, multiples of 16
are marked divisible) and compiled once per distinct specialisation to a cubin for
``GPUTarget("cuda", 90, 32)`` with Triton's bundled ptxas, one process per core (the census's
compile step: its SASS is kept for the census). float16 runs every shape of the table (what the
census compiles); the other dtypes the scenario's ``compile_shapes`` where it names them. Prints
one line per configuration and exits 1 if any fails (or a launcher fails on its meta tensors).
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.pop("TRITON_INTERPRET", None)
# the census compiles the same kernels: share Triton's cache with it
os.environ.setdefault(
    "TRITON_CACHE_DIR", str(Path(tempfile.gettempdir()) / "supernet_kernels_census" / "triton")
)
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]

import census_scenarios as scen  # noqa: E402


def _compile(job: tuple) -> str | None:
    """Compile one specialisation (census._compile_to_disk: the census then reads its SASS);
    None, or the failure's traceback."""
    from census import _compile_to_disk

    if Path(job[-1]).exists():  # compiled before (same source, same specialisation)
        return None
    try:
        _compile_to_disk(job)
        return None
    except Exception:  # noqa: BLE001 - every failure is reported
        return traceback.format_exc(limit=3)


def main() -> int:
    import concurrent.futures
    import multiprocessing

    import triton
    from census import TARGET, _disk, _jobs, specialise  # the runtime's specialisation, shared
    from triton.compiler.compiler import make_backend

    target = TARGET()
    backend = make_backend(target)
    seen, failed = set(), 0
    todo: list[tuple[str, tuple]] = []
    for call in scen.record_calls(compile_check=True):
        if call.error:
            failed += 1
            print(f"FAIL {call.op}/{call.implementation} [{call.label}]: {call.error}", flush=True)
            continue
        for ln in call.launches:
            bound, signature, constexprs, attrs, options = specialise(ln, backend)
            key = repr((ln.fn.__name__, ln.fn.cache_key, sorted(signature.items()),
                        sorted((str(k), repr(v)) for k, v in constexprs.items()),
                        sorted((str(k), repr(v)) for k, v in attrs.items()),
                        sorted(options.__dict__.items())))  # fmt: skip
            if key in seen:
                continue
            seen.add(key)
            what = f"{ln.fn.__name__} [{call.label}] warps={options.num_warps} " + " ".join(
                f"{p.name}={bound[p.name]}" for p in ln.fn.params if p.is_constexpr
            )
            todo.append((what, (ln.fn.fn.__module__, ln.fn.__name__, signature, constexprs,
                                attrs, dict(options.__dict__), str(_disk(key)))))  # fmt: skip
    # one process per core (CENSUS_JOBS overrides); fork: nothing here initialises CUDA
    jobs = min(_jobs(), max(1, len(todo)))
    if jobs > 1:
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            results = list(pool.map(_compile, [j for _, j in todo]))
    else:
        results = [_compile(j) for _, j in todo]
    for (what, _), err in zip(todo, results, strict=True):
        if err is None:
            print(f"ok   {what}", flush=True)
        else:
            failed += 1
            print(f"FAIL {what}\n{err}", flush=True)
    print(f"{len(seen)} configurations, {failed} failed (Triton {triton.__version__}, sm_90, "
          f"{jobs} process(es))")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
