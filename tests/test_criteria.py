"""The pruning criteria on hand-built weights, maps and models whose right answer is known.

Each test sets weights (or data) so that one choice is correct, prunes, and checks which output
channels survive by matching the surviving weight rows with the original ones.
"""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.api import prune, prune_iteratively
from edgeprune.counter import count, count_model
from edgeprune.criteria import create_criterion, list_criteria, score_groups
from edgeprune.criteria.activations import batched_rank
from edgeprune.criteria.csctfp import CSCTFP, key_filter_scores
from edgeprune.criteria.rank import fms_redundant, fms_scores, replace_fc_head_with_gap
from edgeprune.criteria.soft import SoftPruningSchedule
from edgeprune.criteria.tcfp import (TCFPSoftSchedule, accuracy, cluster_functions, intra_cluster_scores, kmeans,
                                     silhouette, tcfp_soft_prune)
from edgeprune.errors import EdgepruneError
from edgeprune.graph import build_graph
from edgeprune.models import build


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: on a shared CPU, extra intra-op threads only make them slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def surviving(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """The original rows (output channels) that ``pruned`` still holds, in order."""
    flat = original.detach().flatten(1)
    found = []
    for row in pruned.detach().flatten(1):  # surgery keeps the order: the next equal row is the one
        start = found[-1] + 1 if found else 0
        match = next((i for i in range(start, len(flat)) if torch.equal(flat[i], row)), None)
        assert match is not None, "every pruned row must be an original row, in the original order"
        found.append(match)
    return found


def set_weight(conv: nn.Module, rows) -> None:
    with torch.no_grad():
        conv.weight.copy_(torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in rows]).view_as(conv.weight))


def head(channels: int, *layers: nn.Module) -> nn.Sequential:
    """``layers`` then a 1x1 conv to 2 channels: the model output stays, ``layers``' channels are prunable."""
    return nn.Sequential(*layers, nn.ReLU(), nn.Conv2d(channels, 2, 1))


# ---------------------------------------------------------------------------------------------
# CSCTFP


def _orthonormal(n: int, dim: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, n, generator=torch.Generator().manual_seed(3)))
    return q.T  # n orthonormal rows


def test_csctfp_keeps_the_key_filter_and_its_most_correlated():
    a, b, c = _orthonormal(3, 2 * 3 * 3)
    rows = [5 * a,               # 0: the key (largest norm)
            0.5 * a,             # 1: |cos| = 1
            -0.4 * a + 0.05 * b,  # 2: |cos| ~ 0.99 (anti-correlated counts)
            2 * b,               # 3: uncorrelated, but a larger norm than 1 and 2
            3 * c,               # 4: uncorrelated, second largest norm
            0.3 * a + 0.3 * b]   # 5: |cos| ~ 0.71
    model = head(6, nn.Conv2d(2, 6, 3, padding=1, bias=False))
    set_weight(model[0], rows)
    graph = build_graph(model, (1, 2, 8, 8))
    scores = CSCTFP().space_scores(graph, graph.state.module_spaces["0"])
    torch.testing.assert_close(scores, torch.tensor([3.0, 1.0, 0.4 / (0.4 ** 2 + 0.05 ** 2) ** 0.5, 0, 0, 2 ** -0.5],
                                                    dtype=torch.float64), atol=1e-6, rtol=0)

    result = prune(model, (1, 2, 8, 8), criterion="csctfp", ratio=0.5)
    assert surviving(model[0].weight, result.model[0].weight) == [0, 1, 2]
    assert result.model[2].in_channels == 3
    by_norm = prune(model, (1, 2, 8, 8), criterion="l2", ratio=0.5)  # the contrast: L2 keeps 0, 3, 4
    assert surviving(model[0].weight, by_norm.model[0].weight) == [0, 3, 4]


def test_csctfp_key_fraction_sets_the_number_of_keys():
    rows = torch.tensor([[4.0, 0], [3.0, 0.1], [0, 2.0], [0.1, 1.0]])
    one_key = key_filter_scores(rows, key_fraction=0.1)  # m = max(1, ceil(0.4)) = 1
    two_keys = key_filter_scores(rows, key_fraction=0.5)  # m = 2: filters 0 and 1
    assert one_key[0] == 3 and one_key[1:].max() < 1
    assert two_keys[:2].min() > 2 and two_keys[2:].max() < 1
    torch.testing.assert_close(two_keys[1], torch.tensor(2 + (9.01 ** 0.5) / 4, dtype=torch.float64))


# kernels of 2 input channels, 2 x 2 each; a, b, c, d are orthonormal kernels
_A, _B, _C, _D = torch.eye(4)
_SPATIAL_ROWS = [torch.stack([6 * _A, 2 * _B]),      # 0: the key (largest norm)
                 torch.stack([0.1 * _A, 5 * _B]),    # 1: same kernel directions, other balance
                 torch.stack([3 * _A, 1 * _C]),      # 2: half the kernels agree, most of the mass does
                 torch.stack([0.5 * _C, 0.5 * _D])]  # 3: nothing in common


