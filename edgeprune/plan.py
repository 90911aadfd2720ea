"""How many units each group loses, and which: uniform, per-layer, global, or a MACs target.

Scores come from a criterion (one tensor per group); this module only counts and selects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from edgeprune.counter import Counts, count
from edgeprune.errors import EdgepruneError
from edgeprune.graph import DependencyGraph, Group


@dataclass
class PlanConfig:
    """What to remove. ``ratio`` is the fraction of each group's channels to remove."""

    ratio: float | None = None
    flops_cut: float | None = None
    layer_ratios: dict[str, float] = field(default_factory=dict)
    global_ranking: bool = False
    max_group_ratio: float = 0.9
    round_to: int = 1

    def validate(self) -> None:
        if (self.ratio is None) == (self.flops_cut is None) and not self.layer_ratios:
            raise EdgepruneError("give exactly one of --ratio or --flops-cut")
        for label, value in (("ratio", self.ratio), ("flops cut", self.flops_cut), ("max group ratio", self.max_group_ratio),
                             *((f"ratio of {k}", v) for k, v in self.layer_ratios.items())):
            if value is not None and not 0 <= value < 1:
                raise EdgepruneError(f"{label} must be in [0, 1), got {value}")
        if self.round_to < 1:
            raise EdgepruneError(f"--round-to must be a positive integer, got {self.round_to}")


@dataclass
class Plan:
    removed: dict[int, np.ndarray]
    keep: np.ndarray
    before: Counts
    after: Counts
    ratio: float | None
    details: dict = field(default_factory=dict)  # what a planner other than make_plan reports

    @property
    def macs_cut(self) -> float:
        return 1 - self.after.macs / self.before.macs


def make_plan(graph: DependencyGraph, scores: dict[int, torch.Tensor], config: PlanConfig) -> Plan:
    """Choose the units to remove from every prunable group."""
    config.validate()
    before = count(graph)
    if config.flops_cut is not None:
        ratio, removed = _search_flops(graph, scores, config, before)
    else:
        ratio = config.ratio or 0.0
        removed = _select(graph, scores, config, ratio)
    keep = graph.keep_mask(removed)
    return Plan(removed, keep, before, count(graph, keep), ratio)


def _select(graph: DependencyGraph, scores: dict[int, torch.Tensor], config: PlanConfig, ratio: float) -> dict[int, np.ndarray]:
    return _remove(graph, scores, _counts(graph, scores, config, ratio), config.round_to)


def _counts(graph: DependencyGraph, scores: dict[int, torch.Tensor], config: PlanConfig, ratio: float) -> dict[int, int]:
    """How many units each prunable group loses at ``ratio``, aligned to ``round_to``."""
    groups = [g for g in graph.prunable_groups() if g.index in scores]
    if config.global_ranking:
        wanted = _global_counts(groups, scores, ratio, config.max_group_ratio)
    else:
        wanted = {g.index: _group_ratio(g, config, ratio) * g.n_units for g in groups}
    return {g.index: aligned_removal(g, wanted[g.index], config.round_to) for g in groups}


def _remove(graph: DependencyGraph, scores: dict[int, torch.Tensor], counts: dict[int, int],
            round_to: int = 1) -> dict[int, np.ndarray]:
    return {i: pick_units(graph.groups[i], scores[i], n, round_to) for i, n in counts.items()}


def _group_ratio(group: Group, config: PlanConfig, default: float) -> float:
    for space in group.spaces:
        if space.module in config.layer_ratios:
            return config.layer_ratios[space.module]
    return default


def aligned_removal(group: Group, remove: float, round_to: int) -> int:
    """Units to remove so the kept count is a multiple of ``round_to`` (and of the block count)."""
    n = group.n_units
    step = unit_step(group, round_to)
    keep = n - remove
    if step > 1 and n > step:
        keep = max(step, step * round(keep / step))
    remove = n - int(round(keep))
    return max(0, min(remove, group.n_prunable - 1 if group.n_prunable == n else group.n_prunable))


def _global_counts(groups: list[Group], scores: dict[int, torch.Tensor], ratio: float, cap: float) -> dict[int, float]:
    """Rank all prunable units together (scores normalised by their group's mean)."""
    entries = []
    for g in groups:
        s = scores[g.index][torch.as_tensor(~g.frozen)].double()
        entries += [(float(v), g.index) for v in (s / s.mean().clamp(min=1e-12))]
    entries.sort()
    limit = {g.index: math.floor(cap * g.n_units) for g in groups}
    counts = {g.index: 0 for g in groups}
    target = round(ratio * sum(g.n_prunable for g in groups))
    taken = 0
    for _, index in entries:
        if taken >= target:
            break
        if counts[index] < limit[index]:
            counts[index] += 1
            taken += 1
    return {k: float(v) for k, v in counts.items()}


def pick_units(group: Group, scores: torch.Tensor, n_remove: int, round_to: int = 1) -> np.ndarray:
    """The ``n_remove`` lowest-scoring prunable units, balanced over blocks, one kept per layer."""
    if n_remove <= 0:
        return np.zeros(0, dtype=np.int64)
    s = scores.double().numpy().copy()
    s[group.frozen] = np.inf
    if group.blocks is None:
        chosen = _pick_by_stratum(group, s, n_remove, round_to)
    else:
        n_blocks = int(group.blocks.max()) + 1
        per = n_remove // n_blocks
        chosen = np.concatenate([np.flatnonzero(group.blocks == b)[np.argsort(s[group.blocks == b], kind="stable")[:per]]
                                 for b in range(n_blocks)])
    return _keep_one_per_space(group, chosen, s)


