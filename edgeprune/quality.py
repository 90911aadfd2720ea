"""How close a variant's outputs stay to the dense model's, output by output, on held-out images.

For every output: the relative L2 error (``||variant - dense|| / ||dense||`` over all images),
the mean per-image cosine similarity, and for class-score outputs the top-1 agreement (how often
the variant's arg-max class is the dense model's). Accuracy is added where labels exist. The
figures need outputs only, so they work for any model, labelled data or not.

A detector's decoded output (kind ``detections``: boxes in pixels and scores in [0, 1] in one
tensor) would be judged by its boxes alone, so it is two rows: ``NAME.boxes`` with the mean IoU
of the boxes on the :data:`TOP_ANCHORS` anchors the dense model scores highest (those that survive
NMS), and ``NAME.scores`` with the class agreement on the same anchors.

>>> import numpy as np
>>> from edgeprune.outputs import OutputInfo
>>> dense = [np.array([[2.0, 1.0], [0.0, 3.0]])]
>>> rows = compare(dense, [dense[0] * 0.5], [OutputInfo("output", (2,), "logits")])
>>> rows[0]["cosine"], rows[0]["top1_agreement"], round(rows[0]["rel_l2"], 3)
(1.0, 1.0, 0.5)
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.outputs import OutputInfo, describe, flatten

# A correct INT8 file kept a worst-output cosine of 0.77 or more to float even on random-weight
# networks calibrated on 64 random images (benchmarks/results/runtimes.json); a broken one (wrong
# scales, wrong weights) lands near 0 or below.
INT8_MIN_COSINE = 0.5
INT8_CHECK_IMAGES = 32  # calibration images an INT8 file is judged on


TOP_ANCHORS = 100


def compare(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
            infos: Sequence[OutputInfo]) -> list[dict[str, Any]]:
    """One row per output: name, kind, rel_l2, cosine and (class scores) top1_agreement; two for
    detections (boxes with box_iou, scores with top1_agreement)."""
    rows = []
    for info, dense, variant in zip(infos, reference, candidate):
        if info.kind == "detections":
            rows += _detection_rows(info.name, dense, variant)
            continue
        d, v = _per_image(dense), _per_image(variant)
        row = {"output": info.name, "kind": info.kind, "rel_l2": _rel_l2(d, v), "cosine": _cosine(d, v)}
        if info.kind in ("logits", "probs"):
            row["top1_agreement"] = float(np.mean(dense.argmax(axis=1) == variant.argmax(axis=1)))
        rows.append(row)
    return rows


def _detection_rows(name: str, dense: np.ndarray, variant: np.ndarray) -> list[dict[str, Any]]:
    """Boxes and scores of N x (4 + K) x A decoded detections, judged on the dense model's top anchors.

    >>> dense = np.zeros((1, 6, 3)); dense[0, :4] = [[10, 20, 30], [10, 20, 30], [4, 4, 4], [4, 4, 4]]
    >>> dense[0, 4:] = [[0.9, 0.1, 0.2], [0.1, 0.8, 0.3]]
    >>> variant = dense.copy(); variant[0, 0, 0] += 2  # the best anchor's box moves by half its width
    >>> [(r["output"], round(r.get("box_iou", r.get("top1_agreement")), 3)) for r in _detection_rows("y", dense, variant)]
    [('y.boxes', 0.778), ('y.scores', 1.0)]
    """
    boxes, scores = dense[:, :4], dense[:, 4:]
    top = np.argsort(-scores.max(axis=1), axis=1)[:, :TOP_ANCHORS]  # N x k anchors

    def pick(values: np.ndarray) -> np.ndarray:  # N x rows x k
        return np.take_along_axis(values, top[:, None, :], axis=2)

    rows = []
    for part, (d, v) in (("boxes", (boxes, variant[:, :4])), ("scores", (scores, variant[:, 4:]))):
        flat_d, flat_v = _per_image(d), _per_image(v)
        rows.append({"output": f"{name}.{part}", "kind": part, "rel_l2": _rel_l2(flat_d, flat_v),
                     "cosine": _cosine(flat_d, flat_v)})
    rows[0]["box_iou"] = float(np.round(_iou(pick(boxes), pick(variant[:, :4])).mean(), 6))
    rows[1]["top1_agreement"] = float(np.mean(pick(scores).argmax(axis=1) == pick(variant[:, 4:]).argmax(axis=1)))
    return rows


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (x, y, w, h) boxes laid out N x 4 x k."""
    def corners(box):
        return box[:, 0] - box[:, 2] / 2, box[:, 1] - box[:, 3] / 2, box[:, 0] + box[:, 2] / 2, box[:, 1] + box[:, 3] / 2

    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = corners(a.astype(np.float64)), corners(b.astype(np.float64))
    inter = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None) * np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)


