"""Reading ONNX files safely, counting their operators, comparing outputs numerically."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.export._io import first_line


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


SCALE_FLOOR = 0.1  # relative errors are measured against at least a tenth of an output's largest value


@dataclass(frozen=True)
class Diff:
    """How far ``actual`` is from ``expected``: the largest absolute difference, the largest
    relative difference (over elements with ``|expected| > atol``; smaller ones are judged by the
    absolute difference alone) and whether every element meets ``|a - e| <= atol + rtol * s``,
    ``s = max(|e|, a tenth of the output's largest |e|)``: an element near zero in an output of
    large values (a box width in pixels; a raw detection map of values up to 10 after 60 layers,
    where float32 PyTorch itself is 2e-4 off float64) is held to the float32 noise of that
    output's scale, not to an absolute 1e-4."""

    max_abs: float
    max_rel: float
    ok: bool

    @staticmethod
    def between(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], atol: float, rtol: float,
                runtime: str = "onnxruntime") -> "Diff":
        """Compare matching lists of arrays.

        >>> Diff.between([np.array([1.0, 2.1])], [np.array([1.0, 2.0])], atol=1e-4, rtol=1e-3)
        Diff(max_abs=0.1, max_rel=0.05, ok=False)
        >>> Diff.between([np.array([300.0, 0.002])], [np.array([300.0, 0.0])], atol=1e-4, rtol=1e-3).ok
        True
        >>> Diff.between([np.array([1.0, 0.0005])], [np.array([1.0, 0.0])], atol=1e-4, rtol=1e-3).ok
        False
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
            scale = np.abs(e.astype(np.float64))
            big = scale > atol
            max_abs = max(max_abs, float(err.max(initial=0.0)))
            max_rel = max(max_rel, float((err[big] / scale[big]).max(initial=0.0)))
            floor = SCALE_FLOOR * float(scale.max(initial=0.0)) if np.isfinite(scale).all() else 0.0
            ok = ok and bool(np.all(err <= atol + rtol * np.maximum(scale, floor)))
        return Diff(float(f"{max_abs:.6g}"), float(f"{max_rel:.6g}"), ok)

    def combine(self, other: "Diff") -> "Diff":
        """The worse of two comparisons."""
        return Diff(max(self.max_abs, other.max_abs), max(self.max_rel, other.max_rel), self.ok and other.ok)
