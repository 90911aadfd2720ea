"""Latency-driven pruning plans: per-group widths that meet a latency budget on the target.

In the spirit of NetAdapt and HALP: every prunable group may shrink to any of its grid widths
(:func:`~edgeprune.latency.table.axis`, multiples of 4 and of 8 alike), dropping its
lowest-scoring units first. Starting from the dense model, the planner repeatedly makes the
cheapest move per millisecond saved, as the latency table predicts (see :class:`Search`),
until the prediction meets the budget, then widens groups back one grid width at a time while
the prediction stays within it. A width the kernels dislike saves nothing in the table,
so it is never chosen: each group's alignment comes from the measurements, not from one fixed
multiple. The plan is then confirmed by exporting and measuring the whole pruned model; if the
measurement misses the budget, the prediction's aim is corrected by the ratio measured and the
plan is made again for it (a few rounds at most).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from edgeprune.allocation import curves_for
from edgeprune.counter import count, per_layer
from edgeprune.errors import EdgepruneError
from edgeprune.graph import DependencyGraph, Group
from edgeprune.latency.convolutions import TimedLayer, timed_layers
from edgeprune.latency.table import LatencyTable, axis
from edgeprune.plan import Plan, pick_units
from edgeprune.surgery import apply_keep_mask

log = logging.getLogger(__name__)

Measure = Callable[[list[nn.Module]], list[float]]
"""Measures models side by side on the target's settings; returns each one's median ms."""

MIN_SAVING = 0.01  # a move must save this share of its layers' time: smaller differences are table noise


@dataclass(frozen=True)
class Budget:
    """A latency budget in milliseconds, or a speedup over the dense model as measured here."""

    ms: float | None = None
    speedup: float | None = None

    def __post_init__(self) -> None:
        if (self.ms is None) == (self.speedup is None):
            raise EdgepruneError("give exactly one of --latency-budget MS or --speedup X")
        if self.ms is not None and not (self.ms > 0 and math.isfinite(self.ms)):
            raise EdgepruneError(f"--latency-budget must be a positive number of milliseconds, got {self.ms}")
        if self.speedup is not None and not (self.speedup > 1 and math.isfinite(self.speedup)):
            raise EdgepruneError(f"--speedup must be a number above 1, got {self.speedup}")

    def ms_for(self, dense_ms: float) -> float:
        return self.ms if self.ms is not None else dense_ms / self.speedup


@dataclass
class _Choices:
    """The widths one group may take: its grid counts, which units each removes, and how much
    each unit matters (its score over the group's mean)."""

    counts: list[int]
    masks: list[np.ndarray]
    importance: np.ndarray


def _choices(group: Group, scores: torch.Tensor | None, round_to: int, max_group_ratio: float,
             axis_points: int) -> _Choices:
    n = group.n_units
    full = _Choices([n], [np.zeros(n, dtype=bool)], np.ones(n))
    if scores is None or group.n_prunable < 2:
        return full
    blocks = 1 if group.blocks is None else int(group.blocks.max()) + 1
    floor = max(n - math.floor(max_group_ratio * n), n - group.n_prunable + (group.n_prunable == n), 1)
    s = scores.double().numpy()
    counts, masks = [], []
    for c in axis(n, axis_points):
        if c < floor or c % blocks:
            continue
        mask = np.zeros(n, dtype=bool)
        mask[pick_units(group, scores, n - c, math.gcd(c, round_to))] = True
        counts.append(int(n - mask.sum()))
        masks.append(mask)
    return _Choices(counts, masks, s / max(float(s[~group.frozen].mean()), 1e-12)) if counts else full


class Predictor:
    """Whole-model latency from the table: the timed convolutions at their widths, plus what the
    table does not time (other operators, session overhead), taken from the dense measurement
    and scaled with the activations kept."""

    def __init__(self, layers: list[TimedLayer], table: LatencyTable, dense_ms: float) -> None:
        self.layers, self.table = layers, table
        self._cache: dict[tuple[int, int, int], float] = {}
        dense = [(layer.inputs.width({}), layer.outputs.width({})) for layer in layers]
        self.dense_conv_ms = sum(self.ms_at(i, cin, cout) for i, (cin, cout) in enumerate(dense))
        self.dense_volume = self._volume(dense)
        self.rest_ms = dense_ms - self.dense_conv_ms

    def ms_at(self, i: int, cin: int, cout: int) -> float:
        if self.layers[i].shape.depthwise:
            cin = cout
        if (i, cin, cout) not in self._cache:
            self._cache[(i, cin, cout)] = self.table.ms(self.layers[i].shape, cin, cout)
        return self._cache[(i, cin, cout)]

    def _volume(self, widths: list[tuple[int, int]]) -> float:
        return sum(cout * math.prod(layer.shape.out_hw) for layer, (_, cout) in zip(self.layers, widths))

    def predict(self, widths: list[tuple[int, int]]) -> float:
        """Milliseconds with each timed layer at ``widths[i]`` = (input, output) channels."""
        conv = sum(self.ms_at(i, cin, cout) for i, (cin, cout) in enumerate(widths))
        rest = self.rest_ms * self._volume(widths) / self.dense_volume if self.rest_ms > 0 else self.rest_ms
        return conv + rest

    def predict_keep(self, graph: DependencyGraph, keep: np.ndarray) -> float:
        """Milliseconds of ``graph``'s model cut to the ``keep`` channels (any plan, not only this planner's)."""
        rows = {row["layer"]: row for row in per_layer(graph, keep)}
        return self.predict([(rows[layer.name]["in"], rows[layer.name]["out"]) for layer in self.layers])


class _ChoiceWidths:
    """Each timed layer's widths for a choice of grid width per group, from counts made once."""

    def __init__(self, layers: list[TimedLayer], choices: dict[int, _Choices]) -> None:
        def per_choice(units: dict[int, np.ndarray]) -> dict[int, list[int]]:
            return {g: [int((~m[u]).sum()) for m in choices[g].masks] for g, u in units.items()}

        self._kept = [(layer.inputs.fixed, per_choice(layer.inputs.units), layer.outputs.fixed,
                       per_choice(layer.outputs.units)) for layer in layers]

    def __call__(self, i: int, choice: dict[int, int]) -> tuple[int, int]:
        fixed_in, ins, fixed_out, outs = self._kept[i]
        return (fixed_in + sum(kept[choice[g]] for g, kept in ins.items()),
                fixed_out + sum(kept[choice[g]] for g, kept in outs.items()))

    def all(self, choice: dict[int, int]) -> list[tuple[int, int]]:
        return [self(i, choice) for i in range(len(self._kept))]


@dataclass
class Step:
    predicted_ms: float
    choice: dict[int, int]


def _macs(shape, cin: int, cout: int) -> int:
    return cout * (1 if shape.depthwise else cin) * math.prod(shape.kernel) * math.prod(shape.out_hw)


class Search:
    """The greedy search over grid widths: :meth:`path` narrows from dense, :meth:`refill` widens
    back towards an aim.

    A move narrows one group to the widest grid width that really saves time. Its price, per
    millisecond saved, is the importance of the units it removes, times the MACs they carry now,
    times how far the group has narrowed (full width over the new width). The MACs make a unit
    that feeds many layers dear (without them, the cheapest way to save time would be to empty a
    residual stream); the narrowing makes a group's last channels dear (without it, inefficient
    small layers are squeezed to a few channels, and at deep cuts uniform pruning kept more MACs
    for the same latency: 22.5 % against 29.0 % on resnet56-cifar at half its latency).

    With ``losses`` (group -> the predicted loss at each of its grid widths, from its measured
    sensitivity) a move's price is instead the loss it adds per millisecond saved.
    """

    def __init__(self, predictor: Predictor, choices: dict[int, _Choices],
                 losses: dict[int, list[float]] | None = None) -> None:
        self.predictor, self.choices, self.losses = predictor, choices, losses
        self.widths = _ChoiceWidths(predictor.layers, choices)
        self.layers_of = {g: [i for i, layer in enumerate(predictor.layers) if g in layer.groups()] for g in choices}
        full = self.widths.all({g: len(c.counts) - 1 for g, c in choices.items()})
        self.dense_macs = max(sum(_macs(layer.shape, *w) for layer, w in zip(predictor.layers, full)), 1)

    def predict(self, choice: dict[int, int]) -> float:
        return self.predictor.predict(self.widths.all(choice))

    def _cost(self, g: int, choice: dict[int, int]) -> tuple[float, int]:
        at = [(i, self.widths(i, choice)) for i in self.layers_of[g]]
        return (sum(self.predictor.ms_at(i, *w) for i, w in at),
                sum(_macs(self.predictor.layers[i].shape, *w) for i, w in at))

    def _value(self, g: int, wide: int, narrow: int, macs: int) -> float:
        """What the units between two widths of group ``g`` are worth, carrying ``macs``."""
        options = self.choices[g]
        units = options.masks[narrow] & ~options.masks[wide]
        value = float(options.importance[units].mean()) * options.counts[-1] / options.counts[narrow] * macs
        if self.losses is None:
            return value
        # the measured loss decides; where curves are flat (equal losses) the importance-based value breaks the tie
        return max(self.losses[g][narrow] - self.losses[g][wide], 0.0) + 1e-6 * value / self.dense_macs

    def path(self, stop_ms: float) -> list[Step]:
        """From dense, the cheapest moves until the prediction is below ``stop_ms``."""
        choice = {g: len(c.counts) - 1 for g, c in self.choices.items()}
        path = [Step(self.predict(choice), dict(choice))]
        while path[-1].predicted_ms > stop_ms:
            best = None
            for g in self.choices:
                now_ms, now_macs = self._cost(g, choice)
                for j in range(choice[g] - 1, -1, -1):  # the widest narrower width that really saves time
                    ms, macs = self._cost(g, {**choice, g: j})
                    if now_ms - ms > MIN_SAVING * now_ms:
                        price = self._value(g, choice[g], j, now_macs - macs) / (now_ms - ms)
                        if best is None or price < best[0]:
                            best = (price, g, j)
                        break
            if best is None:
                break
            choice[best[1]] = best[2]
            path.append(Step(self.predict(choice), dict(choice)))
        return path

    def refill(self, step: Step, aim_ms: float) -> Step:
        """Widen groups, the most valuable widening per millisecond first, while the prediction
        stays within ``aim_ms``: the path's steps are coarse, the refill is fine."""
        choice, predicted = dict(step.choice), step.predicted_ms
        while True:
            best = None
            for g, options in self.choices.items():
                j = choice[g]
                for wider in range(j + 1, len(options.counts)):  # not only the next: it may be unaligned
                    trial = {**choice, g: wider}
                    after = self.predict(trial)
                    if after <= aim_ms:
                        gained = self._cost(g, trial)[1] - self._cost(g, choice)[1]
                        value = self._value(g, wider, j, gained) / max(after - predicted, 1e-9)
                        if best is None or value > best[0]:
                            best = (value, trial, after)
            if best is None:
                return Step(predicted, choice)
            _, choice, predicted = best


@dataclass
class ConfirmRound:
    predicted_ms: float
    measured_ms: float | None
    dense_ms: float
    budget_ms: float
    macs: int

    @property
    def error(self) -> float:
        return self.measured_ms / self.budget_ms - 1


@dataclass
class LatencyPlanner:
    """A planner for :func:`edgeprune.api.prune`: ``planner(graph, scores) -> Plan``.

    ``measure`` None (a table measured on a board this machine cannot reach): the dense model's
    time comes from ``dense_ms`` (the board's, in the table) and the plan rests on the prediction.
    """

    table: LatencyTable
    budget: Budget
    measure: Measure | None
    round_to: int = 8
    max_group_ratio: float = 0.9
    confirm_rounds: int = 3
    tolerance: float = 0.05
    progress: Callable[[str], None] = field(default=lambda message: log.info(message))
    dense_ms: float | None = None
    sensitivity: Any = None  # an edgeprune.sensitivity.Sensitivity: spend the budget where the loss is least

    def __call__(self, graph: DependencyGraph, scores: dict[int, torch.Tensor]) -> Plan:
        choices = {g.index: _choices(g, scores.get(g.index), self.round_to, self.max_group_ratio, self.table.axis_points)
                   for g in graph.groups}
        if self.measure is None and self.dense_ms is None:
            raise EdgepruneError("a latency plan needs the dense model's time: a way to measure it, or the table's")
        dense_ms = self.measure([graph.model])[0] if self.measure is not None else self.dense_ms
        budget_ms = self.budget.ms_for(dense_ms)
        losses = self._losses(graph, choices) if self.sensitivity is not None else None
        search = Search(Predictor(timed_layers(graph), self.table, dense_ms), choices, losses)
        path = search.path(0.5 * budget_ms)
        self.progress(f"latency plan: dense {dense_ms:.3f} ms, budget {budget_ms:.3f} ms; "
                      f"{len(path) - 1} moves, lowest prediction {path[-1].predicted_ms:.3f} ms")
        if path[-1].predicted_ms > budget_ms * (1 + self.tolerance):
            raise EdgepruneError(f"the budget of {budget_ms:.3f} ms is out of reach: the table predicts "
                                 f"{path[-1].predicted_ms:.3f} ms at best (dense {dense_ms:.3f} ms)")
        if self.measure is None:
            step = _aimed(search, path, budget_ms)
            return self._plan(graph, choices, step, ConfirmRound(step.predicted_ms, None, dense_ms, budget_ms, 0), [],
                              losses)
        tried = self._confirm_rounds(graph, choices, search, path, budget_ms)
        step, chosen = min(tried.values(), key=lambda t: (t[1].error > self.tolerance, abs(t[1].error)))
        return self._plan(graph, choices, step, chosen, [r for _, r in tried.values()], losses)

    def _losses(self, graph: DependencyGraph, choices: dict[int, _Choices]) -> dict[int, list[float]]:
        narrowing = {g: options for g, options in choices.items() if len(options.counts) > 1}
        curves = curves_for(self.sensitivity, [graph.groups[g] for g in narrowing])
        losses = {g: [0.0] for g in choices}
        losses.update({g: [curves[g].loss(options.counts[-1] - n) for n in options.counts] for g, options in narrowing.items()})
        return losses

    def _confirm_rounds(self, graph: DependencyGraph, choices: dict[int, _Choices], search: Search, path: list[Step],
                        budget_ms: float) -> dict[tuple, tuple[Step, ConfirmRound]]:
        """Measure the plan aimed at the budget; aim again, corrected by what was measured."""
        tried: dict[tuple, tuple[Step, ConfirmRound]] = {}
        aim = budget_ms
        known = [(path[0].predicted_ms, path[0].predicted_ms)]  # dense: its prediction is its measurement
        for _ in range(self.confirm_rounds):
            step = _aimed(search, path, aim)
            key = tuple(sorted(step.choice.items()))
            if key in tried:
                break
            tried[key] = (step, self._confirm(graph, step, choices))
            result = tried[key][1]
            if abs(result.error) <= self.tolerance:
                break
            known.append((step.predicted_ms, result.measured_ms))
            aim = _next_aim(known, result.budget_ms)
        return tried

    def _plan(self, graph: DependencyGraph, choices: dict[int, _Choices], step: Step, chosen: ConfirmRound,
              rounds: list[ConfirmRound], losses: dict[int, list[float]] | None) -> Plan:
        removed = _removed(choices, step.choice)
        keep = graph.keep_mask(removed)
        details = {"budget": {"ms": self.budget.ms, "speedup": self.budget.speedup}, "budget_ms": chosen.budget_ms,
                   "dense_ms_measured": chosen.dense_ms, "predicted_ms": step.predicted_ms,
                   "measured_ms": chosen.measured_ms, "error": chosen.error if rounds else None,
                   "confirmed": bool(rounds), "rounds": [vars(r) for r in rounds], "table": str(self.table.path or ""),
                   "widths": _widths(graph, choices, step.choice)}
        if losses is not None:
            details.update(self._predicted_loss(graph, choices, step.choice, losses))
        return Plan(removed, keep, count(graph), count(graph, keep), None, details)

    def _confirm(self, graph: DependencyGraph, step: Step, choices: dict[int, _Choices]) -> ConfirmRound:
        keep = graph.keep_mask(_removed(choices, step.choice))
        pruned = apply_keep_mask(copy.deepcopy(graph.model), graph, keep)
        dense_ms, measured = self.measure([graph.model, pruned])
        result = ConfirmRound(step.predicted_ms, measured, dense_ms, self.budget.ms_for(dense_ms), count(graph, keep).macs)
        self.progress(f"confirm: predicted {step.predicted_ms:.3f} ms, measured {measured:.3f} ms "
                      f"(budget {result.budget_ms:.3f} ms, {result.error:+.1%})")
        return result

    def _predicted_loss(self, graph: DependencyGraph, choices: dict[int, _Choices], choice: dict[int, int],
                        losses: dict[int, list[float]]) -> dict[str, Any]:
        by_group = {graph.groups[g].name: losses[g][j] for g, j in choice.items() if j < len(choices[g].counts) - 1}
        return {"allocation": "sensitivity", "criterion": self.sensitivity.criterion,
                "predicted_loss": float(sum(by_group.values())), "predicted_loss_by_group": by_group}


def _next_aim(known: list[tuple[float, float]], budget_ms: float) -> float:
    """The prediction to aim at so that the measurement meets ``budget_ms``, from the (predicted,
    measured) pairs known so far (dense among them): interpolated between the two measurements
    around the budget, else scaled from the nearest one. A table can be off by 2x on a whole model
    (weights that fit the cache alone, not together): scaling alone then overshoots to dense.

    >>> _next_aim([(10.0, 10.0), (5.0, 2.0)], 4.0)
    6.25
    >>> _next_aim([(10.0, 10.0), (5.0, 6.0)], 4.0)
    3.333...
    """
    ordered = sorted(known, key=lambda pair: pair[1])
    for (p0, m0), (p1, m1) in zip(ordered, ordered[1:]):
        if m0 <= budget_ms <= m1 and m1 > m0:
            return p0 + (p1 - p0) * (budget_ms - m0) / (m1 - m0)
    predicted, measured = ordered[0] if budget_ms < ordered[0][1] else ordered[-1]
    return predicted * budget_ms / measured


def _aimed(search: Search, path: list[Step], aim_ms: float) -> Step:
    """The first step of ``path`` predicted within ``aim_ms``, widened back as far as the aim allows."""
    first = next((step for step in path if step.predicted_ms <= aim_ms), path[-1])
    return search.refill(first, aim_ms)


def _removed(choices: dict[int, _Choices], choice: dict[int, int]) -> dict[int, np.ndarray]:
    return {g: np.flatnonzero(choices[g].masks[j]) for g, j in choice.items() if choices[g].masks[j].any()}


def _widths(graph: DependencyGraph, choices: dict[int, _Choices], choice: dict[int, int]) -> dict[str, list[int]]:
    """Each pruned group's units before and after, by its name."""
    return {graph.groups[g].name: [choices[g].counts[-1], choices[g].counts[j]]
            for g, j in choice.items() if j < len(choices[g].counts) - 1}
