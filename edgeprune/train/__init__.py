"""Fine-tuning and evaluation, on one process or data-parallel under torchrun.

>>> from edgeprune.train import FinetuneConfig
>>> FinetuneConfig(epochs=3).lr
0.01
"""
from edgeprune.train.distributed import DistContext, is_main_process, launched_distributed, resolve_device
from edgeprune.train.batchnorm import recalibrate_batchnorm
from edgeprune.train.loop import EpochRecord, FinetuneConfig, FinetuneResult, evaluate, finetune
from edgeprune.train.objectives import CrossEntropy, DetectionObjective, DistillConfig, Distillation

__all__ = [
    "CrossEntropy",
    "DetectionObjective",
    "DistillConfig",
    "Distillation",
    "DistContext",
    "EpochRecord",
    "FinetuneConfig",
    "FinetuneResult",
    "evaluate",
    "finetune",
    "is_main_process",
    "launched_distributed",
    "recalibrate_batchnorm",
    "resolve_device",
]
