"""Physical channel removal: slice every site's tensor, then let each layer re-read its sizes.

The per-layer knowledge is one table, :data:`SYNC`, keyed by layer type: after a layer's
tensors change shape, its function sets the attributes (``out_channels``, ``num_features``...)
that its forward reads. Loading a pruned checkpoint uses the same table. Split sizes that a
forward reads from an int attribute (``split((self.c, self.c), 1)``) are attribute sites: they
are set to the number of channels kept, and listed in the module's ``_edgeprune_sizes`` so that
a checkpoint can carry them (:func:`resized_attributes`, :func:`set_attributes`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from edgeprune.graph import DependencyGraph, Site
from edgeprune.layers import ChannelSelect


def _sync_conv(m: nn.Module) -> None:
    if m.transposed:  # weight (in, out / groups, k...)
        m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
        return
    out = m.weight.shape[0]
    if m.groups > 1 and m.groups == m.in_channels == m.out_channels:  # depthwise keeps groups == channels
        m.groups = m.in_channels = out
    else:
        m.in_channels = m.weight.shape[1] * m.groups
    m.out_channels = out


def _sync_batchnorm(m: nn.Module) -> None:
    stats = m.running_mean if m.running_mean is not None else m.weight
    m.num_features = stats.shape[0]


def _sync_layer_norm(m: nn.Module) -> None:
    if m.weight is not None and len(m.normalized_shape) == 1:
        m.normalized_shape = (m.weight.shape[0],)


def _sync_linear(m: nn.Module) -> None:
    m.out_features, m.in_features = m.weight.shape


def _sync_prelu(m: nn.Module) -> None:
    m.num_parameters = m.weight.numel()


SYNC: dict[type, Callable[[nn.Module], None]] = {
    nn.modules.conv._ConvNd: _sync_conv,
    nn.modules.batchnorm._BatchNorm: _sync_batchnorm,
    nn.LayerNorm: _sync_layer_norm,
    nn.Linear: _sync_linear,
    nn.PReLU: _sync_prelu,
    ChannelSelect: lambda m: None,
}


def sync(module: nn.Module) -> None:
    """Make ``module``'s size attributes agree with its (resized) tensors."""
    for cls in type(module).__mro__:
        if cls in SYNC:
            SYNC[cls](module)
            return


def kept_positions(ids: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Positions along a site's axis that stay: no channel there, or a kept channel."""
    return np.flatnonzero((ids < 0) | keep[np.maximum(ids, 0)])


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        module._buffers[name] = value


def _slice(module: nn.Module, site: Site, keep: np.ndarray) -> bool:
    positions = kept_positions(site.ids, keep)
    if len(positions) == len(site.ids):
        return False
    tensor = getattr(module, site.param).detach()
    _replace(module, site.param, tensor.index_select(site.axis, torch.as_tensor(positions, device=tensor.device)))
    return True


SIZES = "_edgeprune_sizes"


def _set_size(module: nn.Module, site: Site, keep: np.ndarray) -> bool:
    kept = len(kept_positions(site.ids, keep))
    if getattr(module, site.param) == kept:
        return False
    set_attributes(module, {"": {site.param: kept}})
    return False  # no tensor changed: nothing to sync


def set_attributes(model: nn.Module, sizes: dict[str, dict[str, int]]) -> None:
    """Set the int attributes ``{module path: {name: value}}`` (split sizes) and remember them."""
    for path, values in sizes.items():
        module = model.get_submodule(path)
        for name, value in values.items():
            setattr(module, name, int(value))
            module.__dict__.setdefault(SIZES, {})[name] = int(value)


def resized_attributes(model: nn.Module) -> dict[str, dict[str, int]]:
    """The int attributes that pruning changed, as :func:`set_attributes` takes them."""
    return {path: dict(getattr(m, SIZES)) for path, m in model.named_modules() if getattr(m, SIZES, None)}


def _reindex(module: nn.Module, site: Site, keep: np.ndarray) -> bool:
    renumber = np.full(len(site.ids), -1, dtype=np.int64)
    positions = kept_positions(site.ids, keep)
    renumber[positions] = np.arange(len(positions))
    values = getattr(module, site.param).cpu().numpy()
    new = np.where(values >= 0, renumber[np.maximum(values, 0)], values)
    _replace(module, site.param, torch.as_tensor(new, dtype=torch.long))
    return True


def apply_keep_mask(model: nn.Module, graph: DependencyGraph, keep: np.ndarray) -> nn.Module:
    """Remove, in place, every channel whose entry in ``keep`` is False; returns ``model``."""
    modules = dict(model.named_modules())
    touched = set()
    for action, shrink in (("slice", _slice), ("reindex", _reindex), ("attribute", _set_size)):
        for site in graph.sites:
            if site.action == action and shrink(modules[site.module], site, keep):
                touched.add(site.module)
    for name in touched:
        sync(modules[name])
    return model


def resize_to(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Give ``model``'s tensors the shapes found in ``state_dict`` (a pruned checkpoint's)."""
    modules = dict(model.named_modules())
    touched = set()
    for key, value in state_dict.items():
        owner, _, name = key.rpartition(".")
        module = modules.get(owner)
        current = getattr(module, name, None) if module is not None else None
        if isinstance(current, torch.Tensor) and current.shape != value.shape:
            _replace(module, name, torch.empty(value.shape, dtype=current.dtype))
            touched.add(owner)
    for name in touched:
        sync(modules[name])


def zero_channels(model: nn.Module, graph: DependencyGraph, keep: np.ndarray) -> nn.Module:
    """Force the channels that ``keep`` drops to exactly zero, in place, without removing them.

    Zeroes each dropped channel's producing weights and bias and its normalisation scale and
    shift, so the channel's output is zero: the soft-pruning step, and the reference that a
    physically pruned model must reproduce.
    """
    modules = dict(model.named_modules())
    with torch.no_grad():
        for site in graph.sites:
            module = modules[site.module]
            tensor = getattr(module, site.param)
            if site.action == "slice" and site.axis == _output_axis(module, site.param) and isinstance(tensor, nn.Parameter):
                dropped = np.flatnonzero((site.ids >= 0) & ~keep[np.maximum(site.ids, 0)])
                tensor.index_fill_(site.axis, torch.as_tensor(dropped, dtype=torch.long, device=tensor.device), 0)
    return model


def _output_axis(module: nn.Module, param: str) -> int:
    """The axis of ``module.param`` that holds output channels: 1 for a transposed conv's weight."""
    return 1 if param == "weight" and getattr(module, "transposed", False) else 0
