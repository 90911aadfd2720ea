"""Latency-aware pruning: measured per-layer latency tables and plans that meet a latency budget.

- :mod:`~edgeprune.latency.measure`: the torch-free measuring part (runs alone on a board);
- :mod:`~edgeprune.latency.table`: the table, its grid, its on-disk cache;
- :mod:`~edgeprune.latency.convolutions`: a traced model's convolutions and the groups behind their widths;
- :mod:`~edgeprune.latency.planner`: the greedy latency-driven plan, confirmed by measurement.

The torch-side names load on first use, so ``edgeprune lut measure`` works without torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from edgeprune.latency.table import ConvShape, LatencyTable, axis, complete, open_table, settings_of

_LAZY = {"LatencyPlanner": "planner", "Budget": "planner", "Predictor": "planner", "conv_shapes": "convolutions",
         "timed_layers": "convolutions", "ModelTimer": "confirm"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"edgeprune.latency.{_LAZY[name]}"), name)
    raise AttributeError(name)


__all__ = ["ConvShape", "LatencyTable", "axis", "complete", "open_table", "settings_of", *_LAZY]
