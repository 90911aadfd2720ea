"""The first stage of ``compress``: every check and every input, before any work is done.

Bad choices, a model that does not load or take the input shape, data that cannot be read or
holds NaN, labels that do not fit the model's outputs, an INT8 target without data: each fails
here, in one line, before anything is pruned, exported or written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgeprune import calibration
from edgeprune.calibration import has_test_split, sample
from edgeprune.calibration.data import check_classes
from edgeprune.checkpoint import check_input_shape, load_model
from edgeprune.criteria import create_criterion
from edgeprune.errors import EdgepruneError
from edgeprune.latency import Budget, complete, conv_shapes, open_table, settings_of
from edgeprune.latency.table import model_key
from edgeprune.models.default import DEFAULT_DATA
from edgeprune.metrics.segmentation import IGNORE
from edgeprune.outputs import describe, output_names, pick_label_output
from edgeprune.outputs import pick_box_output as pick_detections_output
from edgeprune.pipeline.options import CompressOptions, Floor, floor_of
from edgeprune.plan import PlanConfig
from edgeprune.progress import Progress
from edgeprune.quality import torch_outputs
from edgeprune.recipes import check_one_shot
from edgeprune.runtimes import resolve_runtimes
from edgeprune.sensitivity import Sensitivity
from edgeprune.targets import load_target
from edgeprune.train import launched_distributed, resolve_device

OUTPUT_PROBE_IMAGES = 128  # images the dense model runs on to learn its outputs' kinds and scales


@dataclass
class Data:
    """Training images (criteria, BatchNorm, fine-tuning, INT8 calibration) and held-out ones (quality)."""

    spec: str | None
    train: Any = None
    evaluation: Any = None
    eval_split: str | None = None
    reference: Any = None  # (held-out images, the dense ONNX model's outputs on them), once the quality stage made it

    @property
    def quality_images(self) -> int | None:
        """Held-out images the quality figures were measured on."""
        return None if self.reference is None else len(self.reference[0])

    @property
    def labelled(self) -> bool:
        return self.train is not None and self.train.y is not None

    @property
    def boxed(self) -> bool:
        """Detection labels: boxes per image."""
        return self.train is not None and self.train.boxes is not None


@dataclass
class ModelLatencyTable:
    """The latency table a budget is planned with, and the model's convolutions it must cover."""

    table: Any
    shapes: list[Any]
    board_dense_ms: float | None = None  # a board's table: the dense model's time measured there


@dataclass
class Job:
    """Everything a compress run decided before starting."""

    options: CompressOptions
    target: Any
    loaded: Any
    shape: tuple[int, ...]
    preprocess: Any
    round_to: int  # the alignment of the runtime planned for
    data: Data
    epochs: int
    int8: bool
    lr: float = 0.01  # the fine-tune's learning rate (see :func:`finetune_lr`)
    output_names: list[str] = field(default_factory=list)
    outputs: list[Any] | None = None  # OutputInfo per output (None without data)
    label_output: int | None = None
    box_output: int | None = None  # the detections output that the data's boxes (detection labels) belong to
    mask_output: int | None = None  # the N x K x H x W output that the data's masks (segmentation labels) belong to
    latency: ModelLatencyTable | None = None
    device: str = "cpu"  # resolved from options.device
    measured: dict[Any, Any] = field(default_factory=dict)  # what the dense model measured once, shared by
    # the copies a floor's search makes of the job (dataclasses.replace passes the same dict): sensitivity curves

    @property
    def detector(self) -> bool:
        """Whether the model has a ``detections`` output (decoded boxes and class scores)."""
        return any(o.kind == "detections" for o in self.outputs or [])

    @property
    def runtime(self) -> str:
        """The runtime a latency budget plans for (see :meth:`CompressOptions.plan_runtime`)."""
        return self.options.plan_runtime(self.target)


