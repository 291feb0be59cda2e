"""The default training sampler: the sandwich rule."""

from __future__ import annotations

import random


class SandwichSampler:
    """The sandwich rule: ``[max_config, min_config] + num_random`` configs drawn with
    ``supernet.sample_config(rng)``. The first config is the distillation source for
    ``distill="largest"``."""

    def __init__(self, num_random: int = 1):
        if not isinstance(num_random, int) or num_random < 0:
            raise ValueError(f"SandwichSampler: num_random must be an int >= 0, got {num_random!r}")
        self.num_random = num_random

    def __call__(self, step: int, rng: random.Random, supernet) -> list[dict]:
        out = [supernet.max_config(), supernet.min_config()]
        return out + [supernet.sample_config(rng) for _ in range(self.num_random)]

    def state_dict(self) -> dict:
        return {"num_random": self.num_random}

    def load_state_dict(self, state: dict) -> None:
        self.num_random = int(state["num_random"])
