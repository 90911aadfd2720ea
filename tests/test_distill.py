"""Distillation objectives, output naming and kinds, the quality figures, and distillation under DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.outputs import OutputInfo, describe, flatten, names, pick_label_output
from edgeprune.quality import compare, summary
from edgeprune.train import CrossEntropy, DistillConfig, Distillation
from edgeprune.train.objectives import detector_distillation

ROOT = Path(__file__).resolve().parents[1]


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.classes = nn.Linear(24, 3)
        self.points = nn.Linear(24, 4)

    def forward(self, x):
        features = self.body(x)
        return self.classes(features), 10 * self.points(features)


INFOS = [OutputInfo("output0", (3,), "logits"), OutputInfo("output1", (4,), "regression", variance=25.0)]


# --- naming and kinds ---------------------------------------------------------------------------

@pytest.mark.parametrize("structure, expected", [
    (torch.zeros(1), ["output"]),
    ((torch.zeros(1), torch.zeros(1)), ["output0", "output1"]),
    ({"box": torch.zeros(1), "cls-score": torch.zeros(1)}, ["box", "cls_score"]),
    ({"a": (torch.zeros(1), torch.zeros(1)), "b": torch.zeros(1)}, ["a_0", "a_1", "b"]),
])
def test_outputs_are_named_in_onnx_order(structure, expected):
    assert names(flatten(structure), structure) == expected


def test_output_kinds_are_guessed_and_can_be_given():
    rng = np.random.default_rng(0)
    logits, boxes = rng.standard_normal((8, 3)), rng.standard_normal((8, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert [i.kind for i in describe([logits], ["output"])] == ["logits"]  # a classifier's only output
    assert [i.kind for i in describe([boxes, probs], ["b", "p"])] == ["regression", "probs"]
    assert [i.kind for i in describe([boxes, logits], ["b", "c"], label_output=1)] == ["regression", "logits"]
    assert [i.kind for i in describe([boxes], ["b"], kinds={"b": "logits"})] == ["logits"]
    with pytest.raises(EdgepruneError, match="--output-kind names x"):
        describe([boxes], ["b"], kinds={"x": "probs"})
    assert describe([boxes * 3], ["b"])[0].variance == pytest.approx(float(np.var(boxes * 3)))


def test_labels_need_a_class_score_output_covering_them():
    arrays = [np.zeros((4, 3)), np.zeros((4, 4, 2, 2))]
    assert pick_label_output(arrays, ["c", "m"], "c", np.array([0, 2]), "d") == 0
    with pytest.raises(EdgepruneError, match="has label 3, but output c has only 3 classes"):
        pick_label_output(arrays, ["c", "m"], "c", np.array([3]), "d")
    with pytest.raises(EdgepruneError, match="output m is Nx4x2x2, not class scores"):
        pick_label_output(arrays, ["c", "m"], "m", np.array([0]), "d")


# --- the quality figures ------------------------------------------------------------------------

def test_quality_figures_on_known_answers():
    dense = [np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]]), np.array([[1.0, 2.0, 2.0, 1.0], [2.0, 0.0, 1.0, 1.0]])]
    same = compare(dense, dense, INFOS[:1] + [OutputInfo("output1", (4,), "regression")])
    assert [(r["rel_l2"], r["cosine"]) for r in same] == [(0.0, 1.0), (0.0, 1.0)] and same[0]["top1_agreement"] == 1.0
    flipped = compare(dense, [-dense[0], dense[1] * 1.5], INFOS)
    assert flipped[0]["cosine"] == -1.0 and flipped[0]["top1_agreement"] == 0.0
    assert flipped[1]["cosine"] == 1.0 and flipped[1]["rel_l2"] == pytest.approx(0.5)
    assert "top1_agreement" not in flipped[1]
    assert summary(flipped) == {"cosine_min": -1.0, "rel_l2_max": pytest.approx(2.0), "top1_agreement_min": 0.0}


# --- the objectives -----------------------------------------------------------------------------

def test_distillation_is_zero_for_the_teacher_itself_and_positive_otherwise():
    torch.manual_seed(0)
    teacher, x = TwoHeads().eval(), torch.randn(8, 1, 8, 8)
    objective = Distillation(teacher, INFOS)
    loss, parts = objective(teacher, x, None)
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and set(parts) == {"distill"}
    student = TwoHeads()
    loss, _ = objective(student, x, None)
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in student.parameters()) and all(p.grad is None for p in objective.teacher.parameters())


def test_distillation_with_labels_adds_cross_entropy():
    torch.manual_seed(0)
    teacher, student, x, y = TwoHeads().eval(), TwoHeads(), torch.randn(8, 1, 8, 8), torch.tensor([0, 1, 2] * 2 + [0, 1])
    distil_only, _ = Distillation(teacher, INFOS)(student, x, y)
    both, parts = Distillation(teacher, INFOS, DistillConfig(label_weight=0.5), label_output=0)(student, x, y)
    ce, _ = CrossEntropy(0)(student, x, y)
    assert set(parts) == {"distill", "ce"} and both.item() == pytest.approx(distil_only.item() + 0.5 * ce.item(), rel=1e-5)
    objective = Distillation(teacher, INFOS, DistillConfig(output_weights={"output1": 0.0}))
    weighted, _ = objective(student, x, None)
    with torch.no_grad():
        logits_only = objective._term(INFOS[0], student(x)[0], teacher(x)[0])
    assert weighted.item() == pytest.approx(logits_only.item(), rel=1e-5)
    with pytest.raises(EdgepruneError, match="name nope"):
        Distillation(teacher, INFOS, DistillConfig(output_weights={"nope": 1.0}))
    with pytest.raises(EdgepruneError, match="temperature must be positive"):
        DistillConfig(temperature=0)


class Fixed(nn.Module):
    """Returns the same outputs whatever the input."""

    def __init__(self, *outputs: list[list[float]]) -> None:
        super().__init__()
        self.outputs = [torch.tensor(o) for o in outputs]

    def forward(self, x):
        return tuple(self.outputs)


def test_distillation_losses_match_the_textbook_values():
    """The terms on outputs small enough to work out by hand (natural logarithms)."""
    import math

    infos = [OutputInfo("l", (3,), "logits"), OutputInfo("p", (2,), "probs"), OutputInfo("r", (2,), "regression", variance=4.0)]
    teacher = Fixed([[3.0, 2.0, 1.0]], [[0.5, 0.5]], [[0.0, 0.0]])
    student = Fixed([[1.0, 2.0, 3.0]], [[0.25, 0.75]], [[1.0, 2.0]])
    objective = Distillation(teacher, infos, DistillConfig(temperature=2.0))
    # logits at T = 2: teacher softmax(1.5, 1, 0.5) = (a, b, c), the student's is (c, b, a), so
    # KL = a ln(a/c) + c ln(c/a) = (a - c) ln e = (e^1.5 - e^0.5) / (e^1.5 + e + e^0.5); times T^2 = 4
    e = math.e
    logits = 4 * (e ** 1.5 - e ** 0.5) / (e ** 1.5 + e + e ** 0.5)
    assert logits == pytest.approx(1.280627, abs=1e-6)
    probs = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL(teacher || student) = 0.5 ln(4/3)
    regression = ((1 - 0) ** 2 + (2 - 0) ** 2) / 2 / 4.0  # mean squared error over the teacher's variance
    terms = [objective._term(i, s, t).item() for i, s, t in zip(infos, student(None), teacher(None))]
    assert terms == pytest.approx([logits, probs, regression], rel=1e-5)
    loss, parts = objective(student, torch.zeros(1), None)
    assert loss.item() == pytest.approx((logits + probs + regression) / 3, rel=1e-5) and parts["distill"] == loss.item()


def test_one_distillation_epoch_recovers_a_cut_model():
    """Six steps from the cut default model (BatchNorm re-estimated, no reconstruction): about 0.92 ->
    0.96 top-1; with the optimiser's step a no-op it stays where the cut left it."""
    import copy

    from edgeprune.calibration import load_data, sample
    from edgeprune.models.default import build_default
    from edgeprune.quality import accuracy, torch_outputs
    from edgeprune.recipes import RecipeConfig, RecipeData, run_recipe

    built = build_default()
    train = load_data("mnist5k", split="train", limit=768, preprocess=built.preprocess)
    val = load_data("mnist5k", split="val", preprocess=built.preprocess)
    infos = describe(torch_outputs(built.model, train.x[:128]), ["output"], label_output=0)

    def top1(model):
        return accuracy(torch_outputs(model, val.x), 0, val.y)

    config = RecipeConfig("l2", flops_cut=0.5, round_to=8, epochs=1, recalibrate_bn=True, distill=DistillConfig())
    data = RecipeData(train, calib=sample(train, 640, seed=0), teacher=built.model, outputs=infos, label_output=0)
    result = run_recipe(copy.deepcopy(built.model), built.input_shape, config, data, evaluate=top1)
    assert 0.85 < result.after_cut < 0.95
    assert top1(result.model) >= result.after_cut + 0.03
    [epoch] = result.history
    assert epoch["distill"] > 0 and epoch["ce"] > 0


