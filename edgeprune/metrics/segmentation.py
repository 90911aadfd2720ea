"""A segmenter's mean IoU against per-pixel class labels (scikit-learn's Jaccard score).

>>> import numpy as np
>>> logits = np.zeros((1, 2, 2, 2)); logits[0, 1, 0, :] = 1  # the top row says class 1
>>> mean_iou(logits, np.array([[[1, 1], [1, 0]]]))
0.5833333333
"""
from __future__ import annotations

import numpy as np

IGNORE = 255  # a mask value that is no class (unlabelled pixels), as in VOC and Cityscapes


def mean_iou(logits: np.ndarray, masks: np.ndarray) -> float:
    """Per-class IoU over every labelled pixel of every image, averaged over the classes present in
    the masks or the predictions; ``logits``: N x K x H x W, ``masks``: N x H x W class ids."""
    from sklearn.metrics import jaccard_score

    predicted = np.asarray(logits).argmax(axis=1).reshape(-1)
    truth = np.asarray(masks).reshape(-1)
    labelled = truth != IGNORE
    return float(np.round(jaccard_score(truth[labelled], predicted[labelled], average="macro", zero_division=0), 10))
