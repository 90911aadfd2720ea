"""The channel multiple a runtime's kernels prefer, read from its own latency table.

A probe table times three typical layers (a 3x3 convolution, a 1x1 convolution, a depthwise 3x3)
at every even output width from 34 to 64 (the 3x3 and 1x1 with 64 input channels). A width is
*worth choosing* when no wider one of the same layer runs as fast (within :data:`TIE`): a runtime
that pads channels to a multiple of ``a``, or falls back to slower kernels off that multiple, makes
only the multiples of ``a`` worth choosing. The preferred alignment is the largest candidate that
divides at least :data:`SHARE` of the widths worth choosing, over the three layers; 1 if none
does. Widths are even, so 2 is the finest step seen.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from edgeprune.latency.measure import SPEC_FORMAT, machine_info
from edgeprune.latency.table import LatencyTable, cache_dir

CANDIDATES = (2, 4, 8, 16)
WIDTHS = tuple(range(34, 65, 2))
SHARE = 2 / 3
TIE = 1.03  # a wider width within 3 % of the time is as fast (timing noise)
_CONV = {"stride": [1, 1], "dilation": [1, 1], "in_hw": [16, 16]}
PROBE_LAYERS = (
    {"key": "probe/conv3x3/in64", "kernel": [3, 3], "padding": [1, 1, 1, 1], "depthwise": False, **_CONV, "cin": 64},
    {"key": "probe/conv1x1/in64", "kernel": [1, 1], "padding": [0, 0, 0, 0], "depthwise": False, **_CONV, "cin": 64},
    {"key": "probe/dw3x3", "kernel": [3, 3], "padding": [1, 1, 1, 1], "depthwise": True, **_CONV, "cin": None},
)


@dataclass(frozen=True)
class Alignment:
    """The preferred multiple, the widths worth choosing per probe layer, and each candidate's share of them."""

    runtime: str
    preferred: int
    worth: dict[str, list[int]]
    share: dict[int, float]
    table: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "preferred": self.preferred, "worth_choosing": self.worth,
                "share": {str(a): round(s, 3) for a, s in self.share.items()}, "table": self.table}


def probe_spec(settings: dict[str, Any]) -> dict[str, Any]:
    layers = []
    for layer in PROBE_LAYERS:
        points = [[w, w] if layer["depthwise"] else [layer["cin"], w] for w in WIDTHS]
        layers.append({k: v for k, v in layer.items() if k != "cin"} | {"points": points})
    return {"format": SPEC_FORMAT, "settings": settings, "layers": layers, "models": []}


def probe_table(settings: dict[str, Any], progress: Callable[[int, int], None] | None = None) -> LatencyTable:
    """The probe layers timed with ``settings`` (see :func:`~edgeprune.latency.table.settings_of`), cached."""
    from edgeprune.latency.by_runtime import measure_with_runtime
    from edgeprune.latency.measure import measure_spec

    identity = json.dumps({"machine": machine_info(), "settings": settings, "widths": WIDTHS}, sort_keys=True)
    path = cache_dir() / f"alignment-{settings.get('runtime', 'onnxruntime')}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}.json"
    if path.exists():
        return LatencyTable.load(path)
    spec = probe_spec(settings)
    runtime = settings.get("runtime", "onnxruntime")
    measured = (measure_spec(spec, runs=20, min_time=0.05, progress=progress) if runtime == "onnxruntime" else
                measure_with_runtime(spec, runtime, runs=20, min_time=0.05, progress=progress))
    table = LatencyTable(measured)
    table.save(path)
    return table


def preferred_alignment(table: LatencyTable) -> Alignment:
    """Read the preferred multiple from a probe table (see the module docstring)."""
    worth = {}
    for layer in PROBE_LAYERS:
        row = table.data["entries"][layer["key"]]
        ms = [row[_key(layer, w)] for w in WIDTHS]
        worth[layer["key"]] = [w for i, w in enumerate(WIDTHS) if not any(t <= ms[i] * TIE for t in ms[i + 1:])]
    chosen = [w for widths in worth.values() for w in widths]
    share = {a: sum(w % a == 0 for w in chosen) / len(chosen) for a in CANDIDATES}
    preferred = max((a for a in CANDIDATES if share[a] >= SHARE), default=1)
    return Alignment(table.runtime, preferred, worth, share, str(table.path) if table.path else None)


def _key(layer: dict[str, Any], w: int) -> str:
    return f"{w},{w}" if layer["depthwise"] else f"{layer['cin']},{w}"