def test_csctfp_spatial_similarity_scores():
    w = torch.stack(_SPATIAL_ROWS)
    spatial = key_filter_scores(w, similarity="spatial")
    flat = key_filter_scores(w)
    # spatial: mean over input channels of per-kernel cosines; flat: cosine of the whole filters
    torch.testing.assert_close(spatial, torch.tensor([3.0, 1.0, 0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(flat, torch.tensor([3.0, 10.6 / (40 * 25.01) ** 0.5, 0.9, 0.0], dtype=torch.float64))


def test_csctfp_spatial_option_through_prune():
    model = head(4, nn.Conv2d(2, 4, 2, bias=False))
    set_weight(model[0], _SPATIAL_ROWS)
    flat = prune(model, (1, 2, 6, 6), criterion="csctfp", ratio=0.5)
    spatial = prune(model, (1, 2, 6, 6), criterion="csctfp", ratio=0.5, criterion_options={"similarity": "spatial"})
    assert surviving(model[0].weight, flat.model[0].weight) == [0, 2]
    assert surviving(model[0].weight, spatial.model[0].weight) == [0, 1]


def test_csctfp_scores_grouped_convs_block_by_block():
    model = head(4, nn.Conv2d(4, 4, 1, groups=2, bias=False))
    set_weight(model[0], [[5.0, 0], [0, 1.0],      # block 0: key 0, filter 1 orthogonal to it
                          [0, 0.5], [1.0, 1.0]])   # block 1: its own key 3 (smaller than 0), filter 2 at 45 degrees
    graph = build_graph(model, (1, 4, 4, 4))
    scores = CSCTFP().space_scores(graph, graph.state.module_spaces["0"])
    torch.testing.assert_close(scores, torch.tensor([3.0, 0.0, 2 ** -0.5, 3.0], dtype=torch.float64))


@pytest.mark.parametrize("options", [{"similarity": "bogus"}, {"key_fraction": 0.0}, {"key_fraction": 1.5}])
def test_csctfp_bad_options_are_refused(options):
    with pytest.raises(EdgepruneError):
        create_criterion("csctfp", **options)


def test_csctfp_bad_similarity_in_the_function_is_refused():
    with pytest.raises(EdgepruneError, match="similarity"):
        key_filter_scores(torch.randn(4, 2, 3, 3), similarity="bogus")


# ---------------------------------------------------------------------------------------------
# HRank


def test_batched_rank_matches_known_ranks():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, generator=g), torch.randn(6, generator=g)
    two = torch.randn(2, 6, generator=g)
    maps = torch.stack([
        torch.zeros(6, 6),                                   # 0
        torch.eye(6),                                        # 6
        torch.outer(u, v),                                   # 1
        two[[0, 1, 0, 1, 0, 1]] * torch.arange(1.0, 7)[:, None],  # 2: rows from a 2-dim span
        torch.randn(6, 6, generator=g),                      # 6
        torch.diag(torch.tensor([1.0, 2, 3, 0, 0, 0])),      # 3
    ])
    assert batched_rank(maps).tolist() == [0, 6, 1, 2, 6, 3]
    wide = torch.randn(3, 3, 5, generator=g)  # wider than tall: rank at most 3
    wide[1, 2] = wide[1, 0] + wide[1, 1]
    wide[2] = 0
    assert batched_rank(wide).tolist() == [3, 2, 0]
    mixed = torch.randn(20, 7, 7, generator=g) @ torch.randn(20, 7, 7, generator=g).triu(3)
    assert torch.equal(batched_rank(mixed), torch.linalg.matrix_rank(mixed))
    with pytest.raises(ValueError):
        batched_rank(torch.zeros(6, 6))


def _rank_data(n: int = 16, side: int = 8) -> torch.Tensor:
    """Channel 0: noise (full-rank maps). Channel 1: a positive rank-1 image u v^T per sample."""
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(n, side, side, generator=g)
    u, v = torch.rand(n, side, generator=g) + 0.1, torch.rand(n, side, generator=g) + 0.1
    return torch.stack([noise, u[:, :, None] * v[:, None, :]], 1)


def _rank_model() -> nn.Sequential:
    model = head(4, nn.Conv2d(2, 4, 3, padding=1, bias=False))
    g = torch.Generator().manual_seed(2)
    rank1 = torch.zeros(2, 3, 3)
    rank1[1, 1, 1] = 10.0  # the centre tap on the rank-1 channel: largest norm, rank-1 maps
    set_weight(model[0], [torch.stack([torch.randn(3, 3, generator=g), torch.zeros(3, 3)]),  # full rank
                          torch.zeros(2, 3, 3),                                               # zero maps
                          torch.stack([torch.randn(3, 3, generator=g), torch.zeros(3, 3)]),  # full rank
                          rank1])
    return model


def test_hrank_scores_are_the_mean_map_ranks_over_their_ceiling():
    model = _rank_model()
    graph = build_graph(model, (1, 2, 8, 8))
    hrank = create_criterion("hrank")
    hrank.prepare(graph, _rank_data())
    assert hrank.images == 16
    ranks = 8 * hrank.space_scores(graph, graph.state.module_spaces["0"])  # 8 x 8 maps: rank at most 8
    assert ranks[1] == 0 and ranks[3] == pytest.approx(1)  # zero maps; rank-1 maps
    assert ranks[0] > 7.5 and ranks[2] > 7.5  # 8 x 8 noise maps (a ReLU may zero a row of one, now and then)


def test_hrank_compares_ranks_across_resolutions_as_fractions():
    """A channel coupled across a 16x16 and an 8x8 layer: raw ranks would favour the large maps."""

    class TwoScales(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.big = nn.Conv2d(1, 4, 3, padding=1)
            self.small = nn.Conv2d(1, 4, 3, padding=1)
            self.out = nn.Conv2d(4, 2, 1)

        def forward(self, x):  # the add couples big's and small's channels: one group, two resolutions
            a = torch.relu(self.big(x))
            b = torch.relu(self.small(x[:, :, ::2, ::2]))
            return self.out(a[:, :, ::2, ::2] + b)

    model = TwoScales()
    graph = build_graph(model, (1, 1, 16, 16))
    hrank = create_criterion("hrank")
    hrank.prepare(graph, torch.randn(8, 1, 16, 16))
    big = hrank.space_scores(graph, graph.state.module_spaces["big"])
    small = hrank.space_scores(graph, graph.state.module_spaces["small"])
    assert big.max() <= 1 and small.max() <= 1 and big.max() > 0.5 and small.max() > 0.5


def test_hrank_prunes_low_rank_channels_even_with_the_largest_norm():
    model = _rank_model()
    result = prune(model, (1, 2, 8, 8), criterion="hrank", ratio=0.5, data=_rank_data())
    assert surviving(model[0].weight, result.model[0].weight) == [0, 2]
    by_norm = prune(model, (1, 2, 8, 8), criterion="l2", ratio=0.5)
    assert 3 in surviving(model[0].weight, by_norm.model[0].weight)


def test_hrank_without_data_is_refused():
    model = _rank_model()
    with pytest.raises(EdgepruneError, match="calibration data"):
        prune(model, (1, 2, 8, 8), criterion="hrank", ratio=0.5)


# ---------------------------------------------------------------------------------------------
# FMS

_S = torch.tensor([[1.0, 0.9, 0.1, 0.85],
                   [0.9, 1.0, 0.2, 0.1],
                   [0.1, 0.2, 1.0, 0.3],
                   [0.85, 0.1, 0.3, 1.0]])
_R = torch.tensor([5.0, 7.0, 6.0, 4.0])


def test_fms_redundant_on_a_hand_made_similarity():
    # visit 1 (r=7): marks 0 (S=0.9, r 5 <= 7); 2 has no close filter; 0 is already redundant, so
    # it marks nothing, and 3 (close only to 0) stays
    assert fms_redundant(_S, _R).tolist() == [True, False, False, False]
    assert fms_redundant(_S, _R, tau=0.95).tolist() == [False] * 4
    assert fms_redundant(_S, _R, tau=0.0).tolist() == [True, False, True, True]  # 1 marks everyone below it
    # equal ranks: the first visited keeps, the other is redundant (never both)
    assert fms_redundant(torch.tensor([[1.0, 0.95], [0.95, 1.0]]), torch.tensor([3.0, 3.0])).tolist() == [False, True]
    # a higher-rank filter is never marked by a lower-rank one
    assert fms_redundant(torch.tensor([[1.0, 0.95], [0.95, 1.0]]), torch.tensor([2.0, 3.0])).tolist() == [True, False]


def test_fms_scores_put_redundant_first_then_by_rank():
    scores = fms_scores(_S, _R)
    torch.testing.assert_close(scores, torch.tensor([5 / 8, 1 + 7 / 8, 1 + 6 / 8, 1 + 4 / 8], dtype=torch.float64))
    # a budget of 2 takes the redundant filter, then the lowest-rank of the rest
    assert torch.argsort(scores)[:2].tolist() == [0, 3]


def test_fms_prunes_one_of_two_channels_with_identical_maps():
    model = head(4, nn.Conv2d(1, 4, 3, bias=False))
    g = torch.Generator().manual_seed(4)
    twin, other = torch.randn(3, 3, generator=g), torch.randn(3, 3, generator=g)
    set_weight(model[0], [twin, -other, twin, other])  # 0 and 2 make identical maps; 1 and 3 opposite ones
    data = torch.randn(16, 1, 8, 8, generator=g)
    graph = build_graph(model, (1, 1, 8, 8))
    fms = create_criterion("fms")
    fms.prepare(graph, data)
    scores = fms.space_scores(graph, graph.state.module_spaces["0"])
    assert (scores < 1).tolist() == [False, False, True, False]  # only the second twin is redundant

    result = prune(model, (1, 1, 8, 8), criterion="fms", ratio=0.25, data=data)
    assert surviving(model[0].weight, result.model[0].weight) == [0, 1, 3]


def test_replace_fc_head_with_gap_on_vgg16():
    built = build("vgg16-cifar")
    before = copy.deepcopy(built.model.state_dict())
    new, saved = replace_fc_head_with_gap(built.model, built.input_shape)
    # Linear(512, 512) + BN(512) + Linear(512, 10) -> Linear(512, 10)
    assert saved.params_saved == 263680 == 512 * 512 + 512 + 2 * 512
    assert saved.params_after == count_model(new, built.input_shape).params
    assert saved.macs_saved == 512 * 512  # the only MACs of the dropped layer that the counter counts
    assert isinstance(new[-1], nn.Linear) and new[-1].in_features == 512
    assert new.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert all(torch.equal(v, built.model.state_dict()[k]) for k, v in before.items())  # input untouched


def test_replace_fc_head_refuses_a_single_linear_head():
    with pytest.raises(EdgepruneError):
        replace_fc_head_with_gap(build("resnet20-cifar").model, (1, 3, 32, 32))
    single = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(EdgepruneError):
        replace_fc_head_with_gap(single, (1, 3, 8, 8))


# ---------------------------------------------------------------------------------------------
# TCFP


def test_kmeans_finds_separated_blobs():
    x = torch.tensor([[10.0], [0.0], [5.1], [0.1], [10.1], [5.0]])
    labels, centres, inertia = kmeans(x, 3)
    assert labels[1] == labels[3] and labels[2] == labels[5] and labels[0] == labels[4]
    assert len(set(labels.tolist())) == 3
    torch.testing.assert_close(centres.flatten().sort().values, torch.tensor([0.05, 5.05, 10.05], dtype=torch.float64))
    assert inertia == pytest.approx(3 * 2 * 0.05 ** 2, rel=1e-5)  # float32 inputs
    assert kmeans(x, 10)[0].unique().numel() == 6  # k is capped at the number of points


def test_silhouette_by_hand_and_against_scikit_learn():
    # points 0, 2, 10 with labels 0, 0, 1: s = (10-2)/10, (8-2)/8 and 0 for the singleton
    assert silhouette(torch.tensor([[0.0], [2.0], [10.0]]), torch.tensor([0, 0, 1])) == pytest.approx((0.8 + 0.75) / 3)
    assert silhouette(torch.tensor([[0.0], [1.0]]), torch.tensor([0, 0])) == 0.0  # one cluster
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(5)
    x, labels = torch.randn(30, 4, generator=g), torch.randint(0, 4, (30,), generator=g)
    assert silhouette(x, labels) == pytest.approx(metrics.silhouette_score(x.double().numpy(), labels.numpy()), abs=1e-9)


def test_cluster_functions_groups_identical_rows():
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(4, 10, generator=g)
    r = centres[[0, 1, 2, 3, 0, 1, 2, 3]] * torch.tensor([1.0, 2, 1, 3, 1, 2, 1, 3])[:, None]
    labels = cluster_functions(r)  # the norm does not matter: rows are normalised
    assert all(labels[i] == labels[i + 4] for i in range(4))
    assert labels.unique().numel() == 4  # k = 4 (the best silhouette) out of [2, 4]
    assert cluster_functions(torch.randn(2, 3, generator=g)).tolist() == [0, 0]  # too few rows for k >= 2


def test_intra_cluster_scores_rank_by_norm_within_each_cluster():
    scores = intra_cluster_scores(torch.tensor([0, 0, 0, 1, 1]), torch.tensor([1.0, 3.0, 2.0, 5.0, 4.0]))
    torch.testing.assert_close(scores, torch.tensor([1 / 3, 1.0, 2 / 3, 1.0, 0.5], dtype=torch.float64), atol=1e-5, rtol=0)
    # removing two takes the smallest of each cluster, not the two smallest norms (0 and 2)
    assert sorted(torch.argsort(scores)[:2].tolist()) == [0, 4]


def _twin_model() -> nn.Sequential:
    """Eight 3x3 filters; filter 5 is a copy of filter 2."""
    model = head(8, nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
    with torch.no_grad():
        model[0].weight[5] = model[0].weight[2]
        model[0].bias[5] = model[0].bias[2]
    return model.eval()


@pytest.mark.parametrize("options", [{"function": "probe"}, {"function": "maximisation", "steps": 5}])
def test_tcfp_puts_identical_filters_in_one_cluster(options):
    model = _twin_model()
    graph = build_graph(model, (1, 3, 8, 8))
    tcfp = create_criterion("tcfp", **options)
    tcfp.prepare(graph, torch.randn(16, 3, 8, 8))
    labels = tcfp.clusters["0"]
    assert labels.shape == (8,) and labels[2] == labels[5]
    assert 2 <= len(np.unique(labels)) <= 4  # k in [ceil(8/8) -> 2, ceil(8/2)]
    result = prune(model, (1, 3, 8, 8), criterion=tcfp, ratio=0.5, data=torch.randn(16, 3, 8, 8))
    assert result.model[0].out_channels == 4
    # the largest filter of every cluster scores 1 and is kept (of the twins, the first)
    norms = model[0].weight.detach().flatten(1).norm(dim=1).numpy()
    kept = surviving(model[0].weight, result.model[0].weight)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        assert members[np.argmax(norms[members])] in kept


def test_tcfp_unknown_function_is_refused():
    with pytest.raises(EdgepruneError):
        create_criterion("tcfp", function="bogus")


def _soft_problem():
    """Two classes told apart by channel 0 vs channel 1 of the input; channel 2 is noise.

    Filters 0 and 1 read channels 0 and 1 and decide the class; filters 2 and 3 (one cluster)
    read the noise and the classifier ignores them, so that cluster costs no accuracy.
    """
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2, bias=False))
    set_weight(model[0], [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 2.0]])
    with torch.no_grad():
        model[4].weight.copy_(torch.tensor([[1.0, -1.0, 0, 0], [-1.0, 1.0, 0, 0]]))
    g = torch.Generator().manual_seed(7)
    y = torch.arange(40) % 2
    level = torch.rand(40, 2, generator=g) + 0.5
    level[torch.arange(40), y] += 1.0  # the labelled channel is brighter
    x = torch.cat([level[:, :, None, None].expand(40, 2, 4, 4), torch.rand(40, 1, 4, 4, generator=g)], 1)
    clusters = {"0": np.array([0, 1, 2, 2])}
    return model.eval(), (x, y), clusters


def test_tcfp_soft_prune_zeroes_only_the_useless_cluster():
    model, val, clusters = _soft_problem()
    assert accuracy(model, val) == 1.0
    original = model[0].weight.detach().clone()
    graph = build_graph(model, (1, 3, 4, 4))
    step = tcfp_soft_prune(model, graph, clusters, val)
    assert step.baseline == 1.0
    assert step.deltas[("0", 0)] == pytest.approx(0.5) and step.deltas[("0", 1)] == pytest.approx(0.5)
    assert step.deltas[("0", 2)] == 0.0
    assert step.selected == [("0", 2)]
    space = graph.state.module_spaces["0"]
    assert step.keep[space.offset:space.offset + 4].tolist() == [True, True, False, False]
    assert torch.equal(model[0].weight[:2], original[:2]) and not model[0].weight[2:].any()
    assert torch.equal(model[4].weight, torch.tensor([[1.0, -1.0, 0, 0], [-1.0, 1.0, 0, 0]]))
    assert accuracy(model, val) == 1.0
    # a MACs target already met selects nothing
    untouched, _, _ = _soft_problem()
    graph = build_graph(untouched, (1, 3, 4, 4))
    met = tcfp_soft_prune(untouched, graph, clusters, val, target_macs=count(graph).macs)
    assert met.selected == [] and torch.equal(untouched[0].weight, original)


def test_tcfp_soft_schedule_finalize_removes_the_cluster():
    model, val, clusters = _soft_problem()
    original = model[0].weight.detach().clone()
    schedule = TCFPSoftSchedule(build_graph(model, (1, 3, 4, 4)), clusters, val, every=2)
    schedule.epoch_end(model, 1)  # not an epoch to act on
    assert schedule.last is None and torch.equal(model[0].weight, original)
    schedule.epoch_end(model, 2)
    assert schedule.last.selected == [("0", 2)]
    step = schedule.finalize(model)
    assert step is schedule.last
    assert model[0].out_channels == 2 and model[4].in_features == 2
    assert surviving(original, model[0].weight) == [0, 1]
    assert accuracy(model, val) == 1.0


# ---------------------------------------------------------------------------------------------
# SFP


def _sfp_model() -> nn.Sequential:
    model = head(4, nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    with torch.no_grad():
        w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(8))
        model[0].weight.copy_(w / w.flatten(1).norm(dim=1)[:, None, None, None] * torch.tensor([1.0, 4, 2, 3])[:, None, None, None])
        model[1].weight.copy_(torch.tensor([1.0, 1.5, 0.5, 2.0]))
        model[1].bias.fill_(0.5)  # a positive shift: the ReLU passes gradients to a zeroed filter
        model[1].running_mean.copy_(torch.tensor([0.1, -0.1, 0.2, 0.0]))
    return model


def test_sfp_epoch_end_zeroes_lowest_l2_and_leaves_bn():
    model = _sfp_model()
    before = copy.deepcopy(model.state_dict())
    schedule = SoftPruningSchedule(build_graph(model, (1, 3, 8, 8)), ratio=0.5, every=2)
    schedule.epoch_end(model, 1)  # skipped: every=2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    schedule.epoch_end(model, 2)
    assert not model[0].weight[[0, 2]].any() and not model[0].bias[[0, 2]].any()
    assert torch.equal(model[0].weight[[1, 3]], before["0.weight"][[1, 3]])
    for key in ("1.weight", "1.bias", "1.running_mean", "1.running_var"):
        assert torch.equal(model.state_dict()[key], before[key])  # BN untouched
    assert torch.equal(model[3].weight, before["3.weight"])  # the consumer too


def test_sfp_zeroed_filters_regrow_and_scores_are_recomputed():
    model = _sfp_model().train()
    schedule = SoftPruningSchedule(build_graph(model, (1, 3, 8, 8)), ratio=0.5)
    schedule.epoch_end(model, 1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    model(x).pow(2).mean().backward()
    assert model[0].weight.grad[[0, 2]].abs().sum() > 0  # no gradient mask
    optimiser.step()
    assert model[0].weight[0].abs().sum() > 0 and model[0].weight[2].abs().sum() > 0
    # a filter that grew past another comes back at the next epoch end
    with torch.no_grad():
        model[0].weight[0].mul_(0).add_(10.0)
        model[0].weight[1].mul_(1e-3)
    schedule.epoch_end(model, 2)
    assert model[0].weight[0].abs().sum() > 0
    assert not model[0].weight[1].any() and not model[0].weight[2].any()


def test_sfp_zero_norm_freezes_the_filter():
    model = _sfp_model().train()
    schedule = SoftPruningSchedule(build_graph(model, (1, 3, 8, 8)), ratio=0.5, zero_norm=True)
    schedule.epoch_end(model, 1)
    assert not model[1].weight[[0, 2]].any() and not model[1].bias[[0, 2]].any()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(8, 3, 8, 8)).pow(2).mean().backward()
    optimiser.step()
    assert not model[0].weight[[0, 2]].any()


def test_sfp_finalize_removes_physically():
    model = _sfp_model()
    original = model[0].weight.detach().clone()
    schedule = SoftPruningSchedule(build_graph(model, (1, 3, 8, 8)), ratio=0.5)
    schedule.epoch_end(model, 1)
    space = schedule.graph.state.module_spaces["0"]
    plan = schedule.finalize(model)
    assert plan.keep[space.offset:space.offset + 4].tolist() == [False, True, False, True]
    assert model[0].out_channels == 2 and model[1].num_features == 2 and model[3].in_channels == 2
    assert surviving(original, model[0].weight) == [1, 3]
    assert count_model(model, (1, 3, 8, 8)) == plan.after
    assert model.eval()(torch.randn(2, 3, 8, 8)).shape == (2, 2, 8, 8)


def test_sfp_one_shot_is_l2():
    model = _sfp_model()
    sfp = prune(model, (1, 3, 8, 8), criterion="sfp", ratio=0.5)
    l2 = prune(model, (1, 3, 8, 8), criterion="l2", ratio=0.5)
    assert surviving(model[0].weight, sfp.model[0].weight) == surviving(model[0].weight, l2.model[0].weight) == [1, 3]


# ---------------------------------------------------------------------------------------------
# every criterion, on a residual, a depthwise and a grouped-conv model


def _grouped() -> tuple[nn.Module, tuple[int, ...]]:
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    return model.eval(), (1, 3, 16, 16)


MODELS = {
    "resnet20": lambda: (build("resnet20-cifar").model, (1, 3, 32, 32)),
    "mobilenetv1": lambda: (build("mobilenetv1-cifar").model, (1, 3, 16, 16)),  # fully convolutional: a small input
    "grouped": _grouped,
}
FAST = {"tcfp": {"steps": 5, "image_size": 8, "max_k_trials": 3},
        "hrank": {"batch_size": 8, "batches": 2}, "fms": {"batch_size": 8, "batches": 2}}


def _fast(name: str, model: str):
    if name == "tcfp" and model == "mobilenetv1":  # 1024-filter layers: the probe keeps it to seconds
        return create_criterion("tcfp", function="probe", batch_size=8, batches=2, max_k_trials=2, kmeans_iters=20)
    return create_criterion(name, **FAST.get(name, {}))


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", list_criteria())
def test_every_criterion_prunes_every_kind_of_model(name, model_name):
    model, shape = MODELS[model_name]()
    data = torch.randn((16,) + shape[1:], generator=torch.Generator().manual_seed(10))
    result = prune(model, shape, criterion=_fast(name, model_name), ratio=0.5, data=data)
    assert result.after.macs < 0.7 * result.before.macs
    assert count_model(result.model, shape) == result.after
    with torch.no_grad():
        out = result.model.eval()(data[:2])
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    for module in result.model.modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            assert module.in_channels % module.groups == 0 and module.out_channels % module.groups == 0
    if model_name == "grouped":
        assert result.model[3].groups == 4 and result.model[3].out_channels == 8


# ---------------------------------------------------------------------------------------------
# data-driven criteria leave nothing behind


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("name, options", [
    ("hrank", {}), ("fms", {}), ("tcfp", {"function": "probe"}), ("tcfp", {"steps": 3, "image_size": 8}), ("thinet", {}),
])
def test_data_driven_criteria_leave_the_model_as_it_was(name, options):
    model = build("resnet20-cifar").model.train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        reference = copy.deepcopy(model).eval()(x)
    state = copy.deepcopy(model.state_dict())
    assert _hooks(model) == 0
    create_criterion(name, batch_size=8, **options).prepare(build_graph(model, (1, 3, 32, 32)), torch.randn(8, 3, 32, 32))
    assert _hooks(model) == 0
    assert all(m.training for m in model.modules())  # modes restored
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # BN statistics too
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reference)


