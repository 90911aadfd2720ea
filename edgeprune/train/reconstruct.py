"""Label-free reconstruction right after the cut: refit each layer so the pruned model's
outputs reproduce the dense model's, by ridge-regularised least squares on calibration images.

Cutting filters leaves every later layer reading fewer (and, further on, slightly different)
inputs than it was trained on. For each conv (grouped and depthwise too) and linear layer, in
graph order, the dense model's output on the channels the layer keeps is the target and the
pruned model's input to that layer is the regressor; each layer sees the prefix already
refitted (ThiNet; He et al. 2017; AIMET's weight reconstruction, which skipped depthwise
convs). Only the sums ``XᵀX``, ``XᵀY`` and ``YᵀY`` are kept while batches stream past, never
the activations; a layer's new weights are kept only if they lower its error on those sums.

A refitted bias goes into the layer's own bias, or, for a bias-free conv read directly by a
BatchNorm, into that BatchNorm's running mean (``bn(y + b)`` equals ``bn`` with its mean
shifted by ``-b``); otherwise the layer is refitted without one.

Which input and output positions of the dense layer a pruned layer keeps comes from the
dependency graph (:func:`kept_layers`); several cuts in a row compose (:meth:`KeptLayer.then`).

>>> import torch
>>> from edgeprune.api import prune
>>> from edgeprune.models import build
>>> built = build("resnet20-cifar")
>>> result = prune(built.model, built.input_shape, criterion="l2", flops_cut=0.5, round_to=8)
>>> found = reconstruct(result.model, built.model, kept_layers(result.graph, result.plan.keep),
...                     torch.randn(10, 3, 32, 32), ReconstructConfig(batch_size=10))
>>> found.images, len(found.layers)
(10, 18)
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.progress import Progress
from edgeprune.surgery import kept_positions
from edgeprune.train.batches import as_batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeptLayer:
    """Positions of a dense layer's input (weight axis 1: channels, or features) and outputs that
    the pruned layer keeps; ``inputs`` None: every input (a grouped conv's, which never shrink)."""

    module: str
    inputs: np.ndarray | None
    outputs: np.ndarray

    def then(self, later: KeptLayer) -> KeptLayer:
        """This map followed by a later cut of the already pruned layer."""
        inputs = later.inputs if self.inputs is None else (
            self.inputs if later.inputs is None else self.inputs[later.inputs])
        return KeptLayer(self.module, inputs, self.outputs[later.outputs])


def kept_layers(graph: Any, keep: np.ndarray) -> dict[str, KeptLayer]:
    """Each conv / linear layer of ``graph`` and what the cut ``keep`` (a global channel mask, as in
    ``plan.keep``) leaves of it."""
    return {layer.module: KeptLayer(layer.module,
                                    None if layer.in_ids is None else kept_positions(layer.in_ids, keep),
                                    kept_positions(layer.out_ids, keep))
            for layer in graph.layers}


def compose(earlier: dict[str, KeptLayer], later: dict[str, KeptLayer]) -> dict[str, KeptLayer]:
    """The maps of two cuts in a row, from the first cut's dense model to the second's result."""
    return {name: earlier[name].then(m) if name in earlier else m for name, m in later.items()}


@dataclass(frozen=True)
class ReconstructConfig:
    """``ridge``: the penalty, as a fraction of the mean diagonal of ``XᵀX`` (None: per layer, the
    value of :data:`RIDGES` that best predicts every fifth image, held out of the fit);
    ``positions``: at most this many output positions per image enter a conv's sums (seeded,
    random); ``images``: how many calibration images a caller should hand over (the recipes sample
    that many); ``cache_mb``: the dense model's outputs are kept rather than recomputed per pass
    when they fit in this much memory."""

    images: int = 1024
    ridge: float | None = None
    positions: int = 64
    batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    cache_mb: int = 1024

    def __post_init__(self) -> None:
        if (self.ridge is not None and self.ridge < 0) or min(self.images, self.positions, self.batch_size) < 1:
            raise EdgepruneError("reconstruction needs images, positions and batch size >= 1 and a ridge >= 0")


@dataclass
class LayerFit:
    """One layer: its relative output error before and after the refit, on the calibration images
    held out of the fit (all of them when too few to hold any out), and the ridge used."""

    module: str
    error_before: float
    error_after: float
    refit: bool
    bias: str  # "own", "batchnorm", "none"
    ridge: float


@dataclass
class ReconstructResult:
    layers: list[LayerFit] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "seconds": round(self.seconds, 2),
                "layers": [vars(layer) for layer in self.layers]}


