"""Layers that edgeprune's graph and surgery understand beyond torch.nn's own."""
from __future__ import annotations

import torch
from torch import nn


class ChannelSelect(nn.Module):
    """Output channel ``i`` is input channel ``index[i]``, or zeros where ``index[i] == -1``.

    This is how an option-A (zero-padding) ResNet shortcut is written so that pruning can see
    which output channels carry an input channel and which are padding.

    >>> layer = ChannelSelect(torch.tensor([-1, 0, 1, -1]))
    >>> layer(torch.ones(1, 2, 1, 1)).flatten().tolist()
    [0.0, 1.0, 1.0, 0.0]
    """

    def __init__(self, index: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long))

    @classmethod
    def zero_pad(cls, in_channels: int, before: int, after: int) -> "ChannelSelect":
        """Pad ``before`` zero channels in front and ``after`` behind."""
        return cls(torch.cat([torch.full((before,), -1), torch.arange(in_channels), torch.full((after,), -1)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = x.new_zeros(x.shape[0], 1, *x.shape[2:])
        gather = torch.where(self.index < 0, x.shape[1], self.index)
        return torch.cat([x, zeros], dim=1).index_select(1, gather)


class SpatialSubsample(nn.Module):
    """``x[:, :, ::stride, ::stride]``: the spatial half of an option-A shortcut."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride]
