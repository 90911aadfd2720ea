"""Pruning the CIFAR zoo: validity, exact equivalence with zeroed channels, ratios, checkpoints."""
import copy

import numpy as np
import pytest
import torch

from edgeprune.api import prune
from edgeprune.checkpoint import load_model, save_checkpoint
from edgeprune.counter import count_model
from edgeprune.errors import EdgepruneError
from edgeprune.surgery import zero_channels

ZOO = ["vgg16-cifar", "resnet20-cifar", "resnet56-cifar", "mobilenetv1-cifar"]


def _outputs(model, shape, seed=0):
    x = torch.randn((4,) + tuple(shape[1:]), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name", ZOO)
def test_ratio_zero_changes_nothing(zoo_model, name):
    built = zoo_model(name)
    result = prune(built.model, built.input_shape, ratio=0.0)
    assert result.after == result.before
    assert torch.equal(_outputs(result.model, built.input_shape), _outputs(built.model, built.input_shape))


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("criterion", ["l1", "fpgm", "random"])
def test_pruned_equals_original_with_removed_channels_zeroed(zoo_model, name, criterion):
    built = zoo_model(name)
    result = prune(built.model, built.input_shape, criterion=criterion, ratio=0.5)
    reference = zero_channels(copy.deepcopy(built.model), result.graph, result.plan.keep)
    assert result.after.macs < 0.6 * result.before.macs
    torch.testing.assert_close(_outputs(result.model, built.input_shape), _outputs(reference, built.input_shape),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ZOO)
def test_planned_counts_equal_counts_of_the_pruned_network(zoo_model, name):
    built = zoo_model(name)
    result = prune(built.model, built.input_shape, ratio=0.4)
    assert count_model(result.model, built.input_shape) == result.after


@pytest.mark.parametrize("name, macs, params", [
    ("vgg16-cifar", 313.7e6, 14.98e6), ("resnet56-cifar", 125.5e6, 0.85e6), ("mobilenetv1-cifar", 46.4e6, 3.22e6),
])
def test_counter_matches_published_figures(zoo_model, name, macs, params):
    built = zoo_model(name)
    counts = count_model(built.model, built.input_shape)
    assert counts.macs == pytest.approx(macs, rel=2e-3)
    assert counts.params == pytest.approx(params, rel=5e-3)  # published to 2-3 digits


def test_counter_resnet50_matches_torchvision():
    from edgeprune.models import build

    counts = count_model(build("torchvision:resnet50?weights=none").model, (1, 3, 224, 224))
    assert counts.macs == pytest.approx(4.09e9, rel=2e-3)
    assert counts.params == 25_557_032


@pytest.mark.parametrize("name", ["vgg16-cifar", "resnet56-cifar", "mobilenetv1-cifar"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_flops_cut_reaches_target_within_one_point(zoo_model, name, target):
    built = zoo_model(name)
    result = prune(built.model, built.input_shape, flops_cut=target)
    assert abs(result.plan.macs_cut - target) <= 0.01
    assert _outputs(result.model, built.input_shape).shape == (4, 10)


def test_round_to_keeps_multiples(zoo_model):
    built = zoo_model("vgg16-cifar")
    result = prune(built.model, built.input_shape, ratio=0.3, round_to=8)
    convs = [m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.out_channels % 8 == 0 for m in convs)
    assert any(m.out_channels < 64 for m in convs[:2])


def test_classifier_output_is_never_pruned(zoo_model):
    built = zoo_model("vgg16-cifar")
    result = prune(built.model, built.input_shape, ratio=0.9 - 1e-9, global_ranking=False)
    assert result.model[-1][-1].out_features == 10


def test_layer_ratios_touch_only_their_group(zoo_model):
    built = zoo_model("vgg16-cifar")
    result = prune(built.model, built.input_shape, layer_ratios={"0.0": 0.5})
    convs = [m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels == 32 and convs[1].in_channels == 32
    assert [c.out_channels for c in convs[1:]] == [64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def test_global_ranking_respects_cap(zoo_model):
    built = zoo_model("vgg16-cifar")
    result = prune(built.model, built.input_shape, ratio=0.5, global_ranking=True, max_group_ratio=0.6)
    convs = [m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)]
    original = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert all(c.out_channels >= 0.4 * o - 1 for c, o in zip(convs, original))
    assert result.after.macs < result.before.macs


def test_option_a_shortcuts_stay_valid_and_consistent(zoo_model):
    """ResNet-56's zero-padding shortcuts couple all stages; the pruned net must still run."""
    built = zoo_model("resnet56-cifar")
    result = prune(built.model, built.input_shape, criterion="random", ratio=0.6)
    big = max(result.graph.prunable_groups(), key=lambda g: len(g.spaces))
    assert len(big.spaces) > 20
    reference = zero_channels(copy.deepcopy(built.model), result.graph, result.plan.keep)
    torch.testing.assert_close(_outputs(result.model, built.input_shape), _outputs(reference, built.input_shape),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ZOO)
def test_checkpoint_round_trip(zoo_model, name, tmp_path):
    built = zoo_model(name)
    result = prune(built.model, built.input_shape, ratio=0.5)
    path = save_checkpoint(result.model, tmp_path / "p.pt", spec=name, input_shape=built.input_shape, kwargs=built.kwargs)
    payload = torch.load(path, weights_only=True)
    assert payload["spec"] == name
    loaded = load_model(str(path))
    assert torch.equal(_outputs(loaded.model, built.input_shape), _outputs(result.model, built.input_shape))
    assert count_model(loaded.model, loaded.input_shape) == result.after


def test_pruning_a_pruned_checkpoint_again(zoo_model, tmp_path):
    built = zoo_model("resnet20-cifar")
    first = prune(built.model, built.input_shape, ratio=0.3)
    path = save_checkpoint(first.model, tmp_path / "a.pt", spec="resnet20-cifar", input_shape=built.input_shape)
    loaded = load_model(str(path))
    second = prune(loaded.model, loaded.input_shape, ratio=0.3)
    assert second.after.macs < first.after.macs
    assert _outputs(second.model, built.input_shape).shape == (4, 10)


def test_weights_option_loads_a_plain_state_dict(tmp_path):
    from edgeprune.models import build

    built = build("resnet20-cifar")
    torch.save(built.model.state_dict(), tmp_path / "w.pt")
    loaded = load_model("resnet20-cifar", weights=tmp_path / "w.pt")
    assert torch.equal(_outputs(loaded.model, built.input_shape), _outputs(built.model, built.input_shape))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_ratio_out_of_range_is_refused(zoo_model, bad):
    built = zoo_model("resnet20-cifar")
    with pytest.raises(EdgepruneError, match=r"\[0, 1\)"):
        prune(built.model, built.input_shape, ratio=bad)


def test_keep_mask_is_consistent_within_units(zoo_model):
    built = zoo_model("resnet20-cifar")
    result = prune(built.model, built.input_shape, ratio=0.5)
    keep, classes = result.plan.keep, result.graph.classes
    for root in np.unique(classes):
        assert len(set(keep[classes == root])) == 1