def check_choices(options: CompressOptions) -> Any:
    """Options that are wrong whatever the model: fail before any output or data loading."""
    target = load_target(options.target)
    create_criterion(options.criterion)
    if options.latency_driven:
        Budget(options.latency_budget, options.speedup)
        check_one_shot(options.criterion, options.steps)
    elif not (options.floor_given and options.flops_cut is None and options.ratio is None):
        PlanConfig(options.ratio, options.flops_cut if options.ratio is None else None,
                   round_to=options.round_to or target.round_to).validate()
    if options.floor_given or options.curve:
        Floor(options.min_cosine, options.max_drop)
        if options.search_trials < 1:
            raise EdgepruneError(f"--search-trials must be at least 1, got {options.search_trials}")
    if not 0 <= options.conf < 1:
        raise EdgepruneError(f"--conf is a score threshold in [0, 1), got {options.conf}")
    if not 0 < options.iou <= 1:
        raise EdgepruneError(f"--iou is NMS's overlap threshold in (0, 1], got {options.iou}")
    if options.eval_images < 1:
        raise EdgepruneError(f"--eval-images must be at least 1, got {options.eval_images}")

    resolve_runtimes(options.other_runtimes(target))  # a missing runtime fails now, before any work

    resolve_device(options.device)
    if launched_distributed() and (options.latency_driven or options.floor_given or options.curve):
        raise EdgepruneError("under torchrun, compress recovers a MACs cut (--flops-cut / --ratio) on every rank; "
                             "a latency budget, a quality floor or a curve measures speed: run it as one process")
    if options.allocate not in ("uniform", "sensitivity"):
        raise EdgepruneError(f"unknown allocation '{options.allocate}' (uniform, sensitivity)")
    if options.allocate == "sensitivity":
        if not options.latency_driven and options.flops_cut is None:
            raise EdgepruneError("--allocate sensitivity spreads a MACs cut (--flops-cut) or a latency budget "
                                 "(--latency-budget / --speedup)")
        check_one_shot(options.criterion, options.steps)
    if options.sensitivity is not None:
        Sensitivity.load(options.sensitivity)  # a bad file fails now, not after the data is loaded
    return target


def prepare(model: str | None, options: CompressOptions, target: Any, progress: Progress) -> Job:
    """Load and check the model, its input shape and preprocessing, the data and its labels."""
    loaded = load_model(model, options.weights, options.input_shape)
    shape = tuple(options.input_shape or target.input_shape or loaded.input_shape)
    if shape != tuple(loaded.input_shape):
        check_input_shape(loaded, shape, f"target {target.name}'s input shape")
    latency = open_latency_table(loaded, shape, target, options) if options.latency_driven else None
    spec = options.calib or (DEFAULT_DATA if loaded.metadata.get("default") else None)
    preprocess = options.preprocess.resolve(loaded.preprocess, spec, shape)
    data = load_data(spec, shape, preprocess, options.seed)
    if create_criterion(options.criterion).needs_data and data.train is None:
        raise EdgepruneError(f"criterion '{options.criterion}' needs data: give --calib SOURCE")
    int8 = options.int8 if options.int8 is not None else target.int8
    if int8 and data.train is None:
        raise EdgepruneError(f"INT8 for target {target.name} needs calibration data: give --calib SOURCE or --no-int8")
    round_to = options.round_to or target.round_to_for(options.plan_runtime(target))

    job = Job(options, target, loaded, shape, preprocess, round_to, data,
              finetune_epochs(data, options), int8, finetune_lr(options), latency=latency,
              device=resolve_device(options.device))
    describe_outputs(job)
    job.epochs = finetune_epochs(data, options, detector=job.detector)
    if options.floor_given:
        floor_of(job).check(job)
    guessed = loaded.preprocess is None and preprocess.source.startswith("default")
    if guessed and data.train is not None and data.train.preprocess is not None:
        progress(f"no preprocessing known for {loaded.spec}: its images become pixels / 255 "
                 "(say how with --mean/--std/--pixel-range, or --data-stats)")
    progress(_data_line(job))
    return job


def _data_line(job: Job) -> str:
    data = job.data
    if data.spec is None:
        return "no data: pruning data-free, no recovery, no quality figures"
    outputs = ", ".join(f"{o.name} ({o.kind})" for o in job.outputs)
    kind = "with boxes" if data.boxed else "labelled" if data.labelled else "unlabelled"
    return (f"data {data.spec}: {len(data.train)} training images ({kind}), "
            f"{len(data.evaluation)} held out [{data.eval_split}]; outputs {outputs}")


def open_latency_table(loaded: Any, shape: tuple[int, ...], target: Any, options: CompressOptions) -> ModelLatencyTable:
    """This machine's cached table, or a board's (``--lut``), which must already cover the model."""
    runtime = options.plan_runtime(target)
    table = open_table(target.name, settings_of(target, runtime=runtime), options.lut,
                       board_settings=settings_of(target, host=False, runtime=runtime))
    found = ModelLatencyTable(table, list(conv_shapes(loaded.model, shape).values()))
    if not table.measured_here:
        complete(table, found.shapes)  # raises, saying how to measure them there, if points are missing
        found.board_dense_ms = table.model_ms(model_key(loaded.spec, shape))
        if found.board_dense_ms is None:
            raise EdgepruneError(f"latency table {options.lut} lacks the time of the whole dense {loaded.spec}: "
                                 "measure a spec from `edgeprune lut build --spec-only` on the board")
    return found


def load_data(spec: str | None, shape: tuple[int, ...], preprocess: Any, seed: int) -> Data:
    if spec is None:
        return Data(None)

    _, channels, height, width = shape
    kw = dict(channels=channels, size=(height, width), preprocess=preprocess, seed=seed)
    split = "test" if has_test_split(spec, (height, width), preprocess) else "val"
    return Data(spec, calibration.load_data(spec, split="train", **kw), calibration.load_data(spec, split=split, **kw),
                split)


