"""Re-estimate BatchNorm statistics after a cut.

Removing filters changes what every later BatchNorm sees, while its running mean and variance
still describe the dense network; most cut models then predict one class. Recomputing those
statistics on a few hundred unlabelled images (no gradient step) restores much of the accuracy.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeprune.train.batches import as_batches, model_device


def recalibrate_batchnorm(model: nn.Module, images: Any, batch_size: int = 128) -> int:
    """Replace every BatchNorm's running statistics by their exact average over ``images``.

    ``images``: an N x C x H x W array or tensor (or anything with ``.x``). Returns the number of
    BatchNorm layers updated; the model is left in eval mode, its weights untouched.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
    device = model_device(model)
    model.train()
    try:
        with torch.no_grad():
            for x in as_batches(images, batch_size):
                if len(x) > 1:  # a batch of one has no variance
                    model(x.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return len(norms)
