"""TCFP: pruning by filter function similarity (see shared/papers/SPEC.md).

Per conv layer:

1. each filter's *function* r_j: by default an input image that maximises the filter's mean
   post-activation response (:func:`maximise_activations`); ``function="probe"`` uses instead the
   filter's mean activation on each calibration image;
2. the L2-normalised r_j are clustered with k-means, k chosen by silhouette in
   [ceil(N/8), ceil(N/2)] (:func:`cluster_functions`);
3. intra-cluster pruning keeps the largest-L2 ``max(1, round(s (1 - q)))`` filters of a cluster of
   s: as scores, the filter in position t (0 = largest L2) of its cluster scores ``1 - t / s``, so
   removing the lowest-scoring units spreads the cut over the clusters (:func:`intra_cluster_scores`);
4. inter-cluster soft pruning during fine-tuning (:func:`tcfp_soft_prune`, :class:`TCFPSoftSchedule`).

Wiring stages 3 and 4 (``val`` is a held-out part of the *training* data, never the test set)::

    tcfp = create_criterion("tcfp")
    result = prune(model, shape, criterion=tcfp, ratio=q, data=calib)            # stage 3, hard
    clusters = remap_clusters(tcfp.clusters, result.graph, result.plan.keep)
    schedule = TCFPSoftSchedule(build_graph(result.model, shape), clusters, val,
                                target_macs=(1 - flops_cut) * result.before.macs)
    finetune(result.model, train_loader, None, config, epoch_end=schedule.epoch_end)  # stage 4, soft
    schedule.finalize(result.model)                                             # remove what stayed below theta

>>> import torch
>>> labels = cluster_functions(torch.tensor([[1.0, 0], [1, 0.01], [0, 1], [0.01, 1]]))
>>> labels[0] == labels[1] != labels[2] == labels[3]
tensor(True)
"""
from __future__ import annotations

import contextlib
import copy
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.counter import count
from edgeprune.criteria.activations import (capture_node, capture_nodes, collect, evaluating,
                                            model_device, truncated)
from edgeprune.criteria.base import Criterion, combine, filters, register_criterion
from edgeprune.criteria.soft import zero_filters
from edgeprune.errors import EdgepruneError
from edgeprune.graph import DependencyGraph, Group, Space
from edgeprune.surgery import apply_keep_mask, zero_channels

# ---------------------------------------------------------------------------------------------
# 1. a filter's function


def _blur_kernel(channels: int, sigma: float) -> torch.Tensor:
    t = torch.arange(-1, 2, dtype=torch.float32)
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = torch.outer(g, g)
    return (k / k.sum()).expand(channels, 1, 3, 3).contiguous()


def maximise_activations(graph: DependencyGraph, space: Space, *, steps: int = 200, lr: float = 0.05,
                         l2: float = 1e-4, jitter: int = 2, blur_every: int = 4, blur_sigma: float = 0.5,
                         image_size: int | None = None, through_add: bool = True, seed: int = 0,
                         on_step: Callable[[int, torch.Tensor], bool] | None = None) -> torch.Tensor | None:
    """One input image per filter of ``space``, all optimised together in one batch.

    Image j maximises ``mean(post-activation map of channel j) - l2 * ||x_j||^2`` with Adam
    (``lr``, ``steps``); the network runs only up to the layer's activation. Every image starts
    from the same seeded noise and each step shifts the whole batch by the same random jitter
    (up to ``jitter`` pixels), so identical filters get identical images; every ``blur_every``
    steps the images are blurred (3 x 3 Gaussian, ``blur_sigma``). ``image_size`` (default: the
    model's) may be smaller to save time: the prefix is fully convolutional. ``on_step(step, x)``
    is called after each step (1-based) with the images so far; returning True stops early.
    Returns N x C x H x W images, or None when the layer's maps cannot be read.
    """
    node = capture_node(graph, space, through_add)
    if node is None:
        return None
    with _BUILDING:  # fx's code generation keeps shared counters: one prefix at a time
        prefix = truncated(graph.replay(space.size), node.name)
    channels, height, width = graph.input_shape[1:]
    if image_size is not None:
        height = width = image_size
    device = model_device(graph.model)
    generator = torch.Generator().manual_seed(seed)
    start = 0.01 * torch.randn(1, channels, height, width, generator=generator)
    x = start.repeat(space.size, 1, 1, 1).to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=lr)
    kernel = _blur_kernel(channels, blur_sigma).to(device)
    index = torch.arange(space.size, device=device)
    with evaluating(graph.model):
        for step in range(steps):
            shift = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist() if jitter else [0, 0]
            out = prefix(torch.roll(x, shift, dims=(2, 3)))
            objective = out[index, index].mean(dim=(1, 2)) - l2 * x.pow(2).flatten(1).sum(1)
            (x.grad,) = torch.autograd.grad(-objective.sum(), x)  # no gradient reaches the weights
            optimiser.step()
            if blur_every and (step + 1) % blur_every == 0:
                with torch.no_grad():
                    x.copy_(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels))
            if on_step is not None and on_step(step + 1, x.detach()):
                break
    return x.detach()


