"""A detector's own yardstick: mAP after NMS against labelled boxes (``yolo:`` and ``coco:`` data),
in every variant's figures, the report and the floor; bad labels refused in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgeprune.calibration import clear_cache, load_data
from edgeprune.cli import main
from edgeprune.metrics.detection import detections_from_output, map50_95
from edgeprune.pipeline.search import Floor

from conftest import assert_one_line_error

SPEC = "tests/models/yolo_like.py:yolo_like"
FAST = ["--target", "x86-avx2", "--runs", "3", "--min-time", "0.05", "--no-int8", "--finetune-epochs", "0",
        "--no-reconstruct", "--eval-images", "8"]


def test_map_pins_a_hand_computed_case():
    """Two images. Class 0: a perfect box (score 0.9) on image 0; on image 1 a box of IoU 0.625 with
    its label (0.8) and one far off (0.7). Class 1: one perfect box on image 1.

    Class 0 at IoU 0.50, 0.55, 0.60: both labels found before the miss, precision 1 at every recall:
    AP 1. At 0.65 ... 0.95 (7 thresholds): only the first, precision 1 up to recall 0.5 then 0: COCO's
    101 recall points give 51/101. Class 1: AP 1 everywhere.
    mAP50 = 1; mAP50-95 = (1 + (3 + 7 * 51/101) / 10) / 2 = 0.8267326..."""
    labels = [np.array([[0, 0, 0, 10, 10]], np.float32),
              np.array([[0, 20, 20, 30, 30], [1, 40, 0, 50, 20]], np.float32)]
    predictions = [np.array([[0, 0, 10, 10, 0.9, 0]], np.float32),
                   np.array([[20, 20, 30, 26.25, 0.8, 0], [60, 60, 70, 70, 0.7, 0], [40, 0, 50, 20, 0.6, 1]], np.float32)]
    found = map50_95(predictions, labels)
    assert found["map50"] == pytest.approx(1.0)
    assert found["map50_95"] == pytest.approx((1 + (3 + 7 * 51 / 101) / 10) / 2, abs=1e-9)
    worse = [predictions[0], predictions[1][[1, 0, 2]] * [1, 1, 1, 1, 0, 1] + [0, 0, 0, 0, 0, 0]]
    worse[1][:, 4] = [0.8, 0.7, 0.6]  # the far-off box now ranks first: class 0's precision at recall 1 is 2/3
    assert map50_95(worse, labels)["map50"] == pytest.approx((1 + (51 + 50 * 2 / 3) / 101) / 2, abs=1e-3)


def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    out = np.zeros((1, 4 + 2, 16), np.float32)
    out[0, :4, 0], out[0, 4, 0] = [10, 10, 10, 10], 0.9  # class 0
    out[0, :4, 1], out[0, 4, 1] = [11, 10, 10, 10], 0.8  # overlaps it (IoU 0.82): suppressed
    out[0, :4, 2], out[0, 5, 2] = [11, 10, 10, 10], 0.7  # same place, class 1: kept
    out[0, :4, 3], out[0, 4, 3] = [40, 40, 10, 10], 0.0005  # below --conf 0.001: dropped
    found = detections_from_output(out, conf=0.001, iou=0.7)[0]
    assert found[:, 5].tolist() == [0, 1] and found[:, 4].tolist() == pytest.approx([0.9, 0.7])
    assert found[0, :4].tolist() == [5, 5, 15, 15]
    assert len(detections_from_output(out, conf=0.001, iou=0.9)[0]) == 3  # IoU 0.82 < 0.9: both kept


def test_floor_counts_map_points_for_a_detector():
    floor = Floor(max_drop=1.0, metric="map50_95")
    assert floor.holds({"cosine_min": 1.0, "top1": None, "map50_95": 0.505}, 0.51)
    assert not floor.holds({"cosine_min": 1.0, "top1": None, "map50_95": 0.49}, 0.51)
    assert "mAP50-95 within 1 points" in floor.describe()


# --- data -------------------------------------------------------------------------------------------

def _write(root, images: dict[str, tuple[int, int]], labels: dict[str, str]):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (w, h) in images.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / name)
    for name, text in labels.items():
        (root / "labels" / name).write_text(text)
    clear_cache()
    return root


def test_yolo_boxes_follow_the_letterbox(tmp_path):
    """A 32 x 16 image letterboxed into 64 x 64: scaled 2x, 16 rows of grey above and below."""
    root = _write(tmp_path / "d", {"a.png": (32, 16)}, {"a.txt": "3 0.5 0.5 0.25 0.5\n"})
    arrays = load_data(f"yolo:{root}", split="all", channels=3, size=64)
    assert arrays.y is None and arrays.x.shape == (1, 3, 64, 64)
    assert arrays.boxes[0].tolist() == [[3, 24, 24, 40, 40]]  # cx 16 cy 8 w 8 h 8 -> x 24..40, y 8*2+16 -8..+8
    assert arrays.x[0, :, 0, 0] * 255 == pytest.approx([114, 114, 114])


def test_coco_gives_the_boxes_yolo_gives(tmp_path):
    root = _write(tmp_path / "d", {"a.png": (32, 16)}, {"a.txt": "1 0.5 0.5 0.25 0.5\n"})
    coco = {"images": [{"id": 7, "file_name": "a.png", "width": 32, "height": 16}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [12, 4, 8, 8], "iscrowd": 0}],
            "categories": [{"id": 2}, {"id": 5}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    from_coco = load_data(f"coco:{tmp_path / 'ann.json'}:{root / 'images'}", split="all", channels=3, size=64)
    from_yolo = load_data(f"yolo:{root}", split="all", channels=3, size=64)
    assert from_coco.boxes[0].tolist() == from_yolo.boxes[0].tolist()
    assert np.array_equal(from_coco.x, from_yolo.x)


# --- bad yolo: inputs, one line each, nothing written --------------------------------------------------

IMAGES = {f"{name}.png": (64, 64) for name in "abcdefghij"}  # ten: one held out
LABELS = {f"{name}.txt": "0 0.5 0.5 0.2 0.2\n" for name in "abcdefghij"}


@pytest.mark.parametrize("case, labels, fragments", [
    ("four numbers", {"b.txt": "1 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n"}, ["b.txt row 2", "4 numbers, expected 5"]),
    ("class past the head", {"b.txt": "\n4 0.1 0.1 0.1 0.1\n7 0.5 0.5 0.2 0.2\n"}, ["b.txt row 3", "class 7", "5 classes"]),
    ("box outside", {"a.txt": "0 0.5 1.5 0.2 0.2\n", "b.txt": ""}, ["a.txt row 1", "outside [0, 1]"]),
    ("no label file", {"b.txt": None}, ["b.png", "no label file", "b.txt"]),
])
def test_bad_yolo_labels_fail_in_one_line_naming_the_file_and_row(tmp_path, case, labels, fragments):
    given = {name: text for name, text in {**LABELS, **labels}.items() if text is not None}
    root = _write(tmp_path / "d", IMAGES, given)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compress", SPEC, "--calib", f"yolo:{root}", *FAST, "-o", str(out)])
    assert_one_line_error(result, *fragments)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_an_empty_yolo_folder_fails_in_one_line(tmp_path):
    root = _write(tmp_path / "d", {}, {})
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compress", SPEC, "--calib", f"yolo:{root}", *FAST, "-o", str(out)])
    assert_one_line_error(result, str(root / "images"), "no images")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


# --- the figures reach the report ------------------------------------------------------------------

def _job(boxes):
    from types import SimpleNamespace

    from edgeprune.outputs import OutputInfo
    from edgeprune.pipeline.options import CompressOptions

    return SimpleNamespace(options=CompressOptions(conf=0.001, iou=0.7), shape=(1, 3, 64, 64), box_output=0,
                           label_output=None, outputs=[OutputInfo("output0", (6, 8), "detections")],
                           data=SimpleNamespace(reference=None))


def _decoded(boxes_xywh, scores):
    out = np.zeros((1, 6, 8), np.float32)
    for k, (box, score) in enumerate(zip(boxes_xywh, scores)):
        out[0, :4, k], out[0, 4, k] = box, score
    return out


def test_each_variant_gets_map_against_the_held_out_boxes():
    """``_against_dense`` (each ONNX file, INT8 and each runtime's file go through it) adds mAP50 and
    mAP50-95 from the boxes; the box beyond the input is clipped to it before matching."""
    from edgeprune.calibration.sources import box_array
    from edgeprune.pipeline import stages
    from edgeprune.calibration.data import LabeledArrays

    held_out = LabeledArrays(np.zeros((1, 3, 64, 64), np.float32), None, 2, None, "t", "val",
                             box_array([np.array([[0, 0, 0, 20, 20], [0, 40, 40, 64, 64]], np.float32)]))
    dense = _decoded([[10, 10, 20, 20], [56, 56, 32, 32]], [0.9, 0.8])  # the second spills past 64: clipped
    job = _job(held_out.boxes)
    job.data.reference = (held_out, [dense])
    found = stages._against_dense(job, [dense])
    assert found["map50"] == pytest.approx(1.0) and found["map50_95"] == pytest.approx(1.0)
    shifted = _decoded([[10, 10, 20, 20], [36, 36, 32, 32]], [0.9, 0.8])  # the second box missed
    assert stages._against_dense(job, [shifted])["map50_95"] == pytest.approx(51 / 101, abs=1e-6)


def test_the_floor_and_the_promise_use_map_for_a_detector():
    from edgeprune.pipeline.search import Point, Search

    chosen = Point("MACs cut 50%", 0.5, 1.5, 1.0, 0.66, 0.95, None, True, 1.0, chosen=True, map50_95=0.60)
    found = Search(object(), [chosen], Floor(max_drop=2.0, metric="map50_95"), "onnxruntime", 1.0)
    delivered = {"dense_ms": 1.0, "pruned_ms": 0.66, "cosine_min": 0.95, "top1": None, "dense_top1": None,
                 "map50_95": 0.60, "dense_map50_95": 0.61}
    assert found.promise(delivered)["floor_held"] is True
    assert found.promise({**delivered, "map50_95": 0.58})["floor_held"] is False  # 3 points below dense
    assert "mAP50-95 within 2 points" in found.promise(delivered)["asked"]


def test_the_report_shows_map_in_the_table_the_markdown_and_the_figure(tmp_path):
    from edgeprune.report import format_table, markdown, plot

    variants = [{"name": "dense", "map50": 0.9, "map50_95": 0.6, "macs": 2e6, "p50_ms": 1.0},
                {"name": "pruned", "map50": 0.8, "map50_95": 0.5, "macs": 1e6, "p50_ms": 0.5}]
    report = {"model": "m", "target": {"name": "arm"}, "variants": variants, "host": {"machine": "x", "cpus": 2},
              "bench_settings": {}, "options": {"conf": 0.001, "iou": 0.7},
              "pruning": {"criterion": "l2", "recipe": "oneshot", "macs_cut": 0.5, "params_before": 2,
                          "params_after": 1, "layers": []}}
    table = format_table(report).splitlines()
    assert "mAP50" in table[0] and "mAP50-95" in table[0] and "0.5000" in table[2]
    assert "| mAP50 | mAP50-95 |" in markdown(report) and "IoU 0.7" in markdown(report)
    plot(report, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0


# --- a segmenter's mIoU -------------------------------------------------------------------------------

def test_miou_pins_a_hand_computed_case():
    """2 images of 2 x 2 pixels, 3 classes, 255 unlabelled (its prediction does not count).
    Class 0: predicted {a00, a01, a10}, labelled {a00, a01}: 2/3. Class 1: predicted {a11}, labelled
    {a10, a11, b00}: 1/3. Class 2: predicted {b00, b01, b11}, labelled {b01, b11}: 2/3."""
    from edgeprune.metrics.segmentation import mean_iou

    masks = np.array([[[0, 0], [1, 1]], [[1, 2], [255, 2]]])
    predicted = np.array([[[0, 0], [0, 1]], [[2, 2], [0, 2]]])
    logits = np.eye(3)[predicted].transpose(0, 3, 1, 2)
    assert mean_iou(logits, masks) == pytest.approx((2 / 3 + 1 / 3 + 2 / 3) / 3, abs=1e-9)


def test_npz_masks_reach_the_segmenter_figures(tmp_path):
    from types import SimpleNamespace

    from edgeprune.pipeline import stages

    rng = np.random.default_rng(0)
    masks = rng.integers(0, 3, (10, 8, 8))
    np.savez(tmp_path / "seg.npz", x=rng.integers(0, 255, (10, 3, 8, 8), dtype=np.uint8), masks=masks)
    clear_cache()
    val = load_data(str(tmp_path / "seg.npz"), split="val", channels=3, size=8)
    assert val.masks.shape == (1, 8, 8) and val.y is None
    job = SimpleNamespace(box_output=None, mask_output=0)
    perfect = np.eye(3)[val.masks].transpose(0, 3, 1, 2)
    assert stages.label_figures(job, [perfect], val) == {"miou": 1.0}
    assert stages.label_figures(job, [perfect[:, ::-1]], val)["miou"] < 1.0
    np.savez(tmp_path / "bad.npz", x=rng.integers(0, 255, (10, 3, 8, 8), dtype=np.uint8), masks=masks[:, :4])
    with pytest.raises(Exception, match="'masks' must be integer class ids N x H x W = 10 x 8 x 8"):
        load_data(str(tmp_path / "bad.npz"), split="val", channels=3, size=8)


CELL_DETECTOR = """
import torch
import torch.nn.functional as F
from torch import nn


class CellDetector(nn.Module):
    \"\"\"A detector without weights: each 16 x 16 cell of the 64 x 64 input is an anchor with a 12 x 6
    box at its centre, its class scores the cell's mean of each channel (pixels / 255).\"\"\"
    input_shape = (1, 3, 64, 64)

    def forward(self, x):
        scores = F.avg_pool2d(x, 16).flatten(2)  # N x 3 x 16
        ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
        centres = torch.stack([xs.flatten() * 16 + 8, ys.flatten() * 16 + 8])
        boxes = torch.cat([centres, torch.tensor([[12.0], [6.0]]).expand(2, 16)])
        return torch.cat([boxes.expand(len(x), 4, 16), scores], 1)


def cell_detector():
    return CellDetector()
"""


def _cells(root, images: int = 4):
    """64 x 32 images whose lit 16 x 16 cells (one channel at 255) are labelled with that channel's
    class and the cell's 12 x 6 centre box, in the image's own coordinates: letterboxed into the
    detector's 64 x 64 input they move 16 rows down, where its anchors find them."""
    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    for k in range(images):
        pixels, rows = np.zeros((32, 64, 3), np.uint8), []
        for r, c in {(int(rng.integers(2)), int(rng.integers(4))) for _ in range(3)}:
            cls = int(rng.integers(3))
            pixels[16 * r:16 * r + 16, 16 * c:16 * c + 16, cls] = 255
            rows.append(f"{cls} {(16 * c + 8) / 64} {(16 * r + 8) / 32} {12 / 64} {6 / 32}")
        for split in ("val",) if k else ("val", "train"):
            Image.fromarray(pixels).save(root / "images" / split / f"{k}.png")
            (root / "labels" / split / f"{k}.txt").write_text("\n".join(rows) + "\n")
    clear_cache()
    return root


def test_eval_scores_a_detector_on_boxes_it_finds_exactly_at_map_1(tmp_path):
    """The letterbox, the box coordinates and the class ids end to end: mAP 1 only if all are right."""
    (tmp_path / "cells.py").write_text(CELL_DETECTOR)
    root = _cells(tmp_path / "d")
    result = CliRunner().invoke(main, ["eval", f"{tmp_path / 'cells.py'}:cell_detector", "--data", f"yolo:{root}",
                                       "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["split"] == "test" and found["images"] == 4
    assert found["map50"] == pytest.approx(1.0) and found["map50_95"] == pytest.approx(1.0)


def test_a_coco_box_outside_its_image_fails_in_one_line_naming_the_annotation(tmp_path):
    root = _write(tmp_path / "d", {"a.png": (32, 16)}, {})
    coco = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 3}],
            "annotations": [{"image_id": 1, "category_id": 3, "bbox": [2, 2, 4, 4]},
                            {"image_id": 1, "category_id": 3, "bbox": [20, 4, 16, 4]}]}  # 20 + 16 > 32 + 1
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    with pytest.raises(Exception, match=r"ann.json annotation 2: box outside its image"):
        load_data(f"coco:{tmp_path / 'ann.json'}:{root / 'images'}", split="all", channels=3, size=64)