def _strata(group: Group) -> np.ndarray:
    """Each unit's stratum: units that appear in the same set of spaces.

    A residual stream with zero-padded (option-A) shortcuts is one group whose first-stage units
    also appear in every later stage; ranking all its units together would empty the first stage.
    """
    present = np.zeros((group.n_units, len(group.spaces)), dtype=bool)
    for column, space in enumerate(group.spaces):
        present[group.unit_of[space.index], column] = True
    return np.unique(present, axis=0, return_inverse=True)[1].reshape(-1)


def _pick_by_stratum(group: Group, scores: np.ndarray, n_remove: int, round_to: int = 1) -> np.ndarray:
    """The lowest-scoring units, the cut shared among strata in proportion to their size."""
    strata = _strata(group)
    if strata.max() == 0:
        return np.argsort(scores, kind="stable")[:n_remove]
    keep = _stratum_keep(np.bincount(strata), group.n_units - n_remove, round_to)
    return np.concatenate([np.flatnonzero(strata == k)[np.argsort(scores[strata == k], kind="stable")[:size - kept]]
                           for k, (size, kept) in enumerate(zip(np.bincount(strata), keep))])


def _stratum_keep(sizes: np.ndarray, total: int, step: int) -> np.ndarray:
    """Units each stratum keeps: proportional to its size, a multiple of ``step`` where it can be,
    at least one, summing to ``total`` when the steps allow.

    >>> _stratum_keep(np.array([16, 16, 32]), 32, 8).tolist()
    [8, 8, 16]
    """
    want = total * sizes / sizes.sum()
    keep = np.minimum(sizes, np.maximum(np.minimum(step, sizes), step * np.round(want / step))).astype(int)
    for _ in range(len(sizes) * (sizes.max() // step + 1)):
        gap = total - keep.sum()
        if gap == 0:
            break
        change = step if abs(gap) >= step else abs(gap)
        if gap > 0:
            room = np.flatnonzero(keep + change <= sizes)
            if room.size == 0:
                break
            keep[room[np.argmax((want - keep)[room])]] += change
        else:
            room = np.flatnonzero(keep - change >= np.minimum(step, sizes))
            if room.size == 0:
                break
            keep[room[np.argmax((keep - want)[room])]] -= change
    return keep


def _keep_one_per_space(group: Group, chosen: np.ndarray, scores: np.ndarray) -> np.ndarray:
    removed = np.zeros(group.n_units, dtype=bool)
    removed[chosen] = True
    for space in group.spaces:
        units = group.unit_of[space.index]
        if removed[units].all():
            removed[units[np.argmax(scores[units])]] = False
    return np.flatnonzero(removed)


def _search_flops(graph: DependencyGraph, scores, config: PlanConfig, before: Counts) -> tuple[float, dict]:
    """Bisect the ratio towards the MACs target, then move single groups by one aligned step."""
    target = config.flops_cut
    low, high = 0.0, config.max_group_ratio if config.global_ranking else 0.99
    best_ratio, best = 0.0, _counts(graph, scores, config, 0.0)
    for _ in range(30):
        mid = (low + high) / 2
        counts = _counts(graph, scores, config, mid)
        cut = _cut(graph, scores, counts, before, config.round_to)
        if abs(cut - target) < abs(_cut(graph, scores, best, before, config.round_to) - target):
            best_ratio, best = mid, counts
        if abs(cut - target) <= 0.005:
            break
        low, high = (mid, high) if cut < target else (low, mid)
    best = _refine(graph, scores, config, best, before)
    achieved = _cut(graph, scores, best, before, config.round_to)
    if abs(achieved - target) > 0.01:
        raise EdgepruneError(f"could not reach a {target:.1%} MACs cut (closest: {achieved:.1%}); "
                             "try a smaller --round-to or another target")
    return best_ratio, _remove(graph, scores, best, config.round_to)


def _refine(graph: DependencyGraph, scores, config: PlanConfig, counts: dict[int, int], before: Counts) -> dict[int, int]:
    """Greedy: while it helps, add or take back one aligned step of one group."""
    gap = abs(_cut(graph, scores, counts, before, config.round_to) - config.flops_cut)
    for _ in range(50):
        if gap <= 0.005:
            break
        moves = []
        for index, n in counts.items():
            group = graph.groups[index]
            step = unit_step(group, config.round_to)
            for m in (n - step, n + step):
                if 0 <= m <= min(group.n_prunable, group.n_units - 1) and m <= config.max_group_ratio * group.n_units + step:
                    trial = {**counts, index: m}
                    moves.append((abs(_cut(graph, scores, trial, before, config.round_to) - config.flops_cut), index, m))
        if not moves or min(moves)[0] >= gap:
            break
        gap, index, m = min(moves)
        counts = {**counts, index: m}
    return counts


def unit_step(group: Group, round_to: int) -> int:
    """The smallest number of units a group can lose at a time: ``round_to`` per block."""
    return round_to * (1 if group.blocks is None else int(group.blocks.max()) + 1)


def _cut(graph: DependencyGraph, scores, counts: dict[int, int], before: Counts, round_to: int = 1) -> float:
    return 1 - count(graph, graph.keep_mask(_remove(graph, scores, counts, round_to))).macs / before.macs
