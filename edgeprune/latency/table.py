"""Latency tables: measured milliseconds of single convolutions over a grid of channel counts.

A table belongs to one target, one runtime and one machine (its CPU, core count and the runtime's
version): onnxruntime's by default, or another runtime's (:mod:`edgeprune.runtimes`), whose
single convolutions that runtime itself makes and times. It is cached on disk (``$EDGEPRUNE_CACHE`` or ``~/.cache/edgeprune``) and grows as models need new
layer shapes. Between grid points a layer's latency is interpolated (bilinearly in its input and
output widths); at grid points it is the measurement itself, so channel counts the kernels
dislike show up as what they cost.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgeprune.errors import EdgepruneError
from edgeprune.latency.by_runtime import measure_with_runtime
from edgeprune.latency.measure import (SPEC_FORMAT, TABLE_FORMAT, machine_info, measure_spec, point_key,
                                       write_json_atomic)
from edgeprune.runtimes import get_runtime

AXIS_POINTS = 16  # grid points per channel axis, at most


def axis(n: int, points: int = AXIS_POINTS) -> list[int]:
    """The channel counts a layer of width ``n`` is measured at: multiples of 4 (of a larger
    multiple of 4 for wide layers, so at most ``points``), and ``n``.

    >>> axis(16), axis(3)
    ([4, 8, 12, 16], [3])
    >>> len(axis(960)), axis(960)[:3]
    (16, [60, 120, 180])
    >>> axis(64, points=6)
    [12, 24, 36, 48, 60, 64]
    """
    step = 4 * math.ceil(n / (4 * points))
    return sorted({*range(step, n, step), n})


@dataclass(frozen=True)
class ConvShape:
    """The geometry of one convolution: what its latency depends on besides its widths."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    in_hw: tuple[int, int]
    in_channels: int
    out_channels: int
    depthwise: bool

    @property
    def key(self) -> str:
        """A name for the table: geometry and full widths (which fix the grid).

        >>> ConvShape((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (32, 32), 16, 16, False).key
        'conv3x3/s1x1/p1,1,1,1/d1x1/in32x32/16-16'
        """
        kind = "dw" if self.depthwise else "conv"
        return (f"{kind}{self.kernel[0]}x{self.kernel[1]}/s{self.stride[0]}x{self.stride[1]}/"
                f"p{','.join(map(str, self.padding))}/d{self.dilation[0]}x{self.dilation[1]}/"
                f"in{self.in_hw[0]}x{self.in_hw[1]}/{self.in_channels}-{self.out_channels}")

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple((self.in_hw[a] + self.padding[a] + self.padding[a + 2] - self.dilation[a] * (self.kernel[a] - 1) - 1)
                     // self.stride[a] + 1 for a in (0, 1))

    def points(self, per_axis: int = AXIS_POINTS) -> list[tuple[int, int]]:
        if self.depthwise:
            return [(c, c) for c in axis(self.out_channels, per_axis)]
        return [(i, o) for i in axis(self.in_channels, per_axis) for o in axis(self.out_channels, per_axis)]

    def spec(self, points: list[tuple[int, int]]) -> dict[str, Any]:
        return {"key": self.key, "kernel": list(self.kernel), "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "in_hw": list(self.in_hw), "depthwise": self.depthwise,
                "points": [list(p) for p in points]}


def settings_of(target: Any, threads: int | None = None, host: bool = True,
                runtime: str = "onnxruntime") -> dict[str, Any]:
    """The settings a table is measured with: the target's, with its threads capped by this host's
    cores (``host``) or as the target gives them (for the board itself). For onnxruntime, its
    session settings; for another runtime, its name, version, threads and grid."""
    if threads is None:
        threads = (target.host_threads() if host else target.threads) or 1
    if runtime != "onnxruntime":
        chosen = get_runtime(runtime)
        chosen.require()
        return {"runtime": runtime, "version": chosen.version(), "threads": threads,
                "axis_points": chosen.table_axis_points}
    return {"threads": threads, "inter_op_threads": target.inter_op_threads,
            "graph_optimization": target.graph_optimization, "memory_arena": target.memory_arena}


class LatencyTable:
    """Milliseconds per layer shape and (input, output) width; see the module docstring."""

    def __init__(self, data: dict[str, Any], path: Path | None = None) -> None:
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise EdgepruneError(f"{path or 'table'} is not an edgeprune latency table (format {TABLE_FORMAT})")
        self.data = data
        self.path = path
        self._grids: dict[str, tuple[list[int], list[int], dict[tuple[int, int], float]]] = {}

    @classmethod
    def empty(cls, settings: dict[str, Any]) -> LatencyTable:
        return cls({"format": TABLE_FORMAT, "machine": machine_info(), "settings": settings, "overhead_ms": None,
                    "entries": {}})

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise EdgepruneError(f"cannot read latency table {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise EdgepruneError(f"latency table {path} is not valid JSON: {exc}") from None
        return cls(data, path)

    def save(self, path: str | Path | None = None) -> Path:
        path = Path(path or self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.data, str(path))
        self.path = path
        return path

    @property
    def runtime(self) -> str:
        return self.data.get("settings", {}).get("runtime", "onnxruntime")

    @property
    def axis_points(self) -> int:
        """Grid points per channel axis (fewer for runtimes whose files are slow to make)."""
        return self.data["settings"].get("axis_points", AXIS_POINTS)

    @property
    def overhead_ms(self) -> float:
        return self.data.get("overhead_ms") or 0.0

    def missing(self, shapes: list[ConvShape]) -> list[dict[str, Any]]:
        """Spec layers for the grid points of ``shapes`` that the table lacks."""
        layers, seen = [], set()
        for shape in shapes:
            if shape.key in seen:
                continue
            seen.add(shape.key)
            have = self.data["entries"].get(shape.key, {})
            points = [p for p in shape.points(self.axis_points) if point_key(*p) not in have]
            if points:
                layers.append(shape.spec(points))
        return layers

    def spec(self, shapes: list[ConvShape], models: dict[str, str] | None = None) -> dict[str, Any]:
        """What a board must measure to complete this table for ``shapes``, and the whole
        ``models`` (key -> ONNX file beside the spec) whose times the plan starts from."""
        return {"format": SPEC_FORMAT, "settings": self.data["settings"], "layers": self.missing(shapes),
                "models": [{"key": key, "file": file} for key, file in (models or {}).items()]}

    def model_ms(self, key: str) -> float | None:
        """A whole model's measured time, if the table holds it (see :func:`model_key`)."""
        return self.data.get("models", {}).get(key)

    @property
    def measured_here(self) -> bool:
        return self.data.get("machine") == machine_info()

    def merge(self, measured: dict[str, Any]) -> None:
        """Add a measured table (from :func:`~edgeprune.latency.measure.measure_spec`)."""
        other = LatencyTable(measured)
        if other.data["settings"] != self.data["settings"]:
            raise EdgepruneError(f"measured with settings {other.data['settings']}, not this table's {self.data['settings']}")
        for key, row in other.data["entries"].items():
            self.data["entries"].setdefault(key, {}).update(row)
        self.data.setdefault("models", {}).update(other.data.get("models", {}))
        if other.data.get("overhead_ms") is not None:
            self.data["overhead_ms"] = other.data["overhead_ms"]
        self._grids.clear()

    def _grid(self, key: str):
        if key not in self._grids:
            row = self.data["entries"].get(key)
            if not row:
                raise EdgepruneError(f"the latency table has no entry for {key}: run `edgeprune lut build` for this model")
            values = {tuple(int(v) for v in k.split(",")): float(ms) for k, ms in row.items()}
            self._grids[key] = (sorted({p[0] for p in values}), sorted({p[1] for p in values}), values)
        return self._grids[key]

    def ms(self, shape: ConvShape, cin: int, cout: int) -> float:
        """The kernel time of ``shape`` at widths (``cin``, ``cout``), less the per-run overhead."""
        ins, outs, values = self._grid(shape.key)
        if shape.depthwise:
            diagonal = [c for c in outs if (c, c) in values]
            value = _interpolate(diagonal, lambda c: values[(c, c)], cout)
        else:
            value = _interpolate(outs, lambda o: _interpolate(ins, lambda i: values[(i, o)], cin), cout)
        return max(value - self.overhead_ms, 0.0)


def _interpolate(xs: list[int], f, x: float) -> float:
    """Piecewise-linear ``f`` through ``xs`` at ``x`` (from 0 at width 0 below the first point)."""
    if x <= 0:
        return 0.0
    i = bisect_left(xs, x)
    if i < len(xs) and xs[i] == x:
        return f(x)
    if i == 0:
        return f(xs[0]) * x / xs[0]
    if i == len(xs):
        return f(xs[-1]) * x / xs[-1]
    lo, hi = xs[i - 1], xs[i]
    return f(lo) + (f(hi) - f(lo)) * (x - lo) / (hi - lo)


def model_key(name: str, input_shape: tuple[int, ...]) -> str:
    """How a table names a whole model: its spec and input shape.

    >>> model_key("resnet20-cifar", (1, 3, 32, 32))
    'resnet20-cifar 1x3x32x32'
    """
    return f"{name} {'x'.join(map(str, input_shape))}"


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEPRUNE_CACHE") or Path.home() / ".cache" / "edgeprune") / "lut"


def cached_table_path(target_name: str, settings: dict[str, Any]) -> Path:
    """One file per target, runtime, machine and settings."""
    identity = json.dumps({"machine": machine_info(), "settings": settings}, sort_keys=True)
    runtime = f"-{settings['runtime']}" if "runtime" in settings else ""
    return cache_dir() / f"{target_name}{runtime}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}.json"


def open_table(target_name: str, settings: dict[str, Any], path: str | Path | None = None,
               board_settings: dict[str, Any] | None = None) -> LatencyTable:
    """The table at ``path`` (a user's, maybe measured on a board with ``board_settings``), else
    this machine's cached one."""
    if path is not None:
        table = LatencyTable.load(path)
        wanted = settings.get("runtime", "onnxruntime")
        if table.runtime != wanted:
            raise EdgepruneError(f"latency table {path} was measured in {table.runtime}, but the plan is for {wanted} "
                                 f"(build one with `edgeprune lut build --runtime {wanted}`)")
        if table.data.get("settings") not in (settings, board_settings):
            raise EdgepruneError(f"latency table {path} was measured with {table.data.get('settings')}, "
                                 f"but target {target_name} runs with {board_settings or settings}")
        return table
    cached = cached_table_path(target_name, settings)
    if cached.exists():
        try:
            return LatencyTable.load(cached)
        except EdgepruneError:
            pass  # a damaged cache is rebuilt, never trusted
    table = LatencyTable.empty(settings)
    table.path = cached
    return table


def complete(table: LatencyTable, shapes: list[ConvShape], progress: Callable[[int, int], None] | None = None) -> int:
    """Measure, on this machine, the grid points of ``shapes`` that ``table`` lacks, and save it.

    Returns the number of points measured. A table brought from a board is never completed here:
    its missing points are an error that says how to measure them there.
    """
    spec = table.spec(shapes)
    total = sum(len(layer["points"]) for layer in spec["layers"])
    if total == 0:
        return 0
    if not table.measured_here:
        raise EdgepruneError(f"latency table {table.path} was measured on another machine and lacks {total} points "
                             "for this model: write them with `edgeprune lut build --spec-only SPEC` and measure there")
    table.merge(measure_here(spec, progress=progress))
    table.save()
    return total


def measure_here(spec: dict[str, Any], runs: int = 10, min_time: float = 0.02,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The table of ``spec``'s points, timed on this machine by the runtime its settings name."""
    runtime = spec["settings"].get("runtime", "onnxruntime")
    if runtime == "onnxruntime":
        return measure_spec(spec, runs, min_time, progress)

    return measure_with_runtime(spec, runtime, runs, min_time, progress)
