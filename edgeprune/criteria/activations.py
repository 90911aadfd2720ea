"""Feature maps after each conv's activation, reduced to per-channel statistics batch by batch.

The map of a conv channel is read where HRank reads it: after the conv's normalisation and
activation. From the conv's ATen node in the traced graph we follow single-user normalisation and
activation nodes (and, with ``through_add``, a residual add of the same shape, as HRank's ResNet
code reads ``relu2`` after the add) and tap the last one. The recorded ops run through an
:class:`torch.fx.Interpreter` over ``graph.replay(batch)`` (the model's own weights, the trace of
that batch size): nothing is registered on the model, so nothing can be left behind, and each
tapped tensor is reduced by a callback as soon as it is computed. Only per-channel sums survive a
batch, never the maps themselves.

>>> import torch
>>> from edgeprune.models import build
>>> from edgeprune.graph import build_graph
>>> graph = build_graph(build("resnet20-cifar").model, (1, 3, 32, 32))
>>> space = graph.state.module_spaces["layer1.0.conv1"]
>>> node = capture_node(graph, space)
>>> str(node.target), list(node.meta["nn_module_stack"])[-1]
('aten.relu_.default', 'layer1.0.relu1')
>>> ranks = ChannelRanks()
>>> collect(graph, torch.randn(4, 3, 32, 32), {capture_node(graph, space).name: ranks}, batch_size=2)
4
>>> ranks.mean().shape
torch.Size([16])
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgeprune.errors import EdgepruneError
from edgeprune.graph import DependencyGraph, Space
from edgeprune.train.batches import as_batches, model_device

aten = torch.ops.aten
CONVS = {aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution}
NORMS = {aten.batch_norm, aten.instance_norm, aten.group_norm}
ACTIVATIONS = {aten.relu, aten.relu_, aten.relu6, aten.leaky_relu, aten.leaky_relu_, aten.prelu, aten.elu, aten.elu_,
               aten.selu, aten.selu_, aten.celu, aten.celu_, aten.gelu, aten.gelu_, aten.silu, aten.silu_, aten.mish,
               aten.mish_, aten.hardswish, aten.hardswish_, aten.hardsigmoid, aten.hardsigmoid_, aten.hardtanh,
               aten.hardtanh_, aten.sigmoid, aten.sigmoid_, aten.tanh, aten.tanh_, aten.softplus}
ADDS = {aten.add, aten.add_}


# ---------------------------------------------------------------------------------------------
# where to read a conv's maps


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    value = node.meta.get("val")
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _op(node: fx.Node) -> Any:
    return getattr(node.target, "overloadpacket", None) if node.op == "call_function" else None


def _passes_through(node: fx.Node, through_add: bool) -> bool:
    """Whether ``node`` keeps a channel's identity: a norm, an activation, or (optionally) an add."""
    return _op(node) in NORMS | ACTIVATIONS or (through_add and _op(node) in ADDS)


def _conv_node(graph: DependencyGraph, module: str) -> fx.Node | None:
    weight = f"{module}.weight"
    return next((n for n in graph.trace.ops if _op(n) in CONVS and isinstance(n.args[1], fx.Node)
                 and n.args[1].op == "get_attr" and n.args[1].target == weight), None)


def capture_node(graph: DependencyGraph, space: Space, through_add: bool = True) -> fx.Node | None:
    """The traced node whose output holds ``space``'s maps after its activation (4-D convs only)."""
    if space.kind != "conv" or space.module is None:
        return None
    node = _conv_node(graph, space.module)
    if node is None:
        return None
    shape = _shape(node)
    if shape is None or len(shape) != 4 or shape[1] != space.size:
        return None
    while len(node.users) == 1:
        user = next(iter(node.users))
        if not _passes_through(user, through_add) or _shape(user) != shape:
            break
        node = user
    return node


def capture_nodes(graph: DependencyGraph, spaces: list[Space], through_add: bool = True) -> dict[int, fx.Node]:
    """``space.index -> node`` for every space whose maps can be read (others are left out)."""
    found = {s.index: capture_node(graph, s, through_add) for s in spaces}
    return {k: v for k, v in found.items() if v is not None}


def truncated(gm: fx.GraphModule, name: str) -> fx.GraphModule:
    """A GraphModule computing only what node ``name`` needs and returning it (shares ``gm``'s weights)."""
    graph = fx.Graph()
    remap: dict[fx.Node, fx.Node] = {}
    node = None
    for n in gm.graph.nodes:
        if n.op == "output":
            break
        remap[n] = graph.node_copy(n, lambda a: remap[a])
        if n.name == name:
            node = n
            break
    if node is None:
        raise EdgepruneError(f"node {name} is not in the traced graph")
    graph.output(remap[node])
    prefix = fx.GraphModule(gm, graph)
    prefix.graph.eliminate_dead_code()
    prefix.recompile()
    return prefix


