"""CSCTFP: two-stage filter pruning with cosine spatial correlation (see shared/papers/SPEC.md).

Per layer: the key filters are the ``m = max(min_keys, ceil(key_fraction * N))`` filters of
largest L2 norm; every other filter scores ``s_i = max over keys |cos(vec W_i, vec W_k)|``.
Keys score above everything (``2 + norm / max norm``), the rest by ``s_i`` in [0, 1], so a
planner removing the lowest keeps the keys plus the filters most correlated with them. Grouped
convolutions are scored block by block (filters of different blocks see different inputs).
The paper's 4-round schedule is :func:`edgeprune.api.prune_iteratively` with ``steps=4``.

>>> import torch
>>> from torch import nn
>>> from edgeprune.graph import build_graph
>>> conv = nn.Conv2d(2, 4, 1, bias=False)
>>> with torch.no_grad():
...     _ = conv.weight.copy_(torch.tensor([[3.0, 0], [1.0, 0.1], [0, 1.0], [0.1, 1.0]]).view(4, 2, 1, 1))
>>> model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(4, 1, 1))
>>> graph = build_graph(model, (1, 2, 4, 4))
>>> [round(v, 2) for v in CSCTFP().space_scores(graph, graph.state.module_spaces["0"]).tolist()]
[3.0, 1.0, 0.0, 0.1]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgeprune.criteria.base import Criterion, register_criterion
from edgeprune.errors import EdgepruneError
from edgeprune.graph import DependencyGraph, Space


def key_filter_scores(weight: torch.Tensor, key_fraction: float = 0.1, min_keys: int = 1,
                      similarity: str = "flat") -> torch.Tensor:
    """CSCTFP scores of one layer's filters ``weight`` (N x ...): keys first, then by correlation.

    ``similarity="flat"`` (default): cosine between flattened filters. ``"spatial"``: the mean
    over input channels of the cosine between the k x k kernels (the absolute value of that mean
    is used; for 1 x 1 kernels this reading degenerates to sign agreement).
    """
    n = weight.shape[0]
    w = weight.detach().double()
    norms = w.flatten(1).norm(dim=1)
    m = min(n, max(min_keys, math.ceil(key_fraction * n)))
    keys = torch.argsort(-norms, stable=True)[:m]
    if similarity == "flat" or w.ndim < 3:
        unit = F.normalize(w.flatten(1), dim=1)
        s = (unit @ unit[keys].T).abs().amax(1)
    elif similarity == "spatial":
        kernels = F.normalize(w.flatten(2), dim=2)  # N x C x k*k
        s = torch.einsum("ick,jck->ij", kernels, kernels[keys]).div(w.shape[1]).abs().amax(1)
    else:
        raise EdgepruneError(f"unknown CSCTFP similarity '{similarity}' (flat, spatial)")
    s = s.clamp(max=1.0)
    s[keys] = 2 + norms[keys] / norms.max().clamp(min=1e-30)
    return s


@register_criterion("csctfp", steps=4)
class CSCTFP(Criterion):
    """Keep the largest-norm key filters and the filters most cosine-correlated with them."""

    name = "csctfp"

    def __init__(self, key_fraction: float = 0.1, min_keys: int = 1, similarity: str = "flat") -> None:
        if similarity not in ("flat", "spatial"):
            raise EdgepruneError(f"unknown CSCTFP similarity '{similarity}' (flat, spatial)")
        if not 0 < key_fraction <= 1:
            raise EdgepruneError(f"key fraction must be in (0, 1], got {key_fraction}")
        self.key_fraction = key_fraction
        self.min_keys = min_keys
        self.similarity = similarity

    def space_scores(self, graph: DependencyGraph, space: Space) -> torch.Tensor | None:
        if space.kind not in ("conv", "linear") or space.module is None:
            return None
        weight = graph.model.get_submodule(space.module).weight.detach()
        blocks = weight.chunk(space.blocks) if space.blocks > 1 else (weight,)
        return torch.cat([key_filter_scores(b, self.key_fraction, self.min_keys, self.similarity) for b in blocks])
