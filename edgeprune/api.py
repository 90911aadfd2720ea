"""The Python API: each pipeline stage as one call. The CLI is a thin layer over these, and the
package root offers them as ``edgeprune.load``, ``edgeprune.prune`` and ``edgeprune.compress``.

Pruning itself lives in :mod:`edgeprune.pruning` (recipes build on it), the compress pipeline in
:mod:`edgeprune.pipeline`; this module is the one place users import both from.

(:mod:`edgeprune.pruning` shows ``prune`` at work.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeprune import pipeline
from edgeprune.pipeline.options import CompressOptions
from edgeprune.progress import Progress
from edgeprune.pruning import (IterativeResult, Planner, PruneResult, criterion_data, prune, prune_iteratively,
                               resolve_model)

__all__ = ["IterativeResult", "Planner", "PruneResult", "compress", "criterion_data", "prune", "prune_iteratively",
           "resolve_model"]


def compress(model: str | None = None, output: str | Path = "edgeprune-out", *, progress: Progress | None = None,
             **options: Any) -> dict[str, Any]:
    """``edgeprune compress MODEL -o OUTPUT``: prune for a target, recover, export, check, quantise,
    measure; returns the report (also written to ``OUTPUT/report.json``). ``options`` are the
    fields of :class:`edgeprune.pipeline.CompressOptions` (``target``, ``flops_cut``, ``calib``...).

    >>> report = compress("resnet20-cifar", "/tmp/ep-doc", target="x86-avx2", runs=5)  # doctest: +SKIP
    """
    return pipeline.compress(model, output, CompressOptions.of(**options), progress)
