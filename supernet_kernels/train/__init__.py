"""Supernet training: sandwich rule with in-place distillation, tasks (classification, SAM
segmentation), users' data, exact-resume checkpoints, several processes (torchrun).

    from supernet_kernels.train import Trainer, TrainConfig, ClassificationTask
    trainer = Trainer(supernet, ClassificationTask(), dataset, TrainConfig(steps=1000))
    records = trainer.train()
    trainer.evaluate(val_set, [supernet.max_config(), supernet.min_config()])

See :mod:`.trainer` (the step, logs, checkpoints), :mod:`.tasks` (the task protocol),
:mod:`.data` (the data format: ``data_format()``), :mod:`.checkpoint`, :mod:`.distributed`.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .data import ImageFolderDataset, SegmentationFolder, StepBatchSampler, data_format
from .tasks import ClassificationTask, SegmentationTask, Task
from .trainer import (
    SandwichSampler,
    TrainConfig,
    Trainer,
    WarmupCosine,
    add_lora,
    config_hash,
    lora_only,
)

__all__ = [
    "ClassificationTask",
    "ImageFolderDataset",
    "SandwichSampler",
    "SegmentationFolder",
    "SegmentationTask",
    "StepBatchSampler",
    "Task",
    "TrainConfig",
    "Trainer",
    "WarmupCosine",
    "add_lora",
    "config_hash",
    "data_format",
    "load_checkpoint",
    "lora_only",
    "save_checkpoint",
]
