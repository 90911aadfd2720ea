"""Reconstruction right after the cut: each refitted layer's output moves towards the dense model's."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.api import prune, prune_iteratively
from edgeprune.calibration import load_data
from edgeprune.train.reconstruct import RIDGES, ReconstructConfig, compose, kept_layers, reconstruct

from conftest import randomize_norms


class Mixed(nn.Module):
    """A conv read by a BatchNorm (bias-free), a pointwise conv with bias, a depthwise and a
    grouped conv, and a linear head after a flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.expand = nn.Conv2d(16, 32, 1)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.project = nn.Conv2d(32, 16, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=4)
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.depthwise(torch.relu(self.expand(x))))
        x = torch.relu(self.grouped(torch.relu(self.bn2(self.project(x)))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 4), 1))


@pytest.fixture(scope="module")
def images():
    data = load_data("mnist5k", split="train", channels=1, size=(16, 16), limit=480)
    return data.x[:400], data.x[400:]


def _outputs(model: nn.Module, names: list[str], x: np.ndarray) -> dict[str, torch.Tensor]:
    found, modules = {}, dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: found.__setitem__(n, out)) for n in names]
    with torch.no_grad():
        model.eval()(torch.from_numpy(x))
    for h in handles:
        h.remove()
    return found


READ_AT = {"project": "bn2"}  # project's refitted bias lives in bn2's running mean: compare bn2's outputs


def _errors(pruned: nn.Module, dense: nn.Module, maps, x: np.ndarray) -> dict[str, float]:
    """Each layer's output error against the dense layer's kept outputs, on images not fitted on."""
    names = [READ_AT.get(n, n) for n in maps]
    got, want = _outputs(pruned, names, x), _outputs(dense, names, x)
    errors = {}
    for name in maps:
        read = READ_AT.get(name, name)
        axis = -1 if want[read].ndim == 2 else 1
        target = want[read].index_select(axis, torch.as_tensor(maps[name].outputs))
        errors[name] = float(((got[read] - target) ** 2).sum() / (target ** 2).sum())
    return errors


def test_every_refitted_layer_moves_towards_the_dense_one(images):
    fit_on, held_out = images
    torch.manual_seed(0)
    dense = randomize_norms(Mixed())
    result = prune(dense, (1, 1, 16, 16), criterion="l2", ratio=0.5)
    maps = kept_layers(result.graph, result.plan.keep)
    assert len(maps["depthwise"].outputs) == 16 and maps["depthwise"].inputs is None
    before = _errors(result.model, dense, maps, held_out)
    refitted = copy.deepcopy(result.model)
    found = reconstruct(refitted, dense, maps, fit_on, ReconstructConfig(batch_size=100))
    after = _errors(refitted, dense, maps, held_out)
    fits = {f.module: f for f in found.layers}
    assert list(fits) == ["expand", "depthwise", "project", "grouped", "head"]  # the stem reads the image
    assert {f.bias for f in found.layers} == {"own", "batchnorm"}  # project's bias went into bn2
    assert fits["project"].bias == "batchnorm"
    for name, fit in fits.items():
        assert fit.refit, name
        assert after[name] < 0.3 * before[name], (name, before[name], after[name])
    assert after["head"] < 0.3 * before["head"]


def test_cuts_in_a_row_compose(images):
    dense = randomize_norms(Mixed())
    maps = {}

    def remember(_model, result):
        nonlocal maps
        cut = kept_layers(result.graph, result.plan.keep)
        maps = compose(maps, cut) if maps else cut

    result = prune_iteratively(dense, (1, 1, 16, 16), criterion="l2", ratio=0.5, steps=2, after_round=remember)
    pruned = dict(result.model.named_modules())
    for name, kept in maps.items():
        weight = dict(dense.named_modules())[name].weight[torch.as_tensor(kept.outputs)]
        if kept.inputs is not None:
            weight = weight[:, torch.as_tensor(kept.inputs)]
        assert torch.equal(weight, pruned[name].weight), name


class _FirstThree(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3]


def _dropped_feature_case() -> tuple[nn.Module, nn.Module, dict, torch.Tensor]:
    """A dense head ``x1 + x2 + x3 + x4`` whose pruned copy lost ``x4``. On the images the fit sees
    (four in five) ``x4 = x1``, so the fit learns ``2 x1 + x2 + x3``; on the fifth it holds out
    ``x4 = -x1``, where that fit is twice as wrong as the pruned head left alone (error 2 vs 1 in
    ``x1``), and where shrinking the fit (the largest ridge) is what helps most."""
    from edgeprune.train.reconstruct import CHECK_EVERY, KeptLayer

    dense = nn.Sequential(nn.Identity(), nn.Linear(4, 1))
    with torch.no_grad():
        dense[1].weight.fill_(1.0)
        dense[1].bias.zero_()
    pruned = nn.Sequential(_FirstThree(), nn.Linear(3, 1))
    with torch.no_grad():
        pruned[1].weight.fill_(1.0)
        pruned[1].bias.zero_()
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    held = torch.arange(len(x)) % CHECK_EVERY == CHECK_EVERY - 1
    x[:, 3] = torch.where(held, -x[:, 0], x[:, 0])
    maps = {"1": KeptLayer("1", np.arange(3), np.arange(1))}
    return pruned, dense, maps, x


