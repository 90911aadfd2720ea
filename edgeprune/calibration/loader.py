"""Batches for torch: a DataLoader over :class:`LabeledArrays` with optional augmentation.

The dataset yields indices and the collate function gathers a whole batch with one NumPy
indexing operation, then augments it on the batch: fast on a CPU, deterministic with a seed.
A batch is ``(x, y)``; ``y`` is None when the source has no labels. With detection labels
(``arrays.boxes``) ``y`` is ``[B, M, 5]``: rows ``class x1 y1 x2 y2`` in pixels of the input,
padded with class -1, moved with the image when it is cropped or flipped.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from edgeprune.calibration.data import LabeledArrays, load_data
from edgeprune.errors import EdgepruneError

if TYPE_CHECKING:
    import torch

    from edgeprune.calibration.preprocess import Preprocess
    from torch.utils.data import DataLoader

AUGMENTATIONS = ("crop", "crop+flip")
CROP_PADDING = 4


class _Indices:
    """A map-style dataset whose items are their own indices."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


class ArrayBatches:
    """Collate function: indices -> ``(x, y)`` tensors, randomly cropped / flipped if asked."""

    def __init__(self, arrays: LabeledArrays, augment: str | None, seed: int) -> None:
        import torch

        if augment not in (None, *AUGMENTATIONS):
            raise EdgepruneError(f"unknown augmentation '{augment}' (choose from none, {', '.join(AUGMENTATIONS)})")
        self.arrays = arrays
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        self.fill = torch.from_numpy(np.asarray(arrays.black(), dtype=np.float32))  # padding is black in pixel space

    def __call__(self, indices: Sequence[int]) -> tuple["torch.Tensor", "torch.Tensor | None"]:
        import torch

        idx = np.asarray(indices, dtype=np.int64)
        x = torch.from_numpy(self.arrays.x[idx])
        y = None if self.arrays.y is None else torch.from_numpy(self.arrays.y[idx])
        if self.arrays.boxes is not None:
            y = padded_boxes(self.arrays.boxes[idx])
        if self.augment:
            x, y = self._crop(x, y)
        if self.augment == "crop+flip":
            flip = torch.rand(len(x), generator=self.generator) < 0.5
            x[flip] = x[flip].flip(3)
            if self.arrays.boxes is not None:
                y[flip] = flip_boxes(y[flip], x.shape[3])
        return x, y

    def _crop(self, x: "torch.Tensor", y: "torch.Tensor | None") -> tuple["torch.Tensor", "torch.Tensor | None"]:
        import torch

        n, c, h, w = x.shape
        p = CROP_PADDING
        padded = self.fill.view(1, c, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = x
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=self.generator)
        x = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])
        if self.arrays.boxes is not None:
            y = shift_boxes(y, p - offsets.flip(1).float(), (h, w))
        return x, y


def padded_boxes(per_image: Sequence[np.ndarray]) -> "torch.Tensor":
    """Per-image box rows (``class x1 y1 x2 y2 ...``) -> ``[B, M, 5]``, padded with class -1.

    >>> padded_boxes([np.array([[3, 1, 2, 5, 6, 0]], np.float32), np.zeros((0, 6), np.float32)])[:, :, 0].tolist()
    [[3.0], [-1.0]]
    """
    import torch

    out = torch.full((len(per_image), max([len(b) for b in per_image] + [1]), 5), -1.0)
    for i, rows in enumerate(per_image):
        out[i, :len(rows)] = torch.from_numpy(np.asarray(rows, np.float32)[:, :5])
    return out


