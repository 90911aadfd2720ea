"""The choices of a ``compress`` run, as one plain dataclass (recorded in the report)."""
from __future__ import annotations

from dataclasses import dataclass, field

from edgeprune.calibration.data import PreprocessChoice
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
    reconstruct: bool = True  # refit the layers after the cut to the dense model's outputs (no labels needed)
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
    eval_images: int = 500  # held-out images for the quality figures
    allocate: str = "uniform"  # or "sensitivity": each group's cut from its measured sensitivity
    sensitivity: str | None = None  # curves from `edgeprune sensitivity -o FILE` (default: measured in the run)
    min_cosine: float | None = None  # quality floor: the worst output's cosine to dense on held-out images
    max_drop: float | None = None  # quality floor: top-1 points lost against dense (labelled data)
    curve: bool = False  # measure the speed / fidelity trade-off at several cuts (always with a floor)
    search_trials: int = 5  # trials a floor's search may spend on bisecting MACs cuts
    device: str = "auto"  # where recovery computes: auto (CUDA when present), cpu, cuda, cuda:N

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
