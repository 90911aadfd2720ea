"""How images become a model's input: the model's own preprocessing, not the data's statistics.

A :class:`Preprocess` turns pixels (0-255, RGB, N x C x H x W, already at the input size) into
the tensor a network was trained on: channel order, scale to 0-1 (or keep 0-255), subtract a
per-channel mean and divide by a std. It also says how images are brought to the input size
(straight resize, or shorter side to ``resize`` then a centre crop, as torchvision's ImageNet
transforms do). It is plain data: stored in checkpoints and reports, and baked into an ONNX
graph on request (:func:`edgeprune.export.with_preprocessing`) so an app can feed raw pixels.

>>> p = Preprocess(mean=(0.5,), std=(0.25,))
>>> float(p.apply(np.full((1, 1, 2, 2), 255.0, np.float32))[0, 0, 0, 0])
2.0
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from edgeprune.errors import EdgepruneError

PIXEL_RANGES = {"0-1": 255.0, "0-255": 1.0}  # what 0-255 pixels are divided by
CHANNEL_ORDERS = ("rgb", "bgr")
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CIFAR10 = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))


@dataclass(frozen=True)
class Preprocess:
    """Pixels -> model input. ``mean``/``std`` are per channel (or one value for all), in the
    model's channel order, on the ``pixel_range`` scale; empty means no centring / scaling."""

    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    pixel_range: str = "0-1"
    channel_order: str = "rgb"
    resize: int | None = None  # shorter side before a centre crop; None: resize straight to the input size
    source: str = "default (pixels / 255)"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.pixel_range not in PIXEL_RANGES:
            raise EdgepruneError(f"pixel range must be one of {', '.join(PIXEL_RANGES)}, got '{self.pixel_range}'")
        if self.channel_order not in CHANNEL_ORDERS:
            raise EdgepruneError(f"channel order must be rgb or bgr, got '{self.channel_order}'")
        if any(not np.isfinite(v) for v in self.mean + self.std) or any(s <= 0 for s in self.std):
            raise EdgepruneError(f"--mean must be finite and --std positive, got mean {self.mean}, std {self.std}")
        if self.resize is not None and self.resize < 1:
            raise EdgepruneError(f"--resize must be a positive number of pixels, got {self.resize}")

    def affine(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``scale``, ``shift`` with ``input = pixels * scale + shift``."""
        mean = self._per_channel(self.mean, channels, "mean", 0.0)
        std = self._per_channel(self.std, channels, "std", 1.0)
        scale = 1.0 / (PIXEL_RANGES[self.pixel_range] * std)
        return scale.astype(np.float32), (-mean / std).astype(np.float32)

    def _per_channel(self, values: tuple[float, ...], channels: int, what: str, neutral: float) -> np.ndarray:
        if not values:
            return np.full(channels, neutral)
        if len(values) == 1:
            return np.full(channels, values[0])
        if len(values) != channels:
            raise EdgepruneError(f"the preprocessing has {len(values)} {what} values for a {channels}-channel input")
        return np.asarray(values, dtype=np.float64)

    def reorder(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels in the model's channel order (sources are RGB)."""
        return pixels[:, ::-1] if self.channel_order == "bgr" and pixels.shape[1] == 3 else pixels

    def apply(self, pixels: np.ndarray, inplace: bool = False) -> np.ndarray:
        """0-255 RGB pixels (N x C x H x W) -> float32 model inputs (``inplace``: may reuse ``pixels``' memory)."""
        scale, shift = self.affine(pixels.shape[1])
        ordered = self.reorder(pixels)
        x = np.ascontiguousarray(ordered, dtype=np.float32) if inplace else np.array(ordered, dtype=np.float32)
        x *= scale[None, :, None, None]
        x += shift[None, :, None, None]
        return x

    def for_channels(self, channels: int) -> Preprocess:
        """The same preprocessing for a model with another channel count (values averaged)."""
        def fit(values: tuple[float, ...]) -> tuple[float, ...]:
            return values if len(values) in (0, 1, channels) else (float(np.mean(values)),)

        return replace(self, mean=fit(self.mean), std=fit(self.std))

    def describe(self) -> str:
        steps = [("BGR" if self.channel_order == "bgr" else "RGB") + " pixels"
                 + (" / 255" if self.pixel_range == "0-1" else " (0-255)")]
        if self.mean:
            steps.append(f"minus mean {_fmt(self.mean)}")
        if self.std:
            steps.append(f"over std {_fmt(self.std)}")
        size = f"shorter side {self.resize} then centre crop" if self.resize else "resized to the input"
        return f"{', '.join(steps)}; {size} [{self.source}]"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Preprocess | None:
        if not data:
            return None
        known = {k: data[k] for k in ("mean", "std", "pixel_range", "channel_order", "resize", "source") if k in data}
        return cls(**known)


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def override(base: Preprocess | None, *, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
             pixel_range: str | None = None, channel_order: str | None = None, resize: int | None = None) -> Preprocess:
    """``base`` (the model's own) with the user's choices on top; the source says which."""
    changes = {k: v for k, v in dict(mean=mean, std=std, pixel_range=pixel_range, channel_order=channel_order,
                                     resize=resize).items() if v is not None}
    base = base or Preprocess()
    if not changes:
        return base
    return replace(base, **changes, source="given on the command line" + (f" over {base.source}" if base.mean else ""))


def torchvision_preprocess(name: str, input_side: int) -> Preprocess:
    """The transforms of torchvision's default weights for ``name`` (ImageNet's if it has none)."""
    import torchvision

    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, AttributeError, KeyError):
        return Preprocess(**IMAGENET, resize=round(input_side * 256 / 224), source="ImageNet convention")
    crop = _first(getattr(transforms, "crop_size", input_side))
    resize = _first(getattr(transforms, "resize_size", crop))
    return Preprocess(mean=tuple(transforms.mean), std=tuple(transforms.std),
                      resize=round(resize * input_side / crop), source=f"torchvision {name} weights' transforms")


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)
