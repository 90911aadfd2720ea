"""Coupled channel groups: the unit that criteria score and pruning removes from."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeprune.graph.channels import ChannelState, Space


@dataclass
class Group:
    """Spaces whose channels are coupled, and the *units* (channels removed together) among them.

    ``unit_of[space.index][c]`` is the unit of the space's local channel ``c``. A unit is prunable
    unless ``frozen``; ``blocks`` (if set) gives each unit's block, and pruning must then take the
    same number of units from every block (grouped convolutions).
    """

    index: int
    spaces: list[Space]
    unit_of: dict[int, np.ndarray]
    roots: np.ndarray
    frozen: np.ndarray
    blocks: np.ndarray | None = None

    @property
    def n_units(self) -> int:
        return len(self.roots)

    @property
    def n_prunable(self) -> int:
        return int((~self.frozen).sum())

    @property
    def name(self) -> str:
        named = [s.name for s in self.spaces if s.module]
        return named[0] + (f" (+{len(named) - 1} coupled)" if len(named) > 1 else "") if named else self.spaces[0].name

    def producers(self) -> list[Space]:
        """The spaces made by a layer with weights (conv or linear outputs)."""
        return [s for s in self.spaces if s.kind in ("conv", "linear")]


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component labels (smallest member) of ``n`` nodes joined by edges ``a[i]-b[i]``."""
    labels = np.arange(n)
    if a.size == 0:
        return labels
    while True:
        low = np.minimum(labels[a], labels[b])
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        while True:  # pointer jumping
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels[a], labels[b]):
            return labels


def channel_classes(state: ChannelState) -> np.ndarray:
    """For every global channel id, the id of its class (channels that must go together)."""
    if state.unions:
        a = np.concatenate([u[0] for u in state.unions])
        b = np.concatenate([u[1] for u in state.unions])
    else:
        a = b = np.zeros(0, dtype=np.int64)
    return _components(state.total, a, b)


def build_groups(state: ChannelState, classes: np.ndarray) -> list[Group]:
    sizes = np.array([s.size for s in state.spaces], dtype=np.int64)
    space_of = np.repeat(np.arange(len(state.spaces)), sizes)
    space_labels = _components(len(state.spaces), space_of, space_of[classes])
    frozen_class = np.zeros(state.total, dtype=bool)
    if state.frozen:
        frozen_class[classes[np.concatenate(state.frozen)]] = True
    groups = []
    group_of_space = np.zeros(len(state.spaces), dtype=np.int64)
    for label in np.unique(space_labels):
        members = np.flatnonzero(space_labels == label)
        group_of_space[members] = len(groups)
        groups.append(_group(len(groups), [state.spaces[i] for i in members], classes, frozen_class))
    _apply_balance(groups, state.balanced, classes, group_of_space[space_of])
    return groups


def _group(index: int, spaces: list[Space], classes: np.ndarray, frozen_class: np.ndarray) -> Group:
    channel_roots = {s.index: classes[s.offset:s.offset + s.size] for s in spaces}
    roots = np.unique(np.concatenate(list(channel_roots.values())))
    unit_of = {i: np.searchsorted(roots, r) for i, r in channel_roots.items()}
    return Group(index, spaces, unit_of, roots, frozen_class[roots].copy())


def _apply_balance(groups: list[Group], balanced: list[list[np.ndarray]], classes: np.ndarray,
                   group_of_channel: np.ndarray) -> None:
    """Give each group's units the block of the balanced piece they belong to.

    Pieces that span several groups, units left outside every piece, a unit in two pieces,
    two different layouts in one group or a frozen unit: the group is left whole.
    """
    layouts: dict[int, list[np.ndarray]] = {}
    for pieces in balanced:
        ids = [p[p >= 0] for p in pieces]
        if any(len(p) == 0 for p in ids):
            _freeze_groups(groups, np.concatenate(ids), group_of_channel)
            continue
        owners = np.unique(group_of_channel[np.concatenate(ids)])
        if len(owners) > 1:
            _freeze_groups(groups, np.concatenate(ids), group_of_channel)
            continue
        group = groups[int(owners[0])]
        blocks = np.full(group.n_units, -1)
        for b, piece in enumerate(ids):
            units = np.searchsorted(group.roots, classes[piece])
            if np.any((blocks[units] >= 0) & (blocks[units] != b)):
                blocks[:] = -2  # a unit in two pieces
                break
            blocks[units] = b
        layouts.setdefault(group.index, []).append(blocks)
    for index, found in layouts.items():
        group = groups[index]
        first = found[0]
        consistent = all(_same_partition(first, other) for other in found[1:])
        if not consistent or (first < 0).any() or group.frozen.any():
            group.frozen[:] = True
        else:
            group.blocks = first


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    if (a < 0).any() or (b < 0).any():
        return False
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def _freeze_groups(groups: list[Group], channels: np.ndarray, group_of_channel: np.ndarray) -> None:
    for index in np.unique(group_of_channel[channels]):
        groups[int(index)].frozen[:] = True
