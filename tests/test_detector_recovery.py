"""Recovery of a pruned detector inside compress: box labels reach fine-tuning (moved with the crop),
the detection loss is added to distillation by default, and a detector gets its own defaults (30
epochs, no least-squares reconstruction)."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edgeprune.calibration import make_loader
from edgeprune.calibration.data import LabeledArrays
from edgeprune.calibration.sources import box_array
from edgeprune.errors import EdgepruneError
from edgeprune.outputs import OutputInfo
from edgeprune.pipeline.options import CompressOptions
from edgeprune.recipes import RecipeConfig, RecipeData, objective_for, run_recipe
from edgeprune.train import DetectionObjective, Distillation
from edgeprune.train.objectives import DistillConfig

from models.yolo_like import YoloLike

SIZE = 32


def _squares(n: int) -> LabeledArrays:
    """Black images, each with one white square (its box), at several places."""
    x = np.zeros((n, 1, SIZE, SIZE), np.float32)
    boxes = []
    for i in range(n):
        left, top = 6 + i % 4 * 3, 5 + i % 3 * 4
        x[i, 0, top:top + 8, left:left + 10] = 1.0
        boxes.append(np.array([[i % 3, left, top, left + 10, top + 8, 1]], np.float32))
    return LabeledArrays(x, None, 3, None, "squares", "train", box_array(boxes))


@pytest.mark.parametrize("augment", [None, "crop", "crop+flip"])
def test_boxes_reach_the_batches_and_move_with_the_crop_and_the_flip(augment):
    arrays = _squares(24)
    moved = 0
    for x, y in make_loader(arrays, 8, shuffle=True, augment=augment, seed=3):
        assert y.shape == (8, 1, 5)
        for image, (label, x1, y1, x2, y2) in zip(x, y[:, 0].tolist()):
            assert label in (0, 1, 2)
            inside = image[0, int(y1):int(y2), int(x1):int(x2)]
            assert inside.numel() == 80 and float(inside.sum()) == 80.0  # the box is exactly the white square
            moved += x1 not in (6, 9, 12, 15) or y1 not in (5, 9, 13)  # off the places the squares were drawn
    assert (moved > 0) == (augment is not None)


def test_a_box_cropped_out_of_the_image_becomes_padding():
    from edgeprune.calibration.loader import shift_boxes

    y = torch.tensor([[[2.0, 0, 10, 3, 20], [1.0, 10, 10, 20, 20]]])
    shifted = shift_boxes(y, torch.tensor([[-4.0, 0.0]]), (SIZE, SIZE))
    assert shifted[0, 0].tolist() == [-1.0] * 5 and shifted[0, 1].tolist() == [1.0, 6, 10, 16, 20]


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> list[OutputInfo]:
    """The eval outputs' kinds, as compress describes them: the decoded detections, then the raw maps."""
    from edgeprune.outputs import describe, flatten

    with torch.no_grad():
        arrays = [t.numpy() for t in flatten(model.eval()(x))]
    return describe(arrays, [f"output{i}" for i in range(len(arrays))], kinds={"output0": "detections"})


def test_with_boxes_the_default_objective_adds_the_detection_loss_to_distillation():
    model = YoloLike(4, 3, SIZE)
    arrays = _squares(4)
    outputs = _outputs(model, torch.from_numpy(arrays.x).repeat(1, 3, 1, 1))
    distil = RecipeConfig(distill=DistillConfig())
    boxed = RecipeData(train=arrays, teacher=model, outputs=outputs)
    found = objective_for(distil, boxed)
    assert isinstance(found, DetectionObjective) and isinstance(found.distillation, Distillation)
    assert found.layout == (3, outputs[0].shape[1])
    alone = objective_for(RecipeConfig(distill=None), boxed)
    assert isinstance(alone, DetectionObjective) and alone.distillation is None
    unboxed = RecipeData(train=LabeledArrays(arrays.x, None, 3, None, "s", "train"), teacher=model, outputs=outputs)
    assert isinstance(objective_for(distil, unboxed), Distillation)


class _TwoMaps(torch.nn.Module):
    """Raw maps at strides 8 and 16: 4 x 16 box bins and 3 classes (80 cells on a 64 x 64 input)."""

    def __init__(self) -> None:
        super().__init__()
        self.p3, self.p4 = torch.nn.Conv2d(3, 67, 8, 8), torch.nn.Conv2d(3, 67, 16, 16)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.p3(x), self.p4(x)]


