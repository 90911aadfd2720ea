"""What the parent learns about a model before any worker starts: that onnxruntime can open it,
its input shapes, and its size on disk (external data files included).

Needs onnxruntime only (not the ``onnx`` package).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import EdgepruneError
from edgeprune.profile.messages import one_line
from edgeprune.runtimes.base import get_runtime, read_sidecar

# onnxruntime errors that mean "this file is not a well-formed ONNX model".
_MALFORMED = {"InvalidProtobuf", "InvalidGraph", "Fail", "NoModel", "InvalidArgument"}
# In the protobuf, an external-data reference is a StringStringEntryProto {key: "location"
# (field 1), value: FILE (field 2)}: these bytes, then FILE's varint length and the name.
_LOCATION_KEY = b"\x0a\x08location\x12"


@dataclass(frozen=True)
class ModelInfo:
    """A checked model: its path, bytes on disk and the concrete input shapes to feed;
    ``guessed`` is true when some dynamic dimension was set to 1 for want of a shape.

    >>> ModelInfo("m.onnx", 1024, (), {"x": [1, 3, 32, 32]}, False).inputs["x"]
    [1, 3, 32, 32]
    """

    path: str
    size_bytes: int
    external_data: tuple[str, ...]
    inputs: dict[str, list[int]]
    guessed: bool
    runtime: str = "onnxruntime"


def _open_session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind classes
        if type(exc).__name__ in _MALFORMED:
            raise EdgepruneError(f"{path} is not a valid ONNX model: {one_line(exc)}") from None
        raise EdgepruneError(f"onnxruntime cannot load {path}: {one_line(exc)}") from None


def external_data_files(path: str | Path) -> list[Path]:
    """The external data files an ONNX model refers to (those that exist beside it).

    >>> external_data_files("no-such-model.onnx")
    []
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError:
        return []
    found: dict[Path, None] = {}
    for match in re.finditer(re.escape(_LOCATION_KEY), blob):
        start = match.end()
        length, start = _varint(blob, start)
        name = blob[start:start + length].decode("utf-8", "replace")
        candidate = path.parent / name
        if name and candidate.is_file():
            found[candidate] = None
    return list(found)


def _varint(blob: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while pos < len(blob):
        byte = blob[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            break
    return value, pos


def _is_fixed(dim) -> bool:
    return isinstance(dim, int) and dim > 0


def _fmt(shape: list) -> str:
    return "x".join(str(d) if _is_fixed(d) else "?" for d in shape) or "scalar"


def _concrete(name: str, shape: list, override: tuple[int, ...] | None, path: str) -> list[int]:
    if override is None:
        return [d if _is_fixed(d) else 1 for d in shape]
    fits = len(override) == len(shape) and all(not _is_fixed(d) or d == o for d, o in zip(shape, override))
    if not fits:
        raise EdgepruneError(
            f"input shape {_fmt(list(override))} does not fit {path}: input '{name}' has shape {_fmt(shape)}"
        )
    return list(override)


def inspect_model(path: str | Path, input_shape: tuple[int, ...] | None = None) -> ModelInfo:
    """Open ``path`` with onnxruntime and fix its input shapes.

    ``input_shape`` replaces the first input's shape; dynamic dimensions left over become 1.
    A missing or malformed file, or a shape that contradicts the model, raises
    :class:`~edgeprune.errors.EdgepruneError` with one line.

    >>> inspect_model("missing.onnx")
    Traceback (most recent call last):
    edgeprune.errors.EdgepruneError: missing.onnx: no such file
    """
    path = str(path)
    if not path.endswith(".onnx") and Path(path).is_file():
        return _runtime_file(path, input_shape)
    if not Path(path).is_file():
        raise EdgepruneError(f"{path}: no such file")
    session = _open_session(path)
    inputs, guessed = {}, False
    for index, meta in enumerate(session.get_inputs()):
        override = input_shape if index == 0 else None
        inputs[meta.name] = _concrete(meta.name, list(meta.shape), override, path)
        guessed = guessed or (override is None and not all(map(_is_fixed, meta.shape)))
    extra = external_data_files(path)
    size = Path(path).stat().st_size + sum(p.stat().st_size for p in extra)
    return ModelInfo(path, size, tuple(str(p) for p in extra), inputs, guessed)


def _runtime_file(path: str, input_shape: tuple[int, ...] | None) -> ModelInfo:
    """Another runtime's file (edgeprune.runtimes): fixed shapes from its sidecar."""
    sidecar = read_sidecar(path)
    get_runtime(sidecar["runtime"]).require()
    first = next(iter(sidecar["inputs"].values()))
    if input_shape is not None and list(input_shape) != list(first):
        raise EdgepruneError(f"{path}: made for input shape {'x'.join(map(str, first))}, not "
                             f"{'x'.join(map(str, input_shape))} (export it again at that shape)")
    folder = Path(path).parent
    others = tuple(name for name in sidecar.get("files", []) if name != Path(path).name)
    size = sum((folder / name).stat().st_size for name in (Path(path).name, *others) if (folder / name).is_file())
    return ModelInfo(path, size, others, sidecar["inputs"], False, sidecar["runtime"])
