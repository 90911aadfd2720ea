"""Per-group sensitivity and the allocation that spends a MACs cut where it hurts least."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgeprune.allocation import SensitivityPlanner
from edgeprune.api import prune
from edgeprune.cli import main
from edgeprune.errors import EdgepruneError
from edgeprune.models import build
from edgeprune.sensitivity import Sensitivity, analyse

from conftest import assert_one_line_error, randomize_norms

IMAGES = np.random.default_rng(0).standard_normal((48, 3, 16, 16)).astype(np.float32)


class Middle(nn.Module):
    """With ``dead``, the middle layer's filters are all zero: its channels carry nothing."""

    def __init__(self, dead: bool) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.middle = nn.Conv2d(8, 8, 3, padding=1)
        self.last = nn.Conv2d(8, 4, 3, padding=1)
        if dead:
            nn.init.zeros_(self.middle.weight)
            nn.init.zeros_(self.middle.bias)

    def forward(self, x):
        return self.last(torch.relu(self.middle(torch.relu(self.first(x))))) + self.first(x)[:, :4]


class TwoBranches(nn.Module):
    """Two branches of equal cost; the output hardly depends on ``quiet``'s."""

    def __init__(self) -> None:
        super().__init__()
        self.loud = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 3, padding=1))
        self.quiet = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 3, padding=1))

    def forward(self, x):
        return self.loud(x) + 1e-3 * self.quiet(x)


def test_a_group_whose_channels_do_nothing_is_flat():
    torch.manual_seed(0)
    dead = analyse(Middle(dead=True).eval(), (1, 3, 16, 16), "l1", IMAGES[:32], IMAGES[32:], ratios=(0.25, 0.5, 0.75))
    curve = dead.curve_for("middle")
    assert [p["removed"] for p in curve.points] == [2, 4, 6]
    assert all(p["cosine"] == pytest.approx(1.0, abs=1e-6) and p["loss"] == pytest.approx(0.0, abs=1e-6)
               for p in curve.points)
    torch.manual_seed(0)
    live = analyse(Middle(dead=False).eval(), (1, 3, 16, 16), "l1", IMAGES[:32], IMAGES[32:], ratios=(0.25, 0.75))
    assert live.curve_for("middle").points[-1]["loss"] > 1e-3  # the same layer with live filters is not flat


def test_the_more_sensitive_group_gets_the_smaller_cut():
    torch.manual_seed(0)
    model = TwoBranches().eval()
    found = analyse(model, (1, 3, 16, 16), "l2", IMAGES[:32], IMAGES[32:])
    loud, quiet = found.curve_for("loud.0"), found.curve_for("quiet.0")
    assert loud.points[0]["loss"] > 100 * quiet.points[0]["loss"]
    result = prune(model, (1, 3, 16, 16), criterion="l2", planner=SensitivityPlanner(found, 0.4))
    widths = result.plan.details["widths"]
    assert widths["quiet.0"][1] < widths["loud.0"][1]  # the cut went to the quiet branch
    assert abs(result.plan.macs_cut - 0.4) <= 0.01


@pytest.mark.parametrize("name, cut", [("resnet20-cifar", 0.5), ("resnet20-cifar", 0.7), ("mobilenetv1-cifar", 0.5)])
def test_allocation_meets_the_macs_cut_within_one_point(name, cut):
    built = build(name)
    randomize_norms(built.model)
    x = np.random.default_rng(1).standard_normal((32, 3, 32, 32)).astype(np.float32)
    found = analyse(built.model, built.input_shape, "l2", x[:16], x[16:], ratios=(0.25, 0.5, 0.75), round_to=8)
    result = prune(built.model, built.input_shape, criterion="l2", planner=SensitivityPlanner(found, cut, round_to=8))
    assert abs(result.plan.macs_cut - cut) <= 0.01
    kept = [after for _, after in result.plan.details["widths"].values()]
    assert all(k % 8 == 0 or k < 8 for k in kept)  # aligned, like the other plans
    assert result.plan.details["predicted_loss"] >= 0


def test_curves_round_trip_and_bad_files_are_refused(tmp_path):
    found = analyse(TwoBranches().eval(), (1, 3, 16, 16), "l2", IMAGES[:16], IMAGES[16:32], ratios=(0.5,))
    again = Sensitivity.load(found.save(tmp_path / "s.json"))
    assert again.to_dict() == json.loads(json.dumps(found.to_dict()))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(EdgepruneError, match="not an edgeprune sensitivity file"):
        Sensitivity.load(tmp_path / "bad.json")
    with pytest.raises(EdgepruneError, match="ratios must be in"):
        analyse(TwoBranches().eval(), (1, 3, 16, 16), "l2", IMAGES, IMAGES, ratios=(1.5,))


