"""PyTorch -> ONNX: export, simplify with onnxsim, check onnxruntime against PyTorch, then publish.

Everything is written in a hidden folder beside the output and moved into place only after every
check passed, so a failed export leaves no file behind.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.export._io import file_size, first_line, log, quiet_loggers, staged_output, stdout_to_log
from edgeprune.export.checks import Diff, op_counts
from edgeprune.export.runtime import make_session
from edgeprune.outputs import flatten, output_names

EXPORTERS = ("auto", "dynamo", "torchscript")
# Protobuf cannot hold more than 2 GiB: bigger models keep their weights in NAME.onnx.data.
MAX_EMBEDDED_BYTES = 2_000_000_000
CHECK_BATCHES = (1, 3)  # batch sizes the numerical check uses for a dynamic-batch model


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured. ``*_before`` is the exporter's raw graph,
    ``*_after`` the published one (simplified unless ``simplified`` is False)."""

    path: Path
    opset: int
    exporter: str
    input_names: list[str]
    output_names: list[str]
    input_shape: list[int | str]
    dynamic_batch: bool
    max_abs_diff: float | None
    max_rel_diff: float | None
    simplified: bool
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    nodes_before: int
    nodes_after: int
    size_before_bytes: int
    size_bytes: int
    external_data: bool
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the path as a string)."""
        return {**asdict(self), "path": str(self.path)}


def export_onnx(
    model: nn.Module,
    input_shape: Sequence[int],
    path: str | Path,
    *,
    opset: int | None = None,
    dynamic_batch: bool = False,
    simplify: bool = True,
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    n_checks: int = 3,
    seed: int = 0,
    exporter: str = "auto",
    inputs: np.ndarray | None = None,
) -> ExportResult:
    """Export ``model`` for inputs of ``input_shape`` (N x C x H x W) to the ONNX file ``path``.

    ``opset=None`` takes the exporter's default (20 with torch 2.15's exporter, which implements
    opset 18 and up). ``exporter="auto"`` uses ``torch.onnx.export(dynamo=True)`` and falls back
    to the TorchScript exporter, with a logged warning, if that fails; the result records which one
    ran. ``dynamic_batch`` makes the first dimension free (checked with batches of 1 and 3).
    Unless ``verify=False``, onnxruntime's outputs on ``n_checks`` random inputs must meet
    ``|ort - torch| <= atol + rtol * |torch|`` everywhere, or EdgepruneError names the differences
    and nothing is written. ``inputs`` (model inputs, N x C x H x W) replace the random ones: a
    detector fed random normal pixels runs far outside its range, where a softmax over box bins
    turns float32 noise into pixels. The model is run in eval mode; its training flag is restored after.

    >>> import tempfile
    >>> from edgeprune.models import build
    >>> built = build("resnet20-cifar")
    >>> result = export_onnx(built.model, built.input_shape, tempfile.mkdtemp() + "/resnet20.onnx")
    >>> result.exporter, result.input_shape, result.max_abs_diff < 1e-4
    ('dynamo', [1, 3, 32, 32], True)
    """
    shape = _checked_shape(input_shape)
    _check_options(atol, rtol, n_checks, exporter)
    example = torch.zeros((max(2, shape[0]) if dynamic_batch else shape[0], *shape[1:]), device=_device(model))
    seconds: dict[str, float] = {}
    with _eval_mode(model), staged_output(path) as tmp:
        names = _output_names(model, example)
        with _timed(seconds, "export"), quiet_loggers("onnxscript", "onnx_ir"):
            used = _export_torch(model, example, tmp, opset, dynamic_batch, exporter, names)
        raw = _load(tmp)
        size_before = file_size(tmp)
        with _timed(seconds, "simplify"):
            simplified = simplify and _simplify(tmp, raw, list(example.shape), dynamic_batch, n_checks, atol, rtol)
        final = _load(tmp) if simplified else raw
        diff = None
        if verify:
            with _timed(seconds, "verify"):
                diff = _verify(model, tmp, shape, dynamic_batch, n_checks, seed, atol, rtol, inputs)
            if not diff.ok:
                raise EdgepruneError(
                    f"onnxruntime disagrees with PyTorch: max abs diff {diff.max_abs:.3g}, max rel diff "
                    f"{diff.max_rel:.3g} (allowed atol={atol:g}, rtol={rtol:g}); {path} was not written")
        size = file_size(tmp)
    result = ExportResult(
        path=Path(path), opset=_opset(final), exporter=used, input_names=_input_names(final),
        output_names=[o.name for o in final.graph.output], input_shape=_input_dims(final),
        dynamic_batch=dynamic_batch, max_abs_diff=None if diff is None else diff.max_abs,
        max_rel_diff=None if diff is None else diff.max_rel,
        simplified=simplified, ops_before=op_counts(raw), ops_after=op_counts(final),
        nodes_before=len(raw.graph.node), nodes_after=len(final.graph.node), size_before_bytes=size_before,
        size_bytes=size, external_data=_has_external_data(final), seconds=seconds)
    log.info("wrote %s (%s exporter, opset %d, %d -> %d nodes)", path, used, result.opset,
             result.nodes_before, result.nodes_after)
    return result


# --- export -------------------------------------------------------------------------------------

def _export_torch(model: nn.Module, example: torch.Tensor, path: Path, opset: int | None,
                  dynamic: bool, exporter: str, names: list[str]) -> str:
    """Run the chosen exporter into ``path`` (one named ONNX output per tensor the model returns);
    return the name of the exporter that worked."""
    if exporter in ("auto", "dynamo"):
        try:
            _export_dynamo(model, example, path, opset, dynamic, names)
            return "dynamo"
        except Exception as exc:  # torch.export raises many types; any of them means "try the other"
            reason = first_line(exc)
            if exporter == "dynamo":
                raise EdgepruneError(f"the dynamo ONNX exporter failed: {reason}") from exc
            log.warning("the dynamo ONNX exporter failed (%s); falling back to the TorchScript exporter", reason)
            _empty_folder(path.parent)
    try:
        _export_torchscript(model, example, path, opset, dynamic, names)
    except Exception as exc:
        raise EdgepruneError(f"cannot export the model to ONNX: {first_line(exc)}") from exc
    return "torchscript"


def _output_names(model: nn.Module, example: torch.Tensor) -> list[str]:
    try:
        return output_names(model, example)
    except Exception as exc:  # the model's own forward: any error means this input does not fit it
        shape = "x".join(map(str, example.shape))
        raise EdgepruneError(f"cannot export the model to ONNX: it fails on an input of {shape}: {first_line(exc)}") from exc


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int | None, dynamic: bool,
                   names: list[str]) -> None:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset, input_names=["input"],
                      output_names=names, dynamic_shapes=shapes, verbose=False,
                      external_data=_param_bytes(model) >= MAX_EMBEDDED_BYTES)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, opset: int | None, dynamic: bool,
                        names: list[str]) -> None:
    axes = {name: {0: "batch"} for name in ["input", *names]} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the fallback is already logged
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=names, dynamic_axes=axes)


def _simplify(path: Path, model: Any, example_shape: list[int], dynamic: bool, n_checks: int,
              atol: float, rtol: float) -> bool:
    """Replace ``path`` by onnxsim's simplification if onnxsim's own check passes."""
    import onnx
    import onnxsim

    if _has_external_data(model):
        log.warning("not simplifying: the model's weights exceed 2 GB (onnxsim works on one protobuf)")
        return False
    test_shapes = {_input_names(model)[0]: example_shape} if dynamic else None
    try:
        with stdout_to_log():
            simplified, ok = onnxsim.simplify(model, check_n=n_checks, test_input_shapes=test_shapes,
                                              check_atol=atol, check_rtol=rtol)
    except Exception as exc:
        log.warning("onnxsim failed (%s); keeping the exporter's graph", first_line(exc))
        return False
    if not ok:
        log.warning("onnxsim's own check found a difference; keeping the exporter's graph")
        return False
    onnx.save(simplified, str(path))
    return True


def _verify(model: nn.Module, path: Path, shape: tuple[int, ...], dynamic: bool, n_checks: int, seed: int,
            atol: float, rtol: float, inputs: np.ndarray | None = None) -> Diff:
    """Compare onnxruntime with PyTorch on ``inputs`` (cycled through), or random normal inputs."""
    session = make_session(path)
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(seed)
    batches = [CHECK_BATCHES[i % 2] for i in range(max(n_checks, 2))] if dynamic else [shape[0]] * n_checks
    diff = Diff(0.0, 0.0, True)
    for i, batch in enumerate(batches):
        if inputs is not None and len(inputs):
            x = np.ascontiguousarray(np.resize(np.roll(inputs, -i * batch, axis=0), (batch, *shape[1:])), dtype=np.float32)
        else:
            x = rng.standard_normal((batch, *shape[1:]), dtype=np.float32)
        with torch.no_grad():
            expected = _numpy_outputs(model(torch.from_numpy(x).to(_device(model))))
        diff = diff.combine(Diff.between(session.run(None, {name: x}), expected, atol, rtol))
    log.debug("numerical check over batches %s: %s", batches, diff)
    return diff


# --- small helpers ------------------------------------------------------------------------------

def _checked_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) < 2 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
        raise EdgepruneError(f"input shape must be positive integers like (1, 3, 32, 32), got {shape}")
    return tuple(int(d) for d in shape)


def _check_options(atol: float, rtol: float, n_checks: int, exporter: str) -> None:
    if atol < 0 or rtol < 0:
        raise EdgepruneError(f"tolerances must not be negative, got atol={atol}, rtol={rtol}")
    if n_checks < 1:
        raise EdgepruneError(f"n_checks must be at least 1, got {n_checks}")
    if exporter not in EXPORTERS:
        raise EdgepruneError(f"unknown exporter '{exporter}' (choose from {', '.join(EXPORTERS)})")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


@contextlib.contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = round(time.perf_counter() - start, 4)


def _device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _numpy_outputs(output: Any) -> list[np.ndarray]:
    """PyTorch outputs in ONNX order: tensors, tuples/lists of tensors, dict values."""
    return [tensor.detach().cpu().numpy() for tensor in flatten(output)]


def _empty_folder(folder: Path) -> None:
    for item in folder.iterdir():
        item.unlink()


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _has_external_data(model: Any) -> bool:
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _opset(model: Any) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _input_names(model: Any) -> list[str]:
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def _input_dims(model: Any) -> list[int | str]:
    first = next(i for i in model.graph.input if i.name == _input_names(model)[0])
    return [d.dim_param or d.dim_value for d in first.type.tensor_type.shape.dim]
