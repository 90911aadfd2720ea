"""Fine-tuning (SGD, momentum, weight decay, cosine schedule) and top-1 evaluation.

What is minimised is an objective (:mod:`edgeprune.train.objectives`): cross-entropy on labels
by default, or distillation from the dense model, which needs no labels.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader

from edgeprune.errors import EdgepruneError
from edgeprune.outputs import flatten
from edgeprune.train.distributed import (
    DistContext,
    broadcast_state,
    mean_across_ranks,
    process_group,
    shard_loader,
    wrap_model,
)
from edgeprune.train.objectives import CrossEntropy, check_labels

log = logging.getLogger(__name__)

CheckpointFn = Callable[[nn.Module, int], None]
EpochEndFn = Callable[[nn.Module, int], None]
ProgressFn = Callable[[int, int], None]
ValidateFn = Callable[[nn.Module], "dict[str, float]"]
Objective = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None"], "tuple[torch.Tensor, dict[str, float]]"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters; the learning rate follows a cosine from ``lr`` to ``min_lr`` per step."""

    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    min_lr: float = 0.0
    seed: int = 0
    device: str = "cpu"
    max_grad_norm: float | None = 5.0  # clip the gradient's norm (a distillation loss can spike; None: never)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: mean training loss, validation top-1 (None without val data), lr, seconds;
    ``parts``: the loss's terms (e.g. distill, ce); ``figures``: what ``validate`` measured."""

    epoch: int
    loss: float
    val_acc: float | None
    lr: float
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class FinetuneResult:
    """The history of a run; the model itself was trained in place."""

    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    world_size: int = 1

    @property
    def final_val_acc(self) -> float | None:
        return self.history[-1].val_acc if self.history else None

    @property
    def best_val_acc(self) -> float | None:
        accs = [r.val_acc for r in self.history if r.val_acc is not None]
        return max(accs) if accs else None

    def to_dict(self) -> dict:
        return {"history": [asdict(r) for r in self.history], "seconds": self.seconds, "world_size": self.world_size,
                "final_val_acc": self.final_val_acc, "best_val_acc": self.best_val_acc}


def _batches(loader: Iterable, labels: bool = True) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    for batch in loader:
        x, y = batch[0], batch[1] if len(batch) > 1 else None
        if y is None and labels:
            raise EdgepruneError("the data has no labels; training without labels needs distillation "
                                 "from the dense model, evaluation needs labelled data")
        yield x, y


