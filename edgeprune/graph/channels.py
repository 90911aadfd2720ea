"""Channel identities: the bookkeeping behind the dependency graph.

Every tensor in the traced graph carries an *ids array*: an int64 NumPy array with the tensor's
number of dimensions, of size 1 on each dimension that carries no channel identity, holding for
each position the global id of the channel found there (``-1`` for none, such as zero padding).
A convolution creates a *space* of fresh channel ids; residual adds unite ids position by
position; concatenation and splitting concatenate and slice ids arrays; reshapes reshape them.
Whatever must shrink when channels go (a conv weight's axis, a BN buffer, a split size kept in
a module attribute) is a :class:`Site` holding the ids along that axis. Pieces that must lose
the same number of channels (a grouped conv's blocks, the pieces of ``chunk(2)``) are *balanced*.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NO_CHANNEL = -1


@dataclass(frozen=True)
class Space:
    """A block of fresh channel ids: the output channels of one layer, or padding, or the input."""

    index: int
    name: str
    size: int
    offset: int
    kind: str  # "conv", "linear", "input", "padding", "opaque"
    module: str | None = None  # producing module path, for weight-based criteria
    blocks: int = 1  # a grouped conv's output must lose the same number of channels per block


@dataclass(frozen=True)
class Site:
    """A tensor of ``module.param`` whose ``axis`` follows the channel ids ``ids``.

    ``action`` is ``"slice"`` (keep positions whose channel is kept), ``"reindex"`` (the tensor
    holds input positions, such as :class:`~edgeprune.layers.ChannelSelect`'s index, to renumber)
    or ``"attribute"`` (``module.param`` is an int, a split size the forward reads: it becomes
    the number of ``ids`` kept).
    """

    module: str
    param: str
    axis: int
    ids: np.ndarray
    action: str = "slice"


@dataclass(frozen=True)
class Layer:
    """A conv or linear layer as the counter needs it."""

    module: str
    in_ids: np.ndarray | None  # None: the input width never changes (grouped conv)
    out_ids: np.ndarray
    macs_per_pair: int  # MACs per (kept input, kept output) pair: kernel area x output positions
    fixed_in: int = 0  # the input width per group when in_ids is None


@dataclass
class ChannelState:
    """Everything the propagation learns: spaces, unions, frozen channels, sites, layers."""

    spaces: list[Space] = field(default_factory=list)
    unions: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    frozen: list[np.ndarray] = field(default_factory=list)
    sites: dict[tuple[str, str, int, str], Site] = field(default_factory=dict)
    layers: list[Layer] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    balanced: list[list[np.ndarray]] = field(default_factory=list)
    module_spaces: dict[str, Space] = field(default_factory=dict)
    total: int = 0

    def new_space(self, name: str, size: int, kind: str, module: str | None = None, blocks: int = 1) -> Space:
        space = Space(len(self.spaces), name, size, self.total, kind, module, blocks)
        self.spaces.append(space)
        self.total += size
        return space

    def space_for_module(self, module: str, size: int, kind: str, blocks: int = 1) -> Space:
        """One space per module, so a module called twice keeps one set of output channels."""
        if module not in self.module_spaces:
            self.module_spaces[module] = self.new_space(module, size, kind, module, blocks)
        return self.module_spaces[module]

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.broadcast_arrays(a, b)
        both = (a >= 0) & (b >= 0)
        if both.any():
            self.unions.append((a[both].ravel(), b[both].ravel()))

    def freeze(self, ids: np.ndarray | None) -> None:
        if ids is not None:
            kept = ids[ids >= 0]
            if kept.size:
                self.frozen.append(np.unique(kept))

    def balance(self, pieces: list[np.ndarray]) -> None:
        """The channels of each piece must lose the same number as every other piece."""
        if len(pieces) > 1:
            self.balanced.append([np.ascontiguousarray(p, dtype=np.int64).ravel() for p in pieces])

    def add_site(self, module: str, param: str, axis: int, ids: np.ndarray, action: str = "slice") -> None:
        key = (module, param, axis, action)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        old = self.sites.get(key)
        if old is not None and action == "attribute":  # one size read twice: both counts must agree
            self.balance([old.ids, ids])
            return
        if old is not None:  # a module used twice: both uses must keep the same channels
            if old.ids.shape == ids.shape:
                self.unite(old.ids, ids)
            else:
                self.freeze(old.ids)
                self.freeze(ids)
            return
        self.sites[key] = Site(module, param, axis, ids, action)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def space_ids(space: Space, ndim: int, axis: int) -> np.ndarray:
    """The ids array of a tensor whose ``axis`` holds all of ``space``'s channels."""
    shape = [1] * ndim
    shape[axis] = space.size
    return np.arange(space.offset, space.offset + space.size, dtype=np.int64).reshape(shape)


def no_ids(ndim: int) -> np.ndarray:
    return np.full([1] * ndim, NO_CHANNEL, dtype=np.int64)


def varying_axes(ids: np.ndarray) -> list[int]:
    """Axes along which the ids array changes (carries channels)."""
    return [a for a in range(ids.ndim) if ids.shape[a] > 1]


def along(ids: np.ndarray, axis: int, size: int) -> np.ndarray | None:
    """The ``size`` channel ids along ``axis`` if the ids vary along no other axis, else ``None``."""
    if any(a != axis for a in varying_axes(ids)):
        return None
    return np.broadcast_to(ids.reshape(-1), (size,)) if ids.shape[axis] == 1 else ids.reshape(-1)


def compress(ids: np.ndarray) -> np.ndarray:
    """Shrink every axis along which ``ids`` is constant to size 1."""
    for axis in range(ids.ndim):
        if ids.shape[axis] > 1:
            first = np.take(ids, [0], axis=axis)
            if np.array_equal(np.broadcast_to(first, ids.shape), ids):
                ids = first
    return ids
