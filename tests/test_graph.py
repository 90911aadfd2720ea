"""The dependency graph on small hand-built networks whose couplings are known."""
import copy
import logging

import pytest
import torch
from torch import nn

from edgeprune.api import prune
from edgeprune.graph import build_graph
from edgeprune.surgery import zero_channels


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = self.a(x)
        x = x + torch.relu(self.b(x))
        x = self.c(x) + x
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 4), 1))


class ConcatSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 10, 1)
        self.bn = nn.BatchNorm2d(16)
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.bn(torch.cat([self.a(x), self.b(x)], 1))
        return self.c(y).mean((2, 3))


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        x = self.dw(self.conv(x))
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.out(x * scale)


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.b = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        return self.b(torch.relu(self.g(torch.relu(self.a(x)))))


class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = torch.cumsum(self.a(x), dim=1)  # mixes channels in a way the table does not describe
        return self.c(self.b(x))


def _check_valid(model, shape, ratio=0.5):
    result = prune(model, shape, criterion="random", ratio=ratio)
    reference = zero_channels(copy.deepcopy(model), result.graph, result.plan.keep)
    x = torch.randn((2,) + shape[1:])
    torch.testing.assert_close(result.model.eval()(x), reference.eval()(x), rtol=1e-4, atol=1e-5)
    return result


def test_residual_adds_share_one_set_of_channels():
    graph = build_graph(Residual(), (1, 3, 16, 16))
    coupled = [g for g in graph.prunable_groups() if len(g.spaces) > 1]
    assert len(coupled) == 1 and {s.module for s in coupled[0].spaces} == {"a", "b", "c"}
    assert coupled[0].n_units == 8
    result = _check_valid(Residual(), (1, 3, 16, 16))
    assert result.model.head.in_features == result.model.a.out_channels * 16


def test_concat_offsets_reach_the_right_bn_and_conv_inputs():
    result = _check_valid(ConcatSplit(), (1, 3, 8, 8))
    a, b = result.model.a.out_channels, result.model.b.out_channels
    assert (a, b) == (3, 5) and result.model.bn.num_features == 8 and result.model.c.in_channels == 8


def test_squeeze_excitation_and_depthwise_are_coupled():
    graph = build_graph(SqueezeExcite(), (1, 3, 8, 8))
    main = next(g for g in graph.groups if any(s.module == "conv" for s in g.spaces))
    assert {s.module for s in main.spaces} == {"conv", "dw", "fc2"}
    _check_valid(SqueezeExcite(), (1, 3, 8, 8))


def test_grouped_conv_keeps_blocks_balanced():
    result = _check_valid(Grouped(), (1, 3, 8, 8))
    g = result.model.g
    assert g.groups == 4 and g.in_channels == 16 and g.out_channels == 8


def test_unknown_operation_stops_pruning_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        result = _check_valid(Unknown(), (1, 3, 8, 8))
    assert any("cumsum" in w for w in result.warnings)
    assert "cumsum" in caplog.text
    assert result.model.a.out_channels == 8 and result.model.b.in_channels == 8
    assert result.model.b.out_channels == 4


def test_literal_view_size_pins_channels():
    class Literal(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 16, 4)

        def forward(self, x):
            return self.fc(self.conv(x).view(-1, 8 * 16))

    result = prune(Literal(), (1, 3, 4, 4), ratio=0.5)
    assert result.model.conv.out_channels == 8
    assert any("literal size" in w for w in result.warnings)


def test_untraceable_model_gives_a_clear_error():
    from edgeprune.errors import TraceError

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            return y if y.sum() > 0 else -y

    with pytest.raises(TraceError, match="cannot trace DataDependent"):
        build_graph(DataDependent(), (1, 3, 4, 4))
