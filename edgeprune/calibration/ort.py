"""Calibration batches for onnxruntime's static quantisation.

onnxruntime's ``CalibrationDataReader`` accepts any object with a ``get_next`` method (its
``__subclasshook__`` says so), so this reader needs no onnxruntime import at all.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from edgeprune.calibration.data import LabeledArrays
from edgeprune.errors import EdgepruneError


class OrtCalibrationReader:
    """Feeds ``{input_name: batch}`` dicts from ``arrays``, then None; ``rewind()`` restarts.

    >>> from edgeprune.calibration import load_data, sample
    >>> reader = OrtCalibrationReader(sample(load_data("mnist5k"), 10), "input", batch_size=4)
    >>> [feed["input"].shape[0] for feed in reader], reader.get_next()
    ([4, 4, 2], None)
    """

    def __init__(self, arrays: LabeledArrays, input_name: str, batch_size: int = 1) -> None:
        if batch_size < 1:
            raise EdgepruneError(f"batch size must be at least 1, got {batch_size}")
        if len(arrays) == 0:
            raise EdgepruneError(f"{arrays.name} [{arrays.split}] holds no calibration images")
        self.x = np.ascontiguousarray(arrays.x, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = batch_size
        self.feeds = -(-len(self.x) // batch_size)
        self.start, self.end = 0, self.feeds
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed, or None when the data is used up."""
        if self.position >= self.end:
            return None
        first = self.position * self.batch_size
        self.position += 1
        return {self.input_name: self.x[first:first + self.batch_size]}

    def rewind(self) -> None:
        """Start again from the first feed of the current range."""
        self.position = self.start

    def set_range(self, start_index: int, end_index: int) -> None:
        """Restrict to feeds ``start_index:end_index`` (onnxruntime's strided calibration)."""
        self.start, self.end = max(0, start_index), min(end_index, self.feeds)
        self.position = self.start

    def __len__(self) -> int:
        """Number of feeds in the current range."""
        return max(0, self.end - self.start)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed
