"""Pruning as one call: trace, score, plan, cut (:func:`prune`), or the same in rounds
(:func:`prune_iteratively`). Recipes and the CLI build on these; :mod:`edgeprune.api` (and the
package root, ``edgeprune.prune``) offers them to users.

A model may be given as the CLI takes it (a zoo name, ``torchvision:NAME``, ``FILE.py:factory``, a
checkpoint, ``None`` for the built-in default), as what :func:`edgeprune.load` returned, or as a
plain ``nn.Module`` with its input shape.

>>> result = prune("resnet20-cifar", criterion="l1", ratio=0.5)
>>> result.after.macs < result.before.macs
True
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from edgeprune.calibration import load_data
from edgeprune.checkpoint import load_model, save_checkpoint
from edgeprune.counter import Counts, count, per_layer
from edgeprune.criteria import Criterion, create_criterion, score_groups
from edgeprune.errors import EdgepruneError
from edgeprune.graph import DependencyGraph
from edgeprune.models.default import DEFAULT_DATA
from edgeprune.models.registry import BuiltModel
from edgeprune.plan import Plan, PlanConfig, make_plan
from edgeprune.surgery import apply_keep_mask
from edgeprune.surgery.check import checked_graph

log = logging.getLogger(__name__)
Planner = Callable[[DependencyGraph, "dict[int, Any]"], Plan]


class _Saved:
    """``save(path)``: the pruned model as a checkpoint that ``edgeprune.load`` rebuilds."""

    model: nn.Module
    source: Any

    def save(self, path: str | Path, preprocess: Any = None) -> Path:
        """Write the checkpoint (``preprocess`` defaults to the loaded model's own)."""
        if self.source is None:
            raise EdgepruneError("saving a checkpoint needs the model by name or as edgeprune.load returned it "
                                 "(a plain nn.Module cannot be rebuilt from a file)")
        return save_checkpoint(self.model, path, spec=self.source.spec, input_shape=self.input_shape,
                               kwargs=self.source.kwargs, preprocess=preprocess or self.source.preprocess,
                               metadata={**getattr(self.source, "metadata", {}), "pruned": self.summary()})


@dataclass
class PruneResult(_Saved):
    model: nn.Module
    graph: DependencyGraph
    plan: Plan
    criterion: str
    seconds: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()
    source: Any = None  # the loaded model (spec, build arguments, preprocessing) when given by name

    @property
    def before(self) -> Counts:
        return self.plan.before

    @property
    def after(self) -> Counts:
        return self.plan.after

    def layers(self) -> list[dict[str, Any]]:
        """Per conv/linear layer: widths and MACs before and after."""
        rows = []
        for old, new in zip(per_layer(self.graph), per_layer(self.graph, self.plan.keep)):
            rows.append({"layer": old["layer"], "in_before": old["in"], "out_before": old["out"],
                         "in_after": new["in"], "out_after": new["out"], "macs_before": old["macs"], "macs_after": new["macs"]})
        return rows

    def summary(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "ratio": self.plan.ratio,
            "macs_before": self.before.macs, "macs_after": self.after.macs,
            "params_before": self.before.params, "params_after": self.after.params,
            "macs_cut": self.plan.macs_cut,
            "groups_pruned": sum(1 for u in self.plan.removed.values() if len(u)),
            "seconds": self.seconds, "seconds_total": sum(self.seconds.values()),
            "warnings": self.warnings, **({"plan": self.plan.details} if self.plan.details else {}),
        }


def resolve_model(model: Any, input_shape: tuple[int, ...] | None = None) -> tuple[nn.Module, tuple[int, ...], Any]:
    """``(module, input shape, loaded)`` for any model form (``loaded`` is None for a plain module)."""
    if model is None or isinstance(model, (str, Path)):
        model = load_model(None if model is None else str(model), input_shape=input_shape)
    if isinstance(model, BuiltModel):
        return model.model, tuple(input_shape or model.input_shape), model
    shape = input_shape or getattr(model, "input_shape", None)
    if not isinstance(model, nn.Module) or shape is None:
        raise EdgepruneError("give a model name, what edgeprune.load returned, or an nn.Module with input_shape=(1, C, H, W)")
    return model, tuple(shape), None


def _criterion(criterion: str | Criterion, options: dict[str, Any] | None) -> Criterion:
    return create_criterion(criterion, **(options or {})) if isinstance(criterion, str) else criterion


def _data(data: Any, criterion: Criterion, loaded: Any, shape: tuple[int, ...]) -> Any:
    """Arrays as given; a SOURCE string read as ``--calib`` reads it, with the model's preprocessing."""
    if not isinstance(data, str):
        return data
    return criterion_data(criterion, data, loaded, shape=shape)


def prune(model: Any, input_shape: tuple[int, ...] | None = None, *, criterion: str | Criterion = "l2",
          ratio: float | None = None, flops_cut: float | None = None, round_to: int = 1,
          layer_ratios: dict[str, float] | None = None, global_ranking: bool = False,
          max_group_ratio: float = 0.9, data: Any = None, inplace: bool = False,
          criterion_options: dict[str, Any] | None = None, planner: Planner | None = None) -> PruneResult:
    """Remove whole filters from ``model``: trace, score, plan, cut. Returns the pruned model
    (``result.model``; ``result.save(PATH)`` writes the checkpoint ``edgeprune prune -o`` writes).

    ``model`` is any form :func:`resolve_model` takes; ``data`` the calibration images a data-driven
    criterion needs, as arrays or a SOURCE (``folder:DIR``, ``X.npz``, ``mnist5k``...).
    ``planner(graph, scores) -> Plan`` replaces the ratio/MACs planning (whose arguments it then
    ignores), e.g. :class:`edgeprune.latency.LatencyPlanner` for a latency budget.
    """
    config = PlanConfig(ratio, flops_cut, dict(layer_ratios or {}), global_ranking, max_group_ratio, round_to)
    if planner is None:
        config.validate()
    criterion = _criterion(criterion, criterion_options)
    model, input_shape, loaded = resolve_model(model, input_shape)
    data = _data(data, criterion, loaded, input_shape)
    model = model if inplace else copy.deepcopy(model)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    graph = checked_graph(model, input_shape)
    seconds["graph"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = score_groups(graph, criterion, data)
    seconds["criterion"] = time.perf_counter() - start
    start = time.perf_counter()
    plan = planner(graph, scores) if planner is not None else make_plan(graph, scores, config)
    apply_keep_mask(model, graph, plan.keep)
    seconds["plan_and_surgery"] = time.perf_counter() - start
    log.info("pruned %d groups: MACs %.2fM -> %.2fM", sum(1 for u in plan.removed.values() if len(u)),
             plan.before.macs / 1e6, plan.after.macs / 1e6)
    return PruneResult(model, graph, plan, criterion.name, seconds, list(graph.warnings), input_shape, loaded)


@dataclass
class IterativeResult(_Saved):
    """The rounds of :func:`prune_iteratively`; ``model`` is the final pruned model."""

    model: nn.Module
    rounds: list[PruneResult]
    criterion: str
    input_shape: tuple[int, ...] = ()
    source: Any = None

    @property
    def before(self) -> Counts:
        return self.rounds[0].before

    @property
    def after(self) -> Counts:
        return self.rounds[-1].after

    @property
    def macs_cut(self) -> float:
        return 1 - self.after.macs / self.before.macs

    def summary(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion, "steps": len(self.rounds),
            "macs_before": self.before.macs, "macs_after": self.after.macs,
            "params_before": self.before.params, "params_after": self.after.params,
            "macs_cut": self.macs_cut, "groups_pruned": self.rounds[-1].summary()["groups_pruned"],
            "seconds_total": sum(sum(r.seconds.values()) for r in self.rounds),
            "rounds": [{"macs_after": r.after.macs, "params_after": r.after.params, "seconds": r.seconds} for r in self.rounds],
            "warnings": sorted({w for r in self.rounds for w in r.warnings}),
        }


def _group_key(group) -> str | None:
    """A module that names ``group`` across rounds (pruning never changes which layers couple)."""
    return next((s.module for s in group.spaces if s.module), None)


def prune_iteratively(model: Any, input_shape: tuple[int, ...] | None = None, *, criterion: str | Criterion = "l2",
                      ratio: float | None = None, flops_cut: float | None = None, steps: int = 4,
                      finetune_fn: Callable[[nn.Module, int], None] | None = None,
                      after_round: Callable[[nn.Module, PruneResult], None] | None = None, data: Any = None,
                      round_to: int = 1, layer_ratios: dict[str, float] | None = None, global_ranking: bool = False,
                      max_group_ratio: float = 0.9, inplace: bool = False,
                      criterion_options: dict[str, Any] | None = None) -> IterativeResult:
    """Reach the target in ``steps`` rounds, rescoring the current weights each round.

    Round t removes 1/steps of the target: with ``ratio`` p each group keeps
    ``round(N (1 - p t / steps))`` of its original N units after round t (so the end matches a
    one-shot cut); with ``flops_cut`` c, the rounds before the last take each group ``t / steps``
    of the way to its width in the one-shot plan for c (scored on the dense model; a round may
    cut nothing from a group whose share is under one aligned step), and the last round searches
    c itself from there, as a one-shot cut would; with ``global_ranking``, round t aims at a cut
    of ``c t / steps`` (or of the ratio). ``finetune_fn(model, t)`` runs between rounds (after
    rounds 1 .. steps-1); the final, longer fine-tune is the caller's. ``after_round(model, result)``
    runs right after every round's cut (e.g. reconstruction), before ``finetune_fn``. Other
    arguments as :func:`prune`.

    >>> from edgeprune.models import build
    >>> built = build("resnet20-cifar")
    >>> result = prune_iteratively(built.model, built.input_shape, criterion="l2", ratio=0.5, steps=2)
    >>> len(result.rounds), result.after.macs < 0.6 * result.before.macs
    (2, True)
    """
    if steps < 1:
        raise EdgepruneError(f"--steps must be a positive integer, got {steps}")
    PlanConfig(ratio, flops_cut, dict(layer_ratios or {}), global_ranking, max_group_ratio, round_to).validate()
    criterion = _criterion(criterion, criterion_options)
    model, input_shape, loaded = resolve_model(model, input_shape)
    data = _data(data, criterion, loaded, input_shape)
    model = model if inplace else copy.deepcopy(model)
    original = checked_graph(model, input_shape)
    original_macs = count(original).macs
    widths = {_group_key(g): g.n_units for g in original.prunable_groups()}
    shares = {}  # each group's own target ratio
    for g in original.prunable_groups():
        named = [s.module for s in g.spaces if s.module in (layer_ratios or {})]
        shares[_group_key(g)] = layer_ratios[named[0]] if named else (ratio or 0.0)
    if flops_cut is not None and not global_ranking:
        shares = _final_shares(original, criterion, data, PlanConfig(None, flops_cut, dict(layer_ratios or {}), False,
                                                                     max_group_ratio, round_to))
    rounds: list[PruneResult] = []
    for t in range(1, steps + 1):
        options = dict(criterion=criterion, round_to=round_to, global_ranking=global_ranking,
                       max_group_ratio=max_group_ratio, data=data, inplace=True)
        landing = flops_cut is not None and t == steps  # the last round searches the MACs target itself
        if not global_ranking and not landing:
            current = {_group_key(g): g.n_units for g in checked_graph(model, input_shape).prunable_groups()}
            layer = {}
            for key, n in current.items():
                if key in widths and n > 0:
                    wanted = max(1, round(widths[key] * (1 - shares[key] * t / steps)))
                    layer[key] = min(max(n - wanted, 0) / n, 1 - 1 / n)
            result = prune(model, input_shape, ratio=None if layer else 0.0, layer_ratios=layer, **options)
        else:
            done = 1 - rounds[-1].after.macs / original_macs if rounds else 0.0
            if flops_cut is not None:
                goal = flops_cut * t / steps
                left = 1 - (1 - goal) / (1 - done)
                result = prune(model, input_shape, flops_cut=max(left, 0.0), **options)
            else:
                goal = ratio * t / steps
                previous = ratio * (t - 1) / steps
                result = prune(model, input_shape, ratio=1 - (1 - goal) / (1 - previous), **options)
        rounds.append(result)
        log.info("round %d/%d: MACs %.2fM", t, steps, result.after.macs / 1e6)
        if after_round is not None:
            after_round(model, result)
        if finetune_fn is not None and t < steps:
            finetune_fn(model, t)
    return IterativeResult(model, rounds, criterion.name, input_shape, loaded)


def _final_shares(graph: DependencyGraph, criterion: Criterion, data: Any, config: PlanConfig) -> dict[str, float]:
    """Each group's share of units removed by the one-shot plan that meets ``config``'s MACs target."""
    plan = make_plan(graph, score_groups(graph, criterion, data), config)
    return {_group_key(g): len(plan.removed.get(g.index, ())) / g.n_units for g in graph.prunable_groups()}


def criterion_data(criterion: str | Criterion, calib: str | None, loaded: Any, preprocess: Any = None,
                   shape: tuple[int, ...] | None = None) -> Any:
    """The calibration data a data-driven criterion needs, or None for a data-free one.

    Images go through ``preprocess`` (default: the model's own, ``loaded.preprocess``), at ``shape``
    (default: the model's input shape).
    """
    if not (create_criterion(criterion) if isinstance(criterion, str) else criterion).needs_data:
        return None
    name = criterion if isinstance(criterion, str) else criterion.name
    if calib is None:
        if not getattr(loaded, "metadata", {}).get("default"):
            raise EdgepruneError(f"criterion '{name}' needs data: give --calib SOURCE (cifar10:DIR, folder:DIR, X.npz, mnist5k)")

        calib = DEFAULT_DATA

    _, channels, *size = shape or loaded.input_shape
    return load_data(calib, split="train", channels=channels, size=tuple(size), limit=640,
                     preprocess=preprocess or getattr(loaded, "preprocess", None))