def test_maps_of_another_head_are_recovered_by_distillation_alone(caplog):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    rows = torch.tensor([[[1.0, 12, 20, 44, 52]], [[0.0, 4, 4, 30, 30]]])
    teacher, student = _TwoMaps(), _TwoMaps()
    infos = [OutputInfo(f"output{i}", tuple(m.shape[1:]), "regression", variance=1.0) for i, m in enumerate(teacher(x))]
    distillation = Distillation(teacher, infos)
    distilled, _ = distillation(student, x, None)
    fitting, parts = DetectionObjective(distillation, layout=(3, 80))(student, x, rows)
    assert "box" in parts and not torch.isclose(fitting, distilled)
    with caplog.at_level(logging.WARNING):
        other, parts = DetectionObjective(distillation, layout=(80, 80))(student, x, rows)  # e.g. 80 classes
    assert torch.isclose(other, distilled) and "box" not in parts
    assert "distillation alone" in caplog.text
    with pytest.raises(EdgepruneError, match="anchor-free head"):
        DetectionObjective(layout=(80, 80))(student, x, rows)


def test_a_recipe_on_boxes_fine_tunes_with_the_detection_loss():
    torch.manual_seed(0)
    model = YoloLike(4, 3, SIZE)
    squares = _squares(8)
    arrays = LabeledArrays(np.repeat(squares.x, 3, axis=1), None, 3, None, "squares", "train", squares.boxes)
    outputs = _outputs(model, torch.from_numpy(arrays.x))
    config = RecipeConfig("l2", flops_cut=0.3, epochs=1, batch_size=4, distill=DistillConfig())
    result = run_recipe(model, (1, 3, SIZE, SIZE), config, RecipeData(train=arrays, teacher=model, outputs=outputs))
    [epoch] = result.history
    assert {"distill", "box", "cls", "dfl"} <= set(epoch)


def test_a_detector_recovers_longer_and_without_reconstruction_unless_told():
    from edgeprune.pipeline import stages
    from edgeprune.pipeline.prepare import DETECTOR_EPOCHS, finetune_epochs

    data = SimpleNamespace(labelled=False, boxed=True, train=object(), spec="yolo:digits/")
    assert finetune_epochs(data, CompressOptions(), detector=True) == DETECTOR_EPOCHS == 30
    assert finetune_epochs(data, CompressOptions(), detector=False) == 3
    assert finetune_epochs(data, CompressOptions(min_cosine=0.99), detector=True) == 10
    assert finetune_epochs(data, CompressOptions(finetune_epochs=5), detector=True) == 5
    assert finetune_epochs(data, CompressOptions(distill=None), detector=True) == 30  # the detection loss alone

    def job(detector: bool, **options):
        return SimpleNamespace(options=CompressOptions(**options), outputs=[object()], detector=detector, device="cpu")

    assert stages._reconstruct_config(job(True)) is None
    assert stages._reconstruct_config(job(True, reconstruct=True)) is not None
    assert stages._reconstruct_config(job(False)) is not None
    assert stages._reconstruct_config(job(False, reconstruct=False)) is None


def test_the_test_detectors_anchors_follow_it_to_another_device():
    """Its decode caches anchors by input shape (as ultralytics' does); a forward on the CPU, then the
    net moved (compress describes outputs on the CPU, then recovers on CUDA) must not reuse them.
    The meta device stands in for CUDA here."""
    model = YoloLike(4, 3, SIZE).eval()
    with torch.no_grad():
        model(torch.zeros(2, 3, SIZE, SIZE))
        decoded, *_ = model.to("meta")(torch.zeros(2, 3, SIZE, SIZE, device="meta"))
    assert decoded.device.type == "meta"


def test_the_data_line_says_the_training_images_have_boxes():
    from edgeprune.pipeline.prepare import _data_line

    def line(**data):
        found = SimpleNamespace(spec="yolo:d/", train=[0] * 450, evaluation=[0] * 50, eval_split="val", **data)
        return _data_line(SimpleNamespace(data=found, outputs=[SimpleNamespace(name="output0", kind="detections")]))

    assert "450 training images (with boxes), 50 held out [val]" in line(boxed=True, labelled=False)
    assert "(labelled)" in line(boxed=False, labelled=True) and "(unlabelled)" in line(boxed=False, labelled=False)
