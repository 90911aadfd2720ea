"""Pruned checkpoints that reload without unpickling any class.

A checkpoint is a plain dict (strings, numbers, lists, tensors) saved with ``torch.save`` and read
with ``torch.load(weights_only=True)``: the base model's spec and build arguments, the pruned
state_dict, the int attributes pruning changed (split sizes, ``{"model.6": {"c": 40}}``), and
the state_dict's per-module metadata (``{"layers.0": {"version": 1}, ...}``, which
some modules, e.g. torchvision's MNASNet and every BatchNorm, read when loading). Loading builds the
base model, gives its tensors the saved shapes (the surgery's per-layer table then fixes each
layer's size attributes) and loads the weights with that metadata re-attached.
"""
from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune.calibration.preprocess import Preprocess
from edgeprune.errors import EdgepruneError, describe
from edgeprune.graph import require_one_input
from edgeprune.models.default import build_default
from edgeprune.models.registry import BuiltModel, build_spec
from edgeprune.surgery import resize_to, resized_attributes, set_attributes

FORMAT = "edgeprune-checkpoint/1"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass
class LoadedModel(BuiltModel):
    """A built model plus what its file said about it (and where it came from)."""

    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(model: nn.Module, path: str | Path, *, spec: str, input_shape: tuple[int, ...],
                    kwargs: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
                    preprocess: Preprocess | None = None) -> Path:
    """Write ``model`` atomically (temporary file, then rename), with its input shape and preprocessing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = model.state_dict()
    payload = {
        "format": FORMAT,
        "spec": spec,
        "kwargs": dict(kwargs or {}),
        "input_shape": list(input_shape),
        "preprocess": preprocess.to_dict() if preprocess else None,
        "metadata": dict(metadata or {}),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "state_dict_metadata": _plain_metadata(state_dict),
        "attributes": resized_attributes(model),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


_PLAIN = (bool, int, float, str, type(None))


def _plain_metadata(state_dict: Any) -> dict[str, dict[str, Any]]:
    """A state_dict's ``_metadata`` (module prefix -> ``{"version": n}``) as plain, weights-only data."""
    metadata = getattr(state_dict, "_metadata", None) or {}
    return {str(prefix): {str(k): v for k, v in entry.items() if isinstance(v, _PLAIN)}
            for prefix, entry in metadata.items() if isinstance(entry, dict)}


def with_metadata(state_dict: dict[str, torch.Tensor], metadata: dict[str, dict[str, Any]] | None) -> OrderedDict:
    """``state_dict`` as the OrderedDict ``load_state_dict`` expects, with ``metadata`` as its ``_metadata``."""
    restored = OrderedDict(state_dict)
    if metadata is not None:
        restored._metadata = OrderedDict((prefix, dict(entry)) for prefix, entry in metadata.items())
    return restored


def _read(path: Path) -> Any:
    if not path.is_file():
        raise EdgepruneError(f"file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgepruneError(f"cannot read {path} as a weights-only torch file: {reason[:200]}") from exc


def is_checkpoint_path(source: str) -> bool:
    return ".py:" not in source and (source.endswith(CHECKPOINT_SUFFIXES) or Path(source).is_file())


def load_model(source: str | None = None, weights: str | Path | None = None,
               input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """Build a model from a spec, a pruned checkpoint, or (``None``) the built-in default model.

    ``input_shape`` replaces the shape the model (or its checkpoint) declares; it is checked by
    running the model once on zeros of that shape.

    >>> load_model("resnet20-cifar").input_shape
    (1, 3, 32, 32)
    """
    if source is None:
        built = build_default()
        loaded = LoadedModel(built.model, built.spec, built.input_shape, built.kwargs, built.preprocess, {"default": True})
    elif is_checkpoint_path(source):
        loaded = _load_checkpoint(Path(source))
    else:
        built = build_spec(source, pretrained=weights is None)  # --weights replaces them: no hub file needed
        loaded = LoadedModel(built.model, built.spec, built.input_shape, built.kwargs, built.preprocess)
    require_one_input(loaded.model)
    if weights is not None:
        load_weights(loaded.model, _state_dict_of(_read(Path(weights)), Path(weights)), Path(weights))
    loaded.model.eval()
    if input_shape is not None and tuple(input_shape) != tuple(loaded.input_shape):
        check_input_shape(loaded, tuple(input_shape), "--input-shape")
        loaded.input_shape = tuple(input_shape)
    return loaded


def check_input_shape(loaded: BuiltModel, shape: tuple[int, ...], given_by: str) -> None:
    """One clear error, not a traceback from deep inside, when ``shape`` does not fit the model."""
    if len(shape) < 2 or any(int(d) < 1 for d in shape):
        raise EdgepruneError(f"{given_by} must be positive sizes like 1x3x224x224, got {'x'.join(map(str, shape))}")
    try:
        with torch.no_grad():
            loaded.model(torch.zeros(shape))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        given, own = "x".join(map(str, shape)), "x".join(map(str, loaded.input_shape))
        raise EdgepruneError(f"{given_by} {given} does not fit {loaded.spec} (input {own}): {reason[:200]}") from None


def _load_checkpoint(path: Path) -> LoadedModel:
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgepruneError(f"{path} is not an edgeprune checkpoint (for a plain state_dict use MODEL --weights {path})")
    try:
        return _rebuild(payload, path)
    except EdgepruneError:
        raise
    except Exception as exc:  # a damaged or foreign file: builder, surgery or load_state_dict errors, in one line
        raise EdgepruneError(f"cannot rebuild the model in {path}: {describe(exc)}") from exc


def _rebuild(payload: dict[str, Any], path: Path) -> LoadedModel:
    if payload["spec"] == "default":
        built = build_default()
    else:
        built = build_spec(payload["spec"], pretrained=False, **payload["kwargs"])  # the state_dict replaces the weights
    metadata = payload.get("state_dict_metadata")
    if metadata is None:  # written before the metadata was kept: the freshly built model's own versions
        metadata = _plain_metadata(built.model.state_dict())
    set_attributes(built.model, payload.get("attributes") or {})
    load_weights(built.model, with_metadata(payload["state_dict"], metadata), path)
    shape = tuple(payload["input_shape"])
    preprocess = Preprocess.from_dict(payload.get("preprocess")) or built.preprocess
    return LoadedModel(built.model, payload["spec"], shape, payload["kwargs"], preprocess, payload.get("metadata", {}), path)


def _state_dict_of(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return with_metadata(payload["state_dict"], payload.get("state_dict_metadata"))
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        return payload["state_dict"]
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload
    raise EdgepruneError(f"{path} holds no state_dict")


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path | str = "weights") -> None:
    """Load ``state_dict`` into ``model``, first reshaping layers to pruned shapes if needed.

    Keep the state_dict's ``_metadata`` (see :func:`with_metadata`): some modules refuse to load
    without their version. Any failure is one :class:`EdgepruneError` line naming ``path``.
    """
    try:
        resize_to(model, state_dict)
        result = model.load_state_dict(state_dict, strict=False)
    except Exception as exc:
        raise EdgepruneError(f"cannot load {path} into {type(model).__name__}: {describe(exc)}") from exc
    problems = list(result.missing_keys) + list(result.unexpected_keys)
    if problems:
        raise EdgepruneError(f"{path} does not fit this model: {len(problems)} mismatched keys, e.g. {problems[0]}")