# ---------------------------------------------------------------------------------------------
# CSCTFP's iterative schedule


def _units(model: nn.Module, shape) -> dict[str, int]:
    """Units per prunable group, keyed by the group's first module."""
    return {next(s.module for s in g.spaces if s.module): g.n_units for g in build_graph(model, shape).prunable_groups()}


@pytest.mark.parametrize("model_name", ["resnet20", "mobilenetv1"])
def test_csctfp_iterative_reaches_the_one_shot_channel_counts(model_name):
    model, shape = MODELS[model_name]()
    one_shot = prune(model, shape, criterion="csctfp", ratio=0.5)
    rounds = prune_iteratively(model, shape, criterion="csctfp", ratio=0.5, steps=4)
    assert len(rounds.rounds) == 4
    macs = [r.after.macs for r in rounds.rounds]
    assert macs == sorted(macs, reverse=True) and macs[0] < rounds.before.macs
    assert _units(rounds.model, shape) == _units(one_shot.model, shape)
    if model_name == "mobilenetv1":  # no coupled residual channels: the widths are the unit counts
        def widths(m):
            return {n: tuple(c.weight.shape) for n, c in m.named_modules() if isinstance(c, (nn.Conv2d, nn.Linear))}

        assert widths(rounds.model) == widths(one_shot.model)
        assert rounds.after == one_shot.after


