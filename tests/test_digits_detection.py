"""The digits detection set (mnist5k digits on scikit-image photos), the YOLO-style detection loss,
and the benchmark's detector training on a tiny set."""
from __future__ import annotations

import functools
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.calibration import digits_detection as dd
from edgeprune.errors import EdgepruneError
from edgeprune.train.detection import DetectionLoss, DetectionLossConfig, assign, box_iou, cell_centres, pad_targets

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dd.DigitsDetectionConfig()


@functools.lru_cache(maxsize=1)
def _benchmark_training():
    """benchmarks/detector_training.py (benchmarks/ is no package: loaded by its path)."""
    spec = importlib.util.spec_from_file_location("detector_training", ROOT / "benchmarks" / "detector_training.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny():
    return dd.make_digits_detection(8, "val")


# ---- the set ---------------------------------------------------------------------------------

def test_boxes_are_exactly_where_digits_were_pasted(tiny):
    for i, (image, boxes, classes) in enumerate(zip(tiny.images, tiny.boxes, tiny.classes)):
        h, w = image.shape[:2]
        assert 160 <= h <= 320 and 160 <= w <= 320 and 1 <= len(boxes) <= 6
        assert set(classes.tolist()) <= set(range(10))
        changed = (image != dd.background(dd.image_rng(CONFIG, "val", i), CONFIG)).any(-1)
        covered = np.zeros_like(changed)
        for x1, y1, x2, y2 in boxes.astype(int):
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            inside = changed[y1:y2, x1:x2]
            covered[y1:y2, x1:x2] = True
            assert inside.mean() > 0.15  # strokes, not an empty box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()  # tight
        assert not (changed & ~covered).any()  # nothing was drawn outside the boxes


def test_the_set_follows_from_the_seed_and_val_is_held_out(tiny):
    again = dd.make_digits_detection(3, "val")
    assert all(np.array_equal(a, b) for a, b in zip(again.images, tiny.images[:3]))
    digits = dd._digits(CONFIG.seed)
    assert len(digits["val"][0]) == dd.VAL_DIGITS and len(digits["train"][0]) == 5000 - dd.VAL_DIGITS
    train_digits = {d.tobytes() for d in digits["train"][0]}
    assert not any(d.tobytes() in train_digits for d in digits["val"][0])


def _read_labels(path: Path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2)


def test_written_in_the_yolo_layout(tmp_path, tiny):
    from PIL import Image

    folder = tmp_path / "val"
    dd.make_digits_detection(8, "val", folder=folder)
    names = sorted(p.stem for p in (folder / "images").glob("*.png"))
    assert names == sorted(p.stem for p in (folder / "labels").glob("*.txt")) and len(names) == 8
    for name, image, boxes, classes in zip(names, tiny.images, tiny.boxes, tiny.classes):
        assert np.array_equal(np.asarray(Image.open(folder / "images" / f"{name}.png")), image)
        rows = _read_labels(folder / "labels" / f"{name}.txt")
        assert rows[:, 1:].min() >= 0 and rows[:, 1:].max() <= 1
        h, w = image.shape[:2]
        cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        back = np.stack((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), 1)
        assert np.abs(back - boxes).max() < 1e-3 * max(h, w)
        assert rows[:, 0].astype(int).tolist() == classes.tolist()
    stamp = (folder / "images" / "000000.png").stat().st_mtime_ns
    dd.make_digits_detection(8, "val", folder=folder)  # the same set: left as it is
    assert (folder / "images" / "000000.png").stat().st_mtime_ns == stamp


def test_a_failed_write_leaves_no_half_set(tmp_path, monkeypatch):
    folder = tmp_path / "val"
    dd.make_digits_detection(2, "val", folder=folder)
    before = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) % 2 == 0:
            raise OSError("disk full")
        return real(*args)

    real = dd._write_one
    monkeypatch.setattr(dd, "_write_one", failing)
    other = dd.DigitsDetectionConfig(seed=1)
    with pytest.raises(OSError):
        dd.make_digits_detection(3, "val", other, folder=folder)  # over a set already there
    with pytest.raises(OSError):
        dd.make_digits_detection(3, "val", other, folder=tmp_path / "new")  # where none was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val"]  # no staging folder, no half set
    assert {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # the previous set, untouched


def test_bad_split_is_a_clear_error():
    with pytest.raises(EdgepruneError, match="splits train, val"):
        dd.make_digits_detection(2, "test")


# ---- the loss ----------------------------------------------------------------------------------

SIZE = (64, 64)
BOX = torch.tensor([[12.0, 20.0, 44.0, 52.0]])


def _maps(box: torch.Tensor, label: int, nc: int = 3, reg_max: int = 16) -> list[torch.Tensor]:
    """Raw maps (levels at strides 8 and 16) predicting ``box`` with class ``label`` exactly at
    every cell whose centre is inside it, and nothing elsewhere."""
    maps = []
    for stride in (8, 16):
        n = SIZE[0] // stride
        centres = cell_centres([torch.zeros(1, 1, n, n)], SIZE)[0]
        inside = ((centres > box[0, :2]) & (centres < box[0, 2:])).all(1)
        distances = (torch.cat((centres - box[0, :2], box[0, 2:] - centres), 1) / stride).clamp(0, reg_max - 1.01)
        left = distances.floor().long()
        weight = distances - left
        edges = torch.full((n * n, 4, reg_max), -30.0)
        edges.scatter_(2, left[..., None], torch.log(1 - weight + 1e-9)[..., None])
        edges.scatter_(2, (left + 1)[..., None], torch.log(weight + 1e-9)[..., None])
        logits = torch.full((n * n, nc), -12.0)
        logits[inside, label] = 12.0
        flat = torch.cat((edges.reshape(n * n, -1), logits), 1)
        maps.append(flat.T.reshape(1, -1, n, n))
    return maps


def test_a_perfect_prediction_scores_better_on_every_term():
    loss = DetectionLoss(DetectionLossConfig(topk=64))  # every cell inside the box is a positive
    targets = pad_targets([BOX], [torch.tensor([1])])
    _, perfect = loss(_maps(BOX, 1), targets, SIZE)
    _, shifted = loss(_maps(BOX + torch.tensor([6.0, 3.0, 6.0, 3.0]), 1), targets, SIZE)
    _, wrong_class = loss(_maps(BOX, 2), targets, SIZE)
    assert perfect["box"] < 1e-3 < shifted["box"]
    assert perfect["dfl"] + 0.1 < shifted["dfl"]
    assert perfect["cls"] < 0.1 < wrong_class["cls"]


def test_assignment_is_inside_the_boxes_top_k_and_one_box_per_cell():
    centres = cell_centres([torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4)], SIZE)[0]
    boxes = torch.cat((centres - 10, centres + 10), 1)[None]       # every cell predicts a 20 px box on itself
    scores = torch.full((1, len(centres), 3), 0.5)
    big, small = [0.0, 0.0, 40.0, 40.0], [16.0, 16.0, 36.0, 36.0]  # small lies inside big
    targets = torch.tensor([[[0.0, *big], [2.0, *small], [-1.0, 0, 0, 64, 64]]])
    found = assign(scores, boxes, centres, targets, DetectionLoss().config)
    inside_big = ((centres > 0) & (centres < 40)).all(1)
    assert found.positive[0].any() and not (found.positive[0] & ~inside_big).any()
    assert int(found.positive.sum()) <= 2 * DetectionLoss().config.topk
    # a cell in both boxes goes to the box it overlaps most: the small one, which fits the 20 px prediction
    shared = found.positive[0] & ((centres > 16) & (centres < 36)).all(1)
    assert shared.any() and (found.label[0][shared] == 2).all()
    assert torch.equal(found.box[0][shared], torch.tensor(small).expand(int(shared.sum()), 4))
    best = found.target[0].argmax()  # the best positive's target is its IoU
    assert math.isclose(float(found.target[0, best]), float(box_iou(boxes[0, best], found.box[0, best])), rel_tol=1e-4)


