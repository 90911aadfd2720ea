"""A model's outputs, whatever its forward returns: one tensor, a tuple or list, or a dict.

Every stage sees them the same way: flattened in the order the ONNX exporter writes them
(:func:`flatten`), named (``output`` for a lone tensor, ``output0``, ``output1``... for a
sequence, the keys for a dict) and given a kind that decides the distillation loss and the
quality figures (:class:`OutputInfo`):

- ``logits``: class scores, N x K (or N x K x ...: K classes on axis 1); compared by softmax,
  KL divergence and top-1 agreement;
- ``probs``: class probabilities already (non-negative, summing to 1 on axis 1);
- ``detections``: a detector's decoded output, N x (4 + K) x A: for each of A anchors a box
  (x, y, w, h) then K class scores in [0, 1], as YOLOv8 / YOLO11 heads return it; compared as
  two parts, boxes and scores (see :mod:`edgeprune.quality`);
- ``regression``: anything else (boxes, landmarks, feature or heat maps).

>>> import torch
>>> names(flatten({"box": torch.zeros(1, 4), "score": torch.zeros(1, 2)}), {"box": 0, "score": 0})
['box', 'score']
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from edgeprune.errors import EdgepruneError

KINDS = ("logits", "probs", "detections", "regression")


def flatten(output: Any) -> list[Any]:
    """The tensors of ``output`` in ONNX order (nested tuples, lists and dicts are walked in order)."""
    if isinstance(output, dict):
        return [t for value in output.values() for t in flatten(value)]
    if isinstance(output, (tuple, list)):
        return [t for value in output for t in flatten(value)]
    return [output]


def names(tensors: Sequence[Any], structure: Any) -> list[str]:
    """A name per flattened tensor: ``output``; ``output0``...; or the dict keys (made identifier-safe)."""
    found = _names(structure, "")
    if len(found) == 1 and not isinstance(structure, dict):
        return ["output"]
    return found if len(found) == len(tensors) else [f"output{i}" for i in range(len(tensors))]


def _names(structure: Any, prefix: str) -> list[str]:
    if isinstance(structure, dict):
        return [n for key, value in structure.items() for n in _names(value, _join(prefix, _safe(str(key))))]
    if isinstance(structure, (tuple, list)):
        return [n for i, value in enumerate(structure) for n in _names(value, _join(prefix, str(i)) if prefix else f"output{i}")]
    return [prefix or "output"]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}_{name}" if prefix else name


def _safe(name: str) -> str:
    return re.sub(r"\W", "_", name) or "output"


def output_names(model: Any, example: Any) -> list[str]:
    """The names of ``model``'s outputs on ``example`` (a tensor), in ONNX order."""
    import torch

    with torch.no_grad():
        structure = model(example)
    return names(flatten(structure), structure)


@dataclass(frozen=True)
class OutputInfo:
    """One output: its name, per-image shape, kind, and (for distillation) the teacher's variance."""

    name: str
    shape: tuple[int, ...]
    kind: str
    variance: float = 1.0

    @property
    def classes(self) -> int | None:
        return self.shape[0] if self.kind in ("logits", "probs") and self.shape else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}


def describe(arrays: Sequence[np.ndarray], output_names: Sequence[str], *, label_output: int | None = None,
             kinds: dict[str, str] | None = None) -> list[OutputInfo]:
    """Kinds of outputs from the dense model's outputs on real inputs (``arrays``: one N x ... each).

    Chosen in this order: ``kinds`` (the user's), the labelled output (logits), a model's only
    output when it is N x K (a classifier), rows that are probabilities (probs), else regression.
    """
    kinds = dict(kinds or {})
    unknown = set(kinds) - set(output_names)
    if unknown:
        raise EdgepruneError(f"--output-kind names {', '.join(sorted(unknown))}, but the model's outputs are "
                             f"{', '.join(output_names)}")
    infos = []
    for index, (name, values) in enumerate(zip(output_names, arrays)):
        kind = kinds.get(name) or _guess_kind(values, index == label_output, len(arrays) == 1)
        if kind not in KINDS:
            raise EdgepruneError(f"unknown output kind '{kind}' for {name} (choose from {', '.join(KINDS)})")
        if kind != "regression" and values.ndim < 2:
            raise EdgepruneError(f"output {name} of shape {_shape(values)} cannot be class scores (N x K needed)")
        variance = float(np.var(values, dtype=np.float64)) if values.size else 1.0
        infos.append(OutputInfo(name, tuple(values.shape[1:]), kind, max(variance, 1e-12)))
    return infos


def _guess_kind(values: np.ndarray, labelled: bool, only: bool) -> str:
    if labelled or (only and values.ndim == 2 and values.shape[1] > 1):
        return "logits"
    if _looks_like_detections(values):
        return "detections"
    if values.ndim >= 2 and values.shape[1] > 1 and values.min() >= 0:
        if np.allclose(values.sum(axis=1), 1.0, atol=1e-3):
            return "probs"
    return "regression"


def _looks_like_detections(values: np.ndarray) -> bool:
    """N x (4 + K) x A with more anchors than rows, scores in [0, 1] and boxes that are not."""
    if values.ndim != 3 or values.shape[1] < 5 or values.shape[2] <= values.shape[1]:
        return False
    scores, boxes = values[:, 4:], values[:, :4]
    return bool(scores.min() >= 0 and scores.max() <= 1 and np.abs(boxes).max() > 1)


def _shape(values: np.ndarray) -> str:
    return "x".join(["N", *map(str, values.shape[1:])])


def pick_label_output(arrays: Sequence[np.ndarray], output_names: Sequence[str], choice: str | None,
                      labels: np.ndarray, spec: str) -> int:
    """Which output the labels belong to; checks it is class scores covering every label."""
    if choice is not None:
        index = _find(output_names, choice)
    elif len(output_names) == 1:
        index = 0
    else:
        listed = ", ".join(f"{n} ({_shape(a)})" for n, a in zip(output_names, arrays))
        raise EdgepruneError(f"{spec} has labels, but the model has {len(output_names)} outputs ({listed}): "
                             "name the class-score output with --label-output")
    values = arrays[index]
    if values.ndim != 2 or values.shape[1] < 2:
        raise EdgepruneError(f"{spec} has labels (one class per image), but output {output_names[index]} is "
                             f"{_shape(values)}, not class scores N x K; labels need such an output "
                             "(--label-output), or drop the labels from the data")
    top = int(labels.max()) if labels.size else -1
    if top >= values.shape[1]:
        raise EdgepruneError(f"{spec} has label {top}, but output {output_names[index]} has only "
                             f"{values.shape[1]} classes (labels must be 0..{values.shape[1] - 1})")
    return index


def _find(output_names: Sequence[str], choice: str) -> int:
    if choice in output_names:
        return list(output_names).index(choice)
    if choice.isdigit() and int(choice) < len(output_names):
        return int(choice)
    raise EdgepruneError(f"--label-output {choice}: the model's outputs are {', '.join(output_names)}")


def pick_box_output(infos: Sequence[OutputInfo], spec: str) -> int:
    """The detections output (the first N x (4 + K) x A) that ``spec``'s boxes belong to."""
    found = [i for i, info in enumerate(infos) if info.kind == "detections"]
    if not found:
        listed = ", ".join(f"{o.name} ({o.kind}, {'x'.join(['N', *map(str, o.shape)])})" for o in infos)
        raise EdgepruneError(f"{spec} has boxes (detection labels), but no output of the model is a detector's "
                             f"N x (4 + K) x A (outputs: {listed}); name it with --output-kind NAME=detections")
    return found[0]