@pytest.mark.parametrize("cut", [0.1, 0.3, 0.5, 0.7])
def test_csctfp_rounds_land_every_macs_cut_a_one_shot_lands(cut):
    """Small cuts included: each round's share can be under one aligned step of a 16-wide group."""
    model, shape = MODELS["resnet20"]()
    one_shot = prune(model, shape, criterion="csctfp", flops_cut=cut, round_to=8)
    rounds = prune_iteratively(model, shape, criterion="csctfp", flops_cut=cut, steps=4, round_to=8)
    assert abs(rounds.macs_cut - cut) <= 0.01 and abs(one_shot.plan.macs_cut - cut) <= 0.01
    macs = [r.after.macs for r in rounds.rounds]
    assert len(macs) == 4 and macs == sorted(macs, reverse=True)


def test_csctfp_rounds_on_the_three_output_detector():
    from models.heads import heads

    rounds = prune_iteratively(heads(), (1, 3, 16, 16), criterion="csctfp", flops_cut=0.4, steps=4)
    assert abs(rounds.macs_cut - 0.4) <= 0.01  # the first round once had to land 10 % alone, and could not


def test_tcfp_stops_maximising_once_the_clusters_settle():
    from edgeprune.criteria.tcfp import TCFP

    model, shape = _grouped()
    graph = build_graph(model, shape)
    always = TCFP(steps=40, image_size=8, check_every=5, stop_ari=-1.0)  # any two checks agree
    always.prepare(graph)
    assert always.steps_taken and set(always.steps_taken.values()) == {10}  # the second check stops it
    never = TCFP(steps=12, image_size=8, stop_ari=None)
    never.prepare(graph)
    assert set(never.steps_taken.values()) == {12}
    assert TCFP(**TCFP.FULL).maximise["steps"] == 200
    with pytest.raises(EdgepruneError, match="image scale"):
        TCFP(image_scale=0)