_BUILDING = threading.Lock()


@contextlib.contextmanager
def _one_thread_per_layer() -> Iterator[int]:
    """Layers side by side, each on one intra-op thread; yields how many at once (torch's threads).

    The maximisation is thousands of small operators: with two intra-op threads each waits for the
    other at every operator, and whatever else runs on a 2-core machine stalls them all (measured
    here: 34-70 s against 6 s on one thread for the same six layers). One thread per layer keeps the
    cores busy without that, and the results do not change (every layer has its own seeded generator).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


class _ClustersSettled:
    """``on_step`` for :func:`maximise_activations`: every ``every`` steps cluster the images so
    far; stop once the clusters agree with the last check's (adjusted Rand index >= ``ari``)."""

    def __init__(self, every: int, ari: float | None, cluster: dict[str, Any]) -> None:
        from sklearn.metrics import adjusted_rand_score  # here, not at import: sklearn is slow to load

        self.every, self.ari, self.cluster, self.agreement = every, ari, cluster, adjusted_rand_score
        self.last: np.ndarray | None = None
        self.steps = 0

    def __call__(self, step: int, images: torch.Tensor) -> bool:
        self.steps = step
        if self.ari is None or step % self.every:
            return False
        labels = cluster_functions(images, **self.cluster).numpy()
        settled = self.last is not None and self.agreement(self.last, labels) >= self.ari
        self.last = labels
        return settled


def probe_activations(graph: DependencyGraph, spaces: list[Space], data: Any, *, batch_size: int = 128,
                      batches: int | None = 5, through_add: bool = True) -> dict[int, torch.Tensor]:
    """``space.index -> N x images``: each filter's mean activation on each calibration image."""
    nodes = capture_nodes(graph, spaces, through_add)
    rows: dict[str, list[torch.Tensor]] = {node.name: [] for node in nodes.values()}
    collect(graph, data, {name: (lambda maps, out=out: out.append(maps.mean((2, 3)).T.double().cpu()))
                          for name, out in rows.items()}, batch_size=batch_size, batches=batches)
    return {index: torch.cat(rows[node.name], 1) for index, node in nodes.items()}


# ---------------------------------------------------------------------------------------------
# 2. clustering


def _sq_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return ((x * x).sum(1, keepdim=True) - 2 * x @ centres.T + (centres * centres).sum(1)).clamp(min=0)