def test_distillation_brings_a_student_to_its_teacher():
    from edgeprune.quality import torch_outputs
    from edgeprune.train import FinetuneConfig, finetune

    torch.manual_seed(0)
    teacher = TwoHeads().eval()
    student = TwoHeads()
    x = np.random.default_rng(0).standard_normal((256, 1, 8, 8)).astype(np.float32)
    before = compare(torch_outputs(teacher, x), torch_outputs(student, x), INFOS)
    loader = [(torch.from_numpy(x[i:i + 32]), None) for i in range(0, 256, 32)]
    records = []
    finetune(student, loader, None, FinetuneConfig(epochs=30, lr=0.05), objective=Distillation(teacher, INFOS),
             on_epoch=records.append)
    after = compare(torch_outputs(teacher, x), torch_outputs(student, x), INFOS)
    assert records[-1].parts["distill"] < 0.2 * records[0].parts["distill"]
    assert all(a["rel_l2"] < 0.5 * b["rel_l2"] for a, b in zip(after, before))
    assert after[0]["top1_agreement"] > before[0]["top1_agreement"]


DDP_SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_distill import INFOS, TwoHeads
    from edgeprune.train import Distillation, FinetuneConfig, finetune

    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    torch.manual_seed(0)
    teacher = TwoHeads().eval()
    torch.manual_seed(rank + 1)  # different students: finetune must broadcast rank 0's
    student = TwoHeads()
    x = np.random.default_rng(0).standard_normal((128, 1, 8, 8)).astype(np.float32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x)), batch_size=16,
                                         collate_fn=lambda items: (torch.stack([i[0] for i in items]), None))
    result = finetune(student, loader, None, FinetuneConfig(epochs=3, lr=0.05), objective=Distillation(teacher, INFOS))
    torch.save(student.state_dict(), f"{{out}}/rank{{rank}}.pt")
    json.dump({{"distill": [r.parts["distill"] for r in result.history], "world": result.world_size}},
              open(f"{{out}}/rank{{rank}}.json", "w"))
