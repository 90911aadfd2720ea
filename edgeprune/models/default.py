"""The shipped default model: ResNet-20 (1 input channel, 10 classes) trained on ``mnist5k``.

Commands that need a model or data can fall back to :data:`DEFAULT` and :data:`DEFAULT_DATA`.
The weights and ``default.json`` (accuracy, training time, how to reproduce) are written by
``scripts/train_default.py``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeprune.calibration.preprocess import Preprocess
from edgeprune.errors import EdgepruneError
from edgeprune.models.registry import BuiltModel, build_spec

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class DefaultModel:
    """Where the default model's recipe, weights and record live."""

    spec: str
    kwargs: dict[str, Any] = field(hash=False)
    data: str
    weights: Path
    record: Path
    preprocess: Preprocess


DEFAULT = DefaultModel(
    spec="resnet20-cifar",
    kwargs={"in_channels": 1, "num_classes": 10},
    data="mnist5k",
    weights=ASSETS / "default_resnet20_mnist5k.pt",
    record=ASSETS / "default.json",
    # mnist5k's own pixel statistics (2,000 training images), which scripts/train_default.py trained with
    preprocess=Preprocess(mean=(0.09989918768405914,), std=(0.27475032210350037,),
                          source="mnist5k statistics the default model was trained with"),
)
DEFAULT_DATA = DEFAULT.data


def build_default() -> BuiltModel:
    """ResNet-20 with the shipped mnist5k weights, in eval mode.

    >>> built = build_default()
    >>> built.input_shape, built.kwargs["num_classes"]
    ((1, 1, 32, 32), 10)
    """
    if not DEFAULT.weights.is_file():
        raise EdgepruneError(f"default weights missing: {DEFAULT.weights} (run scripts/train_default.py)")
    built = build_spec(DEFAULT.spec, **DEFAULT.kwargs)
    built.model.load_state_dict(torch.load(DEFAULT.weights, map_location="cpu", weights_only=True))
    built.preprocess = DEFAULT.preprocess
    return built


def default_record() -> dict[str, Any]:
    """What ``default.json`` says about the shipped weights (accuracy, split, time, command).

    >>> default_record()["data"]["source"]
    'mnist5k'
    """
    try:
        return json.loads(DEFAULT.record.read_text())
    except (OSError, ValueError) as exc:
        raise EdgepruneError(f"cannot read {DEFAULT.record}: {exc}") from exc
