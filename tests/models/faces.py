"""A face-landmark network of our own shaped like MTCNN's ONet, for the tests: PReLU after every
layer (on feature maps and after a Linear), a channels-last permute and flatten into a Linear, and
three outputs (box, landmarks, face probability)."""
from __future__ import annotations

import torch
from torch import nn


class Faces(nn.Module):
    input_shape = (1, 3, 24, 24)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3), nn.PReLU(16), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(16, 32, 3), nn.PReLU(32), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(32, 32, 2), nn.PReLU(32))
        self.dense = nn.Linear(32 * 4 * 4, 64)
        self.prelu = nn.PReLU(64)  # on an N x 64 tensor, not a feature map
        self.box = nn.Linear(64, 4)
        self.landmarks = nn.Linear(64, 10)
        self.face = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.features(x).permute(0, 3, 2, 1).contiguous()  # ONet's NHWC flatten, width before height
        x = self.prelu(self.dense(x.view(x.shape[0], -1)))
        return self.box(x), self.landmarks(x), torch.softmax(self.face(x), dim=1)


def faces() -> Faces:
    """Deterministic weights; PReLU slopes spread so that the negative side matters."""
    torch.manual_seed(0)
    model = Faces()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.PReLU):
            m.weight.data.uniform_(0.05, 0.5, generator=g)
    return model.eval()
