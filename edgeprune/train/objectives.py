"""What fine-tuning minimises: cross-entropy on labels, distillation from the dense model, or both.

An objective is called on a batch, ``objective(net, x, y) -> (loss, parts)``; ``parts`` holds
the loss's named terms (floats) for progress lines. :class:`Distillation` matches every output
of the student to the teacher's, each by the loss its kind calls for
(:mod:`edgeprune.outputs`):

- ``logits``: KL divergence between the softened class distributions (temperature T, scaled by
  T squared as in Hinton et al.), over axis 1;
- ``probs``: KL divergence between the given probabilities;
- ``regression``: mean squared error divided by the teacher output's variance on the
  calibration data, so outputs of every scale weigh alike;
- a detector's raw head maps (the 4-D outputs of its training forward that add up to the anchors
  of a ``detections`` output beside them; ``[B, 4 * reg_max + K, H, W]``,
  :mod:`edgeprune.train.detection`), together, by :func:`detector_distillation`: mean squared
  error there is swamped by the background (class logits near -15 in every cell, box bins of
  cells with nothing in them) and leaves the few cells with an object unmatched, every score
  under any threshold.

With labels (and a class-score output to put them on) cross-entropy is added.
:class:`DetectionObjective` adds, for a YOLO-style detector with box labels, the detection loss
of :mod:`edgeprune.train.detection` to distillation (or uses it alone).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.outputs import OutputInfo, flatten
from edgeprune.train.detection import DetectionLoss, DetectionLossConfig, flatten_maps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """Weights of the loss terms; ``output_weights`` by output name (1 for any not named)."""

    temperature: float = 4.0
    distill_weight: float = 1.0
    label_weight: float = 1.0
    output_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise EdgepruneError(f"the distillation temperature must be positive, got {self.temperature}")
        weights = [self.distill_weight, self.label_weight, *self.output_weights.values()]
        if any(w < 0 for w in weights) or self.distill_weight + self.label_weight == 0:
            raise EdgepruneError("distillation and label weights must not be negative, nor all zero")


def check_labels(logits: torch.Tensor, y: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise EdgepruneError(f"labels need class scores N x K, but the output is {tuple(logits.shape)}")
    if y.numel() and int(y.max()) >= logits.shape[1]:
        raise EdgepruneError(f"label {int(y.max())} in the data, but the model has only {logits.shape[1]} outputs")


class CrossEntropy:
    """Cross-entropy of the class-score output number ``label_output`` against the labels."""

    needs_labels = True

    def __init__(self, label_output: int = 0) -> None:
        self.label_output = label_output

    def __call__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        logits = flatten(net(x))[self.label_output]
        check_labels(logits, y)
        loss = F.cross_entropy(logits, y)
        return loss, {"ce": loss.item()}


class Distillation:
    """Match the student's outputs to ``teacher``'s (a frozen copy), plus cross-entropy with labels."""

    needs_labels = False

    def __init__(self, teacher: nn.Module, outputs: Sequence[OutputInfo], config: DistillConfig | None = None,
                 label_output: int | None = None) -> None:
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
        self.outputs = list(outputs)
        self.config = config or DistillConfig()
        self.label_output = label_output
        unknown = set(self.config.output_weights) - {o.name for o in self.outputs}
        if unknown:
            raise EdgepruneError(f"distillation weights name {', '.join(sorted(unknown))}, but the outputs are "
                                 f"{', '.join(o.name for o in self.outputs)}")
        self.weights = [self.config.output_weights.get(o.name, 1.0) for o in self.outputs]
        if sum(self.weights) == 0:
            raise EdgepruneError("every output's distillation weight is 0")

    def to(self, device: str | torch.device) -> Distillation:
        self.teacher.to(device)
        return self

    def __call__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        return self.compare(flatten(net(x)), x, y)

    def compare(self, students: list[torch.Tensor], x: torch.Tensor,
                y: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of the student's outputs (already computed on ``x``) against the teacher's on ``x``."""
        with torch.no_grad():
            targets = flatten(self.teacher(x))
        indices = matching_outputs(students, targets)
        maps, reg_max = self._detector_group(students, indices) or ([], 0)
        terms = [(self.weights[i], self._term(self.outputs[i], s, targets[i]))
                 for p, (i, s) in enumerate(zip(indices, students)) if p not in maps]
        if maps:
            terms.append((sum(self.weights[indices[p]] for p in maps),
                          detector_distillation([students[p] for p in maps], [targets[indices[p]] for p in maps], reg_max)))
        weight = sum(w for w, _ in terms)
        if weight == 0:
            raise EdgepruneError("every output the model returns in training mode has distillation weight 0")
        distill = torch.stack([w * term for w, term in terms]).sum() / weight
        loss = self.config.distill_weight * distill
        parts = {"distill": distill.item()}
        by_output = dict(zip(indices, students))
        if y is not None and self.label_output in by_output and self.config.label_weight > 0:
            logits = by_output[self.label_output]
            check_labels(logits, y)
            ce = F.cross_entropy(logits, y)
            loss = loss + self.config.label_weight * ce
            parts["ce"] = ce.item()
        return loss, parts

    def _detector_group(self, students: Sequence[torch.Tensor], indices: Sequence[int]) -> tuple[list[int], int] | None:
        """Which training outputs (positions) are a detector's raw maps, and its bins per box edge:
        the 4-D ones, all ``4 * reg_max + K`` channels, whose cells add up to the anchors of a
        ``detections`` output (K classes) that they are not."""
        for info in self.outputs:
            if info.kind != "detections" or len(info.shape) != 2:
                continue
            classes, anchors = info.shape[0] - 4, info.shape[1]
            maps = [p for p, (i, s) in enumerate(zip(indices, students)) if s.ndim == 4 and self.outputs[i] is not info]
            channels = {students[p].shape[1] for p in maps}
            if (maps and len(channels) == 1 and sum(students[p].shape[2] * students[p].shape[3] for p in maps) == anchors
                    and (channel := channels.pop()) > classes and (channel - classes) % 4 == 0):
                return maps, (channel - classes) // 4
        return None

    def _term(self, info: OutputInfo, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if info.kind == "logits":
            t = self.config.temperature
            kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                          reduction="none", log_target=True)
            return kl.sum(dim=1).mean() * t * t
        if info.kind == "probs":
            kl = F.kl_div(student.clamp_min(1e-8).log(), teacher, reduction="none")
            return kl.sum(dim=1).mean()
        return F.mse_loss(student, teacher) / info.variance


