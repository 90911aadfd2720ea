"""The training loss of an anchor-free detector with a distribution head (YOLOv8-style).

The head's training-mode output is one raw map per level, ``[B, 4 * reg_max + nc, H, W]``: per
cell, four distributions over ``reg_max`` bins (distances from the cell's centre to the box's
left, top, right and bottom edges, in strides) and ``nc`` class logits. The level's stride is
the input's size over the map's. Written from the papers, no detector library's code:

- **assignment**, task-aligned (TOOD, Feng et al., ICCV 2021): for each true box, among the
  cells whose centre lies inside it, the ``topk`` with the largest alignment
  ``t = s**alpha * u**beta`` (``s`` the predicted score of the box's class, ``u`` the IoU of the
  predicted box with the true one) are positives; a cell claimed by several boxes keeps the one
  it overlaps most. A positive's class target is ``t`` rescaled so that each box's best
  positive gets that positive's IoU;
- **classes**: binary cross-entropy against those targets (0 elsewhere), over every cell;
- **boxes**: 1 - CIoU (Zheng et al., AAAI 2020) of each positive's decoded box;
- **distributions**: distribution focal loss (Li et al., "Generalized Focal Loss", NeurIPS
  2020): cross-entropy of each edge's distribution with the two bins around the true distance,
  weighted by closeness.

Box and distribution terms are weighted by each positive's class target; all three are divided
by the sum of the class targets. Targets are a ``[B, M, 5]`` tensor, rows ``class x1 y1 x2 y2``
in input pixels, padded with rows of class -1 (:func:`pad_targets`).

>>> loss = DetectionLoss()
>>> maps = [torch.zeros(1, 4 * 16 + 3, 8, 8), torch.zeros(1, 4 * 16 + 3, 4, 4)]
>>> total, parts = loss(maps, pad_targets([torch.tensor([[8.0, 8.0, 40.0, 40.0]])], [torch.tensor([2])]), (64, 64))
>>> sorted(parts), bool(total > 0)
(['box', 'cls', 'dfl'], True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from edgeprune.errors import EdgepruneError

EPS = 1e-9


@dataclass(frozen=True)
class DetectionLossConfig:
    """Term weights (the YOLOv8 defaults), the assignment's ``topk``, ``alpha``, ``beta``, and the bins per edge."""

    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5
    topk: int = 10
    alpha: float = 0.5
    beta: float = 6.0
    reg_max: int = 16


@dataclass(frozen=True)
class Assignment:
    """Per cell: ``positive`` [B, A] bool, the true ``box`` [B, A, 4] and ``label`` [B, A] of its
    object (meaningful where positive), and its class ``target`` [B, A] (0 where not positive)."""

    positive: torch.Tensor
    box: torch.Tensor
    label: torch.Tensor
    target: torch.Tensor


