"""The criterion interface: a small object that scores the units of one coupled group.

Higher scores mean more important; pruning removes the lowest. A criterion that needs data or a
view of the whole model overrides :meth:`Criterion.prepare`, which runs once before scoring.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.graph import DependencyGraph, Group, Space


class Criterion:
    """Scores each unit of a group. Subclasses implement :meth:`space_scores` or ``__call__``."""

    name = "criterion"
    needs_data = False
    reduction = "mean"  # how the per-layer scores of a unit's channels combine: "mean" or "sum"

    def prepare(self, graph: DependencyGraph, data: Any = None) -> None:
        """Run once before any group is scored (collect activations, seed generators...)."""

    def space_scores(self, graph: DependencyGraph, space: Space) -> torch.Tensor | None:
        """One score per channel of ``space``, or None when this space has no say."""
        raise NotImplementedError

    def __call__(self, graph: DependencyGraph, group: Group) -> torch.Tensor:
        per_space = {s.index: self.space_scores(graph, s) for s in group.spaces}
        return combine(group, {k: v for k, v in per_space.items() if v is not None}, self.reduction)


def combine(group: Group, per_space: dict[int, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Fold per-channel scores of the group's spaces into one score per unit."""
    total = torch.zeros(group.n_units, dtype=torch.float64)
    seen = torch.zeros(group.n_units, dtype=torch.float64)
    for space_index, scores in per_space.items():
        units = torch.as_tensor(group.unit_of[space_index])
        total.index_add_(0, units, scores.detach().double().cpu())
        seen.index_add_(0, units, torch.ones_like(units, dtype=torch.float64))
    return total / seen.clamp(min=1) if reduction == "mean" else total


def filters(graph: DependencyGraph, space: Space) -> torch.Tensor | None:
    """The weights producing each channel of ``space``, one row per channel (conv filters, FC rows)."""
    if space.kind not in ("conv", "linear") or space.module is None:
        return None
    module: nn.Module = graph.model.get_submodule(space.module)
    return module.weight.detach().flatten(1)


@dataclass(frozen=True)
class CriterionEntry:
    """A registered criterion: how to make it, and how it meets fine-tuning (:mod:`edgeprune.recipes`).

    ``recipe``: the recipe that runs it (``oneshot``, or the soft ``sfp`` / ``tcfp``); ``steps``:
    the rounds the one-shot recipe cuts in by default; ``holdout``: whether its recipe judges on
    labelled training images held out from recovery; ``rest``: the criterion that cuts what its
    recipe's own stages could not reach."""

    factory: Callable[..., Criterion]
    recipe: str = "oneshot"
    steps: int = 1
    holdout: bool = False
    rest: str | None = None


_REGISTRY: dict[str, CriterionEntry] = {}


def register_criterion(name: str, *, recipe: str = "oneshot", steps: int = 1, holdout: bool = False,
                       rest: str | None = None) -> Callable:
    def wrap(factory: Callable[..., Criterion]) -> Callable[..., Criterion]:
        _REGISTRY[name] = CriterionEntry(factory, recipe, steps, holdout, rest)
        return factory

    return wrap


def criterion_entry(name: str) -> CriterionEntry:
    """What ``name`` was registered with; an unknown name is one clear error."""
    if name not in _REGISTRY:
        raise EdgepruneError(f"unknown criterion '{name}' (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def create_criterion(name: str, **options: Any) -> Criterion:
    """The criterion registered as ``name``, built with ``options`` (``None`` values dropped)."""
    return criterion_entry(name).factory(**{k: v for k, v in options.items() if v is not None})


def list_criteria() -> list[str]:
    return sorted(_REGISTRY)


def score_groups(graph: DependencyGraph, criterion: Criterion, data: Any = None) -> dict[int, torch.Tensor]:
    """Run ``criterion`` over every prunable group of ``graph``."""
    criterion.prepare(graph, data)
    with torch.no_grad():
        return {g.index: criterion(graph, g) for g in graph.prunable_groups()}