class DetectionObjective:
    """The detection loss on box labels, plus distillation when given (``weight`` scales the former).

    Labels ``y`` are ``[B, M, 5]`` rows ``class x1 y1 x2 y2`` in pixels of the model's input (a
    ``yolo:`` or ``coco:`` image's boxes once it is brought to the input, as
    :func:`edgeprune.calibration.make_loader` batches them), padded with class -1.
    The training-mode outputs that are 4-D maps are the head's raw maps
    (:mod:`edgeprune.train.detection`). ``layout`` (classes K, anchors A of the ``detections``
    output) checks that they are an anchor-free head's, ``4 * reg_max + K`` channels whose cells
    add up to A; maps of another head (anchor-based YOLOv5, say) are recovered by distillation
    alone, with a warning, or refused without distillation.
    """

    needs_labels = True
    label_output = None

    def __init__(self, distillation: Distillation | None = None, weight: float = 1.0,
                 config: DetectionLossConfig | None = None, layout: tuple[int, int] | None = None) -> None:
        if weight <= 0:
            raise EdgepruneError(f"the detection loss weight must be positive, got {weight}")
        self.distillation, self.weight, self.loss = distillation, weight, DetectionLoss(config)
        self.layout, self.warned = layout, False

    def to(self, device: str | torch.device) -> DetectionObjective:
        if self.distillation is not None:
            self.distillation.to(device)
        return self

    def __call__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        if y is None:
            raise EdgepruneError("the detection loss needs box labels (yolo: or coco: data)")
        students = flatten(net(x))
        maps = self._raw_maps(students)
        if not maps and self.distillation is not None:
            return self.distillation.compare(students, x, None)
        if not maps:
            raise EdgepruneError("the detection loss needs an anchor-free head's raw maps (4 x "
                                 f"{self.loss.config.reg_max} box bins + classes), but in training mode the model returns "
                                 + ", ".join("x".join(map(str, s.shape)) for s in students))
        detection, parts = self.loss(maps, y.to(x.device).float(), tuple(x.shape[-2:]))
        loss = self.weight * detection
        if self.distillation is not None:
            distill, distill_parts = self.distillation.compare(students, x, None)
            loss = loss + distill
            parts = {**distill_parts, **parts}
        return loss, parts

    def _raw_maps(self, students: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The head's raw maps among the training outputs, if they have the layout the loss reads."""
        maps = [s for s in students if s.ndim == 4]
        if self.layout is None or not maps:
            return maps
        classes, anchors = self.layout
        fits = (all(m.shape[1] == 4 * self.loss.config.reg_max + classes for m in maps)
                and sum(m.shape[2] * m.shape[3] for m in maps) == anchors)
        if not fits and not self.warned:
            self.warned = True
            log.warning("the head's raw maps (%s) are not 4 x %d box bins + %d classes over %d cells: "
                        "recovering by distillation alone, without the detection loss",
                        ", ".join("x".join(map(str, m.shape[1:])) for m in maps), self.loss.config.reg_max, classes, anchors)
        return maps if fits else []


def detector_distillation(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor], reg_max: int) -> torch.Tensor:
    """Distillation of a detector's raw maps ``[B, 4 * reg_max + K, H, W]`` (one per level) from its teacher's.

    Classes: binary cross-entropy of the student's logits against the teacher's scores (soft
    targets), less the teacher's own entropy (so 0 when they agree), summed over cells and
    divided by the sum of the teacher's scores, as the detection loss divides by its targets':
    background cells that both score near 0 give next to no gradient, the cells with an object
    carry the loss. Boxes: KL divergence between the teacher's and the student's distribution of
    each edge, summed over the four edges, averaged over cells weighted by the teacher's best
    class score (where there is no object the box means nothing).

    >>> teacher = [torch.randn(2, 4 * 16 + 3, 4, 4)]
    >>> float(detector_distillation(teacher, teacher, 16))
    0.0
    """
    student_edges, student_logits = flatten_maps(students, reg_max)
    teacher_edges, teacher_logits = flatten_maps(teachers, reg_max)
    scores = teacher_logits.sigmoid()
    entropy = F.binary_cross_entropy_with_logits(teacher_logits, scores, reduction="sum")
    cross = F.binary_cross_entropy_with_logits(student_logits, scores, reduction="sum")
    classes = (cross - entropy) / scores.sum().clamp_min(1.0)
    kl = F.kl_div(F.log_softmax(student_edges, -1), F.log_softmax(teacher_edges, -1), reduction="none", log_target=True)
    objectness = scores.amax(-1)
    boxes = (kl.sum((-1, -2)) * objectness).sum() / objectness.sum().clamp_min(1e-9)
    return classes + boxes


