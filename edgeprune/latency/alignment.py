"""The channel multiple a runtime's kernels prefer, read from its own latency table.

A probe table times three typical layers (a 3x3 convolution, a 1x1 convolution, a depthwise 3x3)
at every even width from 34 to 64, input and output alike (pruning narrows both: a layer's input
is the previous layer's output, and some runtimes pack input channels too). For each width the
throughput is MACs per millisecond (the per-run overhead taken out), relative to a straight line
fitted through all widths' throughputs (wider layers run more efficiently anyway; the line takes
that trend out). A candidate multiple ``a`` scores the mean relative throughput of the widths it
allows (multiples of ``a``), over the three layers: kernels that pad channels to a multiple, or
fall back to slower code off it, make those widths the efficient ones. The preferred alignment is
the smallest candidate within :data:`TIE` of the best score (a finer step keeps more freedom for
accuracy). Widths are even, so 2 (which allows every width, score 1) is the finest step seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.latency.measure import SPEC_FORMAT
from edgeprune.latency.table import LatencyTable, cached_table_path, measure_here

CANDIDATES = (2, 4, 8, 16)
WIDTHS = tuple(range(34, 65, 2))
TIE = 0.03  # scores within 3 % are alike (timing noise)
RUNS, MIN_TIME = 50, 0.1  # per probe point: more than a table's, since few widths decide
_CONV = {"stride": [1, 1], "dilation": [1, 1], "in_hw": [16, 16]}
PROBE_LAYERS = (
    {"key": "probe/conv3x3", "kernel": [3, 3], "padding": [1, 1, 1, 1], "depthwise": False, **_CONV},
    {"key": "probe/conv1x1", "kernel": [1, 1], "padding": [0, 0, 0, 0], "depthwise": False, **_CONV},
    {"key": "probe/dw3x3", "kernel": [3, 3], "padding": [1, 1, 1, 1], "depthwise": True, **_CONV},
)


@dataclass(frozen=True)
class Alignment:
    """The preferred multiple, and each candidate's score (relative throughput of the widths it allows)."""

    runtime: str
    preferred: int
    score: dict[int, float]
    table: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "preferred": self.preferred,
                "score": {str(a): round(s, 3) for a, s in self.score.items()}, "table": self.table}


def probe_spec(settings: dict[str, Any]) -> dict[str, Any]:
    layers = []
    for layer in PROBE_LAYERS:
        layers.append({**layer, "points": [[w, w] for w in WIDTHS]})
    return {"format": SPEC_FORMAT, "settings": settings, "layers": layers, "models": []}


def probe_table(settings: dict[str, Any], progress: Callable[[int, int], None] | None = None) -> LatencyTable:
    """The probe layers timed with ``settings`` (see :func:`~edgeprune.latency.table.settings_of`), cached."""
    probe = {"widths": WIDTHS, "layers": PROBE_LAYERS, "runs": [RUNS, MIN_TIME]}
    path = cached_table_path("alignment", {**settings, "probe": probe})
    if path.exists():
        try:
            cached = LatencyTable.load(path)
            if all(layer["key"] in cached.data["entries"] for layer in PROBE_LAYERS):
                return cached
        except EdgepruneError:
            pass  # a damaged cache is measured again
    table = LatencyTable(measure_here(probe_spec(settings), RUNS, MIN_TIME, progress))
    table.save(path)
    return table


def preferred_alignment(table: LatencyTable) -> Alignment:
    """Read the preferred multiple from a probe table (see the module docstring)."""
    relative = []
    for layer in PROBE_LAYERS:
        row = table.data["entries"][layer["key"]]
        macs = {w: w if layer["depthwise"] else w * w for w in WIDTHS}  # per pixel and kernel tap: enough to compare
        speed = {w: macs[w] / max(row[f"{w},{w}"] - table.overhead_ms, 1e-9) for w in WIDTHS}
        slope, intercept = np.polyfit(WIDTHS, [speed[w] for w in WIDTHS], 1)
        relative.append({w: v / (slope * w + intercept) for w, v in speed.items()})
    score = {a: sum(r[w] for r in relative for w in WIDTHS if w % a == 0) / sum(w % a == 0 for w in WIDTHS) / len(relative)
             for a in CANDIDATES}
    best = max(score.values())
    preferred = min(a for a in CANDIDATES if score[a] >= best * (1 - TIE))
    return Alignment(table.runtime, preferred, {a: float(s) for a, s in score.items()}, str(table.path) if table.path else None)
