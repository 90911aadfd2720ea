"""Data-parallel fine-tuning on several processes or machines with torchrun.

:func:`edgeprune.train.finetune` needs no change to run distributed: launched by ``torchrun``
(which sets ``RANK`` and ``WORLD_SIZE``), it joins the process group (gloo on CPU, NCCL on
CUDA), wraps the model in DistributedDataParallel, gives each rank its own shard of every epoch
with a DistributedSampler, and lets only rank 0 report progress and write checkpoints. Each
rank's batch holds ``batch_size`` images, so the effective batch is ``batch_size x world size``.
After every epoch rank 0's BatchNorm statistics are copied to all ranks, then every rank runs
``epoch_end`` and validates on the whole validation set, so all ranks stay identical.

The command line does the same, through ``-m edgeprune``::

    # two processes on this machine
    torchrun --nproc_per_node 2 -m edgeprune finetune resnet20-cifar --data mnist5k --epochs 5 -o out.pt
    # two machines, two processes each; run on both with --node_rank 0 and 1
    torchrun --nnodes 2 --nproc_per_node 2 --node_rank 0 --master_addr HOST --master_port 29500 \\
        -m edgeprune finetune MODEL --data cifar10:/data --epochs 30 -o out.pt

Every rank must see the same data source (the same files on each machine).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from edgeprune.errors import EdgepruneError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: ``rank`` of ``world_size`` (0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str = "auto") -> str:
    """The torch device for ``--device``: ``auto`` is CUDA when present, else the CPU; ``cuda``
    under torchrun is this rank's own GPU (``LOCAL_RANK``).

    >>> resolve_device("cpu")
    'cpu'
    """
    spec = (spec or "auto").strip().lower()
    if spec == "cpu":
        return "cpu"
    if spec == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        spec = "cuda"
    if spec != "cuda" and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise EdgepruneError(f"unknown device '{spec}' (auto, cpu, cuda, cuda:N)")
    if not torch.cuda.is_available():
        raise EdgepruneError(f"--device {spec}: no CUDA device here (use --device auto or cpu)")
    index = int(spec[5:]) if ":" in spec else int(os.environ.get("LOCAL_RANK", "0")) if launched_distributed() else 0
    if index >= torch.cuda.device_count():
        raise EdgepruneError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return f"cuda:{index}"


def launched_distributed() -> bool:
    """Whether torchrun (or an equivalent launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_main_process() -> bool:
    """True on rank 0, and in any process not started by torchrun.

    >>> is_main_process()
    True
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def process_group(device: str = "cpu") -> Iterator[DistContext]:
    """Join the torchrun job for the duration of the block (and leave it if we joined it).

    >>> with process_group() as ctx:
    ...     ctx.world_size
    1
    """
    if not launched_distributed():
        yield DistContext()
        return
    owned = not dist.is_initialized()
    if owned:
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield DistContext(dist.get_rank(), dist.get_world_size())
    finally:
        if owned:
            dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """The model DistributedDataParallel-wrapped when running distributed, else itself."""
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def shard_loader(loader: DataLoader, ctx: DistContext, seed: int) -> tuple[DataLoader, DistributedSampler | None]:
    """Rebuild ``loader`` to read only this rank's shard of each epoch (shuffled by ``seed``)."""
    if not ctx.active:
        return loader, None
    if loader.batch_size is None:
        raise EdgepruneError("distributed fine-tuning needs a DataLoader built with a batch_size")
    sampler = DistributedSampler(loader.dataset, ctx.world_size, ctx.rank, shuffle=True, seed=seed)
    sharded = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        drop_last=loader.drop_last,
    )
    return sharded, sampler


def broadcast_state(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers (BatchNorm statistics) to every rank."""
    if ctx.active:
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0)


def mean_across_ranks(value: float, ctx: DistContext) -> float:
    """The average of ``value`` over all ranks."""
    if not ctx.active:
        return value
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=on)  # NCCL reduces CUDA tensors only
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size
