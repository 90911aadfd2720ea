"""Prove that every prunable group can really be cut: shrink the model on meta tensors, trace it again.

The channel ids see how tensors flow, not how the forward computes its sizes: an attention block
that reads ``B, C, H, W = x.shape`` and later views another tensor as ``(B, C, H, W)``, or an
``assert`` on a width, ties counts the ids cannot express. Such sizes reach the recorded ops as
numbers (a ``view``, ``reshape``, ``expand``, a tensor made with a size, a split by attribute
sizes); a model whose forward has none of those needs no check (most CNNs: ``flatten`` takes no
size). Otherwise one channel (one per block) is removed from every prunable group while the
model's float tensors are meta tensors (no arithmetic, nothing copied; all is restored after),
and the model is traced again. If the forward fails or an output changes shape, the groups
near the module that failed, then halves, are tried until the groups that break it are found;
those are pinned, with a warning that quotes the failure. When nothing breaks, this costs one
trace.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple

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


aten = torch.ops.aten
# Ops whose arguments hold sizes the forward computed in Python (where a width read from
# ``x.shape`` or a number in the code can hide).
SIZED = {aten.view, aten.reshape, aten._unsafe_view, aten.expand, aten.unflatten, aten.repeat, aten.tile,
         aten.split, aten.split_with_sizes, aten.zeros, aten.ones, aten.full, aten.empty, aten.rand, aten.randn,
         aten.new_zeros, aten.new_ones, aten.new_full, aten.new_empty}


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
    if not groups or not any(getattr(n.target, "overloadpacket", None) in SIZED for n in graph.trace.ops):
        return []
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
    with _weightless(graph.model) as model:
        try:
            traced = trace(apply_keep_mask(model, graph, keep), torch.zeros(graph.input_shape, device="meta"))
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


@contextmanager
def _weightless(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with its float tensors swapped for meta ones (integer ones, such as an index, kept);
    on exit every tensor and attribute of every module is as it was (a cut may change them)."""
    saved = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    try:
        for m in model.modules():
            for name, p in m._parameters.items():
                if p is not None and p.is_floating_point():
                    m._parameters[name] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for name, b in m._buffers.items():
                if b is not None and b.is_floating_point():
                    m._buffers[name] = torch.empty_like(b, device="meta")
        yield model
    finally:
        for m, attributes, parameters, buffers in saved:
            m._parameters.clear()
            m._parameters.update(parameters)
            m._buffers.clear()
            m._buffers.update(buffers)
            for name in [k for k in m.__dict__ if k not in attributes]:
                del m.__dict__[name]
            for name, value in attributes.items():
                if m.__dict__.get(name) is not value:
                    m.__dict__[name] = value


def _output_shapes(traced) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    output = next(n for n in traced.graph.nodes if n.op == "output")
    torch.fx.node.map_arg(output.args, lambda n: shapes.append(tuple(n.meta["val"].shape)))
    return shapes