def pad_targets(boxes: Sequence[torch.Tensor], classes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image boxes (K x 4, x1 y1 x2 y2 pixels) and classes (K) -> ``[B, M, 5]``, padded with class -1.

    >>> pad_targets([torch.ones(1, 4), torch.zeros(0, 4)], [torch.tensor([3]), torch.zeros(0)])[:, :, 0]
    tensor([[ 3.],
            [-1.]])
    """
    most = max([len(b) for b in boxes] + [1])
    out = torch.full((len(boxes), most, 5), -1.0)
    for i, (b, c) in enumerate(zip(boxes, classes)):
        out[i, :len(b), 0] = torch.as_tensor(c, dtype=torch.float32)
        out[i, :len(b), 1:] = torch.as_tensor(b, dtype=torch.float32)
    return out


def cell_centres(maps: Sequence[torch.Tensor], image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every cell's centre (A x 2, x y in input pixels) and stride (A), levels in order."""
    centres, strides = [], []
    for m in maps:
        h, w = m.shape[-2:]
        stride = image_size[0] / h
        if abs(image_size[1] / w - stride) > 1e-6:
            raise EdgepruneError(f"a {h}x{w} map of a {image_size[0]}x{image_size[1]} input has unequal strides")
        ys, xs = torch.meshgrid(torch.arange(h, device=m.device), torch.arange(w, device=m.device), indexing="ij")
        centres.append((torch.stack((xs, ys), -1).reshape(-1, 2).float() + 0.5) * stride)
        strides.append(torch.full((h * w,), stride, device=m.device))
    return torch.cat(centres), torch.cat(strides)


def flatten_maps(maps: Sequence[torch.Tensor], reg_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw maps -> edge logits [B, A, 4, reg_max] and class logits [B, A, nc] (float32)."""
    b, channels = maps[0].shape[:2]
    if channels <= 4 * reg_max:
        raise EdgepruneError(f"a detection map needs more than 4 x {reg_max} channels (box bins, then classes); "
                             f"it has {channels}")
    flat = torch.cat([m.float().reshape(b, channels, -1) for m in maps], 2).transpose(1, 2)
    return flat[..., :4 * reg_max].reshape(b, -1, 4, reg_max), flat[..., 4 * reg_max:]


def decode(edges: torch.Tensor, centres: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Edge logits [B, A, 4, R] -> boxes x1 y1 x2 y2 in pixels (the distributions' expectations)."""
    bins = torch.arange(edges.shape[-1], device=edges.device, dtype=edges.dtype)
    ltrb = (edges.softmax(-1) * bins).sum(-1) * strides[:, None]
    return torch.cat((centres - ltrb[..., :2], centres + ltrb[..., 2:]), -1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of boxes x1 y1 x2 y2 (broadcasting)."""
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[..., 2] - x[..., 0]).clamp(min=0) * (x[..., 3] - x[..., 1]).clamp(min=0)  # noqa: E731
    return inter / (area(a) + area(b) - inter + EPS)


def complete_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """CIoU: IoU minus the centres' squared distance over the enclosing box's squared diagonal,
    minus a term for unequal aspect ratios (its weight taken as a constant, as the paper says).

    >>> box = torch.tensor([0.0, 0.0, 2.0, 4.0])
    >>> float(complete_iou(box, box)), float(complete_iou(box, box + 1)) < float(box_iou(box, box + 1))
    (1.0, True)
    """
    iou = box_iou(a, b)
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    enclosing = torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])
    diagonal = (enclosing ** 2).sum(-1) + EPS
    centres = (((a[..., :2] + a[..., 2:]) - (b[..., :2] + b[..., 2:])) ** 2).sum(-1) / 4
    v = (4 / math.pi ** 2) * (torch.atan(wb / (hb + EPS)) - torch.atan(wa / (ha + EPS))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + EPS)
    return iou - centres / diagonal - alpha * v


def assign(scores: torch.Tensor, boxes: torch.Tensor, centres: torch.Tensor, targets: torch.Tensor,
           config: DetectionLossConfig) -> Assignment:
    """Task-aligned assignment. ``scores`` [B, A, nc] (probabilities) and ``boxes`` [B, A, 4]
    are the predictions (not differentiated through); ``targets`` [B, M, 5] as :func:`pad_targets`."""
    b, a, nc = scores.shape
    valid = targets[..., 0] >= 0                                                   # B M
    labels = targets[..., 0].long().clamp(0, nc - 1)
    gt = targets[..., 1:]                                                          # B M 4
    if valid.any() and int(targets[..., 0].max()) >= nc:
        raise EdgepruneError(f"label {int(targets[..., 0].max())} in the data, but the detector has {nc} classes")
    xy = centres[None, None]                                                       # 1 1 A 2
    inside = ((xy - gt[..., None, :2]).amin(-1) > EPS) & ((gt[..., None, 2:] - xy).amin(-1) > EPS)
    candidate = inside & valid[..., None]                                          # B M A
    iou = box_iou(gt[:, :, None], boxes[:, None]) * candidate                      # B M A
    score = scores.gather(2, labels[:, None, :].expand(b, a, -1)).transpose(1, 2)  # B M A
    align = score.pow(config.alpha) * iou.pow(config.beta) * candidate
    top = align.topk(min(config.topk, a), dim=-1).indices
    chosen = torch.zeros_like(candidate).scatter_(-1, top, True) & candidate
    # a cell chosen by several boxes keeps the one it overlaps most
    several = chosen.sum(1, keepdim=True) > 1
    best = F.one_hot((iou * chosen).argmax(1), chosen.shape[1]).transpose(1, 2).bool()  # B M A
    chosen = torch.where(several, best & chosen, chosen)
    positive = chosen.any(1)                                                       # B A
    owner = chosen.float().argmax(1)                                               # B A
    align = align * chosen
    scale = (iou * chosen).amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + EPS)
    target = (align * scale).amax(1)                                               # B A
    box = gt.gather(1, owner[..., None].expand(-1, -1, 4))
    return Assignment(positive, box, labels.gather(1, owner), target)


def distribution_focal_loss(edges: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Edge logits [N, 4, R] against true distances [N, 4] (in bins): per box, the mean over edges."""
    reg_max = edges.shape[-1]
    distances = distances.clamp(0, reg_max - 1 - 0.01)
    left = distances.long()
    right_weight = distances - left
    logp = edges.log_softmax(-1)
    nll_left = -logp.gather(-1, left[..., None]).squeeze(-1)
    nll_right = -logp.gather(-1, (left + 1)[..., None]).squeeze(-1)
    return (nll_left * (1 - right_weight) + nll_right * right_weight).mean(-1)


class DetectionLoss:
    """``loss(maps, targets, image_size) -> (total, {"box", "cls", "dfl"})``; see the module's text."""

    def __init__(self, config: DetectionLossConfig | None = None) -> None:
        self.config = config or DetectionLossConfig()

    def __call__(self, maps: Sequence[torch.Tensor], targets: torch.Tensor,
                 image_size: tuple[int, int]) -> tuple[torch.Tensor, dict[str, float]]:
        config = self.config
        edges, logits = flatten_maps(maps, config.reg_max)
        centres, strides = cell_centres(maps, image_size)
        boxes = decode(edges, centres, strides)
        with torch.no_grad():
            found = assign(logits.sigmoid(), boxes, centres, targets.to(logits.device).float(), config)
        classes = F.one_hot(found.label, logits.shape[-1]) * found.target[..., None]
        norm = found.target.sum().clamp(min=1)
        cls = F.binary_cross_entropy_with_logits(logits, classes, reduction="sum") / norm
        weight = found.target[found.positive]
        if found.positive.any():
            box = ((1 - complete_iou(boxes[found.positive], found.box[found.positive])) * weight).sum() / norm
            cell = centres.expand(len(edges), -1, -1)[found.positive]
            stride = strides.expand(len(edges), -1)[found.positive][:, None]
            true = found.box[found.positive]
            distances = torch.cat((cell - true[:, :2], true[:, 2:] - cell), -1) / stride
            dfl = (distribution_focal_loss(edges[found.positive], distances) * weight).sum() / norm
        else:
            box = dfl = logits.sum() * 0
        total = config.box * box + config.cls * cls + config.dfl * dfl
        return total, {"box": box.item(), "cls": cls.item(), "dfl": dfl.item()}


__all__ = ["Assignment", "DetectionLoss", "DetectionLossConfig", "assign", "box_iou", "cell_centres", "complete_iou",
           "decode", "distribution_focal_loss", "flatten_maps", "pad_targets"]