def test_tcfp_maximises_layers_side_by_side_with_the_same_results(monkeypatch):
    """One layer per worker, one intra-op thread each (two threads per operator stall on a busy
    2-core machine), torch's threads restored; the clusters the last check made are not made twice."""
    import contextlib

    import edgeprune.criteria.tcfp as tcfp_module
    from edgeprune.criteria.tcfp import TCFP

    model, shape = _grouped()
    graph = build_graph(model, shape)
    threads = torch.get_num_threads()
    calls = []
    real_cluster = tcfp_module.cluster_functions
    monkeypatch.setattr(tcfp_module, "cluster_functions", lambda r, **kw: calls.append(1) or real_cluster(r, **kw))
    real_maximise, seen = tcfp_module.maximise_activations, []
    monkeypatch.setattr(tcfp_module, "maximise_activations",
                        lambda *a, **kw: seen.append(torch.get_num_threads()) or real_maximise(*a, **kw))
    side_by_side = TCFP(steps=20, image_size=8, check_every=5, stop_ari=2.0)  # never settles: checks at 5..20
    side_by_side.prepare(graph)
    assert set(seen) == {1} and torch.get_num_threads() == threads
    layers = len(side_by_side.per_space)
    assert layers > 1 and len(calls) == 4 * layers  # the checks only: the final clusters are the last check's

    @contextlib.contextmanager
    def one_at_a_time():  # the layers in turn, with torch's own threads
        yield 1

    monkeypatch.setattr(tcfp_module, "_one_thread_per_layer", one_at_a_time)
    serial = TCFP(steps=20, image_size=8, check_every=5, stop_ari=2.0)
    serial.prepare(graph)
    assert all(torch.equal(side_by_side.per_space[k], serial.per_space[k]) for k in serial.per_space)


