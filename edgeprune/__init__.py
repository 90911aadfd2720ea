"""edgeprune: structured pruning of CNNs for edge deployment.

The package root stays light (no torch import) so that ``edgeprune bench`` and the profiler run on
a board that has only onnxruntime and NumPy: the entry points below are imported on first use.

- ``edgeprune.load(MODEL)``: any MODEL the CLI takes (a zoo name, ``torchvision:NAME``,
  ``FILE.py:factory``, a checkpoint; ``None``: the built-in default) -> model, input shape, preprocessing
- ``edgeprune.prune(MODEL, criterion=..., flops_cut=...)``: ``edgeprune prune``; ``.save(PATH)`` writes the checkpoint
- ``edgeprune.compress(MODEL, OUTPUT, target=..., ...)``: ``edgeprune compress``; returns the report

>>> import edgeprune
>>> edgeprune.load("resnet20-cifar").input_shape
(1, 3, 32, 32)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_ENTRY_POINTS = {  # name -> (module, attribute)
    "load": ("edgeprune.checkpoint", "load_model"),
    "prune": ("edgeprune.api", "prune"),
    "prune_iteratively": ("edgeprune.api", "prune_iteratively"),
    "compress": ("edgeprune.api", "compress"),
    "CompressOptions": ("edgeprune.pipeline", "CompressOptions"),
    "EdgepruneError": ("edgeprune.errors", "EdgepruneError"),
}
__all__ = sorted(_ENTRY_POINTS)


def __getattr__(name: str) -> Any:
    if name not in _ENTRY_POINTS:
        raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")
    module, attribute = _ENTRY_POINTS[name]
    return getattr(importlib.import_module(module), attribute)


def __dir__() -> list[str]:
    return sorted([*globals(), *_ENTRY_POINTS])
