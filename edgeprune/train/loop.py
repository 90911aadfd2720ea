"""Fine-tuning (SGD, momentum, weight decay, cosine schedule) and top-1 evaluation."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from edgeprune.errors import EdgepruneError
from edgeprune.train.distributed import (
    DistContext,
    broadcast_state,
    mean_across_ranks,
    process_group,
    shard_loader,
    wrap_model,
)

log = logging.getLogger(__name__)

CheckpointFn = Callable[[nn.Module, int], None]
EpochEndFn = Callable[[nn.Module, int], None]
ProgressFn = Callable[[int, int], None]


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


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: mean training loss, validation top-1 (None without val data), lr, seconds."""

    epoch: int
    loss: float
    val_acc: float | None
    lr: float
    seconds: float


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


def _batches(loader: Iterable) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    for batch in loader:
        x, y = batch[0], batch[1] if len(batch) > 1 else None
        if y is None:
            raise EdgepruneError("the data has no labels; training and evaluation need labelled data")
        yield x, y


def _check_labels(logits: torch.Tensor, y: torch.Tensor) -> None:
    if y.numel() and int(y.max()) >= logits.shape[1]:
        raise EdgepruneError(f"label {int(y.max())} in the data, but the model has only {logits.shape[1]} outputs")


def evaluate(model: nn.Module, loader: Iterable, *, device: str | None = None) -> float:
    """Top-1 accuracy (0-1) of ``model`` over ``loader``'s ``(x, y)`` batches.

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
            logits = model(x.to(device))
            _check_labels(logits, y)
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
                 scheduler: torch.optim.lr_scheduler.LRScheduler, device: str, tick: Callable[[], None]) -> float:
    net.train()
    total, count = 0.0, 0
    for x, y in _batches(loader):
        x, y = x.to(device), y.to(device)
        logits = net(x)
        _check_labels(logits, y)
        loss = F.cross_entropy(logits, y)
        if not math.isfinite(loss.item()):
            raise EdgepruneError(f"the training loss became {loss.item()}; try a lower learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(y)
        count += len(y)
        tick()
    return total / max(count, 1)


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
) -> FinetuneResult:
    """Train ``model`` in place for ``config.epochs`` epochs; returns the per-epoch history.

    After each epoch (numbered from 1): ``epoch_end(model, epoch)`` on every rank (e.g. soft
    pruning zeroes filters here), then validation, then ``checkpoint_fn(model, epoch)`` on rank 0.
    ``progress(done_steps, total_steps)`` is called on rank 0 after every batch. Under torchrun
    the same call trains data-parallel (see :mod:`edgeprune.train.distributed`).

    >>> from edgeprune.calibration import train_val_loaders
    >>> train, val = train_val_loaders("mnist5k", (1, 1, 32, 32), batch_size=100, augment=None, limit=1000)
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 10))
    >>> result = finetune(net, train, val, FinetuneConfig(epochs=2, lr=0.005))
    >>> [r.epoch for r in result.history], result.final_val_acc > 0.7
    ([1, 2], True)
    """
    if config.epochs < 1:
        raise EdgepruneError(f"epochs must be at least 1, got {config.epochs}")
    torch.manual_seed(config.seed)
    model.to(config.device)
    with process_group(config.device) as ctx:
        return _run(model, train_loader, val_loader, config, ctx, checkpoint_fn, progress, epoch_end)


def _run(model: nn.Module, train_loader: DataLoader, val_loader: Iterable | None, config: FinetuneConfig,
         ctx: DistContext, checkpoint_fn: CheckpointFn | None, progress: ProgressFn | None,
         epoch_end: EpochEndFn | None) -> FinetuneResult:
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
        if progress is not None and ctx.is_main:
            progress(done, steps * config.epochs)

    for epoch in range(1, config.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        t0, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
        loss = mean_across_ranks(_train_epoch(net, loader, optimizer, scheduler, config.device, tick), ctx)
        broadcast_state(model, ctx)  # each rank updated its own BatchNorm statistics
        if epoch_end is not None:
            epoch_end(model, epoch)
        val_acc = evaluate(model, val_loader, device=config.device) if val_loader is not None else None
        record = EpochRecord(epoch, loss, val_acc, lr, time.perf_counter() - t0)
        result.history.append(record)
        if ctx.is_main:
            log.info("epoch %d/%d  loss %.4f  val %s  lr %.4g  %.1f s", epoch, config.epochs, loss,
                     "-" if val_acc is None else f"{val_acc:.4f}", lr, record.seconds)
            if checkpoint_fn is not None:
                checkpoint_fn(model, epoch)
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