def test_cli_sensitivity_then_allocated_prune(tmp_path):
    curves, picture = tmp_path / "s.json", tmp_path / "s.png"
    result = CliRunner().invoke(main, ["sensitivity", "--round-to", "8", "--images", "64", "--ratios", "0.25,0.5",
                                       "-o", str(curves), "--plot", str(picture)])
    assert result.exit_code == 0, result.output
    assert "layer3.2.conv1" in result.stdout and picture.read_bytes()[:4] == b"\x89PNG"
    data = json.loads(curves.read_text())
    assert data["criterion"] == "l2" and all(0 <= p["loss"] <= 2 for c in data["curves"] for p in c["points"])
    assert "top1" in data["curves"][0]["points"][0]  # mnist5k has labels
    out = tmp_path / "p.pt"
    pruned = CliRunner().invoke(main, ["prune", "--flops-cut", "0.5", "--round-to", "8", "--allocate", "sensitivity",
                                       "--sensitivity", str(curves), "-o", str(out), "--json"])
    assert pruned.exit_code == 0, pruned.output
    summary = json.loads(pruned.stdout)
    assert abs(summary["macs_cut"] - 0.5) <= 0.01 and summary["plan"]["allocation"] == "sensitivity"
    refused = CliRunner().invoke(main, ["prune", "--ratio", "0.5", "--allocate", "sensitivity", "-o", str(out)])
    assert_one_line_error(refused, "--allocate sensitivity spreads a MACs cut")


def _photo_crops(n: int, seed: int = 0) -> np.ndarray:
    """Random square crops of scikit-learn's two sample photos, at 48x48, as MTCNN feeds ONet."""
    import torch.nn.functional as F
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = load_sample_images().images[i % 2]
        side = int(rng.integers(24, 200))
        top, left = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crop = torch.from_numpy(photo[top:top + side, left:left + side].transpose(2, 0, 1).astype(np.float32))
        crops.append(F.interpolate(crop[None], size=(48, 48), mode="bilinear", antialias=True)[0].numpy())
    return ((np.stack(crops) - 127.5) / 128).astype(np.float32)


def test_the_face_nets_box_output_judges_its_first_layer():
    """MTCNN's ONet (pretrained, from the facenet-pytorch wheel): cutting conv1 to 4 of its 32
    filters leaves the mean over its three outputs at about 0.74 but the box regression at about
    0.26. The curve records every output, its loss is the worst one's, and a plan to a speedup
    predicts the loss the worst output then shows."""
    onet = pytest.importorskip("facenet_pytorch.models.mtcnn").ONet(pretrained=True).eval()
    from edgeprune.latency import Budget, LatencyPlanner, conv_shapes
    from edgeprune.outputs import describe, output_names
    from edgeprune.quality import compare, torch_outputs
    from test_latency import _synthetic_ms, _synthetic_table

    shape = (1, 3, 48, 48)
    images = _photo_crops(256)
    calib, held_out = images[:128], images[128:]
    found = analyse(onet, shape, "l2", calib, held_out, round_to=4)
    conv1 = found.curve_for("conv1").points[-1]
    assert conv1["removed"] == 28 and set(conv1["outputs"]) == {"output0", "output1", "output2"}
    assert conv1["outputs"]["output0"] < 0.45 and conv1["cosine_mean"] > 0.65  # the box output alone collapses
    assert conv1["loss"] == pytest.approx(1 - conv1["outputs"]["output0"])

    def device(models):
        return [0.5 + sum(_synthetic_ms(s, s.in_channels, s.out_channels) for s in conv_shapes(m, shape).values())
                for m in models]

    table = _synthetic_table(list(conv_shapes(onet, shape).values()))
    planner = LatencyPlanner(table, Budget(speedup=2.0), device, sensitivity=found, round_to=4, progress=lambda m: None)
    result = prune(onet, shape, criterion="l2", planner=planner)
    infos = describe(torch_outputs(onet, calib), output_names(onet, torch.zeros(shape)))
    measured = 1 - min(r["cosine"] for r in compare(torch_outputs(onet, held_out), torch_outputs(result.model, held_out), infos))
    predicted = result.plan.details["predicted_loss"]
    assert 0.5 * measured <= predicted <= 2 * measured, (predicted, measured)  # the mean predicted about 0.4x


def test_a_file_with_the_mean_over_outputs_only_is_refused(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": "edgeprune-sensitivity/1", "criterion": "l2", "ratios": [0.5], "curves": [],
                               "images": {}}))
    with pytest.raises(EdgepruneError, match="mean over the outputs only"):
        Sensitivity.load(old)