def matching_outputs(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor]) -> list[int]:
    """For each output the model returns in training mode, the eval-mode output it is.

    The same outputs in both modes, usually. A detector's training forward returns only its raw
    maps (YOLO: three maps; eval mode adds the decoded boxes in front): each is matched to the
    next eval output of its shape, and distillation works on those.

    >>> [matching_outputs([torch.zeros(2, 3), torch.zeros(2, 5)], [torch.zeros(2, 9), torch.zeros(2, 3), torch.zeros(2, 5)])]
    [[1, 2]]
    """
    if len(students) == len(teachers):
        return list(range(len(students)))
    found, start = [], 0
    for student in students:
        index = next((j for j in range(start, len(teachers)) if teachers[j].shape == student.shape), None)
        if index is None:
            shapes = lambda ts: ", ".join("x".join(map(str, t.shape)) for t in ts)  # noqa: E731
            raise EdgepruneError(f"in training mode the model returns {len(students)} outputs ({shapes(students)}), "
                                 f"in eval mode {len(teachers)} ({shapes(teachers)}), and they do not match by shape")
        found.append(index)
        start = index + 1
    return found


__all__ = ["CrossEntropy", "DetectionObjective", "DistillConfig", "Distillation", "check_labels", "detector_distillation",
           "matching_outputs"]
