"""MACs and parameters, counted on the real (or planned) network.

MACs follow the thop convention: convolution and linear layers only, one multiply-accumulate per
kernel weight per output position, bias and other layers not counted. Parameters are all of the
model's parameters (BatchNorm included), which is what torchvision publishes.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from torch import nn

from edgeprune.graph import DependencyGraph, build_graph


@dataclass(frozen=True)
class Counts:
    macs: int
    params: int

    def to_dict(self) -> dict[str, int]:
        return {"macs": self.macs, "params": self.params}


def _kept(ids: np.ndarray, keep: np.ndarray) -> int:
    return int(((ids < 0) | keep[np.maximum(ids, 0)]).sum())


def count(graph: DependencyGraph, keep: np.ndarray | None = None) -> Counts:
    """Counts of ``graph``'s model as it would be with only the ``keep`` channels (all if None)."""
    keep = np.ones(graph.state.total, dtype=bool) if keep is None else keep
    macs = 0
    for layer in graph.layers:
        width_in = layer.fixed_in if layer.in_ids is None else _kept(layer.in_ids, keep)
        macs += layer.macs_per_pair * width_in * _kept(layer.out_ids, keep)
    return Counts(macs, _params(graph, keep))


def _params(graph: DependencyGraph, keep: np.ndarray) -> int:
    fractions: dict[tuple[str, str], float] = defaultdict(lambda: 1.0)
    for site in graph.sites:
        if site.action == "slice":
            fractions[(site.module, site.param)] *= _kept(site.ids, keep) / len(site.ids)
    return sum(round(n * fractions[key]) if key in fractions else n for key, n in graph.param_sizes.items())


def count_model(model: nn.Module, input_shape: tuple[int, ...]) -> Counts:
    """Trace ``model`` and count it.

    >>> from edgeprune.models import build
    >>> round(count_model(build("resnet56-cifar").model, (1, 3, 32, 32)).macs / 1e6, 1)
    125.5
    """
    return count(build_graph(model, input_shape))


def per_layer(graph: DependencyGraph, keep: np.ndarray | None = None) -> list[dict]:
    """One row per conv/linear layer: its input and output widths and MACs."""
    keep = np.ones(graph.state.total, dtype=bool) if keep is None else keep
    rows = []
    for layer in graph.layers:
        width_in = layer.fixed_in if layer.in_ids is None else _kept(layer.in_ids, keep)
        width_out = _kept(layer.out_ids, keep)
        rows.append({"layer": layer.module, "in": width_in, "out": width_out,
                     "macs": layer.macs_per_pair * width_in * width_out})
    return rows


def compare_layers(before: nn.Module, after: nn.Module, input_shape: tuple[int, ...]) -> list[dict]:
    """Per conv/linear layer of ``before``: widths and MACs before and after (0 where a layer went)."""
    new = {row["layer"]: row for row in per_layer(build_graph(after, input_shape))}
    rows = []
    for old in per_layer(build_graph(before, input_shape)):
        now = new.get(old["layer"], {"in": 0, "out": 0, "macs": 0})
        rows.append({"layer": old["layer"], "in_before": old["in"], "out_before": old["out"], "in_after": now["in"],
                     "out_after": now["out"], "macs_before": old["macs"], "macs_after": now["macs"]})
    return rows


def fraction(after: int, before: int) -> float:
    return after / before if before else math.nan
