"""How busy the host is just before a timing: said beside the figures, since a speedup measured
with every core already in use moves more than the same speedup on a quiet host (docs/timing.md:
onnxruntime's threads wait for each other when one of them shares a core).

Read from ``/proc/stat`` (Linux); elsewhere the load is unknown and nothing is said.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

STAT = Path("/proc/stat")
SAMPLE_SECONDS = 0.3
SPARE = 0.5  # cores of load tolerated beyond those left free by the timed threads


def _cpu_times(stat: Path = STAT) -> tuple[int, int, int] | None:
    """(busy, total) jiffies of all CPUs together, and the number of CPUs; None where unreadable."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    fields = [int(v) for v in lines[0].split()[1:]] if lines and lines[0].startswith("cpu ") else []
    if len(fields) < 4:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user time
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return total - idle, total, cpus


def busy_cores(seconds: float = SAMPLE_SECONDS, stat: Path = STAT,
               sleep: Callable[[float], None] = time.sleep) -> float | None:
    """How many cores' worth of work the host ran over the next ``seconds`` (0 = idle, 2.0 = two
    cores fully used), or None where ``/proc/stat`` cannot be read."""
    before = _cpu_times(stat)
    sleep(seconds)
    after = _cpu_times(stat)
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]) * after[2], 2)


def crowded_note(busy: float | None, threads: int, cores: int | None = None) -> str | None:
    """A line for the report when the host's load leaves the timed threads fewer free cores than they
    need (``threads`` 0: onnxruntime takes every core); None on a quiet enough host or an unknown load.

    >>> crowded_note(0.1, 2, cores=2) is None
    True
    >>> crowded_note(1.2, 2, cores=2)
    'host busy: 1.2 of 2 cores in use before timing, 2 threads timed: speedups move more than on a quiet host (see docs/timing.md; --threads 1 holds better)'
    """
    cores = cores or os.cpu_count() or 1
    wanted = min(threads or cores, cores)
    if busy is None or busy + wanted <= cores + SPARE:
        return None
    return (f"host busy: {busy:.1f} of {cores} cores in use before timing, {wanted} thread{'s' * (wanted != 1)} "
            f"timed: speedups move more than on a quiet host (see docs/timing.md; --threads 1 holds better)")
