"""Prove that every prunable group can really be cut: shrink a weightless copy, trace it again.

The channel ids see how tensors flow, not how the forward computes its sizes: an attention block
that reads ``B, C, H, W = x.shape`` and later views another tensor as ``(B, C, H, W)``, or an
``assert`` on a width, ties counts the ids cannot express. So one channel (one per block) is
removed from every prunable group of a meta copy of the model (no arithmetic, no weights copied),
and the copy is traced again. If the forward fails or an output changes shape, halves of the
groups are tried in turn until the groups that break it are found; those are pinned, with a
warning that quotes the failure. When nothing breaks, this costs one trace.
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from edgeprune.errors import TraceError
from edgeprune.graph import DependencyGraph, Group, build_graph, trace
from edgeprune.surgery import apply_keep_mask


def checked_graph(model: nn.Module, input_shape: tuple[int, ...]) -> DependencyGraph:
    """:func:`~edgeprune.graph.build_graph`, with the groups whose cut would break the forward pinned:
    the graph to plan a cut on."""
    graph = build_graph(model, input_shape)
    pin_unshrinkable(graph)
    return graph


class Failure(NamedTuple):
    reason: str
    module: str | None  # the module that was running when the shrunk forward failed


def pin_unshrinkable(graph: DependencyGraph) -> list[Group]:
    """Pin the prunable groups whose removal would break ``graph.model``'s forward; returns them.

    >>> from edgeprune.models import build
    >>> from edgeprune.graph import build_graph
    >>> pin_unshrinkable(build_graph(build("resnet20-cifar").model, (1, 3, 32, 32)))
    []
    """
    groups = graph.prunable_groups()
    expected = _output_shapes(graph.trace)
    broken = _culprits(graph, groups, expected, _failure(graph, groups, expected))
    for group, reason in broken:
        graph.pin(group, f"cutting it breaks the forward ({reason})")
    return [group for group, _ in broken]


def _culprits(graph: DependencyGraph, groups: list[Group], expected, failure: Failure | None) -> list[tuple[Group, str]]:
    """The groups among ``groups`` (which fail together) that fail on their own.

    The groups with layers in or near the module where the forward failed are tried first; then
    halves, until single groups are left.
    """
    if failure is None:
        return []
    if len(groups) == 1:
        return [(groups[0], failure.reason)]
    suspects = _near(groups, failure.module)
    if 0 < len(suspects) < len(groups):
        found = _culprits(graph, suspects, expected, _failure(graph, suspects, expected))
        if found:
            rest = [g for g in groups if all(g is not f for f, _ in found)]
            return found + _culprits(graph, rest, expected, _failure(graph, rest, expected))
    half = len(groups) // 2
    found = []
    for part in (groups[:half], groups[half:]):
        found += _culprits(graph, part, expected, _failure(graph, part, expected))
    return found or [(g, failure.reason) for g in groups]  # only the combination fails: keep them all


def _near(groups: list[Group], module: str | None) -> list[Group]:
    """The groups with a layer inside ``module``, or else inside its closest enclosing module."""
    parts = module.split(".") if module else []
    for depth in range(len(parts), 0, -1):
        prefix = ".".join(parts[:depth])
        hits = [g for g in groups if any(s.module and (s.module == prefix or s.module.startswith(prefix + "."))
                                         for s in g.spaces)]
        if hits:
            return hits
    return []


def _failure(graph: DependencyGraph, groups: list[Group], expected) -> Failure | None:
    if not groups:
        return None
    keep = graph.keep_mask({g.index: _one_per_block(g) for g in groups})
    shrunk = apply_keep_mask(_weightless_copy(graph.model), graph, keep)
    try:
        traced = trace(shrunk, torch.zeros(graph.input_shape, device="meta"))
    except TraceError as exc:
        return Failure(str(exc).split(": ", 1)[-1], getattr(exc, "module", None))
    if _output_shapes(traced) != expected:
        return Failure("an output changes shape", None)
    return None
def _one_per_block(group: Group) -> np.ndarray:
    free = np.flatnonzero(~group.frozen)
    if group.blocks is None:
        return free[-1:]
    return np.array([free[group.blocks[free] == b][-1] for b in np.unique(group.blocks[free])])


def _weightless_copy(model: nn.Module) -> nn.Module:
    """The module tree again, float tensors on the meta device (integer ones, such as an index, kept)."""
    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        twin = torch.empty_like(t, device="meta") if t.is_floating_point() else t.detach().clone()
        memo[id(t)] = nn.Parameter(twin, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else twin
    return copy.deepcopy(model, memo)


def _output_shapes(traced) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    output = next(n for n in traced.graph.nodes if n.op == "output")
    torch.fx.node.map_arg(output.args, lambda n: shapes.append(tuple(n.meta["val"].shape)))
    return shapes
