"""From a source spec to model inputs: split, convert channels, resize, then the model's preprocessing.

Splits are deterministic. ``train`` and ``val`` partition the source's training images with
``val_fraction`` and ``seed`` (keep the seed fixed: it decides which images are held out);
``test`` is the source's own test split (CIFAR, ``folder:`` with ``train/`` and ``test/``, npz
with ``x_test``) and an error elsewhere (``mnist5k`` and ``digits`` have none: use ``val``);
``all`` is every image, training and test.

Images (0-255 pixels) become inputs by a :class:`~edgeprune.calibration.preprocess.Preprocess`:
the model's own (its checkpoint, its registry entry, torchvision's weights' transforms, or the
user's ``--mean``/``--std``), never silently the data's statistics; :func:`data_statistics`
measures those when asked. A float npz already holds model inputs and is used as given.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from edgeprune.calibration.preprocess import Preprocess, override
from edgeprune.calibration.sources import KINDS, Fit, RawSource, box_array, check_box_classes, parse_spec
from edgeprune.errors import EdgepruneError

SPLITS = ("train", "val", "test", "all")
STATS_IMAGES = 2000
STATS_SEED = 0
MAX_BYTES = 8 * 2**30
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True, eq=False)
class LabeledArrays:
    """Model inputs: ``x`` float32 N x C x H x W, ``y`` int64 or None.

    ``preprocess`` is what turned the source's pixels into ``x`` (None: the source held model
    inputs, used as given), so a deployment can apply the same. ``boxes`` (detection labels): per
    image an M x 5 float32 array, class then x1, y1, x2, y2 in the model input's pixels (after the
    letterbox or crop that placed the image).
    """

    x: np.ndarray
    y: np.ndarray | None
    num_classes: int
    preprocess: Preprocess | None
    name: str
    split: str
    boxes: np.ndarray | None = None  # an object array, one M x 5 array per image
    masks: np.ndarray | None = None  # segmentation labels: N x H x W class ids at the input size (255: no class)

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, keep: np.ndarray) -> LabeledArrays:
        """The images ``keep`` indexes, with their labels."""
        return replace(self, x=self.x[keep], y=_pick(self.y, keep), boxes=_pick(self.boxes, keep),
                       masks=_pick(self.masks, keep))

    def black(self) -> np.ndarray:
        """Per-channel input value of a black pixel (the padding of a crop); as-given inputs: their minimum."""
        if self.preprocess is None:
            return self.x.min(axis=(0, 2, 3)) if len(self.x) else np.zeros(self.x.shape[1], np.float32)
        return self.preprocess.apply(np.zeros((1, self.x.shape[1], 1, 1), np.float32)).reshape(-1)

    def __repr__(self) -> str:
        return f"LabeledArrays({self.name} [{self.split}], x={tuple(self.x.shape)}, classes={self.num_classes})"


def list_sources() -> list[str]:
    """How each available kind of source is written.

    >>> any(u.startswith("mnist5k") for u in list_sources())
    True
    """
    return [k.usage for k in KINDS.values()]


def has_test_split(spec: str, size: int | tuple[int, int] | None = None, preprocess: Preprocess | None = None) -> bool:
    """Whether ``spec`` has its own test split (so ``split="test"`` works).

    ``size`` and ``preprocess`` as for :func:`load_data` (folders of mixed-size images need them).

    >>> has_test_split("mnist5k")
    False
    """
    return _read(spec, _fit(size, preprocess)).test_x is not None


def is_labelled(spec: str, size: int | tuple[int, int] | None = None, preprocess: Preprocess | None = None) -> bool:
    """Whether ``spec``'s training images have labels."""
    return _read(spec, _fit(size, preprocess)).train_y is not None


def load_data(
    spec: str,
    *,
    split: str = "train",
    channels: int | None = None,
    size: int | tuple[int, int] | None = None,
    preprocess: Preprocess | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
) -> LabeledArrays:
    """Load ``split`` of the source ``spec`` as model inputs (see the module docstring).

    Images: ``channels`` converts 1 -> 3 (repeat) or 3 -> 1 (luminance), ``size`` resizes
    (bilinear; or ``preprocess.resize`` then a centre crop), then ``preprocess`` (default: pixels
    / 255). Model inputs (a float npz) must already have that shape. ``limit`` keeps a
    deterministic random subset of at most that many images. NaN or Inf anywhere is refused.

    >>> val = load_data("mnist5k", split="val", channels=3, size=32)
    >>> val.x.shape, val.y.shape, val.num_classes, float(val.x.max())
    ((500, 3, 32, 32), (500,), 10, 1.0)
    """
    if split not in SPLITS:
        raise EdgepruneError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
    if not 0.0 <= val_fraction < 1.0:
        raise EdgepruneError(f"val_fraction must be in [0, 1), got {val_fraction}")
    preprocess = preprocess or Preprocess()
    fit = _fit(size, preprocess)
    raw = _read(spec, fit)
    x, y, boxes, masks = _select(raw, split, val_fraction, seed)
    if limit is not None:
        keep = _subset(len(x), limit, seed)
        x, y, boxes, masks = x[keep], _pick(y, keep), _pick(boxes, keep), _pick(masks, keep)
    if raw.inputs:
        x, used = _as_given(x, channels, fit, raw.name), None
    else:
        _check_memory(len(x), channels or x.shape[1], fit.size if fit else x.shape[2:])
        placed = parse_spec(spec)[0].resizes_on_read  # the reader already brought the images to the size
        x, used = preprocess.apply(_pixels(x, channels, None if placed else fit), inplace=True), preprocess
    _check_finite(x, raw.name)
    boxes = None if boxes is None else box_array([b[:, :5] for b in boxes])
    if masks is not None and masks.shape[1:] != x.shape[2:]:
        raise EdgepruneError(f"{raw.name}: masks are {'x'.join(map(str, masks.shape[1:]))}, but the model takes "
                             f"{'x'.join(map(str, x.shape[2:]))} images: store images and masks at the input size")
    return LabeledArrays(x, y, raw.num_classes, used, raw.name, split, boxes, masks)


