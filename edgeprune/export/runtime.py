"""Running ONNX files with onnxruntime: sessions, batched inference, top-1 accuracy."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.export._io import first_line

PROVIDERS = ["CPUExecutionProvider"]


def make_session(path: str | Path) -> Any:
    """An onnxruntime CPU session for ``path``; a file onnxruntime rejects raises EdgepruneError.

    >>> make_session("missing.onnx")
    Traceback (most recent call last):
    ...
    edgeprune.errors.EdgepruneError: missing.onnx cannot be loaded by onnxruntime: file not found
    """
    import onnxruntime as ort

    if not Path(path).is_file():
        raise EdgepruneError(f"{path} cannot be loaded by onnxruntime: file not found")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=PROVIDERS)
    except Exception as exc:
        raise EdgepruneError(f"{path} cannot be loaded by onnxruntime: {first_line(exc)}") from exc


def fixed_batch(session: Any) -> int | None:
    """The batch size the session's first input requires, or None when the batch is dynamic."""
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


def run_all(session: Any, x: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
    """Every output of ``session`` for all of ``x``, fed in batches.

    A model exported with a fixed batch gets batches of exactly that size (the last one padded
    with zeros and the padding dropped from the result).
    """
    size = fixed_batch(session) or batch_size
    name = session.get_inputs()[0].name
    parts = []
    for start in range(0, len(x), size):
        chunk = np.ascontiguousarray(x[start:start + size], dtype=np.float32)
        n = len(chunk)
        if fixed_batch(session) and n < size:
            chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), np.float32)])
        parts.append([out[:n] for out in session.run(None, {name: chunk})])
    return [np.concatenate(column) for column in zip(*parts)]


def run_batches(session: Any, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """First output of ``session`` for all of ``x`` (see :func:`run_all`)."""
    return run_all(session, x, batch_size)[0]


def onnx_accuracy(path: str | Path, x: np.ndarray, y: np.ndarray, batch_size: int = 64, output: int = 0) -> float:
    """Top-1 accuracy of the class-score output number ``output`` of ``path`` on ``x`` and labels ``y``.

    >>> import tempfile, torch
    >>> from edgeprune.export import export_onnx
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> path = export_onnx(net, (1, 1, 2, 2), tempfile.mkdtemp() + "/m.onnx").path
    >>> x = np.random.default_rng(0).normal(size=(8, 1, 2, 2)).astype(np.float32)
    >>> y = net(torch.from_numpy(x)).argmax(1).numpy()
    >>> onnx_accuracy(path, x, y)
    1.0
    """
    if len(x) != len(y) or len(x) == 0:
        raise EdgepruneError(f"accuracy needs as many labels as images, got {len(x)} images and {len(y)} labels")
    logits = run_all(make_session(path), x, batch_size)[output]
    return float((logits.argmax(axis=1) == np.asarray(y)).mean())


def onnx_outputs(path: Any, x: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
    """All outputs of the ONNX file ``path`` on ``x`` (onnxruntime, no torch)."""
    return run_all(make_session(path), x, batch_size)
