"""Input batches from any form of images, and the device a model lives on."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from edgeprune.errors import EdgepruneError


def as_batches(data: Any, batch_size: int = 128, limit: int | None = None) -> Iterator[torch.Tensor]:
    """Float32 input batches from ``data``, at most ``limit`` images in all.

    ``data`` may be anything with an ``.x`` array (a :class:`~edgeprune.calibration.LabeledArrays`),
    a tensor or NumPy array of N x C x H x W inputs, or an iterable of batches (tensors or
    ``(x, y)`` pairs, as a DataLoader yields).

    >>> [tuple(b.shape) for b in as_batches(np.zeros((5, 3, 4, 4), np.float32), batch_size=2)]
    [(2, 3, 4, 4), (2, 3, 4, 4), (1, 3, 4, 4)]
    """
    if data is None:
        raise EdgepruneError("this criterion needs calibration data (give --calib SOURCE)")
    if batch_size < 1:
        raise EdgepruneError(f"batch size must be positive, got {batch_size}")
    x = getattr(data, "x", data)
    if isinstance(x, (np.ndarray, torch.Tensor)):
        x = torch.as_tensor(x)
        if limit is not None:
            x = x[:limit]
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size].float()
        return
    taken = 0
    for batch in x:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        batch = torch.as_tensor(batch).float()
        if limit is not None:
            batch = batch[:limit - taken]
        if len(batch):
            yield batch
        taken += len(batch)
        if limit is not None and taken >= limit:
            return


def model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
