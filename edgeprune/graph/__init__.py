"""The dependency graph: which channels of a network must be removed together.

>>> from edgeprune.models import build
>>> graph = build_graph(build("resnet20-cifar").model, (1, 3, 32, 32))
>>> len(graph.prunable_groups()) > 0
True
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn

from edgeprune.graph.channels import ChannelState, Layer, Site, Space
from edgeprune.graph.groups import Group, build_groups, channel_classes
from edgeprune.graph.ops import resolve
from edgeprune.graph.propagate import propagate
from edgeprune.graph.trace import Trace, replay_module, require_one_input, trace

log = logging.getLogger(__name__)

__all__ = ["DependencyGraph", "Group", "Layer", "Site", "Space", "Trace", "build_graph", "require_one_input", "trace"]


_LOGGED: set[str] = set()


def warn_once(message: str) -> None:
    """Log a graph warning the first time this process meets it (a run builds several graphs of one model)."""
    if message not in _LOGGED:
        _LOGGED.add(message)
        log.warning(message)


@dataclass
class DependencyGraph:
    """A traced model's coupled channel groups, the tensors to shrink, and its conv/linear layers."""

    model: nn.Module
    input_shape: tuple[int, ...]
    state: ChannelState
    classes: np.ndarray
    groups: list[Group]
    trace: Trace = field(repr=False)
    param_sizes: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)
    _replays: dict[int, fx.GraphModule] = field(default_factory=dict, repr=False)

    @property
    def sites(self) -> list[Site]:
        return list(self.state.sites.values())

    @property
    def layers(self) -> list[Layer]:
        return self.state.layers

    @property
    def warnings(self) -> list[str]:
        return self.state.warnings

    def prunable_groups(self) -> list[Group]:
        """Groups with at least two prunable units (one must always stay)."""
        return [g for g in self.groups if g.n_prunable >= 2]

    def keep_mask(self, removed: dict[int, np.ndarray]) -> np.ndarray:
        """Global channel mask (True = kept) from the units removed in each group."""
        keep = np.ones(self.state.total, dtype=bool)
        gone = [self.groups[g].roots[np.asarray(u, dtype=np.int64)] for g, u in removed.items() if len(u)]
        if gone:
            keep &= ~np.isin(self.classes, np.concatenate(gone))
        return keep

    def replay(self, batch: int) -> fx.GraphModule:
        """The traced ops as a GraphModule for inputs of ``batch`` images (the model's own weights)."""
        if batch not in self._replays:
            traced = self.trace if batch == self.trace.batch else \
                trace(self.model, torch.zeros((batch,) + tuple(self.input_shape[1:]), device="meta"))
            self._replays[batch] = replay_module(self.model, traced)
        return self._replays[batch]

    def pin(self, group: Group, reason: str) -> None:
        """Keep every channel of ``group``, saying why in a warning."""
        group.frozen[:] = True
        group.blocks = None
        message = f"group '{group.name}': {reason}; its channels are not pruned"
        self.state.warn(message)
        warn_once(message)

    def group_of_module(self, module: str) -> Group | None:
        for group in self.groups:
            if any(s.module == module for s in group.spaces):
                return group
        return None


def build_graph(model: nn.Module, input_shape: tuple[int, ...]) -> DependencyGraph:
    """Trace ``model`` on a zero input of ``input_shape`` and find its coupled channel groups."""
    traced = trace(model, torch.zeros(input_shape, device="meta"))
    state = propagate(traced, model, resolve)
    for message in state.warnings:
        warn_once(message)
    classes = channel_classes(state)
    sizes = {(m, p): t.numel() for m, module in model.named_modules() for p, t in module.named_parameters(recurse=False)}
    return DependencyGraph(model, tuple(input_shape), state, classes, build_groups(state, classes), traced, sizes)
