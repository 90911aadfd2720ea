"""The runtime interface, its registry, the sidecar file and the numerical check."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.export.checks import Diff, check_batches
from edgeprune.outputs import flatten, names
from edgeprune.paths import write_atomic
from edgeprune.quality import INT8_CHECK_IMAGES, judge_int8, scores_cosine, torch_outputs

SIDECAR = ".io.json"


class Session(Protocol):
    version: str

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class Runtime:
    """One runtime. Subclasses set the names and implement :meth:`export_files` and :meth:`open`."""

    name: str = ""
    packages: tuple[str, ...] = ()  # importable modules it needs to make and run a file
    run_packages: tuple[str, ...] = ()  # those it needs to run one (a benchmark worker imports only these)
    install: str = ""  # how to get them
    suffix: str = ""  # of the main file
    imports_torch: bool = False  # whether running a file (not only making it) needs torch
    int8_missing: str | None = "no INT8 path here"  # None where export(..., calibration=) makes an INT8 file
    table_axis_points: int = 16  # grid points per channel axis in its latency tables (fewer where files are slow to make)

    def missing(self) -> str | None:
        """Why this runtime cannot be used here (one line), or None."""
        absent = [p for p in self.packages if importlib.util.find_spec(p.split(".")[0]) is None]
        return f"runtime '{self.name}' is not installed ({', '.join(absent)}): {self.install}" if absent else None

    def preload(self) -> None:
        """Import the runtime now, so that a worker's memory baseline already holds it."""
        import importlib

        for package in self.run_packages:
            importlib.import_module(package)

    def require(self) -> None:
        reason = self.missing()
        if reason:
            raise EdgepruneError(reason)

    def export(self, model: Any, example: Any, path: str | Path, calibration: np.ndarray | None = None) -> RuntimeFile:
        """Write ``model`` traced at ``example`` (a batch-1 tensor) for this runtime at ``path``
        (its other files beside it), each to a temporary name first; then the sidecar. With
        ``calibration`` (N x C x H x W float32 images), an INT8 file calibrated on them."""
        self.require()
        if calibration is not None and self.int8_missing:
            raise EdgepruneError(f"runtime '{self.name}': {self.int8_missing}")
        path = Path(path)
        outputs = _output_names(model, example)
        files = self.export_files(model, example, path, calibration)
        sidecar = {"runtime": self.name, "inputs": {"input": list(example.shape)}, "outputs": outputs,
                   "files": [f.name for f in files], "int8": calibration is not None}
        write_atomic(sidecar_path(path), json.dumps(sidecar, indent=2))
        return RuntimeFile(self.name, path, files, sidecar["inputs"], outputs)

    def export_files(self, model: Any, example: Any, path: Path, calibration: np.ndarray | None) -> list[Path]:
        raise NotImplementedError

    def version(self) -> str:
        import importlib.metadata

        return importlib.metadata.version(self.packages[0])

    def conv_times(self, layer: dict[str, Any], points: list[tuple[int, int]], threads: int, runs: int,
                   min_time: float, done: Callable[[], None] | None = None) -> list[float]:
        """Median milliseconds of one convolution of ``layer``'s geometry (as in a latency-table
        spec, see :func:`edgeprune.latency.measure.conv_model`) at each (in, out) width of
        ``points``, run by this runtime; ``done()`` after each point."""
        raise EdgepruneError(f"runtime '{self.name}' cannot time single convolutions for a latency table")

    def open(self, path: str | Path, threads: int) -> Session:
        raise NotImplementedError


@dataclass
class RuntimeFile:
    runtime: str
    path: Path
    files: list[Path]
    inputs: dict[str, list[int]]
    outputs: list[str]
    int8_cosine: float | None = None  # an INT8 file: its worst output's cosine to float PyTorch (judged)
    int8_scores_cosine: float | None = None  # ... and its detections output's class scores' (None without one)
    checked_on: str | None = None  # a float file: what it was compared with PyTorch on ("noise", "8 images")


RUNTIMES: dict[str, Runtime] = {}


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    RUNTIMES[cls.name] = cls()
    return cls


def resolve_runtimes(names: Sequence[str]) -> list[Runtime]:
    """The runtimes asked for, all usable here (a missing one is a one-line error); 'all': those installed."""
    if "all" in names:
        return [r for r in RUNTIMES.values() if r.missing() is None]
    chosen = [get_runtime(name) for name in dict.fromkeys(n for n in names if n != "onnxruntime")]
    for runtime in chosen:
        runtime.require()
    return chosen


def runtime_names(names: Sequence[str]) -> list[str]:
    """``names`` (or 'all') as runtime names, onnxruntime first where asked for; the others usable here."""
    others = [r.name for r in resolve_runtimes(names)]
    return (["onnxruntime"] if "onnxruntime" in names or "all" in names else []) + others


def get_runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise EdgepruneError(f"unknown runtime '{name}' (known: onnxruntime, {', '.join(RUNTIMES)})")
    return RUNTIMES[name]


