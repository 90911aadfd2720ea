"""The model with its outputs as one flat tuple, in ONNX order: converters that trace with
torch.jit (pnnx) do not take dict outputs. Imports torch: only the exporting parent uses it."""
from __future__ import annotations

import torch

from edgeprune.outputs import flatten


class FlatOutputs(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(flatten(self.inner(x)))
