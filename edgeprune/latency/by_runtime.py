"""Latency tables for runtimes other than onnxruntime: the runtime makes and times each convolution."""
from __future__ import annotations

from typing import Any, Callable

from edgeprune.latency.measure import TABLE_FORMAT, TINY_LAYER, machine_info, point_key
from edgeprune.runtimes import get_runtime


def measure_with_runtime(spec: dict[str, Any], runtime: str, runs: int = 10, min_time: float = 0.02,
                         progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The table (format :data:`TABLE_FORMAT`) of ``spec``'s points, timed by ``runtime`` on this
    machine; like :func:`~edgeprune.latency.measure.measure_spec` but without whole models."""
    chosen = get_runtime(runtime)
    settings = spec["settings"]
    threads = settings["threads"]
    total = sum(len(layer["points"]) for layer in spec["layers"])
    done = 0

    def one_done() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    overhead = chosen.conv_times(TINY_LAYER, [(1, 1)], threads, runs * 5, min_time)[0]
    entries = {}
    for layer in spec["layers"]:
        points = [tuple(p) for p in layer["points"]]
        times = chosen.conv_times(layer, points, threads, runs, min_time, one_done)
        entries[layer["key"]] = {point_key(*p): ms for p, ms in zip(points, times)}
    return {"format": TABLE_FORMAT, "machine": machine_info(), "settings": settings, "overhead_ms": overhead,
            "runs": runs, "min_time": min_time, "entries": entries, "models": {}}
