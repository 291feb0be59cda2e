"""Tile configurations for the Triton kernels: shipped per GPU, cached on disk, tuned on request.

A fresh process must run at full speed without minutes of autotuning (users of Triton kernel
libraries report 10-180 s per kernel). So a configuration is looked up, in order, in:

1. this process's memory;
2. the on-disk cache ``$SUPERNET_KERNELS_CACHE_DIR`` (default ``~/.cache/supernet_kernels``)
   ``/tuning/<gpu>.json``, written by :func:`autotune` (atomically);
3. the tables shipped in the package, ``configs/tuning/<gpu>.json`` (measured by the benchmark);
4. a heuristic default.

Autotuning runs only when asked: ``SUPERNET_KERNELS_AUTOTUNE=1`` tunes each new shape bucket
once (then caches it), and ``benchmarks/bench_lowrank.py --tune`` tunes the benchmark shapes.
Keys bucket M (1, 16, 64, 256, 1024, 4096, larger) and keep K, N and the padded rank exact:
a ViT has only a handful of distinct (K, N).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._io import atomic_write_json, read_json, slug

PACKAGE_TUNING = Path(__file__).parent / "configs" / "tuning"
M_BUCKETS = (1, 16, 64, 256, 1024, 4096)


class _JsonConfig:
    """Tile configurations are data: shipped and cached as JSON, validated on load."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"{where}: unknown configuration keys {sorted(unknown)}")
        cfg = cls(**d)
        for name in ("block_m", "block_n", "block_k"):
            val = getattr(cfg, name)
            if val < 16 or val & (val - 1):
                raise ValueError(f"{where}: {name} must be a power of two >= 16, got {val}")
        return cfg


@dataclasses.dataclass(frozen=True)
class LowRankConfig(_JsonConfig):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2
    n_splits: int | None = None  # None: enough splits to fill the GPU (see split_count)


@dataclasses.dataclass(frozen=True)
class QuantConfig(_JsonConfig):
    """Tiles of the quantized matmul. block_k must divide the group size (one scale per tile)."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2
    split_k: int | None = None  # None: enough K splits to fill the GPU at small M


def padded_rank(rank: int) -> int:
    """Triton's dot needs power-of-two tiles of at least 16."""
    return max(16, 1 << (rank - 1).bit_length())


def m_bucket(m: int) -> str:
    for b in M_BUCKETS:
        if m <= b:
            return str(b)
    return "big"


def key(dtype: str, m: int, k: int, n: int, rank: int) -> str:
    return f"{dtype}:m{m_bucket(m)}:k{k}:n{n}:r{padded_rank(rank)}"


def split_count(m: int, n: int, cfg: LowRankConfig, num_sms: int) -> int:
    """Output-column splits: enough programs for about two waves, each split >= one N tile."""
    if cfg.n_splits is not None:
        return max(1, min(cfg.n_splits, -(-n // cfg.block_n)))
    programs_m = max(1, -(-m // cfg.block_m))
    want = -(-2 * num_sms // programs_m)
    return max(1, min(want, -(-n // cfg.block_n)))


def default_config(m: int, rank: int, interpret: bool) -> LowRankConfig:
    """Heuristic tiles (not yet measured on a GPU: issue 5 replaces them with tuned tables).

    The fp32 accumulator of t is block_m x padded_rank: 64 x 128 x 4 B = 32 KB, i.e. 64
    registers per thread at 4 warps; past rank 128 the M tile halves to keep it there.
    """
    if interpret:  # the CPU interpreter: small tiles keep the numpy work small
        return LowRankConfig(block_m=16, block_n=32, block_k=32, num_warps=1, num_stages=1)
    r = padded_rank(rank)
    block_m = 16 if m <= 16 else (64 if r <= 128 else 32)
    if r <= 64:
        return LowRankConfig(block_m=block_m, block_n=128, block_k=64, num_warps=4, num_stages=3)
    return LowRankConfig(block_m=block_m, block_n=64, block_k=32, num_warps=4, num_stages=2)


def candidates(m: int, rank: int) -> list[LowRankConfig]:
    """The search space of :func:`autotune`: a few dozen launches, seconds, not minutes."""
    r = padded_rank(rank)
    block_ms = (16, 32) if m <= 16 else ((32, 64, 128) if r <= 64 else (32, 64))
    out = []
    for bm in block_ms:
        for bn in (64, 128):
            for bk in (32, 64):
                for warps in (4, 8):
                    out.append(LowRankConfig(bm, bn, bk, num_warps=warps, num_stages=3))
    return out


def autotune_enabled() -> bool:
    """``SUPERNET_KERNELS_AUTOTUNE=1``: tune each new shape bucket once, then cache it."""
    return os.environ.get("SUPERNET_KERNELS_AUTOTUNE", "0") == "1"


def cache_dir() -> Path:
    base = os.environ.get("SUPERNET_KERNELS_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "supernet_kernels"


class _Store:
    """Configurations of one op, per GPU: memory, then disk cache, then the shipped table."""

    def __init__(self, op: str, config_cls=LowRankConfig):
        self.op = op
        self.config_cls = config_cls
        self._mem: dict[tuple[str, str], object | None] = {}
        self._lock = threading.Lock()

    def _file_entries(self, path: Path) -> dict[str, Any]:
        if not path.exists():
            return {}
        data = read_json(path, "tuning table")
        entries = data.get(self.op, {}) if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            raise ValueError(f"tuning table {path}: '{self.op}' must map keys to configurations")
        return entries

    def get(self, gpu: str, k: str):
        """The configuration for key ``k`` on ``gpu``, or None. Misses are remembered too: this
        sits on every call's path, and re-reading JSON files costs more than a small kernel."""
        mem_key = (gpu, k)
        if mem_key in self._mem:
            return self._mem[mem_key]
        cfg = None
        for path in (
            cache_dir() / "tuning" / f"{slug(gpu)}.json",
            PACKAGE_TUNING / f"{slug(gpu)}.json",
        ):
            entry = self._file_entries(path).get(k)
            if entry is not None:
                cfg = self.config_cls.from_json(entry, f"{path} [{k}]")
                break
        self._mem[mem_key] = cfg
        return cfg

    def put(self, gpu: str, k: str, cfg) -> Path:
        path = cache_dir() / "tuning" / f"{slug(gpu)}.json"
        with self._lock:
            data = read_json(path, "tuning table") if path.exists() else {}
            data.setdefault(self.op, {})[k] = cfg.to_json()
            atomic_write_json(path, data)
            self._mem[(gpu, k)] = cfg
        return path


LOWRANK = _Store("lowrank_fused")
QUANT = _Store("quant_matmul", QuantConfig)


def autotune(run: Callable[[Any], None], configs: list) -> tuple[Any, dict[Any, float]]:
    """Time ``run(cfg)`` for each configuration (median of do_bench, ms); the fastest wins.

    Configurations that fail to compile or launch (too much shared memory, say) are skipped.
    """
    import triton.testing

    times: dict[LowRankConfig, float] = {}
    for cfg in configs:
        try:
            times[cfg] = triton.testing.do_bench(
                lambda c=cfg: run(c), warmup=5, rep=20, return_mode="median"
            )
        except Exception:  # noqa: BLE001 - an unlaunchable configuration is just not a candidate
            continue
    if not times:
        raise RuntimeError("autotune: no candidate configuration could run")
    best = min(times, key=times.__getitem__)
    return best, times
