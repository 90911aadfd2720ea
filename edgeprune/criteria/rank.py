"""Criteria on feature maps: HRank (Lin et al. 2020) and FMS (feature-map similarity + rank).

Both read each conv channel's maps after its activation on calibration data (see
:mod:`edgeprune.criteria.activations`), by default HRank's 5 batches of 128 images, or fewer if
fewer are given. A group with no readable conv map (a fully-connected layer) is scored by the
``fallback`` weight criterion (L2) instead.

>>> import torch
>>> from edgeprune.api import prune
>>> from edgeprune.models import build
>>> built = build("resnet20-cifar")
>>> result = prune(built.model, built.input_shape, criterion="hrank", ratio=0.5, data=torch.randn(8, 3, 32, 32))
>>> result.after.macs < 0.6 * result.before.macs
True
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.counter import count_model
from edgeprune.criteria.activations import ChannelRanks, ChannelSimilarity, capture_nodes, collect, evaluating
from edgeprune.criteria.base import Criterion, combine, create_criterion, register_criterion
from edgeprune.errors import EdgepruneError
from edgeprune.graph import DependencyGraph, Group, Space


class FeatureMapCriterion(Criterion):
    """Shared machinery: read the maps of every conv space of the prunable groups, then score."""

    needs_data = True

    def __init__(self, batches: int = 5, batch_size: int = 128, through_add: bool = True,
                 fallback: str | None = "l2") -> None:
        self.batches = batches
        self.batch_size = batch_size
        self.through_add = through_add
        self.fallback = fallback
        self.per_space: dict[int, torch.Tensor] = {}
        self.images = 0

    def statistics(self) -> dict[str, Any]:
        """The accumulators one tapped node needs (name -> callable taking a (B, C, H, W) batch)."""
        raise NotImplementedError

    def space_result(self, stats: dict[str, Any]) -> torch.Tensor:
        """One score per channel from a tapped node's accumulators."""
        raise NotImplementedError

    def prepare(self, graph: DependencyGraph, data: Any = None) -> None:
        spaces = [s for g in graph.prunable_groups() for s in g.spaces if s.kind == "conv"]
        nodes = capture_nodes(graph, spaces, self.through_add)
        stats = {node.name: self.statistics() for node in nodes.values()}

        def tap(accumulators: dict[str, Any]):
            def update(maps: torch.Tensor) -> None:
                for accumulate in accumulators.values():
                    accumulate(maps)
            return update

        self.images = collect(graph, data, {name: tap(acc) for name, acc in stats.items()},
                              batch_size=self.batch_size, batches=self.batches)
        self.per_space = {index: self.space_result(stats[node.name]) for index, node in nodes.items()}

    def space_scores(self, graph: DependencyGraph, space: Space) -> torch.Tensor | None:
        return self.per_space.get(space.index)

    def __call__(self, graph: DependencyGraph, group: Group) -> torch.Tensor:
        per_space = {s.index: self.per_space[s.index] for s in group.spaces if s.index in self.per_space}
        if per_space:
            return combine(group, per_space, self.reduction)
        if self.fallback is None:
            return torch.zeros(group.n_units, dtype=torch.float64)
        return create_criterion(self.fallback)(graph, group)


@register_criterion("hrank")
class HRank(FeatureMapCriterion):
    """Average rank of each channel's post-activation feature map over calibration images.

    ``batches`` x ``batch_size`` images at most (HRank: 5 x 128); ``through_add`` reads a
    residual block's last conv after the add and its ReLU, as HRank's ResNet code does. Each
    layer's ranks are divided by their ceiling, min(H, W): HRank ranks one layer at a time, and a
    coupled group (a residual stream across stages) holds layers of several resolutions, whose raw
    ranks (at most 32, 16, 8...) would otherwise decide by resolution, not by information.
    """

    name = "hrank"

    def statistics(self) -> dict[str, Any]:
        return {"rank": ChannelRanks()}

    def space_result(self, stats: dict[str, Any]) -> torch.Tensor:
        return stats["rank"].fraction()


def fms_redundant(similarity: torch.Tensor, ranks: torch.Tensor, tau: float = 0.8) -> np.ndarray:
    """FMS's selection: visit filters by descending rank; a kept filter j marks redundant every
    other filter i with ``S_ij > tau`` and ``r_i <= r_j``. Returns the redundant mask.

    >>> s = torch.tensor([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    >>> fms_redundant(s, torch.tensor([5.0, 7.0, 6.0])).tolist()
    [True, False, False]
    """
    s = similarity.double().cpu().numpy()
    r = ranks.double().cpu().numpy()
    close = s > tau
    np.fill_diagonal(close, False)
    redundant = np.zeros(len(r), dtype=bool)
    for j in np.argsort(-r, kind="stable"):
        if not redundant[j]:
            redundant |= close[j] & (r <= r[j])
    return redundant


