"""A YOLO-like detector of our own for the tests (no ultralytics code: its licence is AGPL-3.0).

What makes the YOLOv8 / YOLO11 family hard to prune, written from their published structure:

- ``forward`` loops over ``self.model`` with from-indices (``m.f``) and a save list, as the
  yaml-built models do, so no symbolic tracer can follow it;
- C2f blocks ``chunk(2, 1)`` their first conv's output and concatenate every piece; one C2f
  variant (:class:`C2fSplit`) splits with sizes read from an attribute, ``split((self.c, self.c), 1)``;
- SPPF: three chained max-pools concatenated;
- C2PSA: a split, then attention with a qkv conv viewed per head, ``q^T k`` softmax, ``v attn^T``
  viewed back with the input's own ``C``, a positional depthwise conv, and residual adds;
- an anchor-free Detect head: per-level box and class branches, a DFL conv whose weights do not
  train (``requires_grad=False``), anchors and strides made in forward from the feature maps'
  shapes, boxes decoded and class scores sigmoided into one tensor; eval mode returns
  ``(decoded, [raw maps])``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Conv(nn.Module):
    """Conv, BatchNorm, SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1, self.cv2 = Conv(c1, c2, 3), Conv(c2, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C2fSplit(C2f):
    """C2f whose forward splits with sizes read from ``self.c``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1, self.cv2 = Conv(c1, c_, 1), Conv(c_ * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int = 2, attn_ratio: float = 0.5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        N = H * W
        qkv = self.qkv(x)
        q, k, v = qkv.view(B, self.num_heads, self.key_dim * 2 + self.head_dim, N).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(B, C, H, W) + self.pe(v.reshape(B, C, H, W))
        return self.proj(x)


class PSABlock(nn.Module):
    def __init__(self, c: int, num_heads: int = 2) -> None:
        super().__init__()
        self.attn = Attention(c, num_heads)
        self.ffn = nn.Sequential(Conv(c, c * 2, 1), Conv(c * 2, c, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.ffn(x)


class C2PSA(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c1 * e)
        self.cv1, self.cv2 = Conv(c1, 2 * self.c, 1), Conv(2 * self.c, c1, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, num_heads=max(1, self.c // 32)) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class Concat(nn.Module):
    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, 1)


class DFL(nn.Module):
    """Distribution focal loss integral: a fixed 1x1 conv (weights 0..c1-1) that does not train."""

    def __init__(self, c1: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats: list[torch.Tensor], strides: torch.Tensor, offset: float = 0.5):
    points, stride_list = [], []
    for i, stride in enumerate(strides):
        _, _, h, w = feats[i].shape
        sx = torch.arange(w, device=feats[i].device, dtype=feats[i].dtype) + offset
        sy = torch.arange(h, device=feats[i].device, dtype=feats[i].dtype) + offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_list.append(torch.full((h * w, 1), stride, dtype=feats[i].dtype, device=feats[i].device))
    return torch.cat(points), torch.cat(stride_list)


class Detect(nn.Module):
    reg_max = 16

    def __init__(self, nc: int, ch: tuple[int, ...]) -> None:
        super().__init__()
        self.nc, self.nl = nc, len(ch)
        self.no = nc + self.reg_max * 4
        self.stride = torch.zeros(self.nl)  # set by the model; a plain attribute, not a buffer
        c2, c3 = max(16, ch[0] // 4, self.reg_max * 4), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1))
                                 for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = DFL(self.reg_max)
        self.shape = None

    def forward(self, x: list[torch.Tensor]):
        for i in range(self.nl):
            x[i] = torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 1)
        if self.training:
            return x
        shape = x[0].shape
        x_cat = torch.cat([xi.view(shape[0], self.no, -1) for xi in x], 2)
        # anchors cached on the module, as the original does; keyed by the device too (ultralytics moves
        # them in its _apply instead): a net moved to CUDA after a CPU forward of the same shape
        if self.shape != (shape, x[0].device):
            self.anchors, self.strides = (t.transpose(0, 1) for t in make_anchors(x, self.stride, 0.5))
            self.shape = (shape, x[0].device)
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        anchors = self.anchors.unsqueeze(0)
        x1y1, x2y2 = anchors - lt, anchors + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((dbox, cls.sigmoid()), 1), x


# (module, from) rows, like a model yaml: a backbone with C2f, C2fSplit, SPPF and C2PSA; an FPN/PAN neck.
def _layers(w: int, nc: int) -> list[tuple[nn.Module, int | list[int]]]:
    return [
        (Conv(3, w, 3, 2), -1), (Conv(w, 2 * w, 3, 2), -1), (C2f(2 * w, 2 * w, 1, True), -1),
        (Conv(2 * w, 4 * w, 3, 2), -1), (C2f(4 * w, 4 * w, 1, True), -1),                    # 4: P3
        (Conv(4 * w, 8 * w, 3, 2), -1), (C2fSplit(8 * w, 8 * w, 1, True), -1),               # 6: P4
        (Conv(8 * w, 8 * w, 3, 2), -1), (C2f(8 * w, 8 * w, 1, True), -1), (SPPF(8 * w, 8 * w), -1),
        (C2PSA(8 * w, 8 * w), -1),                                                           # 10: P5
        (nn.Upsample(scale_factor=2.0, mode="nearest"), -1), (Concat(), [-1, 6]), (C2f(16 * w, 4 * w), -1),  # 13
        (nn.Upsample(scale_factor=2.0, mode="nearest"), -1), (Concat(), [-1, 4]), (C2f(8 * w, 2 * w), -1),   # 16
        (Conv(2 * w, 2 * w, 3, 2), -1), (Concat(), [-1, 13]), (C2f(6 * w, 4 * w), -1),                     # 19
        (Conv(4 * w, 4 * w, 3, 2), -1), (Concat(), [-1, 10]), (C2f(12 * w, 8 * w), -1),                    # 22
        (Detect(nc, (2 * w, 4 * w, 8 * w)), [16, 19, 22]),
    ]


class YoloLike(nn.Module):
    input_shape = (1, 3, 64, 64)

    def __init__(self, width: int = 16, nc: int = 5, size: int = 64) -> None:
        super().__init__()
        rows = _layers(width, nc)
        for i, (m, f) in enumerate(rows):
            m.i, m.f = i, f
        self.model = nn.Sequential(*(m for m, _ in rows))
        self.save = sorted({j for _, f in rows for j in ([f] if isinstance(f, int) else f) if j != -1})
        self.input_shape = (1, 3, size, size)
        self.model[-1].stride = torch.tensor([8.0, 16.0, 32.0])

    def forward(self, x: torch.Tensor):
        y: list[torch.Tensor | None] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


def _settle(model: YoloLike, size: int) -> YoloLike:
    """Deterministic weights, BatchNorm statistics from a few random images (as a trained net has).
    heads.py settles its norms with the same lines: each file is loaded alone, as a user's FILE.py,
    so neither can import the other."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
    return norms_from(model, torch.rand(8, 3, size, size, generator=g))


def norms_from(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """``model`` in eval mode with its BatchNorm statistics estimated on ``images`` (a trained
    net's are those of its data: other inputs drive a random-weight net out of its range)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


class OneLevel(nn.Module):
    """The Detect head (DFL, anchors, sigmoid, concat) on one level, after a three-conv stem to
    stride 8: a YOLO-like detector small enough for slow exporters."""

    def __init__(self, nc: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), Conv(32, 32, 3, 2))
        self.head = Detect(nc, (32,))
        self.head.stride = torch.tensor([8.0])

    def forward(self, x: torch.Tensor):
        return self.head([self.stem(x)])


def yolo_like() -> YoloLike:
    """The tests' detector: width 16, 5 classes, 64 x 64 inputs."""
    torch.manual_seed(0)
    return _settle(YoloLike(16, 5, 64), 64)


def yolo_like_320() -> YoloLike:
    """The benchmark's detector: YOLOv8n-like widths (16..128 in the backbone... here 16 base), 80 classes, 320 x 320."""
    torch.manual_seed(0)
    return _settle(YoloLike(16, 80, 320), 320)


def yolo_like_640() -> YoloLike:
    """As :func:`yolo_like_320`, 640 x 640 inputs."""
    torch.manual_seed(0)
    return _settle(YoloLike(16, 80, 640), 640)


DIGITS_WEIGHTS = Path(__file__).resolve().parents[2] / "benchmarks" / "weights" / "yolo_like_digits.pt"


def yolo_like_digits() -> YoloLike:
    """The YOLO-like net trained on the digits detection set (``benchmarks/detectors.py --train``):
    width 16, 10 classes, 256 x 256 letterboxed inputs, pixels / 255."""
    model = YoloLike(16, 10, 256)
    if not DIGITS_WEIGHTS.is_file():
        raise FileNotFoundError(f"{DIGITS_WEIGHTS} is missing: train it with python benchmarks/detectors.py --train")
    state = torch.load(DIGITS_WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()
