"""Models by name: the CIFAR reference networks, torchvision, user files, and (:func:`build`)
the checkpoints ``edgeprune prune`` writes."""
from __future__ import annotations

from typing import Any

from edgeprune.models import cifar as _cifar  # noqa: F401  (registers the CIFAR zoo)
from edgeprune.models.registry import BuiltModel, ModelEntry, build_spec, get_entry, list_models, register_model

__all__ = ["BuiltModel", "ModelEntry", "build", "get_entry", "list_models", "register_model"]


def build(spec: str, *, pretrained: bool = True, **kwargs: Any) -> BuiltModel:
    """Build the model named by ``spec`` (see :func:`~edgeprune.models.registry.build_spec`), or the
    one a checkpoint holds (see :func:`edgeprune.checkpoint.load_model`).

    >>> build("resnet56-cifar").input_shape
    (1, 3, 32, 32)
    """
    # checkpoint builds on the registry below this package's face: importing it at the top would run
    # edgeprune.checkpoint while this package is half made (it imports edgeprune.models.registry)
    from edgeprune.checkpoint import is_checkpoint_path, load_model

    if is_checkpoint_path(spec):  # one loader: a checkpoint written by prune/compress builds too
        return load_model(spec)
    return build_spec(spec, pretrained=pretrained, **kwargs)
