"""How a criterion meets fine-tuning: a recipe prunes a model to a MACs target within an epoch budget.

Three shapes; each criterion is registered with the one that runs it, its default rounds and
whether it judges on held-out data (:func:`edgeprune.criteria.register_criterion`):

- ``oneshot`` (l1, l2, fpgm, random, hrank, fms): cut once, then fine-tune; with ``steps`` T > 1
  the cut is made in T rounds (:func:`edgeprune.api.prune_iteratively`).
- ``iterative`` (csctfp): T = 4 rounds by default, as SPEC.md chooses for CSCTFP.
- ``sfp``: soft pruning: the weakest filters are zeroed after each epoch and keep training; they
  are removed at the end (:class:`edgeprune.criteria.soft.SoftPruningSchedule`).
- ``tcfp``: intra-cluster L2 cut for part of the target, then inter-cluster soft pruning judged
  on a held-out split of the training data for the rest (:mod:`edgeprune.criteria.tcfp`).

Right after each cut the one-shot and iterative recipes recover without a gradient step: with
``config.reconstruct`` each layer is refitted to reproduce the dense model's outputs
(:mod:`edgeprune.train.reconstruct`), else BatchNorm statistics are re-estimated
(``recalibrate_bn``). Every recipe spends the same budget: ``epochs`` passes over the fine-tuning images. Iterative
recipes take one of those epochs, spread over the rounds, for the short fine-tunes between them.
Fine-tuning minimises cross-entropy on labels, or (``config.distill`` with ``data.teacher``)
distillation from the dense model, which works on unlabelled images too.

>>> from edgeprune.models import build
>>> built = build("resnet20-cifar")
>>> result = run_recipe(built.model, built.input_shape, RecipeConfig("l1", flops_cut=0.5), RecipeData())
>>> round(result.macs_cut, 2) >= 0.49, result.recipe
(True, 'oneshot')
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable

from torch import nn

from edgeprune.calibration import make_loader, sample
from edgeprune.criteria.soft import SoftPruningSchedule
from edgeprune.criteria.tcfp import TCFPSoftSchedule, remap_clusters
from edgeprune.pruning import prune, prune_iteratively
from edgeprune.counter import Counts, count
from edgeprune.criteria import create_criterion, criterion_entry
from edgeprune.errors import EdgepruneError
from edgeprune.graph import build_graph
from edgeprune.quality import accuracy, compare, torch_outputs
from edgeprune.surgery.check import checked_graph
from edgeprune.outputs import OutputInfo
from edgeprune.train import CrossEntropy, DetectionObjective, Distillation, FinetuneConfig, finetune, recalibrate_batchnorm
from edgeprune.train.objectives import DistillConfig
from edgeprune.train.reconstruct import KeptLayer, ReconstructConfig, compose, kept_layers, reconstruct

log = logging.getLogger(__name__)
Evaluate = Callable[[nn.Module], Any]  # top-1, or a dict of figures (e.g. held-out fidelity)


@dataclass
class RecipeConfig:
    """The target and budget. ``steps`` None: the recipe's own default (4 for csctfp, else 1)."""

    criterion: str = "l2"
    flops_cut: float | None = 0.5
    ratio: float | None = None
    round_to: int = 1
    epochs: int = 0
    steps: int | None = None
    lr: float = 0.01
    batch_size: int = 128
    seed: int = 0
    criterion_options: dict[str, Any] = field(default_factory=dict)
    hard_epochs: int = 1  # soft recipes: epochs on the physically cut model at the end
    recalibrate_bn: bool = False  # re-estimate BatchNorm statistics on the calibration images after the cut
    # and after each fine-tune (with few steps, the running averages lag behind the changed weights)
    tcfp_soft_share: float = 0.3  # the part of the MACs cut that TCFP's soft cluster stage makes
    tcfp_val_images: int = 256
    tcfp_theta: float = 0.001  # a cluster whose masking costs less held-out accuracy than this may go
    planner: Any = None  # a planner for api.prune (e.g. a latency budget) instead of ratio / flops_cut
    distill: DistillConfig | None = None  # recover by distillation from data.teacher (None: cross-entropy)
    max_grad_norm: float | None = 5.0  # gradient clipping while fine-tuning (see FinetuneConfig)
    reconstruct: ReconstructConfig | None = None  # refit the layers to the dense model's outputs after each cut
    device: str = "cpu"  # where fine-tuning runs (the result comes back to the CPU)
    keep_better: bool = False  # after fine-tuning, keep whichever state was closest to the dense model on
    # data.holdout: right after the cut (a reconstructed cut can beat a short fine-tune), fine-tuned, or that
    # with BatchNorm re-estimated


