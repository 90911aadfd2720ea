"""Per-layer sensitivity: how far the outputs move when one coupled group alone is cut.

Each prunable group is cut, alone, to several ratios in the criterion's order (lowest scores
first, aligned to ``round_to``), BatchNorm is re-estimated on calibration images, and the cut
model's outputs are compared with the dense model's on held-out images (the report's figures:
cosine, relative L2 error, and top-1 where labels exist), output by output. The criterion scores
the model once.

The curves feed :class:`edgeprune.allocation.SensitivityPlanner` and the latency planner, which
spend a cut where it hurts least; ``loss`` is one minus the *worst* output's cosine, so that no
plan silently destroys one output of several (a face net's box regression can fall to a cosine
of 0.25 while the mean over its three outputs says 0.74).

>>> import torch
>>> from edgeprune.models import build
>>> built = build("resnet20-cifar")
>>> x = torch.randn(8, 3, 32, 32).numpy()
>>> found = analyse(built.model, built.input_shape, "l2", x, x[:4], ratios=(0.5,))
>>> point = found.curves[0].points[-1]
>>> 0 <= point["loss"] <= 2 and point["cosine"] == min(point["outputs"].values())
True
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from edgeprune.criteria import create_criterion, score_groups
from edgeprune.errors import EdgepruneError
from edgeprune.outputs import describe, output_names
from edgeprune.paths import replaced_on_success, write_atomic
from edgeprune.plan import aligned_removal, pick_units
from edgeprune.quality import accuracy, compare, torch_outputs
from edgeprune.surgery import apply_keep_mask
from edgeprune.surgery.check import checked_graph
from edgeprune.train import recalibrate_batchnorm

DEFAULT_RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9)
FORMAT = "edgeprune-sensitivity/2"  # /1 held the mean over outputs only
CutProgress = Callable[[int, int, str], None]  # progress(cuts done, cuts in all, group)


@dataclass
class Curve:
    """One group's figures at each number of units removed (``points`` sorted by ``removed``)."""

    group: str
    units: int
    points: list[dict[str, Any]]
    key: str = ""  # a module of the group: names it across rebuilt graphs

    def loss(self, removed: float) -> float:
        """Predicted loss with ``removed`` units gone: linear between the measured points, 0 at 0."""
        xs = [0.0] + [p["removed"] for p in self.points]
        ys = [0.0] + [p["loss"] for p in self.points]
        if removed >= xs[-1]:  # beyond the last point: grow at the last segment's slope, never down
            slope = max((ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1e-9), 0.0)
            return ys[-1] + slope * (removed - xs[-1])
        return float(np.interp(removed, xs, ys))


