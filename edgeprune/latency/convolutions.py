"""The convolutions of a traced model as the latency table sees them, and their widths under a plan."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgeprune.graph import DependencyGraph
from edgeprune.latency.table import ConvShape


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def conv_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, ConvShape]:
    """Every plain or depthwise ``Conv2d`` that a forward pass on ``input_shape`` runs, by module name.

    Other grouped convolutions and string paddings are left out: the table does not model them
    and their time stays in the model's measured remainder.
    """
    shapes: dict[str, ConvShape] = {}

    def hook(name: str, conv: nn.Conv2d):
        def record(_module, inputs, _output) -> None:
            depthwise = conv.groups == conv.in_channels == conv.out_channels
            if (conv.groups == 1 or depthwise) and not isinstance(conv.padding, str):
                ph, pw = _pair(conv.padding)
                shapes[name] = ConvShape(_pair(conv.kernel_size), _pair(conv.stride), (ph, pw, ph, pw),
                                         _pair(conv.dilation), tuple(inputs[0].shape[2:4]), conv.in_channels,
                                         conv.out_channels, depthwise)
        return record

    handles = [m.register_forward_hook(hook(n, m)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_shape))
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


@dataclass
class Side:
    """One side (input or output channels) of a layer: a fixed part, and units of groups."""

    fixed: int
    units: dict[int, np.ndarray]  # group index -> unit of each channel on this side

    def width(self, removed: dict[int, np.ndarray]) -> int:
        """Channels kept when ``removed[g]`` (a bool mask over group g's units) is gone."""
        return self.fixed + sum(int((~removed[g][u]).sum()) if g in removed else len(u) for g, u in self.units.items())


@dataclass
class TimedLayer:
    name: str
    shape: ConvShape
    inputs: Side
    outputs: Side

    def groups(self) -> set[int]:
        return set(self.inputs.units) | set(self.outputs.units)


def _side(graph: DependencyGraph, ids: np.ndarray | None, fixed_width: int, group_of: np.ndarray,
          unit_of: np.ndarray) -> Side:
    if ids is None:
        return Side(fixed_width, {})
    ids = ids.reshape(-1)
    real = ids >= 0
    roots = graph.classes[ids[real]]
    groups = group_of[roots]
    units = {int(g): unit_of[roots[groups == g]] for g in np.unique(groups) if g >= 0}
    return Side(int((~real).sum() + (groups < 0).sum()), units)


def timed_layers(graph: DependencyGraph) -> list[TimedLayer]:
    """The graph's convolutions that the table can time, with the groups behind their widths."""
    shapes = conv_shapes(graph.model, graph.input_shape)
    group_of = np.full(graph.state.total, -1)
    unit_of = np.zeros(graph.state.total, dtype=np.int64)
    for group in graph.groups:
        group_of[group.roots] = group.index
        unit_of[group.roots] = np.arange(group.n_units)
    layers = []
    for layer in graph.layers:
        if layer.module in shapes:
            layers.append(TimedLayer(layer.module, shapes[layer.module],
                                     _side(graph, layer.in_ids, layer.fixed_in, group_of, unit_of),
                                     _side(graph, layer.out_ids, 0, group_of, unit_of)))
    return layers