@dataclass
class Watch:
    """Hooks into recovery: ``validate(model) -> figures`` after each epoch, then ``on_epoch(record)``;
    ``progress(line)`` for the stages without epochs (reconstruction)."""

    validate: Callable[[nn.Module], dict[str, float]] | None = None
    on_epoch: Callable[[Any], None] | None = None
    progress: Callable[[str], None] | None = None


@dataclass
class RecipeData:
    """``train`` and ``holdout``: LabeledArrays (``holdout`` is part of the training data, never the
    test set); ``calib``: images for data-driven criteria; ``teacher``: the dense model to distil
    from, ``outputs`` its outputs' kinds, ``label_output`` the output labels belong to."""

    train: Any = None
    holdout: Any = None
    calib: Any = None
    teacher: nn.Module | None = None
    outputs: list[OutputInfo] | None = None
    label_output: int | None = None
    watch: Watch = field(default_factory=Watch)


@dataclass
class RecipeResult:
    model: nn.Module
    recipe: str
    criterion: str
    before: Counts
    after: Counts
    seconds: dict[str, float]
    after_cut: Any = None  # what ``evaluate`` said of the cut model before fine-tuning
    history: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    epochs: int = 0
    lr: float = 0.0
    plan: dict[str, Any] = field(default_factory=dict)  # what a custom planner reported
    reconstruction: list[dict[str, Any]] = field(default_factory=list)  # each reconstruction after a cut
    kept: dict[str, Any] | None = None  # keep_better's judgement: each state's figures and which was kept

    @property
    def macs_cut(self) -> float:
        return 1 - self.after.macs / self.before.macs

    @property
    def accuracy_before_finetune(self) -> float | None:
        return self.after_cut.get("top1") if isinstance(self.after_cut, dict) else self.after_cut

    def summary(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "criterion": self.criterion, "macs_before": self.before.macs,
                "macs_after": self.after.macs, "params_before": self.before.params, "params_after": self.after.params,
                "macs_cut": self.macs_cut, "accuracy_before_finetune": self.accuracy_before_finetune,
                "after_cut": self.after_cut if isinstance(self.after_cut, dict) else None,
                "seconds": self.seconds, "warnings": self.warnings,
                "finetune": {"epochs": self.epochs, "lr": self.lr, "history": self.history} if self.epochs else None,
                **({"plan": self.plan} if self.plan else {}),
                **({"reconstruction": self.reconstruction} if self.reconstruction else {}),
                **({"kept": self.kept} if self.kept else {})}


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, since: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - since


def objective_for(config: RecipeConfig, data: RecipeData) -> Any:
    """Distillation from ``data.teacher`` when asked for, else cross-entropy on the labels; with
    detection labels (boxes) the detection loss is added (or used alone): on the digits detector it
    beat distillation alone by 1-4 mAP50-95 points at every cut and length measured
    (docs/detectors.md)."""
    if data.train is None:
        raise EdgepruneError("fine-tuning needs data: give --calib SOURCE")
    labelled = data.train.y is not None
    distills = config.distill is not None and data.teacher is not None and bool(data.outputs)
    distillation = (Distillation(data.teacher, data.outputs, config.distill, data.label_output if labelled else None)
                    if distills else None)
    if data.train.boxes is not None:
        return DetectionObjective(distillation, layout=detections_layout(data.outputs))
    if distillation is not None:
        return distillation
    if not labelled:
        raise EdgepruneError("fine-tuning unlabelled data needs distillation from the dense model (drop --no-distill)")
    return CrossEntropy(data.label_output or 0)


