"""A small segmenter shaped like torchvision's LRASPP (MobileNetV3-Small backbone, a low- and a
high-resolution head summed), wrapped as a user deploying one would: the raw ``out`` map."""
from __future__ import annotations

import torch
from torch import nn


class Segmenter(nn.Module):
    input_shape = (1, 3, 64, 64)

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        import torchvision
        from torchvision.models._utils import IntermediateLayerGetter
        from torchvision.models.segmentation.lraspp import LRASPP

        features = torchvision.models.mobilenet_v3_small(weights=None).features
        self.net = LRASPP(IntermediateLayerGetter(features, {"3": "low", "12": "high"}), 24, 576, classes, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def segmenter_bn_from_pixels() -> Segmenter:
    """Random weights, BatchNorm statistics re-estimated on 0-1 images (pixels / 255, no mean or
    std declared): N(0, 1) noise then drives its outputs to hundreds, real images to about 3."""
    from edgeprune.train import recalibrate_batchnorm

    torch.manual_seed(0)
    model = Segmenter()
    recalibrate_batchnorm(model, torch.rand(32, *Segmenter.input_shape[1:]).numpy())
    return model.eval()
