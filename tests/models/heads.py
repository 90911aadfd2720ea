"""A small detector-like network of our own for the tests: three outputs (class scores, a box
map, an embedding), a concat skip, and a permute + reshape before a Linear."""
from __future__ import annotations

import torch
from torch import nn


def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Heads(nn.Module):
    input_shape = (1, 3, 16, 16)
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}

    def __init__(self) -> None:
        super().__init__()
        self.stem = block(3, 16)
        self.left = block(16, 16, 2)
        self.right = block(16, 8, 2)
        self.mix = block(24, 24)
        self.scores = nn.Linear(24 * 8 * 8, 5)
        self.boxes = nn.Conv2d(24, 4, 1)
        self.embed = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 6))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        y = torch.cat([self.left(x), self.right(x)], dim=1)  # the concat skip
        y = self.mix(y) + y
        flat = y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)  # channels-last before the Linear
        return {"scores": self.scores(flat), "boxes": self.boxes(y), "embedding": self.embed(y)}


def heads() -> Heads:
    """Deterministic weights, and BatchNorm statistics that fit uniform random pixels (the tests' data)
    under the model's preprocessing, as a trained network's would fit its data."""
    torch.manual_seed(0)
    model = Heads()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
            m.momentum = None
    pixels = torch.randint(0, 256, (256, 3, 16, 16), generator=g).float() / 255
    model.train()
    with torch.no_grad():
        model((pixels - 0.5) / 0.25)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return model.eval()


def heads_tuple() -> nn.Module:
    """The same network returning a tuple (scores, boxes, embedding)."""

    class AsTuple(nn.Module):
        input_shape = Heads.input_shape

        def __init__(self) -> None:
            super().__init__()
            self.net = heads()

        def forward(self, x: torch.Tensor):
            out = self.net(x)
            return out["scores"], out["boxes"], out["embedding"]

    return AsTuple().eval()