def check_classes(spec: str, classes: int, size: int | tuple[int, int] | None = None,
                  preprocess: Preprocess | None = None) -> None:
    """``spec``'s detection boxes all name one of a detector's ``classes`` (one line naming the file and row)."""
    raw = _read(spec, _fit(size, preprocess))
    if raw.train_boxes is not None:
        check_box_classes(raw, classes)


def data_statistics(spec: str, *, channels: int | None = None, size: int | tuple[int, int] | None = None,
                    base: Preprocess | None = None) -> Preprocess:
    """``base`` with the mean and std measured on ``spec``'s training pixels (only when asked for)."""
    base = base or Preprocess()
    fit = _fit(size, base)
    mean, std = _stats(spec, channels, fit, base.pixel_range, base.channel_order)
    return replace(base, mean=tuple(mean.tolist()), std=tuple(std.tolist()), source=f"statistics of {spec}")


@dataclass(frozen=True)
class PreprocessChoice:
    """What the user said about preprocessing (None: keep the model's own)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pixel_range: str | None = None
    channel_order: str | None = None
    resize: int | None = None
    data_stats: bool = False

    def resolve(self, model_default: Preprocess | None, spec: str | None,
                input_shape: tuple[int, ...]) -> Preprocess:
        """The model's preprocessing with these choices on top; ``data_stats`` measures ``spec``'s."""
        base = override(model_default, mean=self.mean or None, std=self.std or None, pixel_range=self.pixel_range,
                        channel_order=self.channel_order, resize=self.resize)
        base.affine(input_shape[1])  # one clear error now if the channel counts disagree
        if not self.data_stats:
            return base
        if self.mean or self.std:
            raise EdgepruneError("--data-stats measures the mean and std: drop --mean/--std")
        if spec is None:
            raise EdgepruneError("--data-stats needs data to measure: give --calib SOURCE")
        return data_statistics(spec, channels=input_shape[1], size=tuple(input_shape[2:]), base=base)


def sample(arrays: LabeledArrays, n: int, seed: int = 0) -> LabeledArrays:
    """A deterministic random subset of at most ``n`` images, in their original order.

    >>> val = load_data("mnist5k", split="val")
    >>> len(sample(val, 64, seed=1)), sample(val, 64, seed=1).y.tolist() == sample(val, 64, seed=1).y.tolist()
    (64, True)
    """
    return arrays.subset(_subset(len(arrays), n, seed))


# --- steps --------------------------------------------------------------------------------------

def _size_pair(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise EdgepruneError(f"size must be a positive int or (height, width), got {size!r}")
    return pair


def _fit(size: int | tuple[int, int] | None, preprocess: Preprocess | None) -> Fit | None:
    hw = _size_pair(size)
    return None if hw is None else Fit(hw, preprocess.resize if preprocess else None)


def _read(spec: str, fit: Fit | None) -> RawSource:
    kind, _ = parse_spec(spec)
    return _read_cached(spec, fit if kind.resizes_on_read else None)


@functools.lru_cache(maxsize=4)
def _read_cached(spec: str, fit: Fit | None) -> RawSource:
    kind, path = parse_spec(spec)
    raw = kind.reader(path, fit)
    if len(raw.train_x) == 0:
        raise EdgepruneError(f"data source '{spec}' holds no images")
    for array in (raw.train_x, raw.train_y, raw.test_x, raw.test_y):
        if array is not None:
            array.flags.writeable = False  # shared by the cache
    return raw


def _split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _pick(values: np.ndarray | None, keep: np.ndarray) -> np.ndarray | None:
    return None if values is None else values[keep]


def _joined(train: np.ndarray | None, test: np.ndarray | None) -> np.ndarray | None:
    return None if train is None or test is None else np.concatenate([train, test])


Selected = tuple[np.ndarray, "np.ndarray | None", "np.ndarray | None", "np.ndarray | None"]  # images, class
# labels, boxes, masks


def _select(raw: RawSource, split: str, val_fraction: float, seed: int) -> Selected:
    if split == "test":
        if raw.test_x is None:
            raise EdgepruneError(f"'{raw.name}' has no test split; use split 'val' (held out from its training images)")
        return raw.test_x, raw.test_y, raw.test_boxes, raw.test_masks
    if split == "all":
        if raw.test_x is None:
            return raw.train_x, raw.train_y, raw.train_boxes, raw.train_masks
        return (np.concatenate([raw.train_x, raw.test_x]), _joined(raw.train_y, raw.test_y),
                _joined(raw.train_boxes, raw.test_boxes), _joined(raw.train_masks, raw.test_masks))
    train, val = _split_indices(len(raw.train_x), val_fraction, seed)
    keep = train if split == "train" else val
    if len(keep) == 0:
        raise EdgepruneError(f"'{raw.name}': the {split} split is empty (val_fraction={val_fraction})")
    return raw.train_x[keep], _pick(raw.train_y, keep), _pick(raw.train_boxes, keep), _pick(raw.train_masks, keep)


def _subset(n: int, limit: int, seed: int) -> np.ndarray:
    if limit < 1:
        raise EdgepruneError(f"limit must be at least 1, got {limit}")
    if limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _check_memory(n: int, channels: int, hw: tuple[int, int]) -> None:
    needed = n * channels * hw[0] * hw[1] * 4
    if needed > MAX_BYTES:
        raise EdgepruneError(
            f"{n} images of {channels}x{hw[0]}x{hw[1]} need {needed / 2**30:.1f} GiB as float32; use a limit"
        )


def _pixels(x: np.ndarray, channels: int | None, fit: Fit | None) -> np.ndarray:
    """0-255 pixels as float32, channels converted, at the input size."""
    out = _convert_channels(x.astype(np.float32), channels)
    return out if fit is None else _resize(out, fit)


def _as_given(x: np.ndarray, channels: int | None, fit: Fit | None, name: str) -> np.ndarray:
    """Model inputs are not converted: they must already have the model's input shape."""
    want = (channels or x.shape[1], *(fit.size if fit else x.shape[2:]))
    if tuple(x.shape[1:]) != want:
        given, needed = "x".join(map(str, x.shape[1:])), "x".join(map(str, want))
        raise EdgepruneError(f"{name} holds model inputs of {given} (used as given), but the model takes {needed}; "
                             "store inputs of that shape, or uint8 pixels to be preprocessed")
    return np.array(x, dtype=np.float32)