""")


def test_distillation_under_ddp_two_processes_on_cpu(tmp_path: Path) -> None:
    script = tmp_path / "ddp_distill.py"
    script.write_text(DDP_SCRIPT.format(tests=str(ROOT / "tests")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert [r["world"] for r in reports] == [2, 2] and reports[0]["distill"] == reports[1]["distill"]
    assert reports[0]["distill"][-1] < reports[0]["distill"][0]


# --- a detector's raw maps ----------------------------------------------------------------------

class RawMaps(nn.Module):
    """A detector head as seen by distillation: its raw map is a parameter; training mode returns
    ``[map]``, eval mode ``(decoded, [map])`` (the decoded part's values do not matter here)."""

    def __init__(self, maps: torch.Tensor) -> None:
        super().__init__()
        self.maps = nn.Parameter(maps.clone())

    def forward(self, x):
        maps = self.maps.expand(len(x), *self.maps.shape[1:])
        if self.training:
            return [maps]
        b, c, h, w = maps.shape
        return torch.zeros(b, 4 + c - 64, h * w), [maps]


def _head_maps(background: float, foreground: float, seed: int) -> torch.Tensor:
    """One 16 x 16 level, 3 classes, 16 bins per edge: class logits near ``background``
    everywhere but class 1 at cell (5, 7), which is ``foreground``."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(1, 4 * 16 + 3, 16, 16, generator=g)
    maps[:, 64:] = background + torch.randn(1, 3, 16, 16, generator=g)
    maps[0, 64 + 1, 5, 7] = foreground
    return maps


def test_detector_maps_are_distilled_on_the_cells_with_objects() -> None:
    """A pruned detector's scores sit in a background of class logits near -15 whose exact values
    do not matter, and miss its one object (logit -3: score 0.05, under any threshold). Mean
    squared error spread the gradient over the thousands of background logits; the detector term
    puts it on the object's score."""
    teacher = RawMaps(_head_maps(-15.0, 3.0, seed=0)).eval()
    student = RawMaps(_head_maps(-12.0, -3.0, seed=1)).train()
    infos = [OutputInfo("output0", (7, 256), "detections"), OutputInfo("output1", (67, 16, 16), "regression", 20.0)]
    loss, _ = Distillation(teacher, infos)(student, torch.zeros(2, 1), None)
    loss.backward()
    grad = student.maps.grad[0, 64:].abs()
    assert grad[1, 5, 7] / grad.sum() > 0.9
    same, _ = Distillation(teacher, infos)(RawMaps(teacher.maps.data).train(), torch.zeros(2, 1), None)
    assert same.item() == pytest.approx(0, abs=1e-5)


def test_a_yolo_heads_training_maps_are_distilled_as_a_detectors() -> None:
    """The YOLO-like net returns three raw maps in training mode, (decoded, maps) in eval mode:
    its maps are found and distilled together by the detector term."""
    sys.path.insert(0, str(ROOT / "tests"))
    from models.yolo_like import yolo_like

    model, x = yolo_like(), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        decoded, maps = model(x)
    infos = describe([decoded.numpy(), *(m.numpy() for m in maps)], [f"output{i}" for i in range(4)])
    distillation = Distillation(model, infos)  # before the training forward moves the norms' statistics
    students = flatten(model.train()(x))
    loss, _ = distillation.compare(students, x, None)
    assert loss.item() == pytest.approx(detector_distillation(students, maps, 16).item(), rel=1e-5)
