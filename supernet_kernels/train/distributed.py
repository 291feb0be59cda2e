"""Several processes (torchrun): process group set-up, gradient averaging, broadcasts.

Approach: no ``DistributedDataParallel`` wrapper. A supernet step runs several subnets, each of
which leaves different slices and blocks unused, which DDP's reducer handles badly
(``find_unused_parameters=True`` costs a graph walk per backward and still breaks when the same
parameter is used by several forwards before one backward). Instead every rank runs the same
subnets (shared sampler seed; checked every step), backward accumulates local gradients over
the subnets and micro-batches, and then :func:`all_reduce_grads` averages the gradients of all
trained parameters in flat buckets, once per optimizer step. That is exact: the result is the
gradient of the mean loss over the global batch, as in a single process on the whole batch.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

BUCKET_NUMEL = 1 << 24  # elements per flat all-reduce bucket


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: torch.device | str | None = None) -> DistEnv:
    """The process group of a torchrun launch (env ``RANK`` / ``WORLD_SIZE`` /
    ``LOCAL_RANK``), initialized here if it is not yet (backend nccl on CUDA, gloo otherwise);
    a single-process ``DistEnv`` when ``WORLD_SIZE`` is unset or 1. A group initialized here is
    left for the caller (``torch.distributed.destroy_process_group()``) to destroy."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if not dist.is_available():  # pragma: no cover
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available")
    dev = torch.device(device) if device is not None else None
    use_cuda = (dev.type == "cuda") if dev is not None else torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), local)


def _buckets(tensors: list[torch.Tensor]):
    """Consecutive groups of tensors with one dtype and device, at most BUCKET_NUMEL each."""
    group: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        if group and (
            t.dtype != group[0].dtype
            or t.device != group[0].device
            or size + t.numel() > BUCKET_NUMEL
        ):
            yield group
            group, size = [], 0
        group.append(t)
        size += t.numel()
    if group:
        yield group


def all_reduce_grads(params: list[torch.nn.Parameter], env: DistEnv) -> None:
    """Average ``p.grad`` over the ranks for every parameter that has one (every rank runs the
    same subnets, so the same parameters have gradients everywhere)."""
    if not env.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    for group in _buckets(grads):
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat /= env.world_size
        off = 0
        for g in group:
            g.copy_(flat[off : off + g.numel()].view_as(g))
            off += g.numel()


def broadcast_module(module: torch.nn.Module, env: DistEnv) -> None:
    """Rank 0's parameters and buffers on every rank."""
    if not env.enabled:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(t)
    return t


def check_same_int(value: int, env: DistEnv, what: str, device=None) -> None:
    """RuntimeError unless every rank has the same ``value`` (e.g. a hash of the sampled
    configs)."""
    if not env.enabled:
        return
    v = value & ((1 << 62) - 1)
    t = torch.tensor([v, -v], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    if int(t[0]) != v or -int(t[1]) != v:
        raise RuntimeError(
            f"distributed: ranks disagree on {what}; every rank must sample the same subnets "
            "(the sampler must draw only from the rng it is given)"
        )


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()
