"""ThiNet: keep the channels from which the next layers can best be rebuilt.

ThiNet (Luo et al., 2017) judges a layer's filters by the layer after it: the channels kept are
those from which its output can still be rebuilt, found greedily, the cheapest to lose first.
Here every conv and linear layer that reads a group's channels (its *consumers*) has a say, and
"rebuilt" means after a least-squares refit, which is what the reconstruction right after the
cut does (:mod:`edgeprune.train.reconstruct`): the criterion keeps what that refit recovers best.
On MTCNN's ONet with conv1 cut from 32 to 16 channels (the README's face crops), the L2 norm's
choice left the box output at a cosine of 0.9847 after reconstruction, this one at 0.9897 (0.9898
and 0.9930 after 10 epochs of distillation).

For a consumer with input rows X (the dense model's, at most 64 sampled positions per image, plus
a ones column for the bias) and weights W, only H = XᵀX is gathered: its dense output is Y = XW,
so XᵀY = HW and ‖Y‖² = tr(WᵀHW). With M the inverse of (ridge-regularised) H over the columns
still kept and W* the refitted weights, removing a channel's columns b raises the error by
tr(W*_bᵀ M_bb⁻¹ W*_b); M and W* then follow by the block form of Optimal Brain Surgeon's update. A group of more than
:data:`STEPS` units loses its cheapest few at each step (the ranking within a step is the order of
their costs), so a group takes at most that many updates.
A unit's score is the group's relative error (summed over its consumers) right after its
removal: the first removed scores lowest. Grouped and depthwise consumers have no say; a group
that no consumer judges (a model output) is scored by the L2 norm of its filters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.criteria.magnitude import L2
from edgeprune.train.batches import as_batches
from edgeprune.criteria.base import Criterion, register_criterion
from edgeprune.graph import DependencyGraph, Group
from edgeprune.train.reconstruct import collect_tensors, input_rows, refittable, weight_matrix

MEMORY_MB = 1024  # the Gram matrices gathered in one pass over the images; more layers take more passes
STEPS = 64  # a group of more units than this loses them in this many steps (several per step), to bound the time


@dataclass
class _Consumer:
    """One layer reading a group's channels: which of its regressor columns each unit owns."""

    module: str
    columns: dict[int, np.ndarray]  # unit -> column indices into the layer's rows (X)


def _columns_per_input(layer: nn.Module) -> int:
    return int(np.prod(layer.kernel_size)) if isinstance(layer, nn.Conv2d) else 1


def _judges(layer: nn.Module | None) -> bool:
    """A layer the refit handles, and whose every output reads every input (not grouped)."""
    return refittable(layer) and getattr(layer, "groups", 1) == 1


