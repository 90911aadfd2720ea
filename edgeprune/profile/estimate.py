"""A speedup with its uncertainty, from side-by-side rounds, and the verdict against a target.

Each round times both files in fresh processes (see :func:`~edgeprune.profile.compare_models`), so
what moves a speedup between runs (which core, what else runs, where the process landed in
memory) moves it between rounds too. The estimate is the geometric mean of the per-round ratios
with a 95 % Student-t interval on their logarithms (a paired test: both files of a round share
its conditions). Not a bootstrap: with the 3 to 10 rounds a comparison affords, a percentile
bootstrap's interval is too narrow (3 rounds have 10 distinct resamples) and random; the t
interval is exact for log-normal ratios and the same every time for the same rounds. Imports only
the standard library and NumPy (it runs on a board).

>>> e = SpeedupEstimate.of([2.0, 2.1, 1.9])
>>> round(e.speedup, 3), round(e.ci_low, 2), round(e.ci_high, 2), e.rounds
(1.998, 1.76, 2.26, 3)
>>> e.verdict(1.5), e.verdict(2.0), e.verdict(3.0)
('met', 'undecided', 'missed')
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

MET, MISSED, UNDECIDED = "met", "missed", "undecided"
PRECISION = 0.03  # a comparison is precise enough when its interval is within +-3 % of its speedup
MIN_ROUNDS = 3  # fewer rounds have no interval worth the name (2 rounds: t = 12.7)

# Student's t, two-sided 95 % (the 0.975 quantile), for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: int) -> float:
    """Student's t 0.975 quantile: a table to 30 degrees of freedom, then the Cornish-Fisher series
    (within 0.001 of the exact value beyond 30).

    >>> t975(2), round(t975(60), 3)
    (4.303, 2.0)
    """
    if df < 1:
        raise ValueError("an interval needs two rounds or more")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass(frozen=True)
class SpeedupEstimate:
    """``speedup`` (the geometric mean of the rounds' ratios) and its 95 % interval
    [``ci_low``, ``ci_high``] over ``rounds`` side-by-side rounds. One round has no interval:
    ``ci_low == ci_high == speedup``. Also used for a ratio against a latency budget."""

    speedup: float
    ci_low: float
    ci_high: float
    rounds: int

    @classmethod
    def of(cls, ratios: Sequence[float]) -> SpeedupEstimate:
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(np.asarray(ratios, dtype=float))
        if logs.size == 0 or not np.all(np.isfinite(logs)):
            raise ValueError(f"a speedup needs positive finite ratios, got {list(ratios)}")
        centre = float(logs.mean())
        half = t975(logs.size - 1) * float(logs.std(ddof=1)) / math.sqrt(logs.size) if logs.size > 1 else 0.0
        return cls(math.exp(centre), math.exp(centre - half), math.exp(centre + half), int(logs.size))

    @property
    def half_width(self) -> float:
        """The interval's half width as a fraction of the speedup (0.03: +-3 %); inf for one round."""
        return math.inf if self.rounds < 2 else (self.ci_high - self.ci_low) / (2 * self.speedup)

    def precise(self, precision: float = PRECISION) -> bool:
        return self.rounds >= MIN_ROUNDS and self.half_width <= precision

    def verdict(self, target: float) -> str:
        """Whether the speedup is at least ``target``: :data:`MET` when the whole interval is at or
        above it, :data:`MISSED` when it is all below, else :data:`UNDECIDED` (measure longer, or
        say it cannot be decided here)."""
        if self.rounds >= MIN_ROUNDS and self.ci_low >= target:
            return MET
        if self.rounds >= MIN_ROUNDS and self.ci_high < target:
            return MISSED
        return UNDECIDED

    def fields(self) -> dict[str, float | int]:
        """For JSON: speedup, ci_low, ci_high (4 decimals) and rounds."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def text(self) -> str:
        """``1.52x (1.49-1.55x, 6 rounds)``."""
        if self.rounds < 2:
            return f"{self.speedup:.2f}x (1 round)"
        return f"{self.speedup:.2f}x ({self.ci_low:.2f}-{self.ci_high:.2f}x, {self.rounds} rounds)"
