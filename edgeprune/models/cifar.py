"""The papers' CIFAR reference networks (definitions in shared/papers/SPEC.md)."""
from __future__ import annotations

from torch import nn

from edgeprune.calibration.preprocess import CIFAR10, Preprocess
from edgeprune.layers import ChannelSelect, SpatialSubsample
from edgeprune.models.registry import register_model

CIFAR_SHAPE = (1, 3, 32, 32)
CIFAR_PREPROCESS = Preprocess(**CIFAR10, source="CIFAR-10 training statistics (the zoo's convention)")
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
MOBILENETV1_CFG = [64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024]


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, bias: bool = False) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


@register_model("vgg16-cifar", CIFAR_SHAPE, "VGG16 for CIFAR as in HRank (13 conv+BN, 2 FC): ~313.7 M MACs",
                preprocess=CIFAR_PREPROCESS, num_classes=10)
def vgg16_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    layers: list[nn.Module] = []
    cin = in_channels
    for item in VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += conv_bn_relu(cin, item, bias=True)
            cin = item
    return nn.Sequential(
        nn.Sequential(*layers),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, num_classes)),
    )


class BasicBlock(nn.Module):
    """CIFAR ResNet block with an option-A (subsample + zero-pad) shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            pad = cout - cin
            self.shortcut = nn.Sequential(SpatialSubsample(stride), ChannelSelect.zero_pad(cin, pad // 2, pad - pad // 2))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], 16
        for i, width in enumerate((16, 32, 64)):
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(cin, width, 2 if (i > 0 and b == 0) else 1))
                cin = width
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnet56-cifar", CIFAR_SHAPE, "ResNet-56 for CIFAR, option-A shortcuts: ~125.5 M MACs",
                preprocess=CIFAR_PREPROCESS, num_classes=10)
def resnet56_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(56, num_classes, in_channels)


@register_model("resnet20-cifar", CIFAR_SHAPE, "ResNet-20 for CIFAR, option-A shortcuts: ~41 M MACs",
                preprocess=CIFAR_PREPROCESS, num_classes=10)
def resnet20_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(20, num_classes, in_channels)


@register_model("mobilenetv1-cifar", CIFAR_SHAPE, "MobileNetV1 for CIFAR (depthwise-separable): ~46.4 M MACs",
                preprocess=CIFAR_PREPROCESS, num_classes=10)
def mobilenetv1_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    layers = conv_bn_relu(in_channels, 32)
    cin = 32
    for item in MOBILENETV1_CFG:
        cout, stride = item if isinstance(item, tuple) else (item, 1)
        layers += conv_bn_relu(cin, cin, 3, stride, groups=cin)
        layers += conv_bn_relu(cin, cout, 1)
        cin = cout
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, num_classes))