def test_a_layer_left_worse_by_the_fit_is_kept_as_it_was():
    """The keep-or-refit decision and the ridge are judged on images the fit did not see: judged on
    its own images the fit would look exact (error 0) and the smallest ridge would always win."""
    pruned, dense, maps, x = _dropped_feature_case()
    before = copy.deepcopy(pruned.state_dict())
    [fit] = reconstruct(pruned, dense, maps, x, ReconstructConfig(batch_size=100)).layers
    assert not fit.refit and fit.bias == "own"
    for name, value in pruned.state_dict().items():
        assert torch.equal(value, before[name]), name  # the weights from before the fit
    assert fit.error_before == pytest.approx(0.5, rel=0.25)  # ‖x1‖² / ‖x2 + x3‖² on the held-out fifth
    assert fit.ridge == max(RIDGES)


def test_a_layer_the_fit_improves_on_held_out_images_is_refitted():
    """The same layer when the held-out fifth agrees with the fit's images: refitted, exactly."""
    pruned, dense, maps, x = _dropped_feature_case()
    x[:, 3] = x[:, 0]
    [fit] = reconstruct(pruned, dense, maps, x, ReconstructConfig(batch_size=100)).layers
    assert fit.refit and fit.error_after < 1e-3 < fit.error_before
    assert torch.allclose(pruned[1].weight, torch.tensor([[2.0, 1.0, 1.0]]), atol=0.01)


@pytest.fixture(scope="module")
def default_job():
    from edgeprune.calibration import sample
    from edgeprune.models.default import build_default
    from edgeprune.outputs import describe
    from edgeprune.quality import torch_outputs
    from edgeprune.recipes import split_holdout

    built = build_default()
    train, holdout = split_holdout(load_data("mnist5k", split="train", limit=768, preprocess=built.preprocess), 256)
    outputs = describe(torch_outputs(built.model, train.x[:128]), ["output"], label_output=0)
    return built, train, holdout, sample(train, 256, seed=0), outputs


@pytest.mark.parametrize("reconstructed, lr, kept", [(True, 0.5, "after the cut"), (False, 0.01, "fine-tuned")])
def test_the_best_state_of_the_recovery_is_kept(default_job, reconstructed, lr, kept):
    """A reconstructed cut (about 98 %) is worth more than an epoch at a learning rate that wrecks it,
    and is then what comes back; a cut left to BatchNorm re-estimation (about 92 %) is worth less
    than an epoch of distillation. Judged on training images held out from both."""
    from edgeprune.quality import torch_outputs, worst_cosine
    from edgeprune.recipes import RecipeConfig, RecipeData, run_recipe
    from edgeprune.train import DistillConfig

    built, train, holdout, calib, outputs = default_job
    config = RecipeConfig("l2", flops_cut=0.5, round_to=8, epochs=1, lr=lr, recalibrate_bn=not reconstructed,
                          distill=DistillConfig(), keep_better=True,
                          reconstruct=ReconstructConfig(images=256) if reconstructed else None)
    data = RecipeData(train, holdout, calib, teacher=built.model, outputs=outputs, label_output=0)
    result = run_recipe(copy.deepcopy(built.model), built.input_shape, config, data)
    judged = result.kept
    names = ["after the cut", "fine-tuned"] + ([] if reconstructed else ["fine-tuned, BatchNorm re-estimated"])
    assert [s["state"] for s in judged["states"]] == names and judged["images"] == 256
    best = max(reversed(judged["states"]), key=lambda s: (s["top1"], s["cosine_min"]))
    assert judged["kept"] == best["state"] and best["state"].startswith(kept)
    now = worst_cosine(torch_outputs(built.model, holdout.x), torch_outputs(result.model, holdout.x))
    assert now == pytest.approx(best["cosine_min"], abs=1e-6)  # the model handed back is the best state


def test_the_judge_weighs_a_detectors_scores_apart_from_its_boxes():
    """Boxes in pixels dwarf scores in [0, 1] in one decoded tensor: judged as one, a model whose
    scores are wrong would look as close as the dense one; judged as the report does, it is not."""
    from edgeprune.calibration import LabeledArrays
    from edgeprune.outputs import OutputInfo
    from edgeprune.quality import torch_outputs, worst_cosine
    from edgeprune.recipes import _Judge

    class Decoded(torch.nn.Module):
        def __init__(self, flip: bool) -> None:
            super().__init__()
            self.flip = flip

        def forward(self, x):
            boxes = 100 + 50 * x[:, :1, 0, :8].repeat(1, 4, 1)  # N x 4 x 8 anchors, in pixels
            scores = torch.sigmoid(20 * (x[:, :2, 1, :8] - 0.5))  # N x 2 classes x 8 anchors, near 0 or 1
            return torch.cat([boxes, scores.flip(1) if self.flip else scores], 1)

    images = LabeledArrays(torch.rand(16, 2, 2, 8).numpy(), None, 0, None, "noise", "train")
    judge = _Judge(Decoded(False), images, [OutputInfo("y", (6, 8), "detections")], None, None)
    wrong = Decoded(True)
    assert worst_cosine(judge.dense, torch_outputs(wrong, images.x)) > 0.99  # the raw tensor hides it
    assert judge.figures(wrong)["cosine_min"] < 0.95
    assert judge.figures(Decoded(False))["cosine_min"] == pytest.approx(1.0)
