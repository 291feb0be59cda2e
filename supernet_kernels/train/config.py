"""The training configuration (:class:`TrainConfig`) and which of its fields a checkpoint must
agree with."""

from __future__ import annotations

import dataclasses

# Fields of TrainConfig that change the training trajectory: a checkpoint must agree on them.
TRAJECTORY_FIELDS = (
    "steps", "lr", "weight_decay", "warmup_steps", "min_lr", "batch_size", "grad_accum",
    "clip_grad", "amp", "num_random", "distill", "distill_weight", "temperature", "seed",
    "shuffle",
)  # fmt: skip
# Recipe options, fingerprinted only when not at their default (checkpoints written before
# they existed still resume).
RECIPE_FIELDS = {"label_weight": 1.0, "step_per_subnet": False}


@dataclasses.dataclass
class TrainConfig:
    steps: int
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 0  # linear warm-up, then cosine to min_lr
    batch_size: int = 32  # per process and micro-batch
    grad_accum: int = 1
    clip_grad: float | None = 1.0
    amp: str | None = None  # "bf16": autocast (CUDA or CPU)
    num_random: int = 1  # sandwich: max + min + num_random sampled subnets per step
    distill: str = "largest"  # "largest", "teacher" or "none"
    distill_weight: float = 1.0
    temperature: float = 1.0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0  # 0: only at the end
    log_every: int = 1
    log_file: str | None = None  # JSON lines
    tensorboard_dir: str | None = None
    progress: bool = True  # tqdm
    seed: int = 0
    num_workers: int = 0
    # additions
    min_lr: float = 0.0  # the cosine schedule's floor
    eval_every: int = 0  # with eval_data: evaluate max / min configs every N steps (0: at the end)
    validate_samples: int | None = 1000  # samples checked by validate_dataset (None: all)
    shuffle: bool = True
    # recipe options
    label_weight: float = 1.0  # weight of the task (label) loss; 0: distillation only (FLORA)
    step_per_subnet: bool = False  # one optimizer step per subnet of the step (SuperSAM)

    def __post_init__(self):
        def bad(name, want):
            raise ValueError(f"TrainConfig.{name}: expected {want}, got {getattr(self, name)!r}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.steps) or self.steps < 1:
            bad("steps", "an int >= 1")
        for f in ("batch_size", "grad_accum", "log_every"):
            if not is_int(getattr(self, f)) or getattr(self, f) < 1:
                bad(f, "an int >= 1")
        for f in ("warmup_steps", "checkpoint_every", "num_random", "num_workers", "eval_every"):
            if not is_int(getattr(self, f)) or getattr(self, f) < 0:
                bad(f, "an int >= 0")
        for f in ("lr", "weight_decay", "distill_weight", "min_lr", "label_weight"):
            v = getattr(self, f)
            if not isinstance(v, int | float) or isinstance(v, bool) or not v >= 0:
                bad(f, "a number >= 0")
        if not isinstance(self.temperature, int | float) or not self.temperature > 0:
            bad("temperature", "a number > 0")
        if self.clip_grad is not None and not (
            isinstance(self.clip_grad, int | float) and self.clip_grad > 0
        ):
            bad("clip_grad", "None or a number > 0")
        if self.amp not in (None, "bf16"):
            bad("amp", 'None or "bf16"')
        if self.step_per_subnet and self.grad_accum != 1:
            bad("step_per_subnet", "False with grad_accum > 1 (one step per subnet and batch)")
        if self.distill not in ("largest", "teacher", "none"):
            bad("distill", '"largest", "teacher" or "none"')
        if self.validate_samples is not None and (
            not is_int(self.validate_samples) or self.validate_samples < 1
        ):
            bad("validate_samples", "None or an int >= 1")