@dataclass
class Sensitivity:
    """Every group's curve, and how they were measured."""

    criterion: str
    ratios: list[float]
    curves: list[Curve]
    images: dict[str, int]
    round_to: int = 1
    seconds: float = 0.0
    dense: dict[str, Any] = field(default_factory=dict)

    def curve_for(self, key: str) -> Curve | None:
        return next((c for c in self.curves if c.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sensitivity:
        if data.get("format") == "edgeprune-sensitivity/1":
            raise EdgepruneError("this sensitivity file has the mean over the outputs only (an older edgeprune); "
                                 "measure it again with `edgeprune sensitivity ... -o F`")
        if data.get("format") != FORMAT:
            raise EdgepruneError("not an edgeprune sensitivity file (write one with `edgeprune sensitivity ... -o F`)")
        fields = {k: v for k, v in data.items() if k != "format"}
        fields["curves"] = [Curve(**c) for c in data["curves"]]
        return cls(**fields)

    def save(self, path: str | Path) -> Path:
        return write_atomic(path, json.dumps(self.to_dict(), indent=1, default=float))

    @classmethod
    def load(cls, path: str | Path) -> Sensitivity:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except OSError as exc:
            raise EdgepruneError(f"cannot read {path}: {exc.strerror or exc}") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise EdgepruneError(f"{path} is not a readable sensitivity file: {exc}") from None


def group_key(group: Any) -> str:
    """A module of ``group``: the same group in another trace of the same model has it too."""
    return next((s.module for s in group.spaces if s.module), group.name)


def analyse(model: nn.Module, input_shape: tuple[int, ...], criterion: Any, calib: np.ndarray,
            held_out: np.ndarray, *, outputs: Sequence[Any] | None = None, labels: np.ndarray | None = None,
            label_output: int | None = None, ratios: Sequence[float] = DEFAULT_RATIOS, round_to: int = 1,
            criterion_data: Any = None, progress: CutProgress | None = None, device: str = "cpu") -> Sensitivity:
    """Cut each prunable group of ``model`` alone to each ratio; measure the outputs against dense.

    ``calib`` (N x C x H x W) re-estimates BatchNorm after each cut and, unless
    ``criterion_data`` is given, feeds a data-driven criterion; ``held_out`` images are compared;
    ``outputs`` are the outputs' kinds (:func:`edgeprune.outputs.describe`; guessed if None).
    Each cut copy is measured on ``device``.
    """
    if not ratios or any(not 0 < r < 1 for r in ratios):
        raise EdgepruneError(f"sensitivity ratios must be in (0, 1), got {list(ratios)}")
    start = time.perf_counter()
    criterion = create_criterion(criterion) if isinstance(criterion, str) else criterion
    graph = checked_graph(model, input_shape)
    scores = score_groups(graph, criterion, calib if criterion_data is None else criterion_data)
    dense = torch_outputs(model, held_out)
    if outputs is None:
        outputs = describe(dense, output_names(model, torch.zeros(input_shape)), label_output=label_output)
    groups = [g for g in graph.prunable_groups() if g.index in scores]
    plan = {g.index: sorted({aligned_removal(g, r * g.n_units, round_to) for r in ratios} - {0}) for g in groups}
    total, done = sum(len(v) for v in plan.values()), 0
    curves = []
    for group in groups:
        points = []
        for removed in plan[group.index]:
            units = pick_units(group, scores[group.index], removed, round_to)
            cut = _cut_copy(model, graph, graph.keep_mask({group.index: units}), calib, device)
            found = torch_outputs(cut, held_out)
            point = {"removed": int(len(units)), "ratio": len(units) / group.n_units,
                     **point_figures(compare(dense, found, outputs))}
            if labels is not None and label_output is not None:
                point["top1"] = accuracy(found, label_output, labels)
            points.append(point)
            done += 1
            if progress is not None:
                progress(done, total, group.name)
        curves.append(Curve(group.name, group.n_units, points, group_key(group)))
    dense_figures = {}
    if labels is not None and label_output is not None:
        dense_figures["top1"] = accuracy(dense, label_output, labels)
    return Sensitivity(criterion.name, [float(r) for r in ratios], curves,
                       {"calibration": len(calib), "held_out": len(held_out)}, round_to,
                       round(time.perf_counter() - start, 2), dense_figures)


def point_figures(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A cut's figures from :func:`edgeprune.quality.compare`'s rows: the worst output's cosine and
    relative error, the mean cosine, every output's cosine, and ``loss`` = 1 - the worst cosine."""
    cosines = {r["output"]: float(r["cosine"]) for r in rows}
    worst = min(cosines.values())
    return {"cosine": worst, "cosine_mean": float(np.mean(list(cosines.values()))),
            "rel_l2": float(max(r["rel_l2"] for r in rows)), "outputs": cosines, "loss": 1.0 - worst}


def _cut_copy(model: nn.Module, graph: Any, keep: np.ndarray, calib: np.ndarray, device: str = "cpu") -> nn.Module:
    cut = copy.deepcopy(model)
    apply_keep_mask(cut, graph, keep)
    cut.to(device)
    recalibrate_batchnorm(cut, calib)
    return cut.eval()


def table(found: Sensitivity) -> str:
    """One row per group: the worst output's cosine at each ratio (``-`` where alignment allows no such cut)."""
    ratios = found.ratios
    width = max([len(c.group) for c in found.curves] + [5])
    lines = [f"{'group':<{width}}  {'units':>5}  " + "  ".join(f"{r:>7.0%}" for r in ratios)]
    for curve in found.curves:
        by_ratio = []
        for r in ratios:
            point = min(curve.points, key=lambda p: abs(p["ratio"] - r)) if curve.points else None
            close = point is not None and abs(point["ratio"] - r) <= 0.1
            by_ratio.append(f"{point['cosine']:>7.4f}" if close else f"{'-':>7}")
        lines.append(f"{curve.group:<{width}}  {curve.units:>5}  " + "  ".join(by_ratio))
    return "\n".join(lines)


def plot(found: Sensitivity, path: str | Path) -> None:
    """One curve per group: the worst output's cosine against the fraction of the group removed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for curve in found.curves:
        xs = [0.0] + [p["ratio"] for p in curve.points]
        ys = [1.0] + [p["cosine"] for p in curve.points]
        ax.plot(xs, ys, marker=".", linewidth=1, label=curve.group if len(found.curves) <= 20 else None)
    ax.set(xlabel="fraction of the group's channels removed (this group alone)",
           ylabel="cosine to the dense model (worst output)",
           title=f"sensitivity by {found.criterion} ({found.images['held_out']} held-out images)")
    ax.grid(alpha=0.3)
    if len(found.curves) <= 20:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    with replaced_on_success(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
