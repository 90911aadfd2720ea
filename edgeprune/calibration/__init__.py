"""Data sources behind one spec string, used by every command that needs images.

Spec strings: ``cifar10:DIR``, ``cifar100:DIR``, ``folder:DIR``, ``PATH.npz``, ``mnist5k`` and,
with scikit-learn installed, ``digits``. :func:`load_data` turns one into model inputs (by the model's :class:`Preprocess`),
:func:`make_loader` into torch batches, :class:`OrtCalibrationReader` into onnxruntime feeds.

>>> from edgeprune.calibration import load_data, sample
>>> calib = sample(load_data("mnist5k", split="train", channels=3, limit=256), 64)
>>> calib.x.shape
(64, 3, 32, 32)
"""
from edgeprune.calibration.data import (
    LabeledArrays,
    clear_cache,
    data_statistics,
    has_test_split,
    is_labelled,
    list_sources,
    load_data,
    sample,
)
from edgeprune.calibration.loader import make_loader, train_val_loaders
from edgeprune.calibration.ort import OrtCalibrationReader
from edgeprune.calibration.preprocess import Preprocess

__all__ = [
    "LabeledArrays",
    "OrtCalibrationReader",
    "Preprocess",
    "clear_cache",
    "data_statistics",
    "has_test_split",
    "is_labelled",
    "list_sources",
    "load_data",
    "make_loader",
    "sample",
    "train_val_loaders",
]
