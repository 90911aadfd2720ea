"""Static INT8 quantisation with onnxruntime (QDQ format), calibrated on the caller's images."""
from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.export._io import file_size, first_line, log, quiet_loggers, staged_output
from edgeprune.export.checks import load_onnx_checked, op_counts
from edgeprune.export.runtime import fixed_batch, make_session, run_all
from edgeprune.quality import INT8_CHECK_IMAGES, judge_int8

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "distribution": "Distribution"}


@dataclass
class QuantResult:
    """What :func:`quantize_int8` wrote: the file, its size against the float model's, the
    calibration used and the seconds each stage took."""

    path: Path
    size_bytes: int
    float_size_bytes: int
    method: str
    per_channel: bool
    calibration_images: int
    quantize_nodes: int
    seconds: dict[str, float]
    cosine_min: float | None = None  # worst output's cosine to the float model on calibration images (judged)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the path as a string)."""
        return {**asdict(self), "path": str(self.path)}


class _FeedCounter:
    """onnxruntime's calibration-reader protocol (``get_next``) over an iterator of feeds,
    counting the images it hands out."""

    def __init__(self, feeds: Iterator[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self.images = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self.feeds, None)
        if feed is not None:
            self.images += len(next(iter(feed.values())))
        return feed


def quantize_int8(
    onnx_path: str | Path,
    out_path: str | Path,
    calibration: Iterable[np.ndarray] | np.ndarray | Any,
    *,
    per_channel: bool = True,
    method: str = "minmax",
) -> QuantResult:
    """Quantise the float model ``onnx_path`` to INT8 (QDQ, signed weights and activations).

    ``calibration`` is an N x C x H x W float32 array, an iterable of such batches, or an object
    with onnxruntime's ``get_next()`` protocol (e.g. :class:`edgeprune.calibration.OrtCalibrationReader`).
    Batches are cut to the model's batch size when it is fixed. The model first goes through
    onnxruntime's ``quant_pre_process`` (shape inference and graph clean-up). ``method`` is one of
    minmax, entropy, percentile, distribution. When ``calibration`` is an array, the INT8 file is
    judged on its first images like every runtime's INT8 file: its worst output's cosine to the float
    model must stay above :data:`~edgeprune.quality.INT8_MIN_COSINE` (a broken quantisation is
    refused). A failure leaves no file at ``out_path``.

    >>> import tempfile, torch
    >>> from edgeprune.export import export_onnx
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    >>> folder = tempfile.mkdtemp()
    >>> fp32 = export_onnx(net, (1, 3, 8, 8), folder + "/net.onnx").path
    >>> calib = np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)
    >>> q = quantize_int8(fp32, folder + "/net.int8.onnx", calib)
    >>> q.calibration_images, q.quantize_nodes > 0
    (4, True)
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quant_pre_process, quantize_static

    load_onnx_checked(onnx_path)
    if method not in METHODS:
        raise EdgepruneError(f"unknown calibration method '{method}' (choose from {', '.join(METHODS)})")
    session = make_session(onnx_path)
    reader = _FeedCounter(_feeds(calibration, session))
    seconds: dict[str, float] = {}
    with staged_output(out_path) as tmp:
        prepared = tmp.with_name("preprocessed.onnx")
        start = time.perf_counter()
        _run("pre-processing", quant_pre_process, str(onnx_path), str(prepared))
        seconds["preprocess"] = round(time.perf_counter() - start, 4)
        _run("quantisation", quantize_static, str(prepared), str(tmp), reader, quant_format=QuantFormat.QDQ,
             per_channel=per_channel, calibrate_method=getattr(CalibrationMethod, METHODS[method]))
        seconds["calibrate_quantize"] = round(time.perf_counter() - start - seconds["preprocess"], 4)
        prepared.unlink()
        cosine = _judged(onnx_path, tmp, calibration, Path(out_path).name)
        counts = op_counts(load_onnx_checked(tmp))
        size = file_size(tmp)
    log.info("wrote %s: %d QuantizeLinear nodes, calibrated on %d images", out_path,
             counts.get("QuantizeLinear", 0), reader.images)
    return QuantResult(Path(out_path), size, file_size(Path(onnx_path)), method, per_channel, reader.images,
                       counts.get("QuantizeLinear", 0), seconds, cosine)


def _judged(float_path: str | Path, int8_path: Path, calibration: Any, name: str) -> float | None:
    """The INT8 file's worst-output cosine to the float file on the first calibration images (one
    line and no file when it is broken); None when the calibration is a reader that cannot be re-read."""
    session = make_session(int8_path)
    if not isinstance(calibration, np.ndarray):
        return None
    images = np.asarray(calibration[:INT8_CHECK_IMAGES], dtype=np.float32)
    return judge_int8(run_all(make_session(float_path), images), run_all(session, images), name)


def _run(stage: str, function: Any, *args: Any, **kwargs: Any) -> None:
    try:
        with quiet_loggers("onnxruntime"):
            function(*args, **kwargs)
    except EdgepruneError:
        raise
    except Exception as exc:
        raise EdgepruneError(f"INT8 {stage} failed: {first_line(exc)}") from exc


def _feeds(calibration: Any, session: Any) -> Iterator[dict[str, np.ndarray]]:
    """Input feeds for ``session`` from any accepted calibration source; empty sources raise."""
    if hasattr(calibration, "get_next"):
        feeds: Iterator[dict[str, np.ndarray]] = iter(calibration.get_next, None)
    else:
        batches = [calibration] if isinstance(calibration, np.ndarray) else calibration
        feeds = _array_feeds(batches, session)
    first = next(feeds, None)
    if first is None:
        raise EdgepruneError("the calibration data holds no images")
    return itertools.chain([first], feeds)


def _array_feeds(batches: Iterable[np.ndarray], session: Any) -> Iterator[dict[str, np.ndarray]]:
    model_input = session.get_inputs()[0]
    size = fixed_batch(session)
    for batch in batches:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != len(model_input.shape):
            raise EdgepruneError(f"calibration batches must be {len(model_input.shape)}-D like the model input "
                                 f"{model_input.shape}, got shape {batch.shape}")
        if len(batch) == 0:
            continue
        step = size or len(batch)
        for start in range(0, len(batch) - step + 1, step):
            yield {model_input.name: np.ascontiguousarray(batch[start:start + step])}