# ---------------------------------------------------------------------------------------------
# ThiNet: greedy removal by the consumer's least-squares refit


def _grams_from_inputs(model: nn.Module, names: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """XᵀX of each named layer's regressors on ``images``, built here from its inputs: a conv's
    unfolded patches at every output position (the tests' layers have at most 64 of them, so none
    is sampled out), a linear layer's features, and a ones column for the bias."""
    inputs, modules = {}, dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, i, _o, n=n: inputs.__setitem__(n, i[0])) for n in names]
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    grams = {}
    for name in names:
        layer, x = modules[name], inputs[name].double()
        if isinstance(layer, nn.Conv2d):
            x = nn.functional.unfold(x, layer.kernel_size, padding=layer.padding, stride=layer.stride)
            x = x.transpose(1, 2).reshape(-1, x.shape[1])
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        grams[name] = x.T @ x
    return grams


class _RefitError:
    """A consumer's relative ridge refit error from the columns of some input channels, solved
    from scratch (the ridge is a fraction of the whole Gram's mean diagonal, as in the criterion)."""

    def __init__(self, layer: nn.Module, gram: torch.Tensor, ridge: float) -> None:
        w = layer.weight.detach().double().reshape(layer.weight.shape[0], -1).T
        w = torch.cat([w, layer.bias.detach().double()[None]])
        self.width = int(np.prod(layer.kernel_size)) if isinstance(layer, nn.Conv2d) else 1
        self.target, self.norm = gram @ w, float(torch.einsum("io,ij,jo->", w, gram, w))
        self.regularised = gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)

    def __call__(self, units: list[int]) -> float:
        cols = torch.tensor([u * self.width + k for u in units for k in range(self.width)] + [len(self.target) - 1])
        g = self.target[cols]
        return (self.norm - float((g * torch.linalg.solve(self.regularised[cols][:, cols], g)).sum())) / self.norm