def reconstruct(pruned: nn.Module, dense: nn.Module, maps: dict[str, KeptLayer], images: Any,
                config: ReconstructConfig | None = None, progress: Progress | None = None) -> ReconstructResult:
    """Refit, in place, every layer of ``pruned`` from the first one whose inputs were cut onwards.

    ``maps``: :func:`kept_layers` (dict order = graph order); ``images``: N x C x H x W inputs
    (array, tensor or anything with ``.x``). Layers that do not feed one another are refitted
    from the same pass over the images (a wave). ``progress(line)`` gets one line per layer (they
    are also logged at debug level). Returns each layer's error before and after.
    """
    config = config or ReconstructConfig()
    start = time.perf_counter()
    device = torch.device(config.device)
    x = torch.as_tensor(getattr(images, "x", images)).float()
    batches = list(as_batches(x, config.batch_size))
    if not batches:
        raise EdgepruneError("reconstruction needs calibration images (give --calib SOURCE, or --no-reconstruct)")
    modules = dict(pruned.named_modules())
    layers = [m for m in _from_first_cut(maps, dict(dense.named_modules())) if refittable(modules.get(m.module))]
    was = pruned.training, dense.training
    homes = [next(m.parameters()).device for m in (pruned, dense)]
    pruned.eval().to(device)
    dense.eval().to(device)
    result = ReconstructResult(images=len(x))
    try:
        if not layers:
            return result
        probe = batches[0][:4].to(device)
        norms = _batchnorm_readers(pruned, [m.module for m in layers], probe)
        waves = _waves(pruned, [m.module for m in layers], probe)
        kept = {m.module: m for m in layers}
        groups = {m.module: getattr(modules[m.module], "groups", 1) for m in layers}
        targets = _Targets(dense, kept, groups, batches, config)
        for wave in waves:
            began = time.perf_counter()
            fits = _refit_wave([kept[name] for name in wave], modules, pruned, targets, batches, norms, config)
            result.layers += fits
            for fit in fits:
                line = (f"reconstruct {result.layers.index(fit) + 1}/{len(layers)} {fit.module}: output error "
                        f"{fit.error_before:.4f} -> {fit.error_after:.4f}{'' if fit.refit else ' (kept as it was)'} "
                        f"(ridge {fit.ridge:g}, wave of {len(fits)}, {time.perf_counter() - began:.1f} s)")
                log.debug(line)
                if progress is not None:
                    progress(line)
    finally:
        pruned.train(was[0]).to(homes[0])
        dense.train(was[1]).to(homes[1])
        result.seconds = time.perf_counter() - start
    return result


def _from_first_cut(maps: dict[str, KeptLayer], dense: dict[str, nn.Module]) -> list[KeptLayer]:
    """The layers from the first that reads a cut input on (earlier ones see the dense input)."""
    layers = list(maps.values())
    for i, kept in enumerate(layers):
        module = dense.get(kept.module)
        if module is None or not hasattr(module, "weight"):
            continue
        cut_input = kept.inputs is not None and len(kept.inputs) < module.weight.shape[1] * getattr(module, "groups", 1)
        depthwise_cut = _is_depthwise(module) and len(kept.outputs) < module.out_channels
        if cut_input or depthwise_cut:
            return layers[i:]
    return []


def _is_depthwise(module: Any) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


def refittable(module: Any) -> bool:
    """A layer the least-squares refit handles: a linear layer, or a conv with zero padding."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and not isinstance(module.padding, str)


class _Stop(Exception):
    """Raised by a hook once every layer of interest has run: the rest of the forward is not needed."""


def collect_tensors(model: nn.Module, modules: dict[str, nn.Module], batch: torch.Tensor, want_input: bool) -> dict[str, torch.Tensor]:
    """Each named module's first input (or output) on ``batch``; the forward stops once all have run."""
    found: dict[str, torch.Tensor] = {}

    def hook(name):
        def capture(_m, inputs, output):
            found.setdefault(name, inputs[0] if want_input else output)
            if len(found) == len(modules):
                raise _Stop
        return capture

    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            model(batch)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = set(modules) - set(found)
    if missing:
        raise EdgepruneError(f"reconstruction: {sorted(missing)[0]} never ran in the forward pass")
    return found