def test_a_label_beyond_the_classes_is_a_clear_error():
    with pytest.raises(EdgepruneError, match="label 7 in the data, but the detector has 3 classes"):
        DetectionLoss()(_maps(BOX, 1), pad_targets([BOX], [torch.tensor([7])]), SIZE)


# ---- the benchmark's training ----------------------------------------------------------------

def test_augmented_boxes_follow_the_pixels():
    training = _benchmark_training()
    pixels = torch.full((6, 3, 64, 64), training.PAD, dtype=torch.uint8)
    pixels[:, :, 20:36, 8:40] = 255                             # a white box in an image letterboxed at rows 8..56
    frames = torch.tensor([[0.0, 8.0, 64.0, 56.0]]).expand(6, 4)
    targets = torch.tensor([[[0.0, 8.0, 20.0, 40.0, 36.0]]]).expand(6, 1, 5)
    x, moved = training.augment(training.Letterboxed(pixels, frames, targets), torch.Generator().manual_seed(0))
    grey = training.PAD / 255
    assert not torch.equal(moved, targets)  # moved somewhere
    for image, (x1, y1, x2, y2) in zip(x, moved[:, 0, 1:].tolist()):
        assert image[:, math.ceil(y1) + 1:int(y2) - 1, math.ceil(x1) + 1:int(x2) - 1].mean() > 0.7
        outside = torch.ones(64, 64, dtype=torch.bool)
        outside[max(int(y1) - 1, 0):math.ceil(y2) + 1, max(int(x1) - 1, 0):math.ceil(x2) + 1] = False
        assert image[:, outside].max() <= grey * 1.25 + 1e-4  # grey, at most brightened by the colour jitter


