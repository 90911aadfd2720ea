"""Reading ONNX files safely, counting their operators, comparing outputs numerically."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.export._io import first_line

CHECK_IMAGES = 8  # of the model's own images, those every exported file is checked against PyTorch on


def load_onnx_checked(path: str | Path) -> "onnx.ModelProto":
    """Load ``path`` and run the ONNX checker on it; any problem raises a one-line EdgepruneError.

    >>> load_onnx_checked("missing.onnx")
    Traceback (most recent call last):
    ...
    edgeprune.errors.EdgepruneError: missing.onnx is not a valid ONNX model: file not found
    """
    import onnx

    if not Path(path).is_file():
        raise EdgepruneError(f"{path} is not a valid ONNX model: file not found")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise EdgepruneError(f"{path} is not a valid ONNX model: {first_line(exc)}") from exc
    if not model.graph.node:
        raise EdgepruneError(f"{path} is not a valid ONNX model: its graph has no nodes")
    return model


def op_counts(model: "onnx.ModelProto") -> dict[str, int]:
    """Number of nodes of each operator type in the main graph, most frequent first.

    >>> import onnx
    >>> node = onnx.helper.make_node("Relu", ["x"], ["y"])
    >>> op_counts(onnx.helper.make_model(onnx.helper.make_graph([node, node], "g", [], [])))
    {'Relu': 2}
    """
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


@dataclass(frozen=True)
class Diff:
    """How far ``actual`` is from ``expected``, output by output, against each output's scale (its
    largest magnitude): the largest absolute difference, that difference over the output's scale,
    and whether every output keeps ``max |a - e| <= atol + rtol * scale``. An element-wise relative
    tolerance would fail outputs whose values span orders of magnitude (logits near 0 beside
    hundreds) on float32 rounding alone."""

    max_abs: float
    max_rel: float
    ok: bool

    @staticmethod
    def between(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], atol: float, rtol: float,
                runtime: str = "onnxruntime") -> "Diff":
        """Compare matching lists of arrays.

        >>> Diff.between([np.array([1.0, 2.1])], [np.array([1.0, 2.0])], atol=1e-4, rtol=1e-3)
        Diff(max_abs=0.1, max_rel=0.05, ok=False)
        >>> Diff.between([np.array([310.0, 0.031])], [np.array([310.0, 0.0])], atol=1e-4, rtol=1e-3).ok
        True
        """
        if len(actual) != len(expected):
            raise EdgepruneError(f"the {runtime} model has {len(actual)} outputs, PyTorch {len(expected)}")
        max_abs = max_rel = 0.0
        ok = True
        for a, e in zip(actual, expected):
            if a.shape != e.shape:
                raise EdgepruneError(f"output shape {a.shape} from {runtime}, {e.shape} from PyTorch")
            err = np.abs(a.astype(np.float64) - e.astype(np.float64))
            err[~np.isfinite(err)] = np.inf
            worst = float(err.max(initial=0.0))
            scale = float(np.abs(e.astype(np.float64)).max(initial=0.0))
            max_abs = max(max_abs, worst)
            max_rel = max(max_rel, worst / scale if scale > 0 else (0.0 if worst == 0 else np.inf))
            ok = ok and worst <= atol + rtol * scale
        return Diff(float(f"{max_abs:.6g}"), float(f"{max_rel:.6g}"), ok)

    def combine(self, other: "Diff") -> "Diff":
        """The worse of two comparisons."""
        return Diff(max(self.max_abs, other.max_abs), max(self.max_rel, other.max_rel), self.ok and other.ok)


def check_batches(shape: Sequence[int], n_checks: int, inputs: np.ndarray | None = None, seed: int = 0,
                  sizes: Sequence[int] | None = None) -> list[np.ndarray]:
    """The inputs a numerical check runs on. With ``inputs`` (the model's own, e.g. preprocessed
    calibration images): all of them, in consecutive batches whose sizes cycle through ``sizes``
    (default: the batch of ``shape``). Without: ``n_checks`` batches of N(0, 1) noise; noise can
    drive a model whose BatchNorm statistics come from real images far outside its range.

    >>> [b.shape for b in check_batches((1, 2, 4, 4), 3, np.zeros((2, 2, 4, 4), np.float32))]
    [(1, 2, 4, 4), (1, 2, 4, 4)]
    >>> [len(b) for b in check_batches((1, 2), 4, sizes=(1, 3))]
    [1, 3, 1, 3]
    """
    import itertools

    sizes = list(sizes or [shape[0]])
    if inputs is None:
        rng = np.random.default_rng(seed)
        return [rng.standard_normal((size, *shape[1:]), dtype=np.float32)
                for size in itertools.islice(itertools.cycle(sizes), n_checks)]
    inputs = np.asarray(inputs, dtype=np.float32)
    if inputs.ndim != len(shape) or tuple(inputs.shape[1:]) != tuple(shape[1:]) or len(inputs) == 0:
        raise EdgepruneError(f"check inputs of shape {inputs.shape} do not fit the model's input {tuple(shape)}")
    found, start = [], 0
    for size in itertools.cycle(sizes):
        if start + size > len(inputs):
            break
        found.append(np.ascontiguousarray(inputs[start:start + size]))
        start += size
    return found or [np.resize(inputs, (sizes[0], *shape[1:]))]  # fewer images than one batch: repeated
