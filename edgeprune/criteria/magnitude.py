"""Data-free criteria on raw weights: L1, L2 (Li et al. 2017), FPGM (He et al. 2019), random."""
from __future__ import annotations

import torch

from edgeprune.criteria.base import Criterion, filters, register_criterion
from edgeprune.graph import DependencyGraph, Space


@register_criterion("l1")
class L1(Criterion):
    """Sum of absolute filter weights."""

    name = "l1"

    def space_scores(self, graph: DependencyGraph, space: Space) -> torch.Tensor | None:
        w = filters(graph, space)
        return None if w is None else w.abs().sum(1)


@register_criterion("l2")
class L2(Criterion):
    """Euclidean norm of each filter."""

    name = "l2"

    def space_scores(self, graph: DependencyGraph, space: Space) -> torch.Tensor | None:
        w = filters(graph, space)
        return None if w is None else w.norm(dim=1)


@register_criterion("fpgm")
class FPGM(Criterion):
    """Sum of distances to the layer's other filters: filters near the geometric median go first.

    Works on raw weights (not |W|); grouped and depthwise filters are just shorter rows.
    """

    name = "fpgm"

    def space_scores(self, graph: DependencyGraph, space: Space) -> torch.Tensor | None:
        w = filters(graph, space)
        return None if w is None else torch.cdist(w[None].double(), w[None].double())[0].sum(1)


@register_criterion("random")
class Random(Criterion):
    """A control: uniform random scores from a seeded generator."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def prepare(self, graph: DependencyGraph, data=None) -> None:
        self.generator.manual_seed(self.seed)

    def __call__(self, graph: DependencyGraph, group) -> torch.Tensor:
        return torch.rand(group.n_units, generator=self.generator, dtype=torch.float64)
