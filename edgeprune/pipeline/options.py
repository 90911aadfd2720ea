"""The choices of a ``compress`` run, as one plain dataclass (recorded in the report), and the
two promises they may ask for: a quality floor and a speed target.

>>> Floor(min_cosine=0.99).holds({"cosine_min": 0.995}, None)
True
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from edgeprune.calibration.data import PreprocessChoice
from edgeprune.errors import EdgepruneError
from edgeprune.metrics import FLOOR_METRICS
from edgeprune.profile.estimate import SpeedupEstimate
from edgeprune.train.objectives import DistillConfig


@dataclass
class CompressOptions:
    """Choices of a compress run; ``None`` means "the target's setting" where a target has one."""

    target: str = "arm"
    criterion: str = "l2"
    flops_cut: float | None = 0.5
    ratio: float | None = None
    round_to: int | None = None
    calib: str | None = None
    finetune_epochs: int | None = None  # None: 3 epochs when data is at hand (distillation needs no labels),
    # 10 in each trial of a quality floor
    steps: int | None = None  # prune in T rounds with fine-tuning between (None: the criterion's default)
    recalibrate_bn: bool = True  # re-estimate BatchNorm statistics on calibration images after the cut
    # refit the layers after the cut to the dense model's outputs (no labels needed); None: yes, but not for a detector
    reconstruct: bool | None = None
    lr: float | None = None  # None: 0.01, or 0.003 in each trial of a quality floor
    batch_size: int = 128
    int8: bool | None = None
    ort: bool = False
    runs: int = 50
    min_time: float = 2.0
    max_bench_seconds: float = 20.0  # side-by-side rounds until speedups are known within +-3 %, at most this long
    weights: str | None = None
    seed: int = 0
    latency_budget: float | None = None  # ms on the target: pruning then meets this instead of flops_cut / ratio
    speedup: float | None = None  # or: this speedup over the dense model
    lut: str | None = None  # a latency table measured elsewhere (default: this machine's cached one)
    input_shape: tuple[int, ...] | None = None  # None: the target's, else the model's (or its checkpoint's)
    preprocess: PreprocessChoice = field(default_factory=PreprocessChoice)
    distill: DistillConfig | None = field(default_factory=DistillConfig)  # None: cross-entropy on labels only
    label_output: str | None = None  # the output labels belong to (several outputs)
    output_kinds: dict[str, str] = field(default_factory=dict)  # logits / probs / regression, by output name
    bake_preprocess: bool = False  # also write pruned.pixels.onnx, which takes raw 0-255 pixels
    runtimes: tuple[str, ...] = ()  # also ship, check and measure dense and pruned in these (edgeprune.runtimes)
    conf: float = 0.001  # a detector's mAP: the score an anchor needs before NMS (ultralytics' val default)
    iou: float = 0.7  # a detector's mAP: NMS's IoU threshold (ultralytics' val default)
    eval_images: int = 500  # held-out images for the quality figures
    allocate: str = "uniform"  # or "sensitivity": each group's cut from its measured sensitivity
    sensitivity: str | None = None  # curves from `edgeprune sensitivity -o FILE` (default: measured in the run)
    min_cosine: float | None = None  # quality floor: the worst output's cosine to dense on held-out images
    max_drop: float | None = None  # quality floor: top-1 points lost against dense (labelled data; a detector
    # with boxes: mAP50-95 points)
    curve: bool = False  # measure the speed / fidelity trade-off at several cuts (always with a floor)
    search_trials: int = 5  # trials a floor's search may spend on bisecting MACs cuts
    device: str = "auto"  # where recovery computes: auto (CUDA when present), cpu, cuda, cuda:N

    @classmethod
    def of(cls, **options: Any) -> CompressOptions:
        """The options given by field name (as ``edgeprune.compress(MODEL, OUT, target=...)`` takes
        them); a name that is no field is one clear error. ``runtimes`` may be one name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise EdgepruneError(f"unknown compress option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        if isinstance(options.get("runtimes"), str):
            options["runtimes"] = (options["runtimes"],)
        return cls(**options)

    def plan_runtime(self, target) -> str:
        """The runtime a latency budget plans for and the alignment follows: the first ``--runtime``
        named, else the target's own."""
        named = [name for name in self.runtimes if name != "all"]
        return named[0] if named else target.runtime

    def other_runtimes(self, target) -> tuple[str, ...]:
        """The runtimes besides onnxruntime to ship and measure: those named, and the target's own."""
        return tuple(dict.fromkeys((*self.runtimes, target.runtime)))

    @property
    def floor_given(self) -> bool:
        return self.min_cosine is not None or self.max_drop is not None

    @property
    def latency_driven(self) -> bool:
        return self.latency_budget is not None or self.speedup is not None


@dataclass(frozen=True)
class Floor:
    """``min_cosine``: the worst output's mean cosine to the dense model on held-out images;
    ``max_drop``: points of ``metric`` lost against the dense model (labelled data only): ``top1``,
    or a detector's ``map50_95`` when the data has boxes."""

    min_cosine: float | None = None
    max_drop: float | None = None
    metric: str = "top1"

    def __post_init__(self) -> None:
        if self.min_cosine is not None and not -1 < self.min_cosine <= 1:
            raise EdgepruneError(f"--min-cosine must be in (-1, 1], got {self.min_cosine}")
        if self.max_drop is not None and not 0 <= self.max_drop < 100:
            raise EdgepruneError(f"--max-drop is in {FLOOR_METRICS[self.metric]} points, in [0, 100), got {self.max_drop}")

    @property
    def given(self) -> bool:
        return self.min_cosine is not None or self.max_drop is not None

    def holds(self, figures: dict[str, Any], dense_score: float | None) -> bool:
        """Whether ``figures`` (cosine_min, and the floor's ``metric``) meet the floor; ``dense_score``:
        the dense model's ``metric``."""
        if self.min_cosine is not None and figures["cosine_min"] < self.min_cosine:
            return False
        if self.max_drop is not None and 100 * (dense_score - figures[self.metric]) > self.max_drop:
            return False
        return True

    def check(self, job: Any) -> None:
        """A floor is measured on held-out images; a top-1 (mAP) floor needs their labels (boxes)."""
        if self.given and (job.data.evaluation is None or not job.outputs):
            raise EdgepruneError("a quality floor is measured on held-out images: give --calib SOURCE")
        labelled = {"map50_95": job.box_output is not None, "miou": job.mask_output is not None}.get(
            self.metric, job.data.evaluation.y is not None and job.label_output is not None)
        if self.max_drop is not None and not labelled:
            raise EdgepruneError(f"--max-drop is in top-1 points and needs labelled data; {job.data.spec} has none "
                                 "(use --min-cosine)")

    def describe(self) -> str:
        parts = ([f"worst output cosine >= {self.min_cosine:g}"] if self.min_cosine is not None else []) + (
            [f"{FLOOR_METRICS[self.metric]} within {self.max_drop:g} points of dense"] if self.max_drop is not None else [])
        return " and ".join(parts)




def floor_of(job: Any) -> Floor:
    """The options' floor; ``--max-drop`` in mAP50-95 points for a detector with boxes, mIoU points
    for a segmenter with masks."""
    metric = "map50_95" if job.box_output is not None else "miou" if job.mask_output is not None else "top1"
    return Floor(job.options.min_cosine, job.options.max_drop, metric)


@dataclass(frozen=True)
class SpeedTarget:
    """``--speedup`` (times the dense model's speed) or ``--latency-budget`` (ms) in the runtime planned for."""

    speedup: float | None = None
    latency_budget: float | None = None

    @classmethod
    def of(cls, options: Any) -> SpeedTarget | None:
        return cls(options.speedup, options.latency_budget) if options.latency_driven else None

    def met(self, dense_ms: float, pruned_ms: float) -> bool:
        if self.speedup is not None:
            return dense_ms / pruned_ms >= self.speedup
        return pruned_ms <= self.latency_budget

    def describe(self) -> str:
        return f"{self.speedup:g}x the dense model's speed" if self.speedup is not None else \
            f"at most {self.latency_budget:g} ms"

    def verdict(self, rounds: list[list[float]]) -> str:
        """met, missed or undecided: this target against the 95 % interval of side-by-side rounds
        ([dense ms, pruned ms] each); a latency budget through each round's budget / pruned ms.

        >>> SpeedTarget(speedup=1.5).verdict([[10.0, 7.2], [10.0, 7.1], [10.4, 7.3]])
        'missed'
        >>> SpeedTarget(latency_budget=8.0).verdict([[10.0, 7.2], [10.0, 7.1], [10.4, 7.3]])
        'met'
        """
        if self.speedup is not None:
            return SpeedupEstimate.of([d / p for d, p in rounds]).verdict(self.speedup)
        return SpeedupEstimate.of([self.latency_budget / p for _, p in rounds]).verdict(1.0)