def _check_finite(x: np.ndarray, name: str) -> None:
    bad = x.size - int(np.isfinite(x).sum())
    if bad:
        images = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum())
        raise EdgepruneError(f"{name}: {bad} values in {images} of {len(x)} images are NaN or Inf")


def _convert_channels(x: np.ndarray, channels: int | None) -> np.ndarray:
    have = x.shape[1]
    if channels is None or channels == have:
        return x
    if have == 1:
        return np.repeat(x, channels, axis=1)
    if have == 3 and channels == 1:
        return np.tensordot(x, LUMA, axes=([1], [0]))[:, None].astype(np.float32)
    raise EdgepruneError(f"cannot convert {have}-channel images to {channels} channels")


def _resize(x: np.ndarray, fit: Fit, chunk: int = 1024) -> np.ndarray:
    """Bilinear resize to ``fit.size``, or shorter side to ``fit.shorter`` and a centre crop."""
    import torch
    import torch.nn.functional as F

    height, width = fit.size
    if fit.shorter is None:
        if tuple(x.shape[2:]) == fit.size:
            return x
        scaled = fit.size
    else:
        factor = fit.shorter / min(x.shape[2:])
        scaled = (max(height, round(x.shape[2] * factor)), max(width, round(x.shape[3] * factor)))
    top, left = (scaled[0] - height) // 2, (scaled[1] - width) // 2
    out = np.empty((len(x), x.shape[1], height, width), np.float32)
    for start in range(0, len(x), chunk):
        part = torch.from_numpy(np.ascontiguousarray(x[start:start + chunk]))
        if tuple(part.shape[2:]) != scaled:
            part = F.interpolate(part, size=scaled, mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = part[:, :, top:top + height, left:left + width].numpy()
    return out


@functools.lru_cache(maxsize=16)
def _stats(spec: str, channels: int | None, fit: Fit | None, pixel_range: str,
           channel_order: str) -> tuple[np.ndarray, np.ndarray]:
    raw = _read(spec, fit)
    if raw.inputs:
        raise EdgepruneError(f"{spec} holds model inputs (used as given): its statistics would not be applied")
    keep = _subset(len(raw.train_x), STATS_IMAGES, STATS_SEED)
    scale = Preprocess(pixel_range=pixel_range, channel_order=channel_order)
    x = scale.apply(_pixels(raw.train_x[keep], channels, fit), inplace=True)
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = np.maximum(x.std(axis=(0, 2, 3), dtype=np.float64), 1e-6)
    return mean.astype(np.float32), std.astype(np.float32)


def clear_cache() -> None:
    """Forget cached sources (files changed on disk, or to free memory)."""
    _read_cached.cache_clear()
    _stats.cache_clear()