def _greedy_scores(errors: list[_RefitError], n_units: int, chunk: int) -> dict[int, float]:
    """ThiNet's scores solved anew at every step: the ``chunk`` units whose removal adds least
    to the consumers' summed error go, in that order; a unit's score is the error added so far."""
    kept, scores, added = list(range(n_units)), {}, 0.0
    while kept:
        now = sum(error(kept) for error in errors)
        costs = {u: sum(error([k for k in kept if k != u]) for error in errors) - now for u in kept}
        for unit in sorted(kept, key=costs.__getitem__)[:chunk]:
            added += costs[unit]
            scores[unit] = added
            kept.remove(unit)
    return scores


def test_thinet_removes_greedily_by_the_consumers_refit_error():
    """Each unit removed is the one whose loss the next conv's refit (on XᵀX gathered here from
    the layer's inputs, solved from scratch) feels least, and its score is that refit's error:
    the incremental inverse updates agree with solving every subset anew."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 6 * 6, 4)).eval()
    graph = build_graph(model, (1, 3, 10, 10))
    images = torch.randn(32, 3, 10, 10)
    scores = score_groups(graph, create_criterion("thinet", ridge=1e-3), images)
    group = next(g for g in graph.prunable_groups() if g.n_units == 8)
    error = _RefitError(model[2], _grams_from_inputs(model, ["2"], images)["2"], 1e-3)
    expected = _greedy_scores([error], 8, chunk=1)
    assert torch.argsort(scores[group.index]).tolist() == list(expected)
    for unit, score in expected.items():
        assert float(scores[group.index][unit]) == pytest.approx(score, rel=1e-6, abs=1e-9)


class _TwoReaders(nn.Module):
    """72 channels (more than thinet.STEPS) read by a 1x1 conv and, pooled, by a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(3, 72, 1)
        self.conv = nn.Conv2d(72, 5, 1)
        self.head = nn.Linear(72, 4)

    def forward(self, x):
        x = torch.relu(self.wide(x))
        return self.conv(x), self.head(x.mean(dim=(2, 3)))