def _per_image(x: np.ndarray) -> np.ndarray:
    """One float64 row per image."""
    return x.reshape(len(x), -1).astype(np.float64)


def _rel_l2(dense: np.ndarray, variant: np.ndarray) -> float:
    norm = float(np.linalg.norm(dense))
    error = float(np.linalg.norm(variant - dense))
    return error / norm if norm > 0 else (0.0 if error == 0 else float("inf"))


def _cosine(dense: np.ndarray, variant: np.ndarray) -> float:
    dot = (dense * variant).sum(axis=1)
    norms = np.linalg.norm(dense, axis=1) * np.linalg.norm(variant, axis=1)
    both_zero = (norms == 0) & (np.abs(dense).sum(axis=1) == np.abs(variant).sum(axis=1))
    cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    return float(np.round(cos.mean(), 6))


def worst_cosine(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """The lowest, over the outputs, of the mean per-image cosine of ``candidate`` to ``reference``.

    >>> worst_cosine([np.ones((2, 3)), np.ones((2, 2))], [np.ones((2, 3)), -np.ones((2, 2))])
    -1.0
    """
    return min(_cosine(_per_image(r), _per_image(c)) for r, c in zip(reference, candidate))


def judge_int8(reference: Sequence[np.ndarray], quantised: Sequence[np.ndarray], name: str,
               bound: float = INT8_MIN_COSINE) -> float:
    """The worst-output cosine of an INT8 file's outputs to the float model's on calibration
    images (a decoded detections output as its boxes and its scores: :func:`int8_cosines`); below
    ``bound`` (or NaN) a one-line error: the quantisation is broken.

    >>> judge_int8([np.eye(2)], [np.eye(2) * 0.9], "m.int8.onnx")
    1.0
    """
    cosines = int8_cosines(reference, quantised)
    worst = min(cosines, key=lambda output: -np.inf if np.isnan(cosines[output]) else cosines[output])
    cosine = cosines[worst]
    if not cosine >= bound:
        raise EdgepruneError(f"{name}: the INT8 file is broken: its worst output has cosine {cosine:.3f} ({worst}) "
                             f"to the float model on {len(reference[0])} calibration images (a correct one stays "
                             f"above {bound}); not written")
    return cosine


def int8_cosines(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> dict[str, float]:
    """The mean per-image cosine of each output of ``candidate`` to ``reference``'s, outputs named
    ``output0``...; kinds as :func:`~edgeprune.outputs.describe` tells them from ``reference``, so a
    decoded detections output is two (``NAME.boxes``, ``NAME.scores``): one cosine over boxes in
    pixels and scores in [0, 1] would measure the boxes alone.

    >>> dense = np.concatenate([np.full((1, 4, 8), 50.0), np.full((1, 2, 8), 0.5)], axis=1)
    >>> collapsed = dense.copy(); collapsed[:, 4:] = 0  # the scores rounded to 0
    >>> int8_cosines([dense], [collapsed])
    {'output0.boxes': 1.0, 'output0.scores': 0.0}
    """
    return {row["output"]: row["cosine"] for row in _guessed_rows(reference, candidate)}


def scores_cosine(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float | None:
    """The lowest cosine of the class scores of the decoded detections outputs (see
    :func:`int8_cosines`); None when no output is one."""
    return min((row["cosine"] for row in _guessed_rows(reference, candidate) if row["kind"] == "scores"), default=None)


def _guessed_rows(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """:func:`compare` with the outputs named ``output0``... and their kinds guessed from ``reference``."""
    return compare(reference, candidate, describe(reference, [f"output{i}" for i in range(len(reference))]))


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """The worst output of a variant: lowest cosine, highest relative error, lowest top-1 agreement
    (and, for detectors, lowest box IoU)."""
    agreements = [r["top1_agreement"] for r in rows if "top1_agreement" in r]
    ious = [r["box_iou"] for r in rows if "box_iou" in r]
    found = {"cosine_min": min((r["cosine"] for r in rows), default=None),
             "rel_l2_max": max((r["rel_l2"] for r in rows), default=None),
             "top1_agreement_min": min(agreements) if agreements else None}
    return {**found, "box_iou_min": min(ious)} if ious else found


def accuracy(outputs: Sequence[np.ndarray], label_output: int, labels: np.ndarray) -> float:
    """Top-1 accuracy of the class-score output ``label_output`` against ``labels``."""
    return float(np.mean(outputs[label_output].argmax(axis=1) == labels))


def torch_outputs(model: Any, x: np.ndarray, batch_size: int = 128) -> list[np.ndarray]:
    """All outputs of a PyTorch model on ``x``, flattened in ONNX order, as NumPy arrays."""
    import torch

    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    parts: list[list[np.ndarray]] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).to(device)
                parts.append([t.float().cpu().numpy() for t in flatten(model(batch))])
    finally:
        model.train(was_training)
    return [np.concatenate(column) for column in zip(*parts)]
