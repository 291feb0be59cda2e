"""The learning-rate schedule: linear warm-up, then cosine to a floor."""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """Linear warm-up over ``warmup`` steps, then cosine from each group's base lr to
    ``min_lr`` at ``steps``. ``step()`` after each optimizer step sets the next step's lr."""

    def __init__(self, optimizer: torch.optim.Optimizer, steps: int, warmup: int, min_lr: float):
        self.optimizer, self.steps, self.warmup, self.min_lr = optimizer, steps, warmup, min_lr
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.steps - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup) / span)))

    def _apply(self) -> None:
        f = self.factor(self.last_step)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            lo = min(self.min_lr, base)
            g["lr"] = lo + (base - lo) * f

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self._apply()