def sidecar_path(path: str | Path) -> Path:
    return Path(str(path) + SIDECAR)


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of a runtime file; a missing or unreadable one is a one-line error."""
    side = sidecar_path(path)
    if not Path(path).is_file():
        raise EdgepruneError(f"{path}: no such file")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EdgepruneError(f"{path}: its sidecar {side.name} is missing or unreadable (export it with "
                             f"`edgeprune export --runtime`): {type(exc).__name__}") from exc
    if data.get("runtime") not in RUNTIMES or not isinstance(data.get("inputs"), dict):
        raise EdgepruneError(f"{side}: not an edgeprune runtime sidecar")
    return data


def runtime_of(path: str | Path) -> str:
    """``onnxruntime`` for an ONNX file, else the runtime its sidecar names."""
    return "onnxruntime" if str(path).endswith(".onnx") else read_sidecar(path)["runtime"]


def runtime_outputs(path: Any, x: np.ndarray) -> list[np.ndarray]:
    """All outputs of another runtime's file (:mod:`edgeprune.runtimes`) on ``x``, one image at a
    time: those files take batch 1."""
    session = get_runtime(runtime_of(path)).open(path, threads=1)
    rows = [session.run([np.ascontiguousarray(image[None], dtype=np.float32)]) for image in x]
    return [np.concatenate([np.asarray(row[j]) for row in rows]) for j in range(len(rows[0]))]


def check_runtime(model: Any, exported: RuntimeFile, *, n_checks: int = 3, seed: int = 0, atol: float = 1e-4,
                  rtol: float = 1e-3, inputs: np.ndarray | None = None) -> Any:
    """Run the runtime's file and PyTorch on the same inputs and compare them like the ONNX check:
    on ``inputs`` (the model's own, e.g. preprocessed calibration images) when given, else on
    ``n_checks`` batches of N(0, 1) noise (see :func:`~edgeprune.export.checks.check_batches`).

    Returns the :class:`~edgeprune.export.checks.Diff`; past the tolerance, a one-line error.
    """
    runtime = get_runtime(exported.runtime)
    session = runtime.open(exported.path, threads=1)
    diff = Diff(0.0, 0.0, True)
    batches = check_batches(exported.inputs["input"], n_checks, inputs, seed)
    exported.checked_on = "noise" if inputs is None else f"{sum(len(x) for x in batches)} images"
    for x in batches:
        expected = torch_outputs(model, x)
        actual = [_like(np.asarray(a), e) for a, e in zip(session.run([x]), expected)]
        diff = diff.combine(Diff.between(actual, expected, atol, rtol, runtime=runtime.name))
    if not diff.ok:
        on = "the model's own inputs" if inputs is not None else "N(0, 1) noise"
        raise EdgepruneError(f"{exported.path.name}: {runtime.name} differs from PyTorch on {on} by up to "
                             f"{diff.max_abs:.3g} ({diff.max_rel:.3g} of the output's scale; allowed atol={atol:g}, "
                             f"rtol={rtol:g})")
    return diff


def export_checked(runtime: Runtime, model: Any, shape: Sequence[int], path: str | Path,
                   calibration: np.ndarray | None = None, atol: float = 1e-4, rtol: float = 1e-3,
                   check_inputs: np.ndarray | None = None) -> tuple[RuntimeFile, Any]:
    """Export ``model`` for ``runtime`` at ``path`` and compare it with PyTorch. A float file must
    match within ``atol``/``rtol`` (on ``check_inputs`` when given); an INT8 one (``calibration``
    given) is judged as the ONNX INT8 file is: its worst output's cosine to float PyTorch on the
    first calibration images (``file.int8_cosine``) must stay above
    :data:`~edgeprune.quality.INT8_MIN_COSINE`. A file that fails is removed, and a one-line error
    says why. Returns the file and the :class:`~edgeprune.export.checks.Diff`."""
    import torch

    exported = runtime.export(model, torch.randn(tuple(shape)), path, calibration)
    try:
        if calibration is None:
            return exported, check_runtime(model, exported, atol=atol, rtol=rtol, inputs=check_inputs)
        return exported, _judge_int8(model, exported, calibration)
    except BaseException:
        for written in [*exported.files, sidecar_path(exported.path)]:
            Path(written).unlink(missing_ok=True)
        raise


def _judge_int8(model: Any, exported: RuntimeFile, calibration: np.ndarray) -> Any:
    """How far an INT8 file is from float PyTorch (the Diff, for the record) and its judgement."""
    images = np.asarray(calibration[:INT8_CHECK_IMAGES], dtype=np.float32)
    expected = torch_outputs(model, images)
    actual = [_like(a, e) for a, e in zip(runtime_outputs(exported.path, images), expected)]
    exported.int8_cosine = judge_int8(expected, actual, exported.path.name)
    exported.int8_scores_cosine = scores_cosine(expected, actual)
    return Diff.between(actual, expected, float("inf"), 0.0, runtime=exported.runtime)


def _like(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``actual`` in ``expected``'s shape where only the layout differs (ncnn drops the batch axis)."""
    return actual.reshape(expected.shape) if actual.size == expected.size else actual


def _output_names(model: Any, example: Any) -> list[str]:
    import torch

    with torch.no_grad():
        out = model.eval()(example)
    return names(flatten(out), out)