def detections_layout(outputs: list[OutputInfo] | None) -> tuple[int, int] | None:
    """Classes and anchors of the ``detections`` output (``N x (4 + K) x A``), if there is one."""
    found = [o.shape for o in outputs or [] if o.kind == "detections" and len(o.shape) == 2]
    return (found[0][0] - 4, found[0][1]) if found else None


def _finetune(model: nn.Module, data: RecipeData, config: RecipeConfig, epochs: int, clock: _Clock,
              epoch_end=None, limit: int | None = None, judge: "_Judge | None" = None) -> list[dict[str, Any]]:
    if epochs <= 0:
        return []

    objective = objective_for(config, data)
    arrays = sample(data.train, limit, seed=config.seed) if limit else data.train
    loader = make_loader(arrays, config.batch_size, shuffle=True, augment="crop", seed=config.seed)
    start = time.perf_counter()
    tuning = FinetuneConfig(epochs=epochs, lr=config.lr, seed=config.seed, max_grad_norm=config.max_grad_norm,
                            device=config.device)
    result = finetune(model, loader, None, tuning,
                      epoch_end=epoch_end, objective=objective, validate=data.watch.validate,
                      on_epoch=data.watch.on_epoch)
    if judge is not None and _reestimates_batchnorm(model, config, data):
        judge.offer("fine-tuned", model)
    _reestimate_batchnorm(model, config, data)  # a short run leaves BatchNorm's running averages behind the weights
    clock.add("finetune", start)
    return [{"epoch": r.epoch, "loss": r.loss, **r.parts, "held_out": r.figures, "images": len(arrays)}
            for r in result.history]


def _criterion(config: RecipeConfig):
    return create_criterion(config.criterion, **config.criterion_options)


