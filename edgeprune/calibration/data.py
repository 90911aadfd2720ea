"""From a source spec to normalised float arrays: split, convert channels, resize, normalise.

Splits are deterministic. ``train`` and ``val`` partition the source's training images with
``val_fraction`` and ``seed`` (keep the seed fixed: it decides which images are held out);
``test`` is the source's own test split (CIFAR, ``folder:`` with ``train/`` and ``test/``, npz
with ``x_test``) and an error elsewhere (``mnist5k`` and ``digits`` have none: use ``val``);
``all`` is every image, training and test.

Normalisation uses one mean and std per channel, measured on a fixed subset of the source's
training images after channel conversion and resizing, so every split and every call with the
same ``channels`` and ``size`` sees the same statistics.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from edgeprune.calibration.sources import KINDS, RawSource, parse_spec
from edgeprune.errors import EdgepruneError

SPLITS = ("train", "val", "test", "all")
STATS_IMAGES = 2000
STATS_SEED = 0
MAX_BYTES = 8 * 2**30
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True, eq=False)
class LabeledArrays:
    """Images ready for a network: ``x`` float32 N x C x H x W normalised, ``y`` int64 or None.

    ``mean`` and ``std`` are the per-channel statistics that were subtracted and divided, in
    the 0-1 pixel scale, so a deployment can apply the same preprocessing.
    """

    x: np.ndarray
    y: np.ndarray | None
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    split: str

    def __len__(self) -> int:
        return len(self.x)

    def __repr__(self) -> str:
        return f"LabeledArrays({self.name} [{self.split}], x={tuple(self.x.shape)}, classes={self.num_classes})"


def list_sources() -> list[str]:
    """How each available kind of source is written.

    >>> any(u.startswith("mnist5k") for u in list_sources())
    True
    """
    return [k.usage for k in KINDS.values()]


def has_test_split(spec: str, size: int | tuple[int, int] | None = None) -> bool:
    """Whether ``spec`` has its own test split (so ``split="test"`` works).

    ``size`` as for :func:`load_data` (folders of mixed-size images need it to be read).

    >>> has_test_split("mnist5k")
    False
    """
    return _read(spec, _size_pair(size)).test_x is not None


def load_data(
    spec: str,
    *,
    split: str = "train",
    channels: int | None = None,
    size: int | tuple[int, int] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
) -> LabeledArrays:
    """Load ``split`` of the source ``spec`` as normalised arrays (see the module docstring).

    ``channels`` converts 1 -> 3 (repeat) or 3 -> 1 (luminance); ``size`` resizes (bilinear);
    ``limit`` keeps a deterministic random subset of at most that many images.

    >>> val = load_data("mnist5k", split="val", channels=3, size=32)
    >>> val.x.shape, val.y.shape, val.num_classes
    ((500, 3, 32, 32), (500,), 10)
    """
    if split not in SPLITS:
        raise EdgepruneError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
    if not 0.0 <= val_fraction < 1.0:
        raise EdgepruneError(f"val_fraction must be in [0, 1), got {val_fraction}")
    hw = _size_pair(size)
    raw = _read(spec, hw)
    x, y = _select(raw, split, val_fraction, seed)
    if limit is not None:
        keep = _subset(len(x), limit, seed)
        x, y = x[keep], None if y is None else y[keep]
    _check_memory(len(x), channels or x.shape[1], hw or x.shape[2:])
    mean, std = _stats(spec, channels, hw)
    x = _normalise(_convert(x, channels, hw), mean, std)
    return LabeledArrays(x, y, raw.num_classes, tuple(mean.tolist()), tuple(std.tolist()), raw.name, split)


def sample(arrays: LabeledArrays, n: int, seed: int = 0) -> LabeledArrays:
    """A deterministic random subset of at most ``n`` images, in their original order.

    >>> val = load_data("mnist5k", split="val")
    >>> len(sample(val, 64, seed=1)), sample(val, 64, seed=1).y.tolist() == sample(val, 64, seed=1).y.tolist()
    (64, True)
    """
    keep = _subset(len(arrays), n, seed)
    return replace(arrays, x=arrays.x[keep], y=None if arrays.y is None else arrays.y[keep])


# --- steps --------------------------------------------------------------------------------------

def _size_pair(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise EdgepruneError(f"size must be a positive int or (height, width), got {size!r}")
    return pair


def _read(spec: str, size: tuple[int, int] | None) -> RawSource:
    kind, _ = parse_spec(spec)
    return _read_cached(spec, size if kind.resizes_on_read else None)


@functools.lru_cache(maxsize=4)
def _read_cached(spec: str, size: tuple[int, int] | None) -> RawSource:
    kind, path = parse_spec(spec)
    raw = kind.reader(path, size)
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


def _select(raw: RawSource, split: str, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    if split == "test":
        if raw.test_x is None:
            raise EdgepruneError(f"'{raw.name}' has no test split; use split 'val' (held out from its training images)")
        return raw.test_x, raw.test_y
    if split == "all":
        if raw.test_x is None:
            return raw.train_x, raw.train_y
        labels = None if raw.train_y is None or raw.test_y is None else np.concatenate([raw.train_y, raw.test_y])
        return np.concatenate([raw.train_x, raw.test_x]), labels
    train, val = _split_indices(len(raw.train_x), val_fraction, seed)
    keep = train if split == "train" else val
    if len(keep) == 0:
        raise EdgepruneError(f"'{raw.name}': the {split} split is empty (val_fraction={val_fraction})")
    return raw.train_x[keep], None if raw.train_y is None else raw.train_y[keep]


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


def _convert(x: np.ndarray, channels: int | None, hw: tuple[int, int] | None) -> np.ndarray:
    """uint8 -> 0-1 float32, then channel conversion and resizing."""
    out = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    out = _convert_channels(out, channels)
    return out if hw is None or tuple(out.shape[2:]) == hw else _resize(out, hw)


def _convert_channels(x: np.ndarray, channels: int | None) -> np.ndarray:
    have = x.shape[1]
    if channels is None or channels == have:
        return x
    if have == 1:
        return np.repeat(x, channels, axis=1)
    if have == 3 and channels == 1:
        return np.tensordot(x, LUMA, axes=([1], [0]))[:, None].astype(np.float32)
    raise EdgepruneError(f"cannot convert {have}-channel images to {channels} channels")


def _resize(x: np.ndarray, hw: tuple[int, int], chunk: int = 1024) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    out = np.empty((len(x), x.shape[1], *hw), np.float32)
    for start in range(0, len(x), chunk):
        part = torch.from_numpy(np.ascontiguousarray(x[start:start + chunk]))
        resized = F.interpolate(part, size=hw, mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = resized.numpy()
    return out


@functools.lru_cache(maxsize=16)
def _stats(spec: str, channels: int | None, hw: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    raw = _read(spec, hw)
    keep = _subset(len(raw.train_x), STATS_IMAGES, STATS_SEED)
    x = _convert(raw.train_x[keep], channels, hw)
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = np.maximum(x.std(axis=(0, 2, 3), dtype=np.float64), 1e-6)
    return mean.astype(np.float32), std.astype(np.float32)


def _normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    x -= mean[None, :, None, None]
    x /= std[None, :, None, None]
    return x


def clear_cache() -> None:
    """Forget cached sources (files changed on disk, or to free memory)."""
    _read_cached.cache_clear()
    _stats.cache_clear()
