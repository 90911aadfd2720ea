"""A detector's mAP against labelled boxes: NMS on its decoded output, then COCO's AP (pycocotools).

The output is what YOLOv8 / YOLO11 heads return (kind ``detections``, :mod:`edgeprune.outputs`):
N x (4 + K) x A, for each anchor a box (centre x, centre y, w, h) in input pixels then K class
scores in [0, 1]. :func:`detections_from_output` keeps the anchors whose best class scores at
least ``conf`` (0.001 and NMS IoU 0.7 are ultralytics' ``val`` defaults), one box per anchor and
class as ultralytics' ``val`` does single-label, class-aware NMS (torchvision), at most
``max_det`` per image. Labels are M x 5 per image: class, x1, y1, x2, y2 in the same pixels.

>>> import numpy as np
>>> out = np.zeros((1, 6, 8), np.float32); out[0, :4, 0] = [5, 5, 10, 10]; out[0, 4, 0] = 0.5
>>> dets = detections_from_output(out)
>>> dets[0].round(1).tolist()
[[0.0, 0.0, 10.0, 10.0, 0.5, 0.0]]
>>> map50_95(dets, [np.array([[0, 0, 0, 10, 10]], np.float32)])
{'map50': 1.0, 'map50_95': 1.0}
"""
from __future__ import annotations

import contextlib
import io
from typing import Sequence

import numpy as np

CONF = 0.001  # ultralytics' val: scores this low still count towards AP (they extend the recall)
IOU = 0.7  # ultralytics' val NMS threshold
MAX_DET = 300  # ultralytics' val: detections kept per image


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(centre x, centre y, w, h) rows -> (x1, y1, x2, y2) rows."""
    half = boxes[..., 2:4] / 2
    return np.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float = IOU) -> np.ndarray:
    """Indices kept by class-aware NMS (torchvision's ``batched_nms``), highest score first."""
    import torch
    from torchvision.ops import batched_nms

    if not len(boxes):
        return np.zeros(0, np.int64)
    kept = batched_nms(torch.from_numpy(np.ascontiguousarray(boxes, np.float32)),
                       torch.from_numpy(np.ascontiguousarray(scores, np.float32)),
                       torch.from_numpy(np.ascontiguousarray(classes, np.int64)), iou)
    return kept.numpy()


def detections_from_output(output: np.ndarray, conf: float = CONF, iou: float = IOU, max_det: int = MAX_DET,
                           size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Per image, the detections kept after NMS: rows of x1, y1, x2, y2, score, class; ``size``
    (width, height): boxes clipped to the input, as ultralytics' val clips them to the image."""
    found = []
    for image in np.asarray(output, np.float32):
        scores = image[4:].T  # A x K
        classes = scores.argmax(axis=1)
        best = scores[np.arange(len(scores)), classes]
        keep = best > conf
        boxes = xywh_to_xyxy(image[:4].T[keep])
        if size is not None:
            boxes = np.clip(boxes, 0, [size[0], size[1], size[0], size[1]])
        order = nms(boxes, best[keep], classes[keep], iou)[:max_det]
        found.append(np.column_stack([boxes[order], best[keep][order], classes[keep][order]]).astype(np.float32)
                     if len(order) else np.zeros((0, 6), np.float32))
    return found


def map50_95(predictions: Sequence[np.ndarray], labels: Sequence[np.ndarray],
             max_det: int = MAX_DET) -> dict[str, float]:
    """COCO mAP at IoU 0.5 and averaged over 0.5:0.95 (pycocotools, its 101-point interpolation,
    every area), over the classes that have labels. ``predictions``: per image, rows of x1, y1,
    x2, y2, score, class; ``labels``: per image, rows of class, x1, y1, x2, y2."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} images of predictions for {len(labels)} of labels")
    truth = [_box(i, row[1:5], int(row[0]), j) for i, rows in enumerate(labels) for j, row in enumerate(rows, 1)]
    found = [{**_box(i, row[:4], int(row[5]), 0), "score": float(row[4])}
             for i, rows in enumerate(predictions) for row in rows]
    if not truth or not found:
        return {"map50": 0.0, "map50_95": 0.0}
    classes = sorted({a["category_id"] for a in truth})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in range(len(labels))], "annotations": _numbered(truth),
                      "categories": [{"id": c} for c in classes]}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(_numbered(found)), "bbox")
        evaluation.params.maxDets = [1, 10, max_det]
        evaluation.evaluate()
        evaluation.accumulate()
    # what COCOeval.summarize prints as AP and AP50 (its summary assumes 100 detections per image)
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # IoU thresholds x recall x classes, every area
    return {"map50": _mean(precision[0]), "map50_95": _mean(precision)}


def _mean(precision: np.ndarray) -> float:
    """The mean over the cells COCOeval filled (-1: a class without labels)."""
    filled = precision[precision > -1]
    return float(np.round(filled.mean(), 10)) if filled.size else 0.0


def _box(image: int, xyxy: np.ndarray, category: int, number: int) -> dict:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    w, h = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
    return {"image_id": image, "category_id": category, "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0}


def _numbered(annotations: list[dict]) -> list[dict]:
    return [{**a, "id": k} for k, a in enumerate(annotations, 1)]


def box_map(output: np.ndarray, labels: Sequence[np.ndarray], conf: float = CONF, iou: float = IOU,
            max_det: int = MAX_DET, size: tuple[int, int] | None = None) -> dict[str, float]:
    """mAP50 and mAP50-95 of a decoded detections output (N x (4 + K) x A) against per-image
    labels (class, x1, y1, x2, y2 rows), after NMS (boxes clipped to ``size``, width and height)."""
    return map50_95(detections_from_output(output, conf, iou, max_det, size), labels, max_det)
