"""edgeprune's own layers in operators ncnn has. pnnx turns the option-A shortcut layers of
:mod:`edgeprune.layers` into ``Tensor.slice`` (a strided slice) and ``torch.index_select``, which
ncnn lacks; on a copy of the model they become a pooling, a channel pad or a 1x1 convolution that
compute the same numbers. Imports torch: only the exporting parent uses it."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.layers import ChannelSelect, SpatialSubsample


class ChannelPad(nn.Module):
    """``before`` zero channels in front of the input and ``after`` behind (ncnn's Padding layer)."""

    def __init__(self, before: int, after: int) -> None:
        super().__init__()
        self.before, self.after = before, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))


def ncnn_ready(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model``, or where it holds option-A shortcut layers, a copy with those replaced (``model``
    itself is not changed). ``example`` is run once to learn each ChannelSelect's input width."""
    if not any(isinstance(m, (ChannelSelect, SpatialSubsample)) for m in model.modules()):
        return model
    model = copy.deepcopy(model).eval()
    widths: dict[str, int] = {}  # a ChannelSelect's index need not name every input channel

    def record(name: str):
        def hook(_: nn.Module, args: tuple) -> None:
            widths[name] = args[0].shape[1]
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules()
             if isinstance(m, ChannelSelect)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    for name, module in list(model.named_modules()):
        if isinstance(module, SpatialSubsample):
            model.set_submodule(name, nn.MaxPool2d(1, module.stride))  # one element per window: exact
        elif isinstance(module, ChannelSelect) and name in widths:
            model.set_submodule(name, channel_select(module.index.tolist(), widths[name]))
    return model


def channel_select(index: list[int], in_channels: int) -> nn.Module:
    """Output channel i = input channel ``index[i]``, zeros where it is -1: a channel pad when the
    input passes whole and in order, else a 1x1 convolution with one-hot weights (each output is one
    input times 1 plus zeros: exact in float).

    >>> channel_select([-1, 0, 1, -1], 2)
    ChannelPad()
    >>> channel_select([1, -1, 0], 2).weight[:, :, 0, 0].tolist()
    [[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]
    """
    kept = [i for i in index if i >= 0]
    before = index.index(kept[0]) if kept else len(index)
    if kept == list(range(in_channels)) and index[before:before + len(kept)] == kept:
        return ChannelPad(before, len(index) - before - len(kept))
    conv = nn.Conv2d(in_channels, len(index), 1, bias=False)
    weight = torch.zeros_like(conv.weight)
    for out, source in enumerate(index):
        if source >= 0:
            weight[out, source] = 1.0
    conv.weight = nn.Parameter(weight, requires_grad=False)
    return conv
