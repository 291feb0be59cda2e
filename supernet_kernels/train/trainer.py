"""Supernet training: the sandwich rule with in-place distillation, exact resume, several GPUs.

One step (``Trainer.train``):

1. ``configs = sampler(step, rng, supernet)`` (default :class:`SandwichSampler`: the largest,
   the smallest and ``num_random`` sampled subnets; ``rng`` is the trainer's ``random.Random``
   seeded with ``TrainConfig.seed``, so every rank draws the same subnets);
2. for each of ``grad_accum`` micro-batches, for each config: ``set_active(config)``, forward,
   ``loss = label_weight * task loss + distill_weight * distillation`` (``label_weight`` 0:
   distillation alone, FLORA's loss), ``(loss / grad_accum).backward()``; with
   ``step_per_subnet`` (SuperSAM's sandwich) each subnet's backward is followed by its own
   clip and optimizer step (the scheduler still steps once per step; needs grad_accum 1).
   Distillation (``distill``): ``"largest"`` — against the first config's output of the same
   micro-batch, detached (in-place distillation; the first config itself gets none);
   ``"teacher"`` — against ``teacher``'s output (run once per micro-batch under no_grad);
   ``"none"``. Gradients accumulate over the subnets and the micro-batches;
3. several processes: gradients averaged over the ranks (:mod:`.distributed`);
4. clip (``clip_grad``, the global norm over the trained parameters), optimizer step (AdamW by
   default: no weight decay on 1-D parameters, position embeddings and tokens), scheduler step
   (linear warm-up over ``warmup_steps``, then cosine from the base lr down to ``min_lr``).

Batches: per process ``batch_size`` samples per micro-batch; a step sees ``batch_size *
grad_accum * world_size`` samples (:class:`~supernet_kernels.train.data.StepBatchSampler`).

Logs: one record per step, returned by ``train`` and written as JSON lines to ``log_file``
every ``log_every`` steps (rank 0)::

    {"step": 0, "epoch": 0, "lr": 1e-4, "loss": [2.3, 2.4, 2.35], "task_loss": [...],
     "distill_loss": [...], "configs": ["3f2a9c01d4e5b6a7", ...], "grad_norm": 1.7, "time": 0.21}

``step`` counts from 0 (the sampler's ``step``); lists follow the sampler's order; losses are
averaged over micro-batches and ranks; ``grad_norm`` is the norm before clipping (None
without ``clip_grad``). Configs are logged by their hash (16 hex digits,
:func:`~supernet_kernels.supernet.space.config_hash`; logs written before it hold 12-digit
hashes, which :func:`~supernet_kernels.supernet.space.resolve_hash` still finds); each config
is written in full once, on its first appearance, as ``{"hash": ..., "config": ...}``
to ``<log_file minus .jsonl>.configs.jsonl`` (and kept in ``Trainer.configs``). On resume the
log keeps the records of the steps before the checkpoint and drops later ones.
TensorBoard (``tensorboard_dir``; skipped with a warning when tensorboard is not installed):
``lr``, ``loss/<i>`` per subnet position, ``grad_norm``. Progress: tqdm on rank 0 when
``progress`` and stderr is a terminal.

Checkpoints: :mod:`~supernet_kernels.train.checkpoint` (safetensors + JSON header, atomic),
every ``checkpoint_every`` steps and at the end, in ``checkpoint_dir``. They hold the model,
task-owned trained modules, optimizer, scheduler, step, the sampler's rng and state, and the
python / numpy / torch (+ CUDA) RNG states (torch's per rank); the data order is derived from
(seed, step). ``train(resume=True)`` continues exactly where the checkpoint left off; a
checkpoint from another model, task, trainable set, world size, dataset size or training
config (any field that changes the trajectory: steps, lr, batch_size, ...) is refused with a
ValueError listing the differences, before any training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..supernet.space import config_hash
from . import distributed as D
from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .config import RECIPE_FIELDS, TRAJECTORY_FIELDS, TrainConfig
from .data import StepBatchSampler
from .logs import TrainLogs
from .lora import add_lora, lora_only
from .sampling import SandwichSampler
from .schedule import WarmupCosine

__all__ = [
    "RECIPE_FIELDS",
    "SandwichSampler",
    "TRAJECTORY_FIELDS",
    "TrainConfig",
    "Trainer",
    "WarmupCosine",
    "add_lora",
    "config_hash",
    "lora_only",
]

STATE_FORMAT = "sk-trainer-state-v1"


# --------------------------------------------------------------------------- autocast
@contextlib.contextmanager
def _nullctx():
    yield


def _detach(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach()
    if isinstance(tree, dict):
        return {k: _detach(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_detach(v) for v in tree)
    return tree


def _no_decay(name: str, p: nn.Parameter) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return (
        p.dim() <= 1
        or leaf in ("pos_embed", "cls_token", "reg_token", "dist_token")
        or ("rel_pos" in leaf)
    )


def _seed_of(*parts) -> int:
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:15], 16)


# --------------------------------------------------------------------------- trainer
class Trainer:
    """Trains a supernet with ``task`` on ``train_data`` (see the module doc).

    Args:
        supernet: a :class:`~supernet_kernels.supernet.Supernet` (anything with ``set_active``,
            ``active_config``, ``max_config``, ``min_config``, ``sample_config``).
        task: :class:`ClassificationTask`, :class:`SegmentationTask` or a task of that protocol.
        train_data: a map-style Dataset (or a DataLoader, whose dataset and collate_fn are
            used; the order is always the trainer's seeded one).
        config: :class:`TrainConfig`.
        sampler: ``(step, rng, supernet) -> [config, ...]`` (default SandwichSampler).
        teacher: a module for ``distill="teacher"`` (run under no_grad, in eval mode).
        trainable: ``(name, param) -> bool`` (names as in ``supernet.named_parameters()``, and
            ``task.<module>.<param>`` for task-owned modules); default: ``requires_grad``.
            Parameters not selected are frozen while ``train`` runs.
        optimizer: a torch optimizer over the trained parameters (default AdamW(lr,
            weight_decay)); the schedule scales each group's initial lr.
        eval_data: a Dataset evaluated (max and min config) every ``eval_every`` steps and at
            the end; results in the step records under ``"eval"``.
        device: default ``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU.
    """

    def __init__(
        self,
        supernet,
        task,
        train_data,
        config: TrainConfig,
        *,
        sampler: Callable | None = None,
        teacher: nn.Module | None = None,
        trainable: Callable[[str, nn.Parameter], bool] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        eval_data=None,
        device=None,
    ):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer: config must be a TrainConfig, got {type(config).__name__}")
        for attr in ("set_active", "active_config", "max_config", "min_config", "sample_config"):
            if not hasattr(supernet, attr):
                raise TypeError(f"Trainer: supernet has no {attr}() (expected a Supernet)")
        if config.distill == "teacher" and teacher is None:
            raise ValueError('Trainer: distill="teacher" needs teacher=')
        self.supernet, self.task, self.config = supernet, task, config
        self.env = D.init_from_env(device)
        if device is None:
            device = f"cuda:{self.env.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.sampler = sampler if sampler is not None else SandwichSampler(config.num_random)
        self.teacher = teacher
        self.collate_fn = task.collate
        if isinstance(train_data, DataLoader):
            if train_data.collate_fn is not torch.utils.data.default_collate:
                self.collate_fn = train_data.collate_fn
            train_data = train_data.dataset
        self.train_data, self.eval_data = train_data, eval_data

        task.setup(supernet)  # before validation: it may read e.g. num_classes off the model
        task.validate_dataset(train_data, config.validate_samples, "train_data")
        if eval_data is not None:
            task.validate_dataset(eval_data, config.validate_samples, "eval_data")
        StepBatchSampler(len(train_data), config.batch_size, grad_accum=config.grad_accum,
                         world_size=self.env.world_size)  # fmt: skip  # size check only

        # Supernet.model, not the Supernet: Supernet defines its own _apply(config), which
        # shadows nn.Module._apply that .to() relies on.
        inner = supernet.model if isinstance(getattr(supernet, "model", None), nn.Module) else None
        (inner if inner is not None else supernet).to(self.device)
        task.to(self.device)
        if teacher is not None:
            teacher.to(self.device).eval()
        self.named_params = list(supernet.named_parameters())
        for mname, mod in task.modules().items():
            self.named_params += [(f"task.{mname}.{n}", p) for n, p in mod.named_parameters()]
        select = trainable if trainable is not None else (lambda n, p: p.requires_grad)
        self.trained = [(n, p) for n, p in self.named_params if select(n, p)]
        if not self.trained:
            raise ValueError("Trainer: no parameter is selected for training (trainable)")
        self.params = [p for _, p in self.trained]
        if optimizer is None:
            decay = [p for n, p in self.trained if not _no_decay(n, p)]
            no_decay = [p for n, p in self.trained if _no_decay(n, p)]
            groups = [{"params": decay, "weight_decay": config.weight_decay}]
            groups += [{"params": no_decay, "weight_decay": 0.0}]
            optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)
        self.optimizer = optimizer
        self.scheduler = WarmupCosine(optimizer, config.steps, config.warmup_steps, config.min_lr)

        D.broadcast_module(supernet, self.env)
        for mod in task.modules().values():
            D.broadcast_module(mod, self.env)
        self.rng = random.Random(config.seed)
        self.step = 0
        self.configs: dict[str, dict] = {}

    # ----------------------------------------------------------------- helpers
    def _autocast(self):
        if self.config.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return _nullctx()

    def fingerprint(self) -> dict:
        c = self.config
        space = self.supernet.space if hasattr(self.supernet, "space") else None
        return {
            "model": {
                k: [list(v.shape), str(v.dtype).removeprefix("torch.")]
                for k, v in self.supernet.state_dict().items()
            },
            "space": space,
            "task": self.task.fingerprint(),
            "train": {f: getattr(c, f) for f in TRAJECTORY_FIELDS}
            | {f: getattr(c, f) for f, d in RECIPE_FIELDS.items() if getattr(c, f) != d},
            "world_size": self.env.world_size,
            "dataset_len": len(self.train_data),
            "trainable": [n for n, _ in self.trained],
            "sampler": type(self.sampler).__name__,
        }

    def _check_fingerprint(self, theirs: dict) -> None:
        mine = self.fingerprint()
        tm, mm = theirs.get("model", {}), mine["model"]
        if tm != mm:
            missing = [k for k in mm if k not in tm]
            extra = [k for k in tm if k not in mm]
            shapes = [f"{k}: {tm[k]} vs {mm[k]}" for k in mm if k in tm and tm[k] != mm[k]]
            raise ValueError(
                "checkpoint is from another model: "
                + "; ".join(
                    s
                    for s in (
                        f"missing {missing[:5]}" if missing else "",
                        f"unexpected {extra[:5]}" if extra else "",
                        f"shape/dtype (checkpoint vs model) {shapes[:5]}" if shapes else "",
                    )
                    if s
                )
            )
        diffs = []
        for key in ("space", "task", "world_size", "dataset_len", "trainable", "sampler"):
            if json.dumps(theirs.get(key), sort_keys=True) != json.dumps(mine[key], sort_keys=True):
                diffs.append(key if key != "space" else "space (search space)")
        tt, mt = theirs.get("train", {}), mine["train"]
        diffs += [
            f"{f}={tt.get(f)!r} (this run: {mt.get(f)!r})"
            for f in sorted(set(mt) | set(tt))
            if tt.get(f) != mt.get(f)
        ]
        if diffs:
            raise ValueError(
                "checkpoint was written by another training config and cannot be resumed "
                "exactly: " + ", ".join(diffs)
            )

    def _gather_rng(self) -> list[dict]:
        """Every rank's torch RNG states (rank order)."""
        mine = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            # The current CUDA device's state when training on the CPU ("cuda"; torch 2.11
            # rejects None here).
            mine["cuda"] = torch.cuda.get_rng_state(
                self.device if self.device.type == "cuda" else "cuda"
            )
        if not self.env.enabled:
            return [mine]
        out: list[Any] = [None] * self.env.world_size
        torch.distributed.all_gather_object(out, {k: v.tolist() for k, v in mine.items()})
        return [{k: torch.tensor(v, dtype=torch.uint8) for k, v in d.items()} for d in out]

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything a resume needs: plain tensors and containers only (no pickled objects)."""
        import numpy as np

        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "fingerprint": self.fingerprint(),
            "model": self.supernet.state_dict(),
            "task_modules": {k: m.state_dict() for k, m in self.task.modules().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else None,
            "rng": {
                "sampler": self.rng.getstate(),
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "ranks": self._gather_rng(),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output; ValueError (before changing anything) for a
        state from another model or training config."""
        import numpy as np

        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"Trainer.load_state_dict: not a trainer state ({STATE_FORMAT})")
        self._check_fingerprint(state["fingerprint"])
        self.supernet.load_state_dict(state["model"])
        for k, m in self.task.modules().items():
            m.load_state_dict(state["task_modules"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("sampler") is not None and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state["sampler"])
        rng = state["rng"]
        self.rng.setstate(rng["sampler"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        ranks = rng["ranks"]
        mine = ranks[self.env.rank] if self.env.rank < len(ranks) else ranks[0]
        torch.set_rng_state(mine["torch"])
        if "cuda" in mine and torch.cuda.is_available() and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], self.device)
        self.step = int(state["step"])

    def save_checkpoint(self, path=None) -> Path | None:
        """Write the checkpoint (rank 0; every rank must call it). Returns the file on rank 0."""
        path = path if path is not None else self.config.checkpoint_dir
        if path is None:
            raise ValueError("save_checkpoint: no path and no TrainConfig.checkpoint_dir")
        state = self.state_dict()  # collective (RNG gather)
        out = save_checkpoint(path, state) if self.env.is_main else None
        D.barrier(self.env)
        return out

    def load_checkpoint(self, path) -> None:
        self.load_state_dict(load_checkpoint(path))

    # ----------------------------------------------------------------- data
    def _loader(self, start: int) -> DataLoader:
        c = self.config
        self.batches = StepBatchSampler(
            len(self.train_data), c.batch_size, grad_accum=c.grad_accum,
            world_size=self.env.world_size, rank=self.env.rank, seed=c.seed, start=start,
            steps=c.steps, shuffle=c.shuffle,
        )  # fmt: skip
        return DataLoader(
            self.train_data,
            batch_sampler=self.batches,
            collate_fn=self.collate_fn,
            num_workers=c.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(_seed_of(c.seed, "workers", start)),
        )

    # ----------------------------------------------------------------- logging
    # ----------------------------------------------------------------- training
    def train(
        self, resume: bool | str | os.PathLike = False, *, until: int | None = None
    ) -> list[dict]:
        """Train up to ``config.steps``; returns the records of the steps run by this call.
        ``resume``: True continues from ``checkpoint_dir``'s checkpoint when there is one
        (else starts at step 0); a path resumes from that checkpoint (it must exist).
        ``until``: stop after that many steps in all (e.g. a time-limited job), writing the
        checkpoint there; a later ``train(resume=True)`` continues exactly."""
        c = self.config
        if resume:
            explicit = not isinstance(resume, bool)
            where = resume if explicit else c.checkpoint_dir
            if where is None:
                raise ValueError("train(resume=True) needs TrainConfig.checkpoint_dir")
            file = checkpoint_path(where)
            if file.is_file():
                self.load_checkpoint(file)
            elif explicit:
                raise FileNotFoundError(f"train(resume=...): no checkpoint at {file}")
        start = self.step
        stop = c.steps if until is None else min(c.steps, until)
        if start >= stop:
            return []
        was_training = self.supernet.training
        old_cfg = self.supernet.active_config()
        frozen = []
        chosen = {id(p) for p in self.params}
        for _, p in self.named_params:
            if id(p) not in chosen and p.requires_grad:
                p.requires_grad_(False)
                frozen.append(p)
        records: list[dict] = []
        logs = TrainLogs(c, start) if self.env.is_main else None
        try:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=stop,
                initial=start,
                desc="train",
                disable=not (c.progress and self.env.is_main and sys.stderr.isatty()),
            )
            self.supernet.train()
            for mod in self.task.modules().values():
                mod.train()
            it = iter(self._loader(start))
            for s in range(start, stop):
                rec, configs = self._train_step(s, it)
                self.step = s + 1
                last = s + 1 == stop
                if self.eval_data is not None and (
                    last or (c.eval_every and (s + 1) % c.eval_every == 0)
                ):
                    ev = self.evaluate(
                        self.eval_data, [self.supernet.max_config(), self.supernet.min_config()]
                    )
                    rec["eval"] = [{k: v for k, v in e.items() if k != "config"} for e in ev]
                    self.supernet.train()
                records.append(rec)
                if logs is not None:
                    logs.write(rec, configs)
                bar.update(1)
                bar.set_postfix(
                    loss=" ".join(f"{v:.3g}" for v in rec["loss"]), lr=f"{rec['lr']:.2e}"
                )
                if c.checkpoint_dir and (
                    last or (c.checkpoint_every and (s + 1) % c.checkpoint_every == 0)
                ):
                    self.save_checkpoint()
            bar.close()
        finally:
            if logs is not None:
                logs.close()
            for p in frozen:
                p.requires_grad_(True)
            self.supernet.train(was_training)
            self.supernet.set_active(old_cfg)
        return records

    def _train_step(self, s: int, it) -> tuple[dict, list[dict]]:
        c, task, sn = self.config, self.task, self.supernet
        t0 = time.perf_counter()
        configs = self.sampler(s, self.rng, sn)
        if not configs:
            raise ValueError(f"sampler returned no config at step {s}")
        hashes = [config_hash(cfg) for cfg in configs]
        for h, cfg in zip(hashes, configs, strict=True):
            self.configs.setdefault(h, cfg)
        D.check_same_int(_seed_of(*hashes), self.env, f"the configs of step {s}", self._coll_dev())
        lr = self.optimizer.param_groups[0]["lr"]
        for p in self.params:
            p.grad = None
        n = len(configs)
        sums = torch.zeros(2, n, dtype=torch.float64, device=self.device)
        use_kd = c.distill != "none" and c.distill_weight > 0
        for a in range(c.grad_accum):
            batch = next(it)
            gen = torch.Generator().manual_seed(_seed_of(c.seed, s, a, self.env.rank))
            batch = task.to_device(task.prepare(batch, gen), self.device)
            ref = None
            if use_kd and c.distill == "teacher":
                with torch.no_grad(), self._autocast():
                    ref = _detach(task.forward(self.teacher, batch))
            for i, cfg in enumerate(configs):
                sn.set_active(cfg)
                with self._autocast():
                    out = task.forward(sn, batch)
                    loss = task.loss(out, batch)
                    kd = None
                    if use_kd and ref is not None:
                        kd = task.distill_loss(out, ref, c.temperature)
                total = loss * c.label_weight if c.label_weight != 1.0 else loss
                if kd is not None:
                    total = total + c.distill_weight * kd
                if c.label_weight == 0 and kd is None:
                    raise ValueError(
                        "TrainConfig.label_weight 0 needs distillation (distill and a teacher "
                        "or a largest subnet)"
                    )
                if not torch.isfinite(total.detach()):
                    raise FloatingPointError(
                        f"step {s}: the loss of config {hashes[i]} (position {i}) is {total.item()}"
                    )
                (total / c.grad_accum).backward()
                if c.step_per_subnet and a == c.grad_accum - 1:
                    self._optimizer_step()
                sums[0, i] += loss.detach().double() / c.grad_accum
                if kd is not None:
                    sums[1, i] += kd.detach().double() / c.grad_accum
                if use_kd and c.distill == "largest" and i == 0:
                    ref = _detach(out)
                del out, loss, kd, total
        grad_norm = self._last_grad_norm if c.step_per_subnet else self._optimizer_step()
        self.scheduler.step()
        D.all_reduce_sum(sums, self.env)
        sums /= self.env.world_size
        task_l, kd_l = sums.tolist()
        rec = {
            "step": s,
            "epoch": s // self.batches.steps_per_epoch,
            "lr": lr,
            "loss": [
                c.label_weight * t + c.distill_weight * k for t, k in zip(task_l, kd_l, strict=True)
            ],
            "task_loss": task_l,
            "distill_loss": kd_l,
            "configs": hashes,
            "grad_norm": grad_norm,
            "time": time.perf_counter() - t0,
        }
        return rec, configs

    def _optimizer_step(self) -> float | None:
        """All-reduce, clip and apply the gradients, then clear them; the grad norm."""
        D.all_reduce_grads(self.params, self.env)
        grad_norm = None
        if self.config.clip_grad is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_grad))
        self.optimizer.step()
        if self.config.step_per_subnet:
            for p in self.params:
                p.grad = None
        self._last_grad_norm = grad_norm
        return grad_norm

    def _coll_dev(self):
        """The device for collective tensors: CUDA under nccl."""
        if self.env.enabled and torch.distributed.get_backend() == "nccl":
            return self.device
        return None

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, data, configs: list[dict]) -> list[dict]:
        """The task metric of each config on ``data`` (a Dataset; split over the ranks and
        summed, so the result is the metric on the whole set):
        ``[{"config", "config_hash", "metric", "metric_name", "count"}, ...]``."""
        sn, task = self.supernet, self.task
        was, old = sn.training, sn.active_config()
        n = len(data)
        part = (
            Subset(data, range(self.env.rank, n, self.env.world_size)) if self.env.enabled else data
        )
        loader = DataLoader(
            part,
            batch_size=self.config.batch_size,
            collate_fn=task.collate,
            generator=torch.Generator(),  # leaves the global torch RNG alone
        )
        out = []
        sn.eval()
        try:
            for cfg in configs:
                sn.set_active(cfg)
                with self._autocast():
                    num, den = task.metric_sums(sn, loader)
                t = torch.tensor([num, den], dtype=torch.float64, device=self._coll_dev())
                num, den = D.all_reduce_sum(t, self.env).tolist()
                out.append({
                    "config": cfg,
                    "config_hash": config_hash(cfg),
                    "metric": num / den if den else float("nan"),
                    "metric_name": task.metric_name,
                    "count": den,
                })  # fmt: skip
        finally:
            sn.train(was)
            sn.set_active(old)
        return out