# A floor's trials recover longer and gentler: a reconstructed cut starts close to the dense model,
# and on face crops 3 epochs at 0.01 left the face net's box output below where the reconstruction
# had put it (thinet, 51 % of MACs: 0.985 after the cut, 0.980 after), 3 at 0.003 reached 0.990,
# 10 at 0.003 0.991 (docs/recovery.md). The plain run keeps 3 at 0.01: the default model's figure
# (98.4 %; 98.2 % at 0.003).
FLOOR_EPOCHS, FLOOR_LR = 10, 0.003
PLAIN_EPOCHS, PLAIN_LR = 3, 0.01
# A detector's boxes come back slowly: the digits detector cut by 50 % of its MACs, recovered on
# 450 images, reached mAP50-95 0.17 / 0.61 / 0.69 after 3 / 10 / 30 epochs (dense 0.86;
# benchmarks/results/detection_recovery_450_cut50.json).
DETECTOR_EPOCHS = 30


def finetune_epochs(data: Data, options: CompressOptions, detector: bool = False) -> int:
    """3 by default whenever there is data (distillation recovers without labels), 30 for a detector;
    10 in a floor's trials."""
    recoverable = data.labelled or data.boxed or (data.train is not None and options.distill is not None)
    plain = DETECTOR_EPOCHS if detector else PLAIN_EPOCHS
    default = (FLOOR_EPOCHS if options.floor_given else plain) if recoverable else 0
    epochs = options.finetune_epochs if options.finetune_epochs is not None else default
    if epochs > 0 and data.train is None:
        raise EdgepruneError("--finetune-epochs needs data: give --calib SOURCE")
    if epochs > 0 and not recoverable:
        raise EdgepruneError(f"{data.spec} has no labels: fine-tuning it needs distillation (drop --no-distill)")
    return epochs


def finetune_lr(options: CompressOptions) -> float:
    """The options' learning rate, else 0.01 (0.003 in a floor's trials)."""
    if options.lr is not None:
        if options.lr <= 0:
            raise EdgepruneError(f"--lr must be positive, got {options.lr}")
        return options.lr
    return FLOOR_LR if options.floor_given else PLAIN_LR


def describe_outputs(job: Job) -> None:
    """Names, kinds and scales of the dense model's outputs on real inputs; labels checked against them."""
    job.output_names = output_names(job.loaded.model, torch.zeros(job.shape))
    data = job.data
    if data.train is None:
        return
    probe = sample(data.train, OUTPUT_PROBE_IMAGES, seed=job.options.seed).x
    arrays = torch_outputs(job.loaded.model, probe)
    if data.labelled:
        labels = np.concatenate([y for y in (data.train.y, data.evaluation.y) if y is not None])
        job.label_output = pick_label_output(arrays, job.output_names, job.options.label_output, labels, data.spec)
    elif job.options.label_output is not None:
        raise EdgepruneError(f"--label-output names the output labels belong to, but {data.spec} has no labels")
    job.outputs = describe(arrays, job.output_names, label_output=job.label_output, kinds=job.options.output_kinds)
    if data.boxed:
        job.box_output = pick_box_output(job)
    if data.train.masks is not None:
        job.mask_output = pick_mask_output(job, arrays)


def pick_mask_output(job: Job, arrays: list) -> int:
    """The N x K x H x W output (class scores per pixel at the masks' size) that the masks belong to."""
    size = tuple(job.data.train.masks.shape[1:])
    found = [i for i, a in enumerate(arrays) if a.ndim == 4 and a.shape[1] > 1 and tuple(a.shape[2:]) == size]
    if not found:
        listed = ", ".join(f"{n} ({'x'.join(['N', *map(str, a.shape[1:])])})" for n, a in zip(job.output_names, arrays))
        raise EdgepruneError(f"{job.data.spec} has masks (segmentation labels) of {'x'.join(map(str, size))}, but no "
                             f"output of the model is class scores N x K x {'x'.join(map(str, size))} ({listed})")
    classes = arrays[found[0]].shape[1]
    masks = np.concatenate([m.reshape(-1) for m in (job.data.train.masks, job.data.evaluation.masks) if m is not None])
    beyond = masks[(masks >= classes) & (masks != IGNORE)]
    if beyond.size:
        raise EdgepruneError(f"{job.data.spec} has mask class {int(beyond.max())}, but output "
                             f"{job.output_names[found[0]]} has {classes} classes ({IGNORE} marks pixels of no class)")
    return found[0]


def pick_box_output(job: Job) -> int:
    """The detections output that the data's boxes belong to; every box's class must be one of its classes."""
    index = pick_detections_output(job.outputs, job.data.spec)
    check_classes(job.data.spec, job.outputs[index].shape[0] - 4, tuple(job.shape[2:]), job.preprocess)
    return index
