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
from edgeprune.export.decode import detection_outputs, onnx_decode_nodes
from edgeprune.export.runtime import fixed_batch, make_session, run_all
from edgeprune.quality import INT8_CHECK_IMAGES, judge_int8, scores_cosine

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
    scores_cosine: float | None = None  # a decoded detections output's class scores: their cosine to float (judged)
    float_nodes: int = 0  # nodes left in float: the decode of detections outputs (see edgeprune.export.decode)

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
    float_decode: bool = True,
) -> QuantResult:
    """Quantise the float model ``onnx_path`` to INT8 (QDQ, signed weights and activations).

    ``calibration`` is an N x C x H x W float32 array, an iterable of such batches, or an object
    with onnxruntime's ``get_next()`` protocol (e.g. :class:`edgeprune.calibration.OrtCalibrationReader`).
    Batches are cut to the model's batch size when it is fixed. The model first goes through
    onnxruntime's ``quant_pre_process`` (shape inference and graph clean-up). ``method`` is one of
    minmax, entropy, percentile, distribution. A detector's decoded output (kind ``detections``, told
    apart on the first calibration batch) is computed in float after the last convolutions, so its
    scores keep their own scale (:mod:`edgeprune.export.decode`; ``float_decode=False`` quantises the
    decode too: its scores round to 0, for comparison only). When ``calibration`` is an array, the
    INT8 file is judged on its first images like every runtime's INT8 file: its worst output's
    cosine to the float model (a detections output's boxes and scores apart) must stay above
    :data:`~edgeprune.quality.INT8_MIN_COSINE` (a broken quantisation is refused). A failure leaves
    no file at ``out_path``.

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
    feeds = _feeds(calibration, session)
    first = next(feeds)
    decoded = _decoded_outputs(session, first) if float_decode else []
    reader = _FeedCounter(itertools.chain([first], feeds))
    seconds: dict[str, float] = {}
    with staged_output(out_path) as tmp:
        prepared = tmp.with_name("preprocessed.onnx")
        start = time.perf_counter()
        _run("pre-processing", quant_pre_process, str(onnx_path), str(prepared))
        float_nodes = _decode_of(prepared, decoded)
        seconds["preprocess"] = round(time.perf_counter() - start, 4)
        _run("quantisation", quantize_static, str(prepared), str(tmp), reader, quant_format=QuantFormat.QDQ,
             per_channel=per_channel, calibrate_method=getattr(CalibrationMethod, METHODS[method]),
             nodes_to_exclude=float_nodes)
        seconds["calibrate_quantize"] = round(time.perf_counter() - start - seconds["preprocess"], 4)
        prepared.unlink()
        cosine, scores = _judged(onnx_path, tmp, calibration, Path(out_path).name)
        counts = op_counts(load_onnx_checked(tmp))
        size = file_size(tmp)
    log.info("wrote %s: %d QuantizeLinear nodes, %d decode nodes in float, calibrated on %d images", out_path,
             counts.get("QuantizeLinear", 0), len(float_nodes), reader.images)
    return QuantResult(Path(out_path), size, file_size(Path(onnx_path)), method, per_channel, reader.images,
                       counts.get("QuantizeLinear", 0), seconds, cosine, scores, len(float_nodes))


def _decoded_outputs(session: Any, feed: dict[str, np.ndarray]) -> list[str]:
    """The names of the model's decoded detections outputs, told apart on one calibration batch."""
    names = [o.name for o in session.get_outputs()]
    return [names[i] for i in detection_outputs(session.run(None, feed))]


def _decode_of(prepared: Path, outputs: list[str]) -> list[str]:
    """The nodes of the ONNX file ``prepared`` that decode ``outputs`` (to stay float); unnamed nodes
    are named first (onnxruntime excludes nodes by name), the file rewritten."""
    import onnx

    if not outputs:
        return []
    model = onnx.load(str(prepared))
    taken = {node.name for node in model.graph.node}
    if "" in taken or len(taken) < len(model.graph.node):
        for i, node in enumerate(model.graph.node):
            node.name = f"{node.name or node.op_type}_{i}"
        onnx.save(model, str(prepared))
    return onnx_decode_nodes(model, outputs)


def _judged(float_path: str | Path, int8_path: Path, calibration: Any, name: str) -> tuple[float | None, float | None]:
    """The INT8 file's worst-output cosine to the float file on the first calibration images (one
    line and no file when it is broken) and its detection scores' cosine (None without detections);
    both None when the calibration is a reader that cannot be re-read."""
    session = make_session(int8_path)
    if not isinstance(calibration, np.ndarray):
        return None, None
    images = np.asarray(calibration[:INT8_CHECK_IMAGES], dtype=np.float32)
    reference, quantised = run_all(make_session(float_path), images), run_all(session, images)
    return judge_int8(reference, quantised, name), scores_cosine(reference, quantised)


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