# ---------------------------------------------------------------------------------------------
# running the model with taps


class _Stop(Exception):
    """Raised after the last tapped node: the rest of the network is not needed."""


class _Tap(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, taps: dict[str, Callable[[torch.Tensor], None]]) -> None:
        super().__init__(gm)
        self.taps = taps
        names = [n.name for n in gm.graph.nodes if n.name in taps]
        if len(names) != len(taps):
            raise EdgepruneError(f"the model ran other operations at another batch size ({sorted(set(taps) - set(names))[:3]})")
        self.last = names[-1] if names else None

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        tap = self.taps.get(n.name)
        if tap is not None:
            tap(out)
        if n.name == self.last:
            raise _Stop
        return out


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block; every module's own training flag is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def collect(graph: DependencyGraph, data: Any, taps: dict[str, Callable[[torch.Tensor], None]], *,
            batch_size: int = 128, batches: int | None = 5) -> int:
    """Run calibration batches through the traced model, calling ``taps[node_name](output)``.

    At most ``batches`` batches of ``batch_size`` images (``None``: all of ``data``); the model
    runs in eval mode without gradients. Returns the number of images seen.
    """
    limit = None if batches is None else batch_size * batches
    device = model_device(graph.model)
    seen = 0
    if not taps:
        return seen
    runners: dict[int, _Tap] = {}
    with evaluating(graph.model), torch.inference_mode():
        for x in as_batches(data, batch_size, limit):
            if len(x) not in runners:
                runners[len(x)] = _Tap(graph.replay(len(x)), taps)
            try:
                runners[len(x)].run(x.to(device))
            except _Stop:
                pass
            seen += len(x)
    if seen == 0:
        raise EdgepruneError("the calibration data holds no images")
    return seen


# ---------------------------------------------------------------------------------------------
# per-channel statistics, updated one batch at a time


def batched_rank(maps: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.matrix_rank`` of each matrix in a (B, H, W) stack, computed faster.

    A matrix is certified full rank, without an SVD, when the Cholesky factorisation of
    ``F^T F - tau^2 I`` (float64) succeeds with ``tau = ||F||_F * max(H, W) * eps``: ``tau`` is at
    least matrix_rank's own threshold (``sigma_max * max(H, W) * eps``), so ``sigma_min > tau``
    means every singular value counts. All-zero maps have rank 0; the rest go to matrix_rank.
    """
    if maps.ndim != 3:
        raise ValueError(f"expected a (B, H, W) stack, got shape {tuple(maps.shape)}")
    maps = maps.detach().float()
    if maps.shape[-2] < maps.shape[-1]:
        maps = maps.mT
    n = maps.shape[-1]
    ranks = torch.zeros(len(maps), dtype=torch.long, device=maps.device)
    tau = maps.flatten(1).double().norm(dim=1) * max(maps.shape[-2:]) * torch.finfo(maps.dtype).eps
    nonzero = (tau > 0).nonzero().flatten()
    if len(nonzero) == 0:
        return ranks
    d = maps[nonzero].double()
    gram = d.mT @ d
    gram.diagonal(dim1=-2, dim2=-1).sub_(tau[nonzero, None] ** 2)
    _, info = torch.linalg.cholesky_ex(gram)
    full = info == 0
    ranks[nonzero[full]] = n
    rest = nonzero[~full]
    if len(rest):
        ranks[rest] = torch.linalg.matrix_rank(maps[rest])
    return ranks


class ChannelRanks:
    """Running mean over images of each channel's feature-map rank (HRank's statistic)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.images = 0
        self.ceiling = 0  # the largest possible rank: min(H, W)

    def __call__(self, maps: torch.Tensor) -> None:
        b, c = maps.shape[:2]
        ranks = batched_rank(maps.reshape(b * c, *maps.shape[2:])).view(b, c).sum(0).double().cpu()
        self.total = ranks if self.total is None else self.total + ranks
        self.images += b
        self.ceiling = min(maps.shape[2:])

    def mean(self) -> torch.Tensor:
        return self.total / max(self.images, 1)

    def fraction(self) -> torch.Tensor:
        """The mean rank as a fraction of the largest possible one: comparable across resolutions."""
        return self.mean() / max(self.ceiling, 1)


class ChannelSimilarity:
    """Running mean over images of the cosine similarity between every two channels' maps."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.images = 0

    def __call__(self, maps: torch.Tensor) -> None:
        b, c = maps.shape[:2]
        unit = F.normalize(maps.reshape(b, c, -1).float(), dim=2)  # all-zero maps stay zero
        flat = unit.transpose(0, 1).reshape(c, -1)  # <row_i, row_j> = sum over images of cos(F_i, F_j)
        sums = (flat @ flat.T).double().cpu()
        self.total = sums if self.total is None else self.total + sums
        self.images += b

    def mean(self) -> torch.Tensor:
        s = self.total / max(self.images, 1)
        return (s + s.T) / 2