def shift_boxes(y: "torch.Tensor", by: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    """Boxes ``[B, M, 5]`` moved by ``by`` (B x 2 pixels, x y) and clipped to ``size`` (height, width);
    a box moved out of the image (under a pixel wide or high) becomes padding.

    >>> import torch
    >>> shift_boxes(torch.tensor([[[1., 0, 0, 10, 10], [2., 0, 0, 2, 2]]]), torch.tensor([[-3., 1]]), (32, 32)).tolist()
    [[[1.0, 0.0, 1.0, 7.0, 11.0], [-1.0, -1.0, -1.0, -1.0, -1.0]]]
    """
    import torch

    height, width = size
    moved = y[..., 1:] + by[:, None, :].repeat(1, 1, 2)
    limits = torch.tensor([width, height], dtype=y.dtype).repeat(2)
    moved = torch.minimum(moved.clamp_min(0), limits)
    kept = (y[..., :1] >= 0) & (moved[..., 2:3] - moved[..., 0:1] >= 1) & (moved[..., 3:4] - moved[..., 1:2] >= 1)
    return torch.where(kept, torch.cat((y[..., :1], moved), -1), torch.full_like(y, -1.0))


def flip_boxes(y: "torch.Tensor", width: int) -> "torch.Tensor":
    """Boxes ``[B, M, 5]`` of images flipped left to right (padding kept).

    >>> import torch
    >>> flip_boxes(torch.tensor([[[1., 2, 3, 5, 9], [-1., -1, -1, -1, -1]]]), 32).tolist()
    [[[1.0, 27.0, 3.0, 30.0, 9.0], [-1.0, -1.0, -1.0, -1.0, -1.0]]]
    """
    import torch

    flipped = torch.stack((y[..., 0], width - y[..., 3], y[..., 2], width - y[..., 1], y[..., 4]), -1)
    return torch.where(y[..., :1] >= 0, flipped, y)


def make_loader(
    arrays: LabeledArrays,
    batch_size: int,
    *,
    shuffle: bool,
    augment: str | None = None,
    seed: int = 0,
    drop_last: bool = False,
) -> "DataLoader":
    """A DataLoader of ``(x, y)`` batches over ``arrays``.

    ``augment``: None, ``"crop"`` (random 4-pixel-padded crop) or ``"crop+flip"`` (plus a random
    horizontal flip; wrong for digits). The order and augmentation are fixed by ``seed`` (and by
    the process's rank under torchrun, so ranks augment differently).

    >>> loader = make_loader(load_data("mnist5k", split="val"), 100, shuffle=True, augment="crop")
    >>> x, y = next(iter(loader))
    >>> tuple(x.shape), tuple(y.shape), len(loader)
    ((100, 1, 32, 32), (100,), 5)
    """
    import torch
    from torch.utils.data import DataLoader

    if batch_size < 1:
        raise EdgepruneError(f"batch size must be at least 1, got {batch_size}")
    if len(arrays) == 0:
        raise EdgepruneError(f"{arrays.name} [{arrays.split}] holds no images")
    rank = int(os.environ.get("RANK", "0"))
    return DataLoader(
        _Indices(len(arrays)),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        collate_fn=ArrayBatches(arrays, augment, seed + 1000 * rank),
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )


def train_val_loaders(
    spec: str,
    input_shape: Sequence[int],
    *,
    batch_size: int = 128,
    augment: str | None = "crop",
    seed: int = 0,
    limit: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    preprocess: "Preprocess | None" = None,
) -> tuple["DataLoader", "DataLoader"]:
    """Training and validation loaders for a model taking ``input_shape`` (1, C, H, W).

    The validation split is held out of the training images by ``split_seed`` (fixed, so that
    every run holds out the same images); ``seed`` drives shuffling and augmentation.

    >>> train, val = train_val_loaders("mnist5k", (1, 1, 32, 32), batch_size=250, limit=1000)
    >>> len(train), len(val)
    (4, 2)
    """
    _, channels, *hw = input_shape
    common = dict(channels=channels, size=tuple(hw), preprocess=preprocess, val_fraction=val_fraction, seed=split_seed)
    train = load_data(spec, split="train", limit=limit, **common)
    val = load_data(spec, split="val", **common)
    if train.y is None:
        raise EdgepruneError(f"{spec} has no labels; training needs labelled data")
    return (
        make_loader(train, batch_size, shuffle=True, augment=augment, seed=seed),
        make_loader(val, batch_size, shuffle=False),
    )
