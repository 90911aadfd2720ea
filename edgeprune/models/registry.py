"""One registry of models by name (in the spirit of timm's ``create_model``).

A *spec* names a model in one of four ways:

- a registered name: ``vgg16-cifar``, ``resnet56-cifar``, ``mobilenetv1-cifar``, ...
- ``torchvision:NAME``: any torchvision classification model, randomly initialised
- ``path/to/file.py:factory``: a user's own model, built by calling ``factory()``
- a checkpoint written by ``edgeprune prune`` (``*.pt``), handled by :mod:`edgeprune.checkpoint`
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from edgeprune.calibration.preprocess import Preprocess, torchvision_preprocess
from edgeprune.errors import EdgepruneError

TORCHVISION_PREFIX = "torchvision:"


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to build it and what input it expects."""

    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    preprocess: Preprocess | None = None  # what its images go through (the data it is trained on)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, input_shape: tuple[int, ...], description: str, preprocess: Preprocess | None = None,
                   **defaults: Any):
    """Decorator: register ``builder`` under ``name``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelEntry(name, builder, tuple(input_shape), description, defaults, preprocess)
        return builder

    return wrap


def list_models() -> list[ModelEntry]:
    """All registered models, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise EdgepruneError(f"unknown model '{name}' (known: {known}; or torchvision:NAME, or FILE.py:factory)") from None


@dataclass
class BuiltModel:
    """A freshly built model plus what is needed to rebuild it later, and how its inputs are made."""

    model: nn.Module
    spec: str
    input_shape: tuple[int, ...]
    kwargs: dict[str, Any]
    preprocess: Preprocess | None = None  # None: not known (images are then only scaled to 0-1)


def build(spec: str, **kwargs: Any) -> BuiltModel:
    """Build the model named by ``spec`` (not a checkpoint). ``None`` keyword values are dropped.

    >>> build("resnet56-cifar").input_shape
    (1, 3, 32, 32)
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if spec.startswith(TORCHVISION_PREFIX):
        return _build_torchvision(spec, kwargs)
    if ".py:" in spec:
        return _build_from_file(spec, kwargs)
    entry = get_entry(spec)
    merged = {**entry.defaults, **kwargs}
    model = entry.builder(**merged)
    shape = (1, merged.get("in_channels", entry.input_shape[1]), *entry.input_shape[2:])
    preprocess = entry.preprocess.for_channels(shape[1]) if entry.preprocess else None
    return BuiltModel(model.eval(), spec, shape, merged, preprocess)


def _build_torchvision(spec: str, kwargs: dict[str, Any]) -> BuiltModel:
    import torchvision

    name = spec[len(TORCHVISION_PREFIX):]
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise EdgepruneError(f"unknown torchvision classification model '{name}'")
    kwargs = {"weights": None, **kwargs}
    if name in ("googlenet", "inception_v3"):
        kwargs.setdefault("init_weights", True)
    side = 299 if name == "inception_v3" else 224
    model = torchvision.models.get_model(name, **kwargs)
    return BuiltModel(model.eval(), spec, (1, 3, side, side), kwargs, torchvision_preprocess(name, side))


def _build_from_file(spec: str, kwargs: dict[str, Any]) -> BuiltModel:
    path_text, factory_name = spec.rsplit(":", 1)
    path = Path(path_text)
    if not path.is_file():
        raise EdgepruneError(f"model file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"edgeprune_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: any error is theirs to see in one line
        raise EdgepruneError(f"cannot import {path}: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise EdgepruneError(f"{path} has no callable '{factory_name}'")
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise EdgepruneError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    shape = tuple(getattr(model, "input_shape", (1, 3, 224, 224)))
    return BuiltModel(model.eval(), f"{path.resolve()}:{factory_name}", shape, kwargs, _declared_preprocess(model, spec))


def _declared_preprocess(model: nn.Module, spec: str) -> Preprocess | None:
    """A user's model may say how its inputs are made: ``model.preprocess``, a Preprocess or a dict."""
    declared = getattr(model, "preprocess", None)
    if declared is None or isinstance(declared, Preprocess):
        return declared
    if isinstance(declared, dict):
        return Preprocess(**{"source": f"{spec} (model.preprocess)", **declared})
    raise EdgepruneError(f"{spec}: model.preprocess must be a dict like {{'mean': [...], 'std': [...]}}")