def kmeans(x: torch.Tensor, k: int, *, seed: int = 0, iters: int = 100, tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Lloyd's k-means with k-means++ seeding (seeded). Returns labels, centres and inertia.

    >>> labels, _, _ = kmeans(torch.tensor([[0.0], [0.1], [5.0], [5.1]]), 2)
    >>> labels[0] == labels[1] != labels[2] == labels[3]
    tensor(True)
    """
    x = x.double()
    n = len(x)
    k = max(1, min(k, n))
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = _sq_distances(x, x[chosen])[:, 0]
    for _ in range(1, k):
        total = nearest.sum()
        pick = (torch.multinomial(nearest / total, 1, generator=generator) if total > 0
                else torch.randint(n, (1,), generator=generator))
        chosen.append(int(pick))
        nearest = torch.minimum(nearest, _sq_distances(x, x[chosen[-1:]])[:, 0])
    centres = x[chosen].clone()
    for _ in range(iters):
        labels = _sq_distances(x, centres).argmin(1)
        onehot = F.one_hot(labels, k).double()
        counts = onehot.sum(0)
        moved = torch.where(counts[:, None] > 0, onehot.T @ x / counts.clamp(min=1)[:, None], centres)
        shift = (moved - centres).pow(2).sum()
        centres = moved
        if shift <= tol:
            break
    d = _sq_distances(x, centres)
    labels = d.argmin(1)
    return labels, centres, float(d.gather(1, labels[:, None]).sum())


def silhouette(x: torch.Tensor, labels: torch.Tensor, distances: torch.Tensor | None = None) -> float:
    """Mean silhouette coefficient (Euclidean), singletons counting 0, as scikit-learn computes it.

    >>> round(silhouette(torch.tensor([[0.0], [1.0], [4.0], [5.0]]), torch.tensor([0, 0, 1, 1])), 4)
    0.746
    """
    d = torch.cdist(x.double(), x.double()) if distances is None else distances
    _, labels = torch.unique(labels, return_inverse=True)
    k = int(labels.max()) + 1
    if k < 2 or k >= len(x):
        return 0.0
    onehot = F.one_hot(labels, k).double()
    sums = d @ onehot
    counts = onehot.sum(0)
    own = counts[labels]
    a = sums.gather(1, labels[:, None])[:, 0] / (own - 1).clamp(min=1)
    others = (sums / counts).scatter(1, labels[:, None], math.inf)
    b = others.min(1).values
    s = torch.where((own > 1) & (torch.maximum(a, b) > 0), (b - a) / torch.maximum(a, b), torch.zeros_like(a))
    return float(s.mean())


def cluster_functions(r: torch.Tensor, *, k_range: tuple[float, float] = (1 / 8, 1 / 2), max_k_trials: int = 16,
                      iters: int = 100, seed: int = 0) -> torch.Tensor:
    """Cluster the rows of ``r`` (one filter's function each) after L2-normalising them.

    k is the best silhouette among at most ``max_k_trials`` values evenly spread over
    [ceil(N k_range[0]), ceil(N k_range[1])] (k >= 2 where N allows). Identical rows always share
    a cluster. Returns one label per row.
    """
    n = len(r)
    x = F.normalize(r.detach().double().flatten(1), dim=1)
    if x.shape[1] > n:  # same distances, fewer dimensions
        u, s, _ = torch.linalg.svd(x, full_matrices=False)
        x = u * s
    low, high = max(2, math.ceil(n * k_range[0])), min(n - 1, math.ceil(n * k_range[1]))
    if high < low:
        return torch.zeros(n, dtype=torch.long)
    candidates = sorted({int(round(v)) for v in np.linspace(low, high, min(max_k_trials, high - low + 1))})
    d = torch.cdist(x, x)
    best, best_score = None, -math.inf
    for k in candidates:
        labels, _, _ = kmeans(x, k, seed=seed, iters=iters)
        score = silhouette(x, labels, d)
        if score > best_score:
            best, best_score = labels, score
    _, first = np.unique(r.detach().flatten(1).cpu().numpy(), axis=0, return_inverse=True)
    representative = np.full(first.max() + 1, -1)
    for i, row in enumerate(first.ravel()):  # identical functions: the label of the first of them
        if representative[row] < 0:
            representative[row] = i
    return best[torch.as_tensor(representative[first.ravel()])]


# ---------------------------------------------------------------------------------------------
# 3. intra-cluster L2


def intra_cluster_scores(labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Score ``1 - t / s`` for the filter in position t (0 = largest norm) of its cluster of s.

    Removing every filter scoring below ``q`` keeps about ``max(1, round(s (1 - q)))`` of each
    cluster; a tiny L2 term breaks ties. The largest filter of every cluster scores 1.

    >>> intra_cluster_scores(torch.tensor([0, 0, 1, 0]), torch.tensor([1.0, 3.0, 2.0, 2.0])).round(decimals=3).tolist()
    [0.333, 1.0, 1.0, 0.667]
    """
    lab = labels.cpu().numpy()
    nrm = norms.double().cpu().numpy()
    order = np.lexsort((-nrm, lab))  # by cluster, then by descending norm
    sorted_labels = lab[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    sizes = np.searchsorted(sorted_labels, sorted_labels, side="right") - starts
    position = np.arange(len(lab)) - starts
    scores = np.empty(len(lab))
    scores[order] = 1 - position / sizes
    return torch.as_tensor(scores) + 1e-6 * torch.as_tensor(nrm) / max(nrm.max(), 1e-30)


@register_criterion("tcfp", recipe="tcfp", holdout=True, rest="l2")
class TCFP(Criterion):
    """Functional clusters per layer; within a cluster, the largest L2 norms stay.

    After :meth:`prepare`, ``clusters[module]`` holds each conv layer's cluster labels (for the
    soft stage). ``function``: ``"maximisation"`` (default; needs no data) or ``"probe"`` (mean
    activations over ``batches`` x ``batch_size`` calibration images). The default maximisation is
    the fast reading: images at ``image_scale`` of the model's resolution, at most ``steps`` Adam
    steps at ``lr``, stopped once the clusters settle (checked every ``check_every`` steps;
    ``stop_ari`` None: never). ``TCFP(**TCFP.FULL)`` is SPEC's full reading
    (benchmarks/tcfp_speed.py compares the two).
    Groups without conv maps (fully-connected) are scored by L2.
    """

    name = "tcfp"
    needs_data = True

    FULL = dict(steps=200, lr=0.05, image_scale=1.0, stop_ari=None)
    """SPEC's full reading: 200 Adam steps at the model's resolution (minutes on a deep network)."""

    def __init__(self, function: str = "maximisation", steps: int = 30, lr: float = 0.3, l2: float = 1e-4,
                 jitter: int = 2, blur_every: int = 4, blur_sigma: float = 0.5, image_size: int | None = None,
                 image_scale: float = 0.5, check_every: int = 10, stop_ari: float | None = 0.9,
                 k_range: tuple[float, float] = (1 / 8, 1 / 2), max_k_trials: int = 16, kmeans_iters: int = 100,
                 batches: int = 5, batch_size: int = 128, through_add: bool = True, seed: int = 0) -> None:
        if function not in ("maximisation", "probe"):
            raise EdgepruneError(f"unknown TCFP filter function '{function}' (maximisation, probe)")
        if not 0 < image_scale <= 1:
            raise EdgepruneError(f"TCFP image scale must be in (0, 1], got {image_scale}")
        self.function = function
        self.maximise = dict(steps=steps, lr=lr, l2=l2, jitter=jitter, blur_every=blur_every, blur_sigma=blur_sigma,
                             image_size=image_size, through_add=through_add, seed=seed)
        self.image_scale, self.check_every, self.stop_ari = image_scale, check_every, stop_ari
        self.cluster = dict(k_range=tuple(k_range), max_k_trials=max_k_trials, iters=kmeans_iters, seed=seed)
        self.batches, self.batch_size, self.through_add = batches, batch_size, through_add
        self.clusters: dict[str, np.ndarray] = {}
        self.per_space: dict[int, torch.Tensor] = {}
        self.steps_taken: dict[str, int] = {}
        self.settled_labels: dict[int, torch.Tensor] = {}  # the last check's clusters of each layer's final images

    def functions(self, graph: DependencyGraph, spaces: list[Space], data: Any) -> dict[int, torch.Tensor]:
        if self.function == "probe":
            return probe_activations(graph, spaces, data, batch_size=self.batch_size, batches=self.batches,
                                     through_add=self.through_add)
        size = self.maximise["image_size"] or max(8, round(min(graph.input_shape[2:]) * self.image_scale))

        def one(space: Space) -> tuple[torch.Tensor | None, _ClustersSettled]:
            stop = _ClustersSettled(self.check_every, self.stop_ari, self.cluster)
            return maximise_activations(graph, space, **{**self.maximise, "image_size": size}, on_step=stop), stop

        for batch in {space.size for space in spaces}:
            # traced before the threads start: tracing swaps the model's tensors for meta ones while it
            # runs, which a layer maximised meanwhile on another thread would read
            graph.replay(batch)
        with evaluating(graph.model), _one_thread_per_layer() as workers, ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(one, spaces))
        found = {}
        for space, (images, stop) in zip(spaces, done):
            self.steps_taken[space.module] = stop.steps
            if images is not None:
                found[space.index] = images
                if stop.last is not None and stop.steps % stop.every == 0:  # its last check clustered these
                    self.settled_labels[space.index] = torch.as_tensor(stop.last)
        return found

    def prepare(self, graph: DependencyGraph, data: Any = None) -> None:
        spaces = [s for g in graph.prunable_groups() for s in g.spaces if s.kind == "conv"]
        by_index = {s.index: s for s in spaces}
        self.clusters, self.per_space, self.settled_labels = {}, {}, {}
        for index, r in self.functions(graph, spaces, data).items():
            space = by_index[index]
            labels = self.settled_labels.get(index)
            if labels is None:
                labels = cluster_functions(r, **self.cluster)
            self.clusters[space.module] = labels.numpy()
            self.per_space[index] = intra_cluster_scores(labels, filters(graph, space).norm(dim=1))

    def space_scores(self, graph: DependencyGraph, space: Space) -> torch.Tensor | None:
        return self.per_space.get(space.index)

    def __call__(self, graph: DependencyGraph, group: Group) -> torch.Tensor:
        per_space = {s.index: self.per_space[s.index] for s in group.spaces if s.index in self.per_space}
        if not per_space:  # no conv maps: the L2 norms of whatever produces the channels
            per_space = {s.index: w.norm(dim=1) for s in group.spaces if (w := filters(graph, s)) is not None}
        return combine(group, per_space, self.reduction)


def remap_clusters(clusters: dict[str, np.ndarray], graph: DependencyGraph, keep: np.ndarray) -> dict[str, np.ndarray]:
    """The cluster labels of the channels that survive ``keep`` (``graph``: the graph before the cut)."""
    out = {}
    for module, labels in clusters.items():
        space = graph.state.module_spaces.get(module)
        if space is not None and len(labels) == space.size:
            out[module] = np.asarray(labels)[keep[space.offset:space.offset + space.size]]
    return out


# ---------------------------------------------------------------------------------------------
# 4. inter-cluster soft pruning


def labeled_batches(data: Any, batch_size: int = 256):
    """``(x, y)`` tensor batches from arrays with ``.x``/``.y``, an ``(x, y)`` pair, or an iterable of pairs."""
    if hasattr(data, "x") and hasattr(data, "y"):
        data = (data.x, data.y)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], (np.ndarray, torch.Tensor)):
        if data[1] is None:
            raise EdgepruneError("the validation data has no labels")
        x, y = torch.as_tensor(data[0]), torch.as_tensor(data[1])
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size].float(), y[start:start + batch_size]
        return
    for x, y in data:
        yield torch.as_tensor(x).float(), torch.as_tensor(y)


