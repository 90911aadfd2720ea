"""A model with its preprocessing in front, so its ONNX graph takes raw 0-255 pixels."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgeprune.calibration.preprocess import Preprocess


class WithPreprocessing(nn.Module):
    """``model(pixels[:, order] * scale + shift)``: the preprocessing as two per-channel constants."""

    def __init__(self, model: nn.Module, preprocess: Preprocess, channels: int) -> None:
        super().__init__()
        scale, shift = preprocess.affine(channels)
        self.model = model
        self.register_buffer("scale", torch.from_numpy(scale).view(1, -1, 1, 1))
        self.register_buffer("shift", torch.from_numpy(shift).view(1, -1, 1, 1))
        self.bgr = preprocess.channel_order == "bgr" and channels == 3

    def forward(self, pixels: torch.Tensor):
        if self.bgr:
            pixels = pixels.flip(1)
        return self.model(pixels * self.scale + self.shift)

    def pixels_of(self, inputs: np.ndarray) -> np.ndarray:
        """The raw pixels that preprocess to ``inputs`` (the inner model's inputs): what this one takes."""
        pixels = (inputs - self.shift.numpy()) / self.scale.numpy()
        return np.ascontiguousarray(pixels[:, ::-1] if self.bgr else pixels, dtype=np.float32)


def with_preprocessing(model: nn.Module, preprocess: Preprocess, channels: int) -> nn.Module:
    """``model`` fed raw RGB pixels (0-255, at the input size) instead of preprocessed inputs."""
    return WithPreprocessing(model, preprocess, channels).eval()