@register_criterion("thinet")
class ThiNet(Criterion):
    """Greedy removal by the consumers' least-squares error (see the module's docstring)."""

    name = "thinet"
    needs_data = True

    def __init__(self, images: int = 256, positions: int = 64, batch_size: int = 64, ridge: float = 1e-3,
                 seed: int = 0) -> None:
        self.images, self.positions, self.batch_size = images, positions, batch_size
        self.ridge, self.seed = ridge, seed
        self.grams: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}
        self.consumers: dict[int, list[_Consumer]] = {}

    def prepare(self, graph: DependencyGraph, data: Any = None) -> None:
        modules = dict(graph.model.named_modules())
        self.consumers = {g.index: self._consumers_of(graph, g, modules) for g in graph.prunable_groups()}
        wanted = sorted({c.module for found in self.consumers.values() for c in found})
        self.weights = {name: weight_matrix(modules[name], 1, bias=True)[0] for name in wanted}
        self.grams = {}
        for names in _passes(wanted, modules):
            self.grams.update(self._gather(graph.model, {n: modules[n] for n in names}, data))

    @staticmethod
    def _consumers_of(graph: DependencyGraph, group: Group, modules: dict[str, nn.Module]) -> list[_Consumer]:
        unit_of_root = {int(root): u for u, root in enumerate(group.roots) if not group.frozen[u]}
        found = []
        for layer in graph.layers:
            if layer.in_ids is None or not _judges(modules.get(layer.module)):
                continue
            units = np.array([unit_of_root.get(int(r), -1) for r in graph.classes[layer.in_ids]])
            if (units < 0).all():
                continue
            width = _columns_per_input(modules[layer.module])
            columns = {int(u): (np.flatnonzero(units == u)[:, None] * width + np.arange(width)).ravel()
                       for u in np.unique(units[units >= 0])}
            found.append(_Consumer(layer.module, columns))
        return found

    def _gather(self, model: nn.Module, layers: dict[str, nn.Module], data: Any) -> dict[str, torch.Tensor]:
        """XᵀX of each layer's input rows (with a ones column) over the calibration images."""
        grams: dict[str, torch.Tensor] = {}
        generator = torch.Generator().manual_seed(self.seed)
        was = model.training
        model.eval()
        try:
            for batch in as_batches(data, self.batch_size, limit=self.images):
                for name, source in collect_tensors(model, layers, batch, want_input=True).items():
                    rows = input_rows(layers[name], source, 1, None)[:, 0].double()
                    rows = rows.reshape(len(source), -1, rows.shape[-1])  # image x output position x D
                    if rows.shape[1] > self.positions:
                        rows = rows[:, torch.randperm(rows.shape[1], generator=generator)[:self.positions]]
                    rows = rows.reshape(-1, rows.shape[-1])
                    rows = torch.cat([rows, torch.ones_like(rows[:, :1])], dim=1)
                    grams[name] = grams.get(name, 0) + rows.T @ rows
        finally:
            model.train(was)
        return grams

    def __call__(self, graph: DependencyGraph, group: Group) -> torch.Tensor:
        consumers = self.consumers.get(group.index, [])
        if not consumers:
            return L2()(graph, group)
        fits = [_Refit(self.grams[c.module], self.weights[c.module], c.columns, self.ridge) for c in consumers]
        alive = torch.zeros(group.n_units, dtype=torch.bool)
        alive[sorted({u for c in consumers for u in c.columns})] = True
        scores = torch.full((group.n_units,), float("inf"), dtype=torch.float64)
        error = 0.0
        chunk = -(-int(alive.sum()) // STEPS)
        while alive.any():
            costs = sum(fit.costs(group.n_units) for fit in fits)
            order = torch.argsort(torch.where(alive, costs, torch.full_like(costs, float("inf"))))
            units = order[:min(chunk, int(alive.sum()))].tolist()
            for fit in fits:
                fit.remove(units)
            alive[units] = False
            for unit in units:
                error += float(costs[unit])
                scores[unit] = error
        finite = scores[torch.isfinite(scores)]
        top = float(finite.max()) if len(finite) else 0.0
        return torch.where(torch.isfinite(scores), scores, torch.full_like(scores, top + 1.0))


class _Refit:
    """One consumer's least-squares fit, as columns are removed from it (see the module's docstring)."""

    def __init__(self, gram: torch.Tensor, weights: torch.Tensor, columns: dict[int, np.ndarray], ridge: float) -> None:
        self.norm = float(torch.einsum("io,ij,jo->", weights, gram, weights)) or 1.0
        regularised = gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
        self.inverse = torch.linalg.inv(regularised)
        self.solution = self.inverse @ (gram @ weights)
        self.columns = {u: torch.as_tensor(c, dtype=torch.long) for u, c in columns.items()}
        by_width: dict[int, list[int]] = {}
        for u, c in columns.items():
            by_width.setdefault(len(c), []).append(u)
        # units whose blocks have one width, solved together: (units, their columns n x b)
        self.batches = [(torch.tensor(units), torch.stack([self.columns[u] for u in units]))
                        for units in by_width.values()]

    def costs(self, n_units: int) -> torch.Tensor:
        """The relative error each unit's removal would add now (0 for units this layer does not read)."""
        found = torch.zeros(n_units, dtype=torch.float64)
        for units, index in self.batches:  # the units still in the fit
            if not len(units):
                continue
            blocks = self.inverse[index[:, :, None], index[:, None, :]]  # n x b x b
            rows = self.solution[index]  # n x b x O
            found[units] = (rows * torch.linalg.solve(blocks, rows)).sum(dim=(1, 2)) / self.norm
        return found

    def remove(self, units: list[int]) -> None:
        units = [u for u in units if u in self.columns]
        if not units:
            return
        b = torch.cat([self.columns.pop(u) for u in units])
        block = self.inverse[b][:, b]
        across = self.inverse[:, b]  # D x b
        self.solution -= across @ torch.linalg.solve(block, self.solution[b])
        self.inverse -= across @ torch.linalg.solve(block, across.T)
        self.inverse[b] = 0
        self.inverse[:, b] = 0
        self.solution[b] = 0
        gone = torch.tensor(units)
        stay = [~torch.isin(kept, gone) for kept, _ in self.batches]
        self.batches = [(kept[s], index[s]) for (kept, index), s in zip(self.batches, stay)]


def _passes(names: list[str], modules: dict[str, nn.Module]) -> list[list[str]]:
    """``names`` in passes whose Gram matrices fit in :data:`MEMORY_MB` together."""
    passes, size = [[]], 0
    for name in names:
        layer = modules[name]
        d = layer.weight[0].numel() + 1
        mb = d * d * 8 / 2 ** 20
        if passes[-1] and size + mb > MEMORY_MB:
            passes.append([])
            size = 0
        passes[-1].append(name)
        size += mb
    return [p for p in passes if p]