def accuracy(model: nn.Module, data: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy (0-1) of ``model`` on labeled ``data``, in eval mode, mode restored after."""
    device = model_device(model)
    right = total = 0
    with evaluating(model), torch.no_grad():
        for x, y in labeled_batches(data, batch_size):
            right += int((model(x.to(device)).argmax(1).cpu() == y.cpu()).sum())
            total += len(y)
    if total == 0:
        raise EdgepruneError("the validation data holds no images")
    return right / total


def cluster_units(graph: DependencyGraph, clusters: dict[str, np.ndarray]) -> dict[tuple[str, int], tuple[int, np.ndarray]]:
    """``(module, label) -> (group index, units)`` for every cluster of a prunable, unfrozen layer."""
    group_of = {s.index: g for g in graph.prunable_groups() for s in g.spaces}
    out = {}
    for module, labels in clusters.items():
        space = graph.state.module_spaces.get(module)
        if space is None or space.index not in group_of:
            continue
        if len(labels) != space.size:
            raise EdgepruneError(f"{len(labels)} cluster labels for {module}'s {space.size} channels: "
                                 "remap the clusters after pruning (remap_clusters)")
        group = group_of[space.index]
        units = group.unit_of[space.index]
        for label in np.unique(labels):
            u = np.unique(units[labels == label])
            if not group.frozen[u].any():
                out[(module, int(label))] = (group.index, u)
    return out


def _leaves_every_space(group: Group, units: np.ndarray) -> bool:
    removed = np.zeros(group.n_units, dtype=bool)
    removed[units] = True
    return not any(removed[group.unit_of[s.index]].all() for s in group.spaces)


@dataclass
class SoftStep:
    """One pass of inter-cluster soft pruning: accuracy drops and the clusters now zeroed."""

    baseline: float
    deltas: dict[tuple[str, int], float]
    selected: list[tuple[str, int]]
    removed: dict[int, np.ndarray]  # group index -> units, as a plan's ``removed``
    keep: np.ndarray  # global channel mask (True = kept), for apply_keep_mask


def tcfp_soft_prune(model: nn.Module, graph: DependencyGraph, clusters: dict[str, np.ndarray], val_data: Any,
                    evaluate_fn: Callable[[nn.Module, Any], float] | None = None, *, theta: float = 0.001,
                    target_macs: float | None = None, zero_norm: bool = False,
                    reach_target: bool = False) -> SoftStep:
    """Measure each cluster's accuracy drop when masked; zero those below ``theta``, training goes on.

    ``evaluate_fn(model, val_data) -> accuracy in [0, 1]`` (default :func:`accuracy`) must use a
    held-out part of the training data, never the test set; ``theta`` = 0.001 is 0.1 percentage
    point. A cluster is masked exactly as removal would (weights and normalisation zeroed), its
    drop measured, and the weights restored. Clusters below ``theta`` are taken by increasing
    drop until ``target_macs`` (absolute, on ``graph``) is met, never emptying a layer, and their
    filters are zeroed (:func:`~edgeprune.criteria.soft.zero_filters`, so they can regrow).
    Remove them at the end with ``apply_keep_mask(model, graph, step.keep)``. With
    ``reach_target``, when the clusters under ``theta`` do not reach ``target_macs`` the next
    cheapest clusters are taken too, so that a fixed MACs target is always met.
    """
    evaluate = evaluate_fn or accuracy
    baseline = evaluate(model, val_data)
    units = cluster_units(graph, clusters)
    saved = copy.deepcopy(model.state_dict())  # keeps _metadata (module versions some layers read on load)
    deltas: dict[tuple[str, int], float] = {}
    try:
        for key, (group, u) in units.items():
            zero_channels(model, graph, graph.keep_mask({group: u}))
            deltas[key] = baseline - evaluate(model, val_data)
            model.load_state_dict(saved)
    finally:
        model.load_state_dict(saved)
    removed: dict[int, np.ndarray] = {}
    selected = []
    candidates = deltas if reach_target and target_macs is not None else {k: d for k, d in deltas.items() if d < theta}
    for key in sorted(candidates, key=deltas.get):
        if target_macs is not None and count(graph, graph.keep_mask(removed)).macs <= target_macs:
            break
        group, u = units[key]
        trial = np.union1d(removed.get(group, np.zeros(0, dtype=np.int64)), u)
        if _leaves_every_space(graph.groups[group], trial):
            removed[group] = trial
            selected.append(key)
    keep = graph.keep_mask(removed)
    zero_filters(model, graph, keep, norm=zero_norm)
    return SoftStep(baseline, deltas, selected, removed, keep)


class TCFPSoftSchedule:
    """Stage 4 as a fine-tuning hook: :func:`tcfp_soft_prune` after every ``every`` epochs.

    Each pass measures every cluster afresh on the current weights, so a zeroed cluster that
    regrew above ``theta`` is released; :meth:`finalize` removes those still below it.
    """

    def __init__(self, graph: DependencyGraph, clusters: dict[str, np.ndarray], val_data: Any,
                 evaluate_fn: Callable[[nn.Module, Any], float] | None = None, *, theta: float = 0.001,
                 target_macs: float | None = None, every: int = 1, zero_norm: bool = False,
                 reach_target: bool = False) -> None:
        self.graph, self.clusters, self.val_data, self.evaluate_fn = graph, clusters, val_data, evaluate_fn
        self.theta, self.target_macs, self.every, self.zero_norm = theta, target_macs, max(1, every), zero_norm
        self.reach_target = reach_target
        self.last: SoftStep | None = None

    def step(self, model: nn.Module) -> SoftStep:
        self.last = tcfp_soft_prune(model, self.graph, self.clusters, self.val_data, self.evaluate_fn,
                                    theta=self.theta, target_macs=self.target_macs, zero_norm=self.zero_norm,
                                    reach_target=self.reach_target)
        return self.last

    def epoch_end(self, model: nn.Module, epoch: int) -> None:
        """The ``epoch_end`` hook of :func:`edgeprune.train.finetune`."""
        if epoch % self.every == 0:
            self.step(model)

    def finalize(self, model: nn.Module) -> SoftStep:
        """Physically remove, in place, the clusters the last pass selected (one pass first if none ran)."""
        step = self.last or self.step(model)
        apply_keep_mask(model, self.graph, step.keep)
        return step