def _waves(model: nn.Module, names: list[str], probe: torch.Tensor) -> list[list[str]]:
    """``names`` in passes: a layer joins the first pass after every listed layer that feeds it.

    Which layer feeds which is found without the graph: each layer's weights are disturbed in
    turn and the inputs of the layers after it are compared on a few images.
    """
    modules = dict(model.named_modules())
    layers = {n: modules[n] for n in names}
    base = collect_tensors(model, layers, probe, want_input=True)
    feeds: dict[str, set[str]] = {}
    for i, name in enumerate(names):
        weight = layers[name].weight
        saved = weight.detach().clone()
        with torch.no_grad():
            weight.add_(torch.randn_like(weight) * (saved.abs().mean() + 1e-3))
        try:
            later = {n: layers[n] for n in names[i + 1:]}
            moved = collect_tensors(model, later, probe, want_input=True) if later else {}
        finally:
            with torch.no_grad():
                weight.copy_(saved)
        feeds[name] = {n for n, x in moved.items() if not torch.equal(x, base[n])}
    wave_of: dict[str, int] = {}
    for i, name in enumerate(names):
        wave_of[name] = 1 + max((wave_of[a] for a in names[:i] if name in feeds[a]), default=-1)
    return [[n for n in names if wave_of[n] == w] for w in range(max(wave_of.values()) + 1)]


def _batchnorm_readers(model: nn.Module, names: list[str], batch: torch.Tensor) -> dict[str, nn.Module]:
    """For each bias-free conv in ``names``, the BatchNorm that takes its output tensor as it is."""
    modules = dict(model.named_modules())
    convs = {n for n in names if isinstance(modules[n], nn.Conv2d) and modules[n].bias is None}
    if not convs:
        return {}
    outputs: dict[str, torch.Tensor] = {}
    readers: dict[str, nn.Module] = {}
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: outputs.__setitem__(n, out)) for n in convs]

    def check(norm):
        def pre_hook(_m, inputs):
            for name, out in outputs.items():
                if inputs[0] is out and name not in readers:
                    readers[name] = norm
        return pre_hook

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            handles.append(m.register_forward_pre_hook(check(m)))
    try:
        with torch.no_grad():
            model(batch[:2])
    finally:
        for h in handles:
            h.remove()
    return readers


RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # tried on the held-out fifth when ReconstructConfig.ridge is None
CHECK_EVERY = 5  # every fifth calibration image is held out of the fit to choose the ridge and judge it


@dataclass
class _Sums:
    """Per group g: ``xx[g] = XᵀX``, ``xy[g] = XᵀY`` (X with a ones column when fitting a bias), ``yy[g] = ‖Y‖²``."""

    xx: torch.Tensor
    xy: torch.Tensor
    yy: torch.Tensor
    rows: int = 0

    @classmethod
    def empty(cls, g: int, d: int, o: int) -> _Sums:
        return cls(*(torch.zeros(shape, dtype=torch.float64) for shape in ((g, d, d), (g, d, o), (g,))))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if not len(x):
            return
        x, y = x.transpose(0, 1), y.transpose(0, 1)  # rows x G x D -> G x rows x D; one batch's products in
        xt = x.transpose(1, 2)  # float32, the running sums in float64
        self.xx += torch.bmm(xt, x).double().cpu()
        self.xy += torch.bmm(xt, y).double().cpu()
        self.yy += (y.double() * y.double()).sum(dim=(1, 2)).cpu()
        self.rows += x.shape[1]

    def __add__(self, other: _Sums) -> _Sums:
        return _Sums(self.xx + other.xx, self.xy + other.xy, self.yy + other.yy, self.rows + other.rows)

    def error(self, w: torch.Tensor) -> float:
        """‖XW - Y‖² / ‖Y‖², summed over groups."""
        quad = torch.einsum("gio,gij,gjo->", w, self.xx, w)
        return max(float(quad - 2 * (w * self.xy).sum() + self.yy.sum()), 0.0) / float(self.yy.sum().clamp_min(1e-30))

    def solve(self, ridge: float, bias: bool) -> torch.Tensor:
        d = self.xx.shape[-1] - (1 if bias else 0)
        diag = torch.diagonal(self.xx, dim1=-2, dim2=-1)
        penalty = torch.zeros_like(diag)
        penalty[:, :d] = (ridge * diag[:, :d].mean(dim=1, keepdim=True)).clamp_min(1e-12)
        return torch.linalg.solve(self.xx + torch.diag_embed(penalty), self.xy)