def fms_scores(similarity: torch.Tensor, ranks: torch.Tensor, tau: float = 0.8) -> torch.Tensor:
    """FMS's selection as scores for a planner that removes the lowest.

    Redundant filters score ``r / (r_max + 1)`` in [0, 1), the others ``1 + r / (r_max + 1)``:
    a budget smaller than the redundant set removes the lowest-rank redundant filters; a larger
    one removes them all, then the lowest-rank of the rest, as FMS fills its budget.
    """
    ranks = ranks.double().cpu()
    scaled = ranks / (ranks.max() + 1)
    return scaled + torch.as_tensor(~fms_redundant(similarity, ranks, tau), dtype=torch.float64)


@register_criterion("fms")
class FMS(FeatureMapCriterion):
    """Feature-map similarity and average rank: similar maps are redundant, low rank goes first.

    S_ij is the mean over images of cos(vec F_i, vec F_j) and r_j HRank's average rank; see
    :func:`fms_redundant` for the selection (``tau`` = 0.8) and :func:`fms_scores` for how it
    becomes scores. The optional head replacement is :func:`replace_fc_head_with_gap`.
    """

    name = "fms"

    def __init__(self, tau: float = 0.8, batches: int = 5, batch_size: int = 128, through_add: bool = True,
                 fallback: str | None = "l2") -> None:
        super().__init__(batches, batch_size, through_add, fallback)
        self.tau = tau

    def statistics(self) -> dict[str, Any]:
        return {"rank": ChannelRanks(), "similarity": ChannelSimilarity()}

    def space_result(self, stats: dict[str, Any]) -> torch.Tensor:
        return fms_scores(stats["similarity"].mean(), stats["rank"].mean(), self.tau)


# ---------------------------------------------------------------------------------------------
# FMS step 4: global average pooling + one Linear instead of a fully-connected head

_HEAD_LAYERS = (nn.Linear, nn.Flatten, nn.Dropout, nn.Identity, nn.modules.batchnorm._BatchNorm,
                nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd,
                nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd) + (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.Tanh, nn.Sigmoid)


def _is_head(module: nn.Module) -> bool:
    if isinstance(module, nn.Sequential):
        return all(_is_head(m) for m in module)
    return isinstance(module, _HEAD_LAYERS)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


@dataclass
class HeadReplacement:
    """What :func:`replace_fc_head_with_gap` saved, apart from any pruning."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    @property
    def params_saved(self) -> int:
        return self.params_before - self.params_after

    @property
    def macs_saved(self) -> int:
        return self.macs_before - self.macs_after


def replace_fc_head_with_gap(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[nn.Module, HeadReplacement]:
    """FMS's optional step: replace a multi-layer fully-connected head by GAP + one Linear.

    Works on an ``nn.Sequential`` whose tail is pooling/flatten/Linear/BN/activation layers (such
    as vgg16-cifar's AvgPool-Linear-BN-ReLU-Linear) and on torchvision-style models with
    ``avgpool`` and ``classifier``. The new Linear is freshly initialised: fine-tune afterwards.
    Returns a new model (the input is not modified) and the saving.

    >>> from edgeprune.models import build
    >>> built = build("vgg16-cifar")
    >>> new, saved = replace_fc_head_with_gap(built.model, built.input_shape)
    >>> saved.params_saved
    263680
    """
    model = copy.deepcopy(model)
    before = count_model(model, input_shape)
    probe = torch.zeros(input_shape)
    if isinstance(model, nn.Sequential):
        children = list(model)
        start = len(children)
        while start > 0 and _is_head(children[start - 1]):
            start -= 1
        head = nn.Sequential(*children[start:])
        if len(_linears(head)) < 2:
            raise EdgepruneError("no multi-layer fully-connected head to replace at the end of this Sequential")
        with torch.no_grad(), evaluating(model):
            features = nn.Sequential(*children[:start])(probe)
        new = nn.Sequential(*children[:start], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(features.shape[1], _linears(head)[-1].out_features))
    elif hasattr(model, "features") and hasattr(model, "avgpool") and hasattr(model, "classifier"):
        if len(_linears(model.classifier)) < 2:
            raise EdgepruneError("the classifier has a single Linear layer: nothing to replace")
        with torch.no_grad(), evaluating(model):
            features = model.features(probe)
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Linear(features.shape[1], _linears(model.classifier)[-1].out_features)
        new = model
    else:
        raise EdgepruneError(f"cannot find the fully-connected head of {type(model).__name__}: "
                             "expected an nn.Sequential or features/avgpool/classifier attributes")
    after = count_model(new, input_shape)
    return new, HeadReplacement(before.params, after.params, before.macs, after.macs)