def evaluate(model: nn.Module, loader: Iterable, *, device: str | None = None, label_output: int = 0) -> float:
    """Top-1 accuracy (0-1) of ``model``'s class-score output ``label_output`` over ``(x, y)`` batches.

    >>> from edgeprune.calibration import load_data, make_loader
    >>> loader = make_loader(load_data("mnist5k", split="val", limit=50), 50, shuffle=False)
    >>> 0.0 <= evaluate(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 10)), loader) <= 1.0
    True
    """
    device = device or _device_of(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in _batches(loader):
            logits = flatten(model(x.to(device)))[label_output]
            check_labels(logits, y)
            correct += int((logits.argmax(1).cpu() == y).sum())
            total += len(y)
    model.train(was_training)
    if total == 0:
        raise EdgepruneError("no images to evaluate")
    return correct / total


def _device_of(model: nn.Module) -> str:
    param = next(model.parameters(), None)
    return str(param.device) if param is not None else "cpu"


def _train_epoch(net: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, config: FinetuneConfig, tick: Callable[[], None],
                 objective: Objective) -> tuple[float, dict[str, float]]:
    device = config.device
    net.train()
    total, count = 0.0, 0
    sums: dict[str, float] = {}
    for x, y in _batches(loader, getattr(objective, "needs_labels", True)):
        x, y = x.to(device), None if y is None else y.to(device)
        loss, parts = objective(net, x, y)
        if not math.isfinite(loss.item()):
            raise EdgepruneError(f"the training loss became {loss.item()}; try a lower learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(x)
        count += len(x)
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + value * len(x)
        tick()
    return total / max(count, 1), {name: value / max(count, 1) for name, value in sums.items()}


def _optimiser(
    model: nn.Module, config: FinetuneConfig, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov and config.momentum > 0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1), eta_min=config.min_lr)
    return optimizer, scheduler


def finetune(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: Iterable | None,
    config: FinetuneConfig,
    *,
    checkpoint_fn: CheckpointFn | None = None,
    progress: ProgressFn | None = None,
    epoch_end: EpochEndFn | None = None,
    objective: Objective | None = None,
    validate: ValidateFn | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> FinetuneResult:
    """Train ``model`` in place for ``config.epochs`` epochs; returns the per-epoch history.

    ``objective(net, x, y) -> (loss, parts)`` is what is minimised (default: cross-entropy on the
    labels; :class:`~edgeprune.train.objectives.Distillation` needs none). After each epoch
    (numbered from 1): ``epoch_end(model, epoch)`` on every rank (e.g. soft pruning zeroes
    filters here), then validation (top-1 on ``val_loader``, and ``validate(model)``'s figures,
    e.g. held-out fidelity), then on rank 0 ``checkpoint_fn(model, epoch)`` and
    ``on_epoch(record)``. ``progress(done_steps, total_steps)`` is called on rank 0 after every
    batch. Under torchrun the same call trains data-parallel (see :mod:`edgeprune.train.distributed`).

    >>> from edgeprune.calibration import train_val_loaders
    >>> train, val = train_val_loaders("mnist5k", (1, 1, 32, 32), batch_size=100, augment=None, limit=1000)
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 10))
    >>> result = finetune(net, train, val, FinetuneConfig(epochs=2, lr=0.05))
    >>> [r.epoch for r in result.history], result.final_val_acc > 0.7
    ([1, 2], True)
    """
    if config.epochs < 1:
        raise EdgepruneError(f"epochs must be at least 1, got {config.epochs}")
    torch.manual_seed(config.seed)
    model.to(config.device)
    with process_group(config.device) as ctx:
        hooks = _Hooks(checkpoint_fn, progress, epoch_end, validate, on_epoch)
        return _run(model, train_loader, val_loader, config, ctx, hooks, objective or CrossEntropy())


@dataclass
class _Hooks:
    checkpoint_fn: CheckpointFn | None = None
    progress: ProgressFn | None = None
    epoch_end: EpochEndFn | None = None
    validate: ValidateFn | None = None
    on_epoch: Callable[[EpochRecord], None] | None = None


def _run(model: nn.Module, train_loader: DataLoader, val_loader: Iterable | None, config: FinetuneConfig,
         ctx: DistContext, hooks: _Hooks, objective: Objective) -> FinetuneResult:
    if hasattr(objective, "to"):
        objective.to(config.device)  # the teacher runs where the student does
    loader, sampler = shard_loader(train_loader, ctx, config.seed)
    net = wrap_model(model, ctx)  # DDP starts every rank from rank 0's weights
    steps = len(loader)
    optimizer, scheduler = _optimiser(model, config, steps * config.epochs)
    result = FinetuneResult(world_size=ctx.world_size)
    done = 0
    start = time.perf_counter()

    def tick() -> None:
        nonlocal done
        done += 1
        if hooks.progress is not None and ctx.is_main:
            hooks.progress(done, steps * config.epochs)

    label_output = getattr(objective, "label_output", None) or 0
    for epoch in range(1, config.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        t0, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
        loss, parts = _train_epoch(net, loader, optimizer, scheduler, config, tick, objective)
        loss = mean_across_ranks(loss, ctx)
        parts = {name: mean_across_ranks(value, ctx) for name, value in parts.items()}
        broadcast_state(model, ctx)  # each rank updated its own BatchNorm statistics
        if hooks.epoch_end is not None:
            hooks.epoch_end(model, epoch)
        val_acc = (evaluate(model, val_loader, device=config.device, label_output=label_output)
                   if val_loader is not None else None)
        figures = hooks.validate(model) if hooks.validate is not None else {}
        record = EpochRecord(epoch, loss, val_acc, lr, time.perf_counter() - t0, parts, figures)
        result.history.append(record)
        if ctx.is_main:  # a caller with its own progress lines (on_epoch) gets this one at debug level only
            log.log(logging.DEBUG if hooks.on_epoch else logging.INFO, "epoch %d/%d  loss %.4f  val %s  lr %.4g  %.1f s",
                    epoch, config.epochs, loss,
                     "-" if val_acc is None else f"{val_acc:.4f}", lr, record.seconds)
            if hooks.checkpoint_fn is not None:
                hooks.checkpoint_fn(model, epoch)
            if hooks.on_epoch is not None:
                hooks.on_epoch(record)
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