def _refit_wave(wave: list[KeptLayer], modules: dict[str, nn.Module], pruned: nn.Module, targets: _Targets,
                batches: list[torch.Tensor], norms: dict[str, nn.Module], config: ReconstructConfig) -> list[LayerFit]:
    """One pass over the images for layers that do not feed one another, then each one's solve."""
    device = torch.device(config.device)
    fits = {kept.module: _Fit(kept, modules[kept.module], norms.get(kept.module), config) for kept in wave}
    for number, batch in enumerate(batches):
        batch = batch.to(device)
        sources = collect_tensors(pruned, {n: modules[n] for n in fits}, batch, want_input=True)
        wanted = targets.rows(list(fits), number, batch)
        for name, fit in fits.items():
            picks = targets.picks(name, number)
            fit.add(input_rows(fit.layer, sources[name], fit.groups, picks), wanted[name],
                    number * config.batch_size, len(batch))
    return [fit.finish() for fit in fits.values()]


class _Targets:
    """The dense model's outputs on the kept channels, as rows (rows x G x O) for each layer's fit.

    After one pass over the images they are kept for every layer when they fit in
    ``config.cache_mb``; otherwise each pass recomputes those of the layers it needs.
    """

    def __init__(self, dense: nn.Module, maps: dict[str, KeptLayer], groups: dict[str, int], batches: list[torch.Tensor],
                 config: ReconstructConfig) -> None:
        self.dense, self.maps, self.groups, self.config = dense, maps, groups, config
        self.modules = {name: dict(dense.named_modules())[name] for name in maps}
        self.batches = batches
        self.spots: dict[str, int] = {}
        self.cache: dict[tuple[str, int], torch.Tensor] | None = None
        probe = collect_tensors(dense, self.modules, batches[0][:1].to(config.device), want_input=False)
        for name, out in probe.items():
            self.spots[name] = 1 if out.ndim < 4 else out.shape[-1] * out.shape[-2]
        per_image = sum(min(self.spots[n], config.positions) * len(m.outputs) * 4 for n, m in maps.items())
        images = sum(len(b) for b in batches)
        if per_image * images <= config.cache_mb * 2 ** 20:
            self.cache = {}

    def picks(self, name: str, batch: int) -> torch.Tensor | None:
        """The output positions of ``name`` sampled in batch number ``batch`` (None: all)."""
        spots = self.spots[name]
        if spots <= self.config.positions:
            return None
        index = list(self.maps).index(name)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + batch * 1009 + index)
        return torch.randperm(spots, generator=generator)[:self.config.positions]

    def rows(self, names: list[str], number: int, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cache is not None and (names[0], number) in self.cache:
            return {n: self.cache[(n, number)] for n in names}
        wanted = list(self.maps) if self.cache is not None else names
        outputs = collect_tensors(self.dense, {n: self.modules[n] for n in wanted}, batch, want_input=False)
        rows = {n: self._target_rows(n, out, number) for n, out in outputs.items()}
        if self.cache is not None:
            self.cache.update({(n, number): r for n, r in rows.items()})
        return {n: rows[n] for n in names}

    def _target_rows(self, name: str, out: torch.Tensor, number: int) -> torch.Tensor:
        kept = torch.as_tensor(self.maps[name].outputs, dtype=torch.long, device=out.device)
        groups = self.groups[name]
        if out.ndim < 4 or not isinstance(self.modules[name], nn.Conv2d):
            y = out.index_select(-1, kept)
            return y.reshape(-1, 1, y.shape[-1])
        y = out.index_select(1, kept).flatten(2)
        picks = self.picks(name, number)
        if picks is not None:
            y = y[:, :, picks.to(y.device)]
        return y.permute(0, 2, 1).reshape(-1, groups, y.shape[1] // groups)


def input_rows(layer: nn.Module, source: torch.Tensor, groups: int, picks: torch.Tensor | None) -> torch.Tensor:
    """A layer's input as regressors, rows x G x D, at the positions its targets were taken."""
    if isinstance(layer, nn.Linear):
        return source.reshape(-1, 1, source.shape[-1])
    cols = F.unfold(source, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    if picks is not None:
        cols = cols[:, :, picks.to(cols.device)]
    return cols.permute(0, 2, 1).reshape(-1, groups, cols.shape[1] // groups)


class _Fit:
    """The sums of one layer (every fifth image apart, to choose the ridge), its solve and write-back."""

    def __init__(self, kept: KeptLayer, layer: nn.Module, norm: nn.Module | None, config: ReconstructConfig) -> None:
        self.kept, self.layer, self.norm, self.config = kept, layer, norm, config
        self.bias = "own" if layer.bias is not None else "batchnorm" if norm is not None else "none"
        self.groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
        self.current = weight_matrix(layer, self.groups, self.bias != "none")
        g, d, o = self.current.shape
        if len(kept.outputs) != layer.weight.shape[0]:
            raise EdgepruneError(f"reconstruction: {kept.module} has {layer.weight.shape[0]} outputs, "
                                 f"the cut keeps {len(kept.outputs)}")
        self.fit, self.check = _Sums.empty(g, d, o), _Sums.empty(g, d, o)

    def add(self, x: torch.Tensor, y: torch.Tensor, first_image: int, images: int) -> None:
        """Rows ``x``, ``y`` of ``images`` images (image-major), numbered from ``first_image``."""
        if self.bias != "none":
            x = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)
        image = first_image + torch.arange(len(x), device=x.device) // (len(x) // images)
        held = image % CHECK_EVERY == CHECK_EVERY - 1
        self.fit.add(x[~held], y[~held])
        self.check.add(x[held], y[held])

    def finish(self) -> LayerFit:
        bias = self.bias != "none"
        judge = self.check if self.check.rows else self.fit
        ridge = self.config.ridge
        if ridge is None:
            ridge = min(RIDGES, key=lambda r: judge.error(self.fit.solve(r, bias))) if self.check.rows else 1e-3
        before = judge.error(self.current)
        after = judge.error(self.fit.solve(ridge, bias))
        refit = after < before
        if refit:
            _write(self.layer, (self.fit + self.check).solve(ridge, bias), self.groups, self.bias, self.norm)
        return LayerFit(self.kept.module, before, min(after, before), refit, self.bias, ridge)


def weight_matrix(layer: nn.Module, groups: int, bias: bool) -> torch.Tensor:
    """The layer's current weights as G x D x O (with the bias row when fitting one)."""
    w = layer.weight.detach().double().cpu()
    out = w.shape[0]
    w = w.reshape(groups, out // groups, -1).transpose(1, 2)
    if bias:
        b = layer.bias.detach().double().cpu() if layer.bias is not None else torch.zeros(out, dtype=torch.float64)
        w = torch.cat([w, b.reshape(groups, 1, out // groups)], dim=1)
    return w


def _write(layer: nn.Module, solved: torch.Tensor, groups: int, bias: str, norm: nn.Module | None) -> None:
    weight = layer.weight
    d = solved.shape[1] - (0 if bias == "none" else 1)
    w = solved[:, :d].transpose(1, 2).reshape(weight.shape)
    with torch.no_grad():
        weight.copy_(w.to(weight.dtype))
        if bias == "none":
            return
        b = solved[:, d].reshape(-1).to(weight.dtype)
        if bias == "own":
            layer.bias.copy_(b)
        else:
            norm.running_mean.sub_(b.to(norm.running_mean.device))


__all__ = ["KeptLayer", "LayerFit", "ReconstructConfig", "ReconstructResult", "compose", "kept_layers", "reconstruct"]
