"""Pruned checkpoints that reload without unpickling any class.

A checkpoint is a plain dict (strings, numbers, lists, tensors) saved with ``torch.save`` and read
with ``torch.load(weights_only=True)``: the base model's spec and build arguments, and the pruned
state_dict. Loading builds the base model, gives its tensors the saved shapes (the surgery's
per-layer table then fixes each layer's size attributes) and loads the weights.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.models import build
from edgeprune.models.registry import BuiltModel
from edgeprune.surgery import resize_to

FORMAT = "edgeprune-checkpoint/1"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass
class LoadedModel(BuiltModel):
    """A built model plus what its file said about it (and where it came from)."""

    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(model: nn.Module, path: str | Path, *, spec: str, input_shape: tuple[int, ...],
                    kwargs: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "spec": spec,
        "kwargs": dict(kwargs or {}),
        "input_shape": list(input_shape),
        "metadata": dict(metadata or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
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


def load_model(source: str | None = None, weights: str | Path | None = None) -> LoadedModel:
    """Build a model from a spec, a pruned checkpoint, or (``None``) the built-in default model.

    >>> load_model("resnet20-cifar").input_shape
    (1, 3, 32, 32)
    """
    if source is None:
        from edgeprune.models.default import build_default

        built = build_default()
        loaded = LoadedModel(built.model, built.spec, built.input_shape, built.kwargs, {"default": True})
    elif is_checkpoint_path(source):
        loaded = _load_checkpoint(Path(source))
    else:
        built = build(source)
        loaded = LoadedModel(built.model, built.spec, built.input_shape, built.kwargs)
    if weights is not None:
        load_weights(loaded.model, _state_dict_of(_read(Path(weights)), Path(weights)), Path(weights))
    loaded.model.eval()
    return loaded


def _load_checkpoint(path: Path) -> LoadedModel:
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgepruneError(f"{path} is not an edgeprune checkpoint (for a plain state_dict use MODEL --weights {path})")
    if payload["spec"] == "default":
        from edgeprune.models.default import build_default

        built = build_default()
    else:
        built = build(payload["spec"], **payload["kwargs"])
    load_weights(built.model, payload["state_dict"], path)
    shape = tuple(payload["input_shape"])
    return LoadedModel(built.model, payload["spec"], shape, payload["kwargs"], payload.get("metadata", {}), path)


def _state_dict_of(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return payload["state_dict"]
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        return payload["state_dict"]
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload
    raise EdgepruneError(f"{path} holds no state_dict")


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path | str = "weights") -> None:
    """Load ``state_dict`` into ``model``, first reshaping layers to pruned shapes if needed."""
    resize_to(model, state_dict)
    result = model.load_state_dict(state_dict, strict=False)
    problems = list(result.missing_keys) + list(result.unexpected_keys)
    if problems:
        raise EdgepruneError(f"{path} does not fit this model: {len(problems)} mismatched keys, e.g. {problems[0]}")
