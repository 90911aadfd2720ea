"""One registry of models by name (in the spirit of timm's ``create_model``).

A *spec* names a model in one of four ways:

- a registered name: ``vgg16-cifar``, ``resnet56-cifar``, ``mobilenetv1-cifar``, ...
- ``torchvision:NAME``: any torchvision classification model with its pretrained weights (torchvision's
  ``DEFAULT``, read from the torch hub cache); ``torchvision:NAME?weights=none`` for random weights,
  ``?weights=IMAGENET1K_V1`` (any of the model's weight names) for others
- ``path/to/file.py:factory``: a user's own model, built by calling ``factory()``
- a checkpoint written by ``edgeprune prune`` (``*.pt``), handled by :mod:`edgeprune.checkpoint`
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from torch import nn

from edgeprune.calibration.preprocess import Preprocess, torchvision_preprocess
from edgeprune.errors import EdgepruneError, describe

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


def build_spec(spec: str, *, pretrained: bool = True, **kwargs: Any) -> BuiltModel:
    """Build the model named by ``spec`` (a registered name, ``torchvision:NAME``, ``FILE.py:factory``;
    :func:`edgeprune.models.build` takes a checkpoint too). ``None`` keyword values are dropped.

    ``pretrained=False`` when the caller loads weights of its own (a checkpoint, ``--weights``):
    ``torchvision:NAME`` then skips reading its pretrained weights.

    >>> build_spec("resnet56-cifar").input_shape
    (1, 3, 32, 32)
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if spec.startswith(TORCHVISION_PREFIX):
        return _build_torchvision(spec, kwargs, pretrained)
    if ".py:" in spec:
        return _build_from_file(spec, kwargs)
    entry = get_entry(spec)
    merged = {**entry.defaults, **kwargs}
    model = entry.builder(**merged)
    shape = (1, merged.get("in_channels", entry.input_shape[1]), *entry.input_shape[2:])
    preprocess = entry.preprocess.for_channels(shape[1]) if entry.preprocess else None
    return BuiltModel(model.eval(), spec, shape, merged, preprocess)


RANDOM_WEIGHTS = "none"  # torchvision:NAME?weights=none


def _build_torchvision(spec: str, kwargs: dict[str, Any], pretrained: bool) -> BuiltModel:
    import torchvision

    name, _, query = spec[len(TORCHVISION_PREFIX):].partition("?")
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise EdgepruneError(f"unknown torchvision classification model '{name}'")
    choice = _weights_choice(spec, query)
    weights = _pretrained(name, choice) if pretrained and choice != RANDOM_WEIGHTS else None
    if weights is None and name in ("googlenet", "inception_v3"):
        kwargs.setdefault("init_weights", True)
    side = 299 if name == "inception_v3" else 224
    if weights is None:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    else:
        with _weights_only_loads():  # torchvision reads the hub file with torch.load: tensors only, no objects
            try:
                model = torchvision.models.get_model(name, weights=weights, **kwargs)
            except Exception as exc:  # a damaged or foreign file in the hub cache
                raise EdgepruneError(f"cannot load {_cached_file(weights)} into torchvision {name}: "
                                     f"{describe(exc)}") from exc
    return BuiltModel(model.eval(), spec, (1, 3, side, side), kwargs, torchvision_preprocess(name, side))


def _weights_choice(spec: str, query: str) -> str:
    """``DEFAULT``, ``none`` or a weight name from ``?weights=...``."""
    if not query:
        return "DEFAULT"
    key, _, value = query.partition("=")
    if key != "weights" or not value:
        raise EdgepruneError(f"{spec}: expected torchvision:NAME or torchvision:NAME?weights=none|DEFAULT|<weights name>")
    return RANDOM_WEIGHTS if value.lower() == RANDOM_WEIGHTS else value


def _pretrained(name: str, choice: str) -> Any:
    """The torchvision weights ``choice`` names for model ``name``, their file in the torch hub cache
    (downloaded there when absent and the network allows), or one line saying how to get them."""
    import torchvision

    family = torchvision.models.get_model_weights(name)
    try:
        weights = family[choice]
    except KeyError:
        known = ", ".join(["DEFAULT", *family.__members__, RANDOM_WEIGHTS])
        raise EdgepruneError(f"torchvision {name} has no weights '{choice}' (known: {known})") from None
    path = _cached_file(weights)
    if not path.is_file():
        _download(weights.url, path, name)
    return weights


def _cached_file(weights: Any) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _download(url: str, path: Path, name: str) -> None:
    import torch

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as exc:  # offline, a proxy, a full disk: the same advice
        reason = str(getattr(exc, "reason", "") or exc).strip().splitlines()
        raise EdgepruneError(
            f"torchvision:{name} means its pretrained weights, and {path.name} is not in the torch hub cache and "
            f"cannot be downloaded here ({reason[0][:80] if reason else type(exc).__name__}): put {path.name} "
            f"(from {url}) in {path.parent}, or pass --weights FILE, or ask for random weights with "
            f"torchvision:{name}?weights=none") from None


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside reads tensors only (PyTorch's own switch), whatever the caller asks."""
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


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
    try:
        model = factory(**kwargs)
    except Exception as exc:  # the user's own code (e.g. loading their weights): one line that names it
        raise EdgepruneError(f"{spec}: {factory_name}() raised {describe(exc)}") from exc
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
