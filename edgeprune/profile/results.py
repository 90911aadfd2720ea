"""Benchmark results: dataclasses, JSON round trip and the side-by-side table. Computes nothing
beyond ratios."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.errors import EdgepruneError
from edgeprune.profile.estimate import SpeedupEstimate

JSON_FORMAT = "edgeprune.profile/1"


@dataclass
class RunSettings:
    """How a model was run: onnxruntime session settings and the measuring rules."""

    intra_threads: int
    inter_threads: int
    graph_optimization: str
    memory_arena: bool
    execution_mode: str
    onnxruntime_version: str
    provider: str
    input_shapes: dict[str, list[int]]
    seed: int
    warmup: int
    min_runs: int
    min_time: float


@dataclass
class ModelProfile:
    """One model's measurements. Times in ms; memory is the peak RSS above the worker's RSS
    just before the session was created; ``size_bytes`` includes external data files.

    >>> p = example_profile()
    >>> p.p50_ms <= p.p90_ms <= p.p99_ms
    True
    """

    path: str
    size_bytes: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    runs: int
    first_run_ms: float
    session_ms: float
    peak_memory_bytes: int
    baseline_rss_bytes: int
    memory_method: str
    settings: RunSettings
    warmup_ms: list[float] = field(default_factory=list)
    times_ms: list[float] = field(default_factory=list)
    external_data: list[str] = field(default_factory=list)
    cpu_p50_ms: float | None = None  # the median run's CPU time of the worker (all its threads)


def example_profile(path: str = "model.onnx", p50: float = 2.0, size: int = 1 << 20) -> ModelProfile:
    """A made-up profile for docs and tests of the formatting code.

    >>> example_profile(p50=4.0).p50_ms
    4.0
    """
    settings = RunSettings(1, 1, "all", True, "sequential", "1.0", "CPUExecutionProvider",
                           {"x": [1, 3, 32, 32]}, 0, 1, 3, 0.0)
    return ModelProfile(path, size, p50, p50 * 1.1, p50 * 1.2, p50, 0.1, p50 * 0.9, 3, p50 * 3,
                        10.0, size * 2, 50 << 20, "VmHWM (reset)", settings, [p50], [p50] * 3)


def to_json(profiles: list[ModelProfile], estimates: list[SpeedupEstimate | None] | None = None) -> str:
    """Profiles as a JSON document (see :func:`from_json`), with ``speedups``: each estimate (of
    the profile at the same place, against the first of its comparison) and its interval.

    >>> from_json(to_json([example_profile()])) == [example_profile()]
    True
    >>> json.loads(to_json([example_profile()], [SpeedupEstimate(1.5, 1.4, 1.6, 3)]))["speedups"][0]["ci_low"]
    1.4
    """
    speedups = [{"path": p.path, **e.fields()} for p, e in zip(profiles, estimates or []) if e is not None]
    return json.dumps({"format": JSON_FORMAT, "profiles": [dataclasses.asdict(p) for p in profiles],
                       "speedups": speedups}, indent=2)


def from_json(text: str) -> list[ModelProfile]:
    """Profiles back from :func:`to_json`'s output.

    >>> from_json(to_json([]))
    []
    """
    return [
        ModelProfile(**{**item, "settings": RunSettings(**item["settings"])})
        for item in json.loads(text)["profiles"]
    ]


def save_json(profiles: list[ModelProfile], path: str | Path, estimates: list[SpeedupEstimate | None] | None = None) -> None:
    """Write :func:`to_json` to ``path`` atomically (a temporary file, then a rename).

    >>> import tempfile, os; out = os.path.join(tempfile.mkdtemp(), "r.json")
    >>> save_json([example_profile()], out); len(from_json(open(out).read()))
    1
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(to_json(profiles, estimates) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise EdgepruneError(f"cannot write results to {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 1000 else f"{value:.0f}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "n/a"


def _shape_text(settings: RunSettings) -> str:
    return ", ".join(f"{name}={'x'.join(map(str, shape))}" for name, shape in settings.input_shapes.items())


def _speedup(p: ModelProfile, base: ModelProfile, estimate: SpeedupEstimate | None) -> str:
    if estimate is None:
        return _ratio(base.p50_ms, p.p50_ms)
    return f"{estimate.speedup:.2f}x [{estimate.ci_low:.2f}-{estimate.ci_high:.2f}]"


def _row(p: ModelProfile, base: ModelProfile, estimate: SpeedupEstimate | None = None) -> list[str]:
    return [
        p.path, _ms(p.p50_ms), _ms(p.p90_ms), _ms(p.p99_ms), f"{_ms(p.mean_ms)} ± {_ms(p.std_ms)}", str(p.runs),
        _ms(p.first_run_ms), _ms(p.session_ms), _size(p.peak_memory_bytes), _size(p.size_bytes),
        _speedup(p, base, estimate), _ratio(p.peak_memory_bytes, base.peak_memory_bytes),
        _ratio(p.size_bytes, base.size_bytes), _shape_text(p.settings),
    ]


_HEADER = ["model", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms", "runs", "first ms", "session ms",
           "peak mem", "size", "speedup", "mem ratio", "size ratio", "input"]


def _settings_line(s: RunSettings) -> str:
    if not s.provider.endswith("ExecutionProvider"):  # another runtime (edgeprune.runtimes): its own settings
        return f"{s.provider} {s.onnxruntime_version}, threads {s.intra_threads}, seed {s.seed}"
    return (f"onnxruntime {s.onnxruntime_version} {s.provider}, intra-op threads {s.intra_threads}, "
            f"inter-op threads {s.inter_threads} ({s.execution_mode}), graph optimisation {s.graph_optimization}, "
            f"memory arena {'on' if s.memory_arena else 'off'}, seed {s.seed}")


def format_table(profiles: list[ModelProfile], estimates: list[SpeedupEstimate | None] | None = None) -> str:
    """A side-by-side table; speedup = first model's p50 / this p50, or with ``estimates`` (one
    per profile, None for the first) the estimate and its 95 % interval; memory and size ratios =
    this / first.

    >>> text = format_table([example_profile("a.onnx"), example_profile("b.onnx", p50=1.0, size=1 << 19)])
    >>> "2.00x" in text and "0.50x" in text
    True
    >>> "1.98x [1.90-2.05]" in format_table([example_profile(), example_profile(p50=1.0)],
    ...                                     [None, SpeedupEstimate(1.98, 1.90, 2.05, 4)])
    True
    """
    if not profiles:
        return "no models"
    estimates = list(estimates or [None] * len(profiles))
    rows = [_HEADER] + [_row(p, profiles[0], e) for p, e in zip(profiles, estimates)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 13) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    notes = sorted({_settings_line(p.settings) for p in profiles})
    lines += ["", f"ratios against {profiles[0].path}; peak mem = peak RSS above the worker's baseline"]
    rounds = max((e.rounds for e in estimates if e is not None), default=0)
    if rounds:
        lines.append(f"speedup: the geometric mean of {rounds} side-by-side rounds' ratios (fresh processes each), "
                     "its 95 % interval in brackets")
    lines += [f"settings: {note}" for note in notes]
    return "\n".join(lines)
