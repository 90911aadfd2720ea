"""Soft filter pruning (SFP, He et al. 2018): zero the weakest filters after every epoch, let them train.

The ``sfp`` criterion is L2 (SFP's norm); one-shot, ``prune(..., criterion="sfp")`` is L2
pruning. The soft part is a schedule that the fine-tuning loop calls after each epoch::

    graph = build_graph(model, input_shape)
    schedule = SoftPruningSchedule(graph, ratio=0.4)
    finetune(model, train_loader, val_loader, config, epoch_end=schedule.epoch_end)
    plan = schedule.finalize(model)          # the physical cut, on the final weights

Zeroing touches only the producing conv/linear weights and bias (as SFP's code masks
``weight.data``), not the normalisation after them: with the BN scale and shift left alone a
zeroed filter still receives gradients and can grow back. ``zero_norm=True`` zeroes those too
(:func:`edgeprune.surgery.zero_channels`, the exact image of removal), which freezes the filter.

>>> import torch
>>> from edgeprune.graph import build_graph
>>> from edgeprune.models import build
>>> model = build("resnet20-cifar").model
>>> schedule = SoftPruningSchedule(build_graph(model, (1, 3, 32, 32)), ratio=0.5)
>>> schedule.epoch_end(model, 1)
>>> int((model.layer1[0].conv1.weight.flatten(1).norm(dim=1) == 0).sum())  # 16 filters, half zeroed
8
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.criteria.base import Criterion, create_criterion, register_criterion, score_groups
from edgeprune.criteria.magnitude import L2
from edgeprune.graph import DependencyGraph
from edgeprune.plan import Plan, PlanConfig, make_plan
from edgeprune.surgery import apply_keep_mask, zero_channels


@register_criterion("sfp", recipe="sfp")
class SFP(L2):
    """SFP's filter score, the L2 norm; the soft schedule is :class:`SoftPruningSchedule`."""

    name = "sfp"


def zero_filters(model: nn.Module, graph: DependencyGraph, keep: np.ndarray, *, norm: bool = False) -> nn.Module:
    """Zero, in place, the conv/linear weights and bias producing each channel that ``keep`` drops.

    Normalisation layers are left alone unless ``norm`` (then this is
    :func:`~edgeprune.surgery.zero_channels`), so the zeroed filters keep receiving gradients.
    """
    if norm:
        return zero_channels(model, graph, keep)
    producers = {s.module for s in graph.state.spaces if s.kind in ("conv", "linear") and s.module}
    modules = dict(model.named_modules())
    with torch.no_grad():
        for site in graph.sites:
            if site.module not in producers or site.action != "slice" or site.axis != 0:
                continue
            tensor = getattr(modules[site.module], site.param)
            if isinstance(tensor, nn.Parameter):
                dropped = np.flatnonzero((site.ids >= 0) & ~keep[np.maximum(site.ids, 0)])
                tensor[torch.as_tensor(dropped, dtype=torch.long, device=tensor.device)] = 0
    return model


class SoftPruningSchedule:
    """Zero the lowest-scoring filters of every group at the end of each epoch; cut them at the end.

    ``ratio`` / ``flops_cut`` and ``plan_options`` (``round_to``, ``layer_ratios``,
    ``global_ranking``, ``max_group_ratio``) mean what they mean for :func:`edgeprune.api.prune`.
    Scores are recomputed on the current weights every ``every`` epochs, so a zeroed filter that
    regrew can come back. ``graph`` must describe the model being trained (same module names).
    """

    def __init__(self, graph: DependencyGraph, ratio: float | None = None, criterion: str | Criterion = "sfp", *,
                 flops_cut: float | None = None, every: int = 1, zero_norm: bool = False, data: Any = None,
                 **plan_options: Any) -> None:
        self.graph = graph
        self.criterion = create_criterion(criterion) if isinstance(criterion, str) else criterion
        self.config = PlanConfig(ratio=ratio, flops_cut=flops_cut, **plan_options)
        self.config.validate()
        self.every = max(1, every)
        self.zero_norm = zero_norm
        self.data = data
        self.plan: Plan | None = None

    def _plan(self, model: nn.Module) -> Plan:
        graph = self.graph if model is self.graph.model else dataclasses.replace(self.graph, model=model)
        return make_plan(graph, score_groups(graph, self.criterion, self.data), self.config)

    def epoch_end(self, model: nn.Module, epoch: int) -> None:
        """The ``epoch_end`` hook of :func:`edgeprune.train.finetune`: zero this epoch's weakest filters."""
        if epoch % self.every:
            return
        self.plan = self._plan(model)
        zero_filters(model, self.graph, self.plan.keep, norm=self.zero_norm)

    def finalize(self, model: nn.Module) -> Plan:
        """Remove, in place, the filters that score lowest on the final weights; returns the plan."""
        self.plan = self._plan(model)
        apply_keep_mask(model, self.graph, self.plan.keep)
        return self.plan