def _oneshot(model, shape, config: RecipeConfig, data: RecipeData, evaluate: Evaluate | None) -> RecipeResult:
    clock = _Clock()
    steps = config.steps or (1 if config.planner is not None else criterion_entry(config.criterion).steps)
    criterion = _criterion(config)
    target = dict(ratio=config.ratio, flops_cut=config.flops_cut, round_to=config.round_to, data=data.calib, inplace=True)
    history: list[dict[str, Any]] = []
    recover = _AfterCut(model, config, data, clock)
    start = time.perf_counter()
    plan: dict[str, Any] = {}
    if steps == 1:
        result = prune(model, shape, criterion=criterion, planner=config.planner, **target)
        clock.add("prune", start)
        recover(model, result)
        before, after, warnings, plan = result.before, result.after, result.warnings, result.plan.details
    else:
        between = config.epochs >= 2  # one epoch of the budget goes to the rounds, the rest to the end
        n = len(data.train) if data.train is not None else 0

        def after_round(m: nn.Module, result: Any) -> None:
            nonlocal start
            clock.add("prune", start)
            recover(m, result)
            start = time.perf_counter()

        def between_rounds(m: nn.Module, _round: int) -> None:
            nonlocal start
            history.extend(_finetune(m, data, config, 1, clock, limit=max(1, n // (steps - 1))))
            start = time.perf_counter()

        result = prune_iteratively(model, shape, criterion=criterion, steps=steps, after_round=after_round,
                                   finetune_fn=between_rounds if between else None, **target)
        before, after, warnings = result.before, result.after, []
        config = replace(config, epochs=config.epochs - 1 if between else config.epochs)
    accuracy = evaluate(model) if evaluate else None
    judge = _Judge.of(config, data) if config.epochs > 0 else None
    if judge is not None:
        judge.offer("after the cut", model)
    history.extend(_finetune(model, data, config, config.epochs, clock, judge=judge))
    last = "fine-tuned, BatchNorm re-estimated" if _reestimates_batchnorm(model, config, data) else "fine-tuned"
    kept = judge.keep_best(model, last) if judge else None
    return RecipeResult(model, recipe_name(config.criterion, steps), criterion.name, before, after, clock.seconds, accuracy,
                        history, warnings, plan=plan, reconstruction=recover.found, kept=kept)


class _Judge:
    """Which state of the model is closest to the dense one on ``data.holdout`` (training images
    that neither the cut, the reconstruction nor the fine-tune saw): right after the cut, fine-tuned,
    or fine-tuned with BatchNorm re-estimated. Top-1 first where the images have labels, then the
    worst output's mean cosine, output by output as the report judges them (a detector's decoded
    output as its boxes and its scores, :func:`edgeprune.quality.compare`); on a tie the later state."""

    def __init__(self, teacher: nn.Module, holdout: Any, outputs: list[OutputInfo], label_output: int | None,
                 progress: Any) -> None:
        self.holdout, self.outputs, self.label_output, self.progress = holdout, outputs, label_output, progress
        self.dense = torch_outputs(teacher, holdout.x)
        self.states: list[tuple[str, dict[str, Any] | None, dict[str, float]]] = []

    @classmethod
    def of(cls, config: RecipeConfig, data: RecipeData) -> "_Judge | None":
        if not config.keep_better or data.teacher is None or data.holdout is None or not data.outputs:
            return None
        labels = data.label_output if data.holdout.y is not None else None
        return cls(data.teacher, data.holdout, data.outputs, labels, data.watch.progress)

    def figures(self, model: nn.Module) -> dict[str, float]:
        outputs = torch_outputs(model, self.holdout.x)
        found = {"cosine_min": min(row["cosine"] for row in compare(self.dense, outputs, self.outputs))}
        if self.label_output is not None:
            found["top1"] = accuracy(outputs, self.label_output, self.holdout.y)
        return found

    def offer(self, name: str, model: nn.Module) -> None:
        state = {key: value.detach().clone() for key, value in model.state_dict().items()}
        self.states.append((name, state, self.figures(model)))

    def keep_best(self, model: nn.Module, name: str) -> dict[str, Any]:
        """Judge ``model`` as it is now (``name``) beside the states offered; load the best into it."""
        self.states.append((name, None, self.figures(model)))
        rank = (lambda entry: (entry[2].get("top1", 0.0), entry[2]["cosine_min"]))
        kept, state, _ = max(reversed(self.states), key=rank)
        if state is not None:
            model.load_state_dict(state)
        if self.progress is not None:
            text = (lambda f: ", ".join(f"{k.replace('_min', '')} {v:.4f}" for k, v in f.items()))
            self.progress(f"kept the model {kept}, judged on {len(self.holdout)} training images held out from recovery: "
                          + "; ".join(f"{n} {text(f)}" for n, _, f in self.states))
        return {"states": [{"state": n, **f} for n, _, f in self.states], "kept": kept, "images": len(self.holdout)}


class _AfterCut:
    """Recovery right after each cut, before any gradient step: reconstruction against the dense
    model (the cuts' keep maps composed from it), else BatchNorm re-estimation."""

    def __init__(self, model: nn.Module, config: RecipeConfig, data: RecipeData, clock: _Clock) -> None:
        self.config, self.data, self.clock = config, data, clock
        images = data.train if data.train is not None else data.calib
        self.images = None
        if config.reconstruct is not None and images is not None:
            self.images = sample(images, min(config.reconstruct.images, len(images)), seed=config.seed).x
        self.dense = None if self.images is None else data.teacher if data.teacher is not None else copy.deepcopy(model)
        self.maps: dict[str, KeptLayer] = {}
        self.found: list[dict[str, Any]] = []

    def __call__(self, model: nn.Module, result: Any) -> None:
        if self.images is None:
            _reestimate_batchnorm(model, self.config, self.data)
            return

        start = time.perf_counter()
        cut = kept_layers(result.graph, result.plan.keep)
        self.maps = compose(self.maps, cut) if self.maps else cut
        progress = self.data.watch.progress
        if progress is not None:
            progress(f"reconstructing the layers after the cut from {len(self.images)} calibration images "
                     "(least squares to the dense model's outputs, no labels)")
        found = reconstruct(model, self.dense, self.maps, self.images, self.config.reconstruct)
        self.found.append(found.to_dict())
        if progress is not None and found.layers:
            before = max(f.error_before for f in found.layers)
            after = max(f.error_after for f in found.layers)
            progress(f"reconstructed {sum(f.refit for f in found.layers)} of {len(found.layers)} layers in "
                     f"{found.seconds:.1f} s: largest relative output error {before:.3f} -> {after:.3f} (-vv: each layer)")
        self.clock.add("reconstruct", start)


def _sfp(model, shape, config: RecipeConfig, data: RecipeData, evaluate: Evaluate | None) -> RecipeResult:
    clock = _Clock()
    start = time.perf_counter()
    graph = checked_graph(model, shape)
    make = partial(SoftPruningSchedule, graph, ratio=config.ratio, flops_cut=config.flops_cut,
                   criterion=_criterion(config), round_to=config.round_to, data=data.calib)
    schedule = make()
    accuracy = _accuracy_cut_now(model, make, config, data, evaluate)
    clock.add("prune", start)
    plan, history, hard = _soft_phase(model, schedule, config, data, clock)
    history += _finetune(model, data, config, hard, clock)
    return RecipeResult(model, "sfp", schedule.criterion.name, plan.before, plan.after, clock.seconds, accuracy,
                        history, list(graph.warnings))


def _reestimates_batchnorm(model: nn.Module, config: RecipeConfig, data: RecipeData) -> bool:
    return config.recalibrate_bn and data.calib is not None and \
        any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _reestimate_batchnorm(model: nn.Module, config: RecipeConfig, data: RecipeData) -> None:
    if _reestimates_batchnorm(model, config, data):
        recalibrate_batchnorm(model, data.calib)


def _accuracy_cut_now(model: nn.Module, make_schedule: Callable[[], Any], config: RecipeConfig, data: RecipeData,
                      evaluate: Evaluate | None) -> float | None:
    """Accuracy of a copy cut by a fresh schedule right away: where a soft recipe starts from."""
    if evaluate is None:
        return None
    probe = copy.deepcopy(model)
    make_schedule().finalize(probe)
    _reestimate_batchnorm(probe, config, data)
    return evaluate(probe)


def _soft_phase(model: nn.Module, schedule: Any, config: RecipeConfig, data: RecipeData,
                clock: _Clock) -> tuple[Any, list[dict[str, Any]], int]:
    """Fine-tune with the schedule zeroing filters after each epoch, then cut physically.

    Returns the schedule's last step, the history and the epochs left for the cut model: a
    softly zeroed filter keeps its normalisation layer, whose constant output the next layer has
    learned to use; removing the filter drops that constant, so ``hard_epochs`` of the budget
    train the cut model to absorb it.
    """
    hard = min(config.hard_epochs, config.epochs) if config.epochs > 1 else 0
    history = _finetune(model, data, config, config.epochs - hard, clock, epoch_end=schedule.epoch_end)
    start = time.perf_counter()
    step = schedule.finalize(model)
    clock.add("prune", start)
    _reestimate_batchnorm(model, config, data)
    return step, history, hard


def _tcfp(model, shape, config: RecipeConfig, data: RecipeData, evaluate: Evaluate | None) -> RecipeResult:
    """Stage 3 (intra-cluster L2) cuts ``1 - share`` of the MACs target; stage 4 soft-prunes the rest."""
    if config.flops_cut is None:
        raise EdgepruneError("tcfp's recipe works to a MACs target: give --flops-cut")
    if data.holdout is None or data.holdout.y is None:
        raise EdgepruneError("tcfp judges clusters on held-out labelled training data: give --calib SOURCE with labels")
    clock = _Clock()
    start = time.perf_counter()
    dense = count(build_graph(model, shape))
    target_macs = (1 - config.flops_cut) * dense.macs
    hard_cut = config.flops_cut * (1 - config.tcfp_soft_share)
    tcfp = _criterion(config)
    result = prune(model, shape, criterion=tcfp, flops_cut=hard_cut, round_to=config.round_to, data=data.calib,
                   inplace=True)
    clusters = remap_clusters(tcfp.clusters, result.graph, result.plan.keep)
    graph = checked_graph(model, shape)
    holdout = sample(data.holdout, config.tcfp_val_images, seed=config.seed)
    make = partial(TCFPSoftSchedule, graph, clusters, holdout, target_macs=target_macs, reach_target=True,
                   theta=config.tcfp_theta)
    schedule = make()
    accuracy = _accuracy_cut_now(model, make, config, data, evaluate)
    clock.add("prune", start)
    step, history, hard = _soft_phase(model, schedule, config, data, clock)
    start = time.perf_counter()
    after = count(graph, step.keep)
    warnings = list(result.warnings)
    if after.macs > target_macs * 1.01:  # the clusters could not all go (a layer would have emptied)
        rest = 1 - target_macs / after.macs
        warnings.append(f"tcfp: clusters reached {1 - after.macs / dense.macs:.1%} of the cut; "
                        f"the last {rest:.1%} was cut by L2")
        after = prune(model, shape, criterion=criterion_entry(config.criterion).rest, flops_cut=rest,
                      round_to=config.round_to, inplace=True).after
    clock.add("prune", start)
    history += _finetune(model, data, config, hard, clock)
    return RecipeResult(model, "tcfp", "tcfp", dense, after, clock.seconds, accuracy, history, warnings)


Recipe = Callable[[nn.Module, tuple[int, ...], RecipeConfig, RecipeData, Evaluate | None], RecipeResult]
_RECIPES: dict[str, Recipe] = {"oneshot": _oneshot, "sfp": _sfp, "tcfp": _tcfp}  # by CriterionEntry.recipe


def run_recipe(model: nn.Module, input_shape: tuple[int, ...], config: RecipeConfig, data: RecipeData,
               evaluate: Evaluate | None = None) -> RecipeResult:
    """Prune ``model`` in place with ``config.criterion``'s recipe and fine-tune it.

    ``evaluate(model)`` (top-1, or a dict of figures) is called on the model as cut before any
    fine-tuning (for the soft recipes: a copy cut by the scores they start from); it is kept as
    ``result.after_cut``.
    """
    if config.steps is not None and config.steps < 1:
        raise EdgepruneError(f"--steps must be a positive integer, got {config.steps}")
    recipe = _RECIPES[criterion_entry(config.criterion).recipe]
    if config.steps and config.steps > 1 and recipe is not _oneshot:
        raise EdgepruneError(f"'{config.criterion}' prunes softly during fine-tuning; --steps does not apply to it")
    if config.planner is not None:
        check_one_shot(config.criterion, config.steps)
    result = recipe(model, tuple(input_shape), config, data, evaluate)
    result.model.cpu()  # trained on config.device; export and measuring happen here
    result.epochs, result.lr = config.epochs, config.lr
    return result


def check_one_shot(criterion: str, steps: int | None) -> None:
    """A custom planner (a latency budget, a sensitivity allocation) decides the cut once: refuse
    recipes that cut otherwise (an iterative criterion then scores once, unless rounds are asked for)."""
    if prunes_softly(criterion) or (steps or 1) > 1:
        raise EdgepruneError(f"a latency budget or a sensitivity allocation prunes in one shot: '{criterion}' "
                             "prunes softly or in rounds (use a one-shot criterion, or --steps 1)")


def split_holdout(train: Any, n: int, seed: int = 0) -> tuple[Any, Any]:
    """``train`` (LabeledArrays) less ``n`` seeded random images, and those ``n`` images."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(train))
    if n >= len(train):
        raise EdgepruneError(f"cannot hold {n} images out of {len(train)}: give more training data")
    return train.subset(np.sort(order[n:])), train.subset(np.sort(order[:n]))


def prunes_softly(criterion: str) -> bool:
    """Whether ``criterion``'s recipe cuts during fine-tuning (sfp, tcfp) rather than before it."""
    return criterion_entry(criterion).recipe != "oneshot"


def recipe_name(criterion: str, steps: int | None = None) -> str:
    entry = criterion_entry(criterion)
    if entry.recipe != "oneshot":
        return entry.recipe
    return "iterative" if (steps or entry.steps) > 1 else "oneshot"


__all__ = ["RecipeConfig", "RecipeData", "RecipeResult", "Watch", "run_recipe", "recipe_name", "split_holdout",
           "check_one_shot", "objective_for", "prunes_softly"]
