"""Compare models until the speedup is known: side-by-side rounds, each in fresh worker processes
(the order of the models reversed every other round: A B, B A, ...), until every speedup's 95 %
interval is within +-3 % (or clear of its target), or a time cap is reached.

One round of a half-millisecond model moves by +-20 % on a shared 2-core machine (the face net's
conv1-16 plan: 1.48x to 2.06x over nine rounds), mostly between processes rather than within one,
so rounds in fresh processes, not more runs in the same ones, are what narrow the interval.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeprune.profile.config import BenchConfig
from edgeprune.profile.estimate import MIN_ROUNDS, PRECISION, SpeedupEstimate
from edgeprune.profile.host import busy_cores, crowded_note
from edgeprune.profile.results import ModelProfile
from edgeprune.profile.runner import TimingProgress, profile_models

MAX_SECONDS = 8.0  # default cap of one comparison's rounds (`--max-bench-seconds`)
MAX_ROUNDS = 40
STATISTICS = {  # a model's time in one round
    "p50": lambda p: p.p50_ms,  # the median run's wall time
    "min": lambda p: p.min_ms,  # the fastest run's wall time
    "cpu": lambda p: p.cpu_p50_ms,  # the median run's CPU time of the worker (descheduled time not counted)
}
STATISTIC = "p50"


def measure_rounds(measure_round: Callable[[int], list[float]], decided: Callable[[list[list[float]]], bool], *,
                   max_seconds: float, min_rounds: int = MIN_ROUNDS, max_rounds: int = MAX_ROUNDS,
                   clock: Callable[[], float] = time.monotonic) -> tuple[list[list[float]], bool]:
    """Rounds of ``measure_round(i) -> [ms of each model]`` until ``decided(rounds)`` (after at least
    ``min_rounds``), or ``max_seconds`` (or ``max_rounds``) are spent; returns the rounds and whether
    they were decided."""
    start, rounds = clock(), []
    while True:
        rounds.append(measure_round(len(rounds)))
        if len(rounds) < min_rounds:
            continue
        if decided(rounds):
            return rounds, True
        if clock() - start >= max_seconds or len(rounds) >= max_rounds:
            return rounds, False


def estimates_of(rounds: list[list[float]]) -> list[SpeedupEstimate]:
    """Every model's speedup against the first, from rounds of [ms of each model]."""
    return [SpeedupEstimate.of([r[0] / r[k] for r in rounds]) for k in range(1, len(rounds[0]))]


@dataclass
class Comparison:
    """``profiles``: each model's runs of every round pooled; ``estimates``: each model's speedup
    against the first (None for the first); ``round_ms``: each round's time of every model (the
    statistic compared); ``decided``: False when the cap stopped the rounds before every interval
    was within the precision asked; ``busy_cores``: the host's load just before the rounds
    (None where unknown) and ``load_note`` the line saying so when it crowds the timed threads."""

    profiles: list[ModelProfile]
    estimates: list[SpeedupEstimate | None]
    rounds: list[list[ModelProfile]]
    round_ms: list[list[float]]
    decided: bool
    seconds: float
    busy_cores: float | None = None
    load_note: str | None = None

    def speed_fields(self, index: int) -> dict[str, object]:
        """A model's speedup against the first, for a report: speedup, ci_low, ci_high, rounds, and
        its time in each round (``round_ms``)."""
        estimate = self.estimates[index] or SpeedupEstimate(1.0, 1.0, 1.0, len(self.round_ms))
        return {**estimate.fields(), "round_ms": [round(r[index], 5) for r in self.round_ms]}


def round_config(config: BenchConfig, min_rounds: int = MIN_ROUNDS) -> BenchConfig:
    """One round's share of the runs and seconds ``config`` asks of a whole comparison."""
    return config.updated(min_runs=max(1, -(-config.min_runs // min_rounds)), min_time=config.min_time / min_rounds)


def compare_models(paths: Sequence[str | Path], config: BenchConfig | None = None, progress: TimingProgress | None = None, *,
                   max_seconds: float = MAX_SECONDS, precision: float = PRECISION, statistic: str = STATISTIC,
                   python: Sequence[str] | None = None) -> Comparison:
    """Time ``paths`` side by side in rounds (each :func:`~edgeprune.profile.profile_models` in
    fresh processes with ``config``'s runs and seconds shared out over :data:`MIN_ROUNDS` rounds)
    until each model's speedup against the first is within ``precision``, or ``max_seconds`` are
    spent. A single model is measured once, with all of ``config``'s runs and seconds."""
    config = config or BenchConfig()
    per_round, pick = round_config(config), STATISTICS[statistic]
    progress = progress or (lambda stage, fraction: None)
    found: list[list[ModelProfile]] = []

    def measure_round(index: int, share: BenchConfig = per_round) -> list[float]:
        order = list(range(len(paths)))[::-1 if index % 2 else 1]
        profiles = profile_models([paths[i] for i in order], share, _round_progress(progress, index), python=python)
        found.append([profiles[order.index(i)] for i in range(len(paths))])
        return [pick(p) for p in found[-1]]

    def decided(rounds: list[list[float]]) -> bool:
        return all(e.precise(precision) for e in estimates_of(rounds))

    busy = busy_cores()
    start = time.perf_counter()
    if len(paths) > 1:
        rounds, done = measure_rounds(measure_round, decided, max_seconds=max_seconds)
    else:  # nothing to compare: one measurement
        rounds, done = [measure_round(0, config)], True
    progress("timing", 1.0)
    estimates = [None, *estimates_of(rounds)] if len(paths) > 1 else [None]
    return Comparison([pooled([r[i] for r in found]) for i in range(len(paths))], estimates, found, rounds, done,
                      time.perf_counter() - start, busy, crowded_note(busy, config.intra_threads))


def _round_progress(progress: TimingProgress, index: int) -> TimingProgress:
    """A round's progress as the whole comparison's (rounds past the first ones stay at 99 %)."""
    def report(stage: str, fraction: float) -> None:
        if stage == "timing":
            progress(stage, min(0.99, (index + fraction) / MIN_ROUNDS))
        elif index == 0:
            progress(stage, fraction)
    return report


def pooled(profiles: list[ModelProfile]) -> ModelProfile:
    """One model's profile of several rounds: their runs pooled (percentiles of all), the worst memory."""
    times = np.concatenate([p.times_ms for p in profiles])
    p50, p90, p99 = (float(v) for v in np.percentile(times, [50, 90, 99]))
    cpu = [p.cpu_p50_ms for p in profiles if p.cpu_p50_ms is not None]
    return dataclasses.replace(
        profiles[0], p50_ms=p50, p90_ms=p90, p99_ms=p99, mean_ms=float(times.mean()),
        std_ms=float(times.std(ddof=1)) if len(times) > 1 else 0.0, min_ms=float(times.min()), runs=len(times),
        peak_memory_bytes=max(p.peak_memory_bytes for p in profiles), times_ms=[float(t) for t in times],
        cpu_p50_ms=float(np.median(cpu)) if cpu else None)