def test_training_on_a_tiny_set_lowers_the_loss(tiny):
    training = _benchmark_training()
    from models.yolo_like import YoloLike

    torch.manual_seed(0)
    model = YoloLike(4, 10, 96)
    training.init_detect_biases(model.model[-1], 96)
    data = training.letterbox(tiny, 96)
    config = training.TrainConfig(epochs=10, batch_size=8, lr=1e-2, warmup_epochs=1)
    averaged, history = training.train(model, data, None, config, log=lambda line: None)
    losses = [r["loss"] for r in history]
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], [round(v, 1) for v in losses]
    assert training.recall(averaged, data)["recall50"] >= 0.0  # the eval path runs on the average


# ---- recovery with box labels ----------------------------------------------------------------

class _TwoMaps(torch.nn.Module):
    """A stand-in detector: raw maps at strides 8 and 16 with 4 x 16 box bins and 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.p3, self.p4 = torch.nn.Conv2d(3, 67, 8, 8), torch.nn.Conv2d(3, 67, 16, 16)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.p3(x), self.p4(x)]


def test_detection_objective_is_the_box_loss_plus_distillation():
    from edgeprune.outputs import OutputInfo
    from edgeprune.train.objectives import DetectionObjective, Distillation

    x = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([[[1.0, *BOX[0].tolist()]]])
    _, perfect = DetectionObjective(config=DetectionLossConfig(topk=64))(lambda _: _maps(BOX, 1), x, rows)
    assert perfect["box"] < 1e-3 and perfect["cls"] < 0.1  # the rows were read as BOX

    teacher, student = _TwoMaps(), _TwoMaps()
    infos = [OutputInfo(f"output{i}", tuple(m.shape[1:]), "regression", variance=1.0) for i, m in enumerate(teacher(x))]
    distillation = Distillation(teacher, infos)
    both, parts = DetectionObjective(distillation, weight=2.0)(student, x, rows)
    alone, _ = DetectionObjective()(student, x, rows)
    distilled, _ = distillation(student, x, None)
    assert {"distill", "box", "cls", "dfl"} <= set(parts)
    assert torch.isclose(both, 2 * alone + distilled)
    with pytest.raises(EdgepruneError, match="needs box labels"):
        DetectionObjective()(student, x, None)
