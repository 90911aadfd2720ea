"""Accuracy-aware allocation: each group's width chosen from its measured sensitivity.

:class:`SensitivityPlanner` is a planner for :func:`edgeprune.api.prune` (``planner=``). From
every group at full width it takes, again and again, the aligned step (``round_to`` units of one
group) whose predicted loss per MAC saved is smallest, until the MACs cut is reached. A group's
loss at a width comes from its sensitivity curve (:mod:`edgeprune.sensitivity`); the plan's
predicted loss is the sum over groups (each was measured alone). MACs are counted on the real
graph at every step, since a group's cost depends on its neighbours' widths too.

>>> import torch
>>> from edgeprune.api import prune
>>> from edgeprune.models import build
>>> from edgeprune.sensitivity import analyse
>>> built = build("resnet20-cifar")
>>> x = torch.randn(8, 3, 32, 32).numpy()
>>> curves = analyse(built.model, built.input_shape, "l2", x, x[:4], ratios=(0.3, 0.6))
>>> result = prune(built.model, built.input_shape, criterion="l2", planner=SensitivityPlanner(curves, 0.4))
>>> abs(result.plan.macs_cut - 0.4) <= 0.01
True
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from edgeprune.counter import count
from edgeprune.errors import EdgepruneError
from edgeprune.graph import DependencyGraph, Group
from edgeprune.plan import Plan, pick_units, unit_step
from edgeprune.sensitivity import Curve, Sensitivity, group_key


def curves_for(sensitivity: Sensitivity, groups: Iterable[Group]) -> dict[int, Curve]:
    """Each group's curve by group index; a group the curves do not cover is an error."""
    groups = list(groups)
    curves = {g.index: sensitivity.curve_for(group_key(g)) for g in groups}
    missing = [g.name for g in groups if curves[g.index] is None]
    if missing:
        raise EdgepruneError(f"the sensitivity file does not cover {missing[0]} (and {len(missing) - 1} more "
                             "groups): measure it on this model")
    return curves


class SensitivityPlanner:
    """Reach ``flops_cut`` at the least predicted loss; ``max_group_ratio`` caps any one group."""

    def __init__(self, sensitivity: Sensitivity, flops_cut: float, round_to: int = 1,
                 max_group_ratio: float = 0.9) -> None:
        if not 0 < flops_cut < 1:
            raise EdgepruneError(f"flops cut must be in (0, 1), got {flops_cut}")
        self.sensitivity = sensitivity
        self.flops_cut = flops_cut
        self.round_to = round_to
        self.max_group_ratio = max_group_ratio

    def __call__(self, graph: DependencyGraph, scores: dict[int, torch.Tensor]) -> Plan:
        groups = {g.index: g for g in graph.prunable_groups() if g.index in scores}
        curves = curves_for(self.sensitivity, groups.values())
        before = count(graph)
        goal = (1 - self.flops_cut) * before.macs
        removed = {i: np.zeros(0, dtype=np.int64) for i in groups}
        macs = before.macs
        while macs > goal:
            move = self._cheapest(graph, groups, curves, scores, removed, macs)
            if move is None:
                break
            index, units, macs = move
            removed[index] = units
        removed = self._closest(graph, groups, curves, scores, removed, goal)
        keep = graph.keep_mask(removed)
        after = count(graph, keep)
        cut = 1 - after.macs / before.macs
        if abs(cut - self.flops_cut) > 0.01:
            raise EdgepruneError(f"sensitivity allocation could not reach a {self.flops_cut:.1%} MACs cut "
                                 f"(closest: {cut:.1%}); try a smaller --round-to")
        widths = {groups[i].name: [groups[i].n_units, groups[i].n_units - len(u)] for i, u in removed.items()}
        predicted = {groups[i].name: curves[i].loss(len(u)) for i, u in removed.items() if len(u)}
        details = {"allocation": "sensitivity", "criterion": self.sensitivity.criterion, "widths": widths,
                   "predicted_loss": float(sum(predicted.values())), "predicted_loss_by_group": predicted}
        return Plan(removed, keep, before, after, None, details)

    def _limit(self, group: Any) -> int:
        return min(group.n_prunable if group.n_prunable < group.n_units else group.n_units - 1,
                   int(self.max_group_ratio * group.n_units))

    def _cheapest(self, graph, groups, curves, scores, removed, macs) -> tuple[int, np.ndarray, int] | None:
        """The one-step narrowing with the least predicted loss per MAC saved."""
        best = None
        for index, group in groups.items():
            n = len(removed[index]) + unit_step(group, self.round_to)
            if n > self._limit(group):
                continue
            units = pick_units(group, scores[index], n, self.round_to)
            trial = count(graph, graph.keep_mask({**removed, index: units})).macs
            saved = macs - trial
            if saved <= 0:
                continue
            price = (curves[index].loss(len(units)) - curves[index].loss(len(removed[index]))) / saved
            if best is None or price < best[0]:
                best = (price, index, units, trial)
        return None if best is None else best[1:]

    def _closest(self, graph, groups, curves, scores, removed, goal) -> dict[int, np.ndarray]:
        """A coarse last step (one step of a residual stream can be a tenth of the MACs) may overshoot:
        move single groups by one step, back or on, while that brings the MACs closer to the goal
        (among equally close moves, the one predicted to lose least)."""
        tolerance = 0.005 * count(graph).macs
        gap = abs(count(graph, graph.keep_mask(removed)).macs - goal)
        for _ in range(100):
            if gap <= tolerance:
                break
            moves = []
            for index, group in groups.items():
                step = unit_step(group, self.round_to)
                for n in (len(removed[index]) - step, len(removed[index]) + step):
                    if 0 <= n <= self._limit(group):
                        units = pick_units(group, scores[index], n, self.round_to)
                        trial = {**removed, index: units}
                        moves.append((abs(count(graph, graph.keep_mask(trial)).macs - goal),
                                      self._loss(curves, groups, trial), index, units))
            if not moves:
                break
            new_gap, _, index, units = min(moves, key=lambda m: (m[0], m[1]))
            if new_gap >= gap:
                break
            gap, removed = new_gap, {**removed, index: units}
        return removed

    @staticmethod
    def _loss(curves, groups, removed) -> float:
        return sum(curves[i].loss(len(u)) for i, u in removed.items())