def test_thinet_sums_its_consumers_costs_and_removes_a_wide_group_in_steps():
    """A group read by two layers is judged by both errors summed; one of more than STEPS units
    loses its cheapest two at each step (costs from before the step), as solved anew here."""
    from edgeprune.criteria.thinet import STEPS

    torch.manual_seed(0)
    model = _TwoReaders().eval()
    graph = build_graph(model, (1, 3, 6, 6))
    images = torch.randn(96, 3, 6, 6)
    criterion = create_criterion("thinet", ridge=1e-3)
    scores = score_groups(graph, criterion, images)
    [group] = [g for g in graph.prunable_groups() if g.n_units == 72]
    assert sorted(c.module for c in criterion.consumers[group.index]) == ["conv", "head"]
    grams = _grams_from_inputs(model, ["conv", "head"], images)
    errors = [_RefitError(model.conv, grams["conv"], 1e-3), _RefitError(model.head, grams["head"], 1e-3)]
    expected = _greedy_scores(errors, 72, chunk=-(-72 // STEPS))
    assert -(-72 // STEPS) == 2
    got = scores[group.index]
    assert [float(got[u]) for u in expected] == pytest.approx(list(expected.values()), rel=1e-6, abs=1e-9)


def test_recipes_read_a_criterion_s_registration_not_its_name(monkeypatch):
    """Which recipe runs a criterion, its default rounds and whether recovery holds labelled images
    out for it come from its registration (issue 26): a criterion registered now is run as
    registered, and the recipes and stages compare no criterion against a name."""
    import ast
    from pathlib import Path

    from edgeprune import recipes
    from edgeprune.criteria import base
    from edgeprune.criteria.magnitude import L2

    monkeypatch.setitem(base._REGISTRY, "l2-rounds", base.CriterionEntry(L2, steps=3))
    monkeypatch.setitem(base._REGISTRY, "l2-soft", base.CriterionEntry(L2, recipe="sfp"))
    assert [recipes.recipe_name(n) for n in ("l2", "csctfp", "sfp", "tcfp")] == ["oneshot", "iterative", "sfp", "tcfp"]
    assert recipes.recipe_name("l2-rounds") == "iterative" and recipes.recipe_name("l2-rounds", 1) == "oneshot"
    assert recipes.prunes_softly("l2-soft") and not recipes.prunes_softly("l2-rounds")
    with pytest.raises(EdgepruneError, match="prunes softly or in rounds"):
        recipes.check_one_shot("l2-soft", None)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    result = recipes.run_recipe(model, (1, 3, 12, 12), recipes.RecipeConfig("l2-rounds", flops_cut=None, ratio=0.5),
                                recipes.RecipeData())
    assert result.recipe == "iterative"
    package = Path(recipes.__file__).parent
    names = set(list_criteria())
    for path in (package / "recipes.py", package / "pipeline" / "stages.py"):
        compared = [node.lineno for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Compare)
                    and any(isinstance(c, ast.Constant) and c.value in names for c in [node.left, *node.comparators])]
        assert not compared, f"{path.name} compares against a criterion's name at lines {compared}"
