"""Measure a latency-table spec on this machine: ``python measure.py SPEC.json -o TABLE.json``.

This file is self-contained (standard library, NumPy and onnxruntime only) so that it can be
copied alone to an edge board that has no torch and no edgeprune. ``edgeprune lut build
--spec-only`` writes the spec; the table this writes goes back with ``--lut TABLE.json``.

The single-convolution ONNX models are written by a small protobuf encoder below rather than by
the ``onnx`` package, which boards often lack. The fields follow onnx.proto (IR version 7,
opset 13); the tests check the bytes against ``onnx.checker``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

SPEC_FORMAT = "edgeprune.lut-spec/1"
TABLE_FORMAT = "edgeprune.lut/1"
_OPT_LEVELS = ("disable", "basic", "extended", "all")


# --- protobuf wire format: varints and length-delimited fields -----------------------------------

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 are ten-byte varints
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _ints_attribute(name: str, values: list[int]) -> bytes:
    return _bytes(1, name) + b"".join(_int(8, v) for v in values) + _int(20, 7)  # type INTS


def _int_attribute(name: str, value: int) -> bytes:
    return _bytes(1, name) + _int(3, value) + _int(20, 2)  # type INT


def _tensor(name: str, array: np.ndarray) -> bytes:
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return b"".join(_int(1, d) for d in array.shape) + _int(2, 1) + _bytes(8, name) + _bytes(9, data)


def _value_info(name: str, shape: list[int]) -> bytes:
    dims = b"".join(_bytes(1, _int(1, d)) for d in shape)
    tensor_type = _int(1, 1) + _bytes(2, dims)  # elem_type FLOAT, shape
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def conv_model(layer: dict, cin: int, cout: int, seed: int = 0) -> bytes:
    """A serialised ONNX model holding one Conv (with bias) of ``layer``'s geometry.

    ``layer`` has ``kernel``, ``stride``, ``padding`` (4 values), ``dilation``, ``in_hw`` and
    ``depthwise`` (then ``cin == cout`` and the conv has one group per channel).
    """
    rng = np.random.default_rng(seed)
    group = cin if layer["depthwise"] else 1
    kh, kw = layer["kernel"]
    (sh, sw), (dh, dw), (h, w) = layer["stride"], layer["dilation"], layer["in_hw"]
    pads = layer["padding"]
    out_h = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    weight = rng.standard_normal((cout, cin // group, kh, kw)).astype(np.float32) * 0.1
    bias = rng.standard_normal(cout).astype(np.float32)
    attributes = [_ints_attribute("kernel_shape", [kh, kw]), _ints_attribute("strides", [sh, sw]),
                  _ints_attribute("pads", list(pads)), _ints_attribute("dilations", [dh, dw]),
                  _int_attribute("group", group)]
    node = (_bytes(1, "x") + _bytes(1, "w") + _bytes(1, "b") + _bytes(2, "y") + _bytes(4, "Conv")
            + b"".join(_bytes(5, a) for a in attributes))
    graph = (_bytes(1, node) + _bytes(2, "lut") + _bytes(5, _tensor("w", weight)) + _bytes(5, _tensor("b", bias))
             + _bytes(11, _value_info("x", [1, cin, h, w])) + _bytes(12, _value_info("y", [1, cout, out_h, out_w])))
    opset = _bytes(1, "") + _int(2, 13)
    return _int(1, 7) + _bytes(2, "edgeprune") + _bytes(7, graph) + _bytes(8, opset)


# --- measuring ----------------------------------------------------------------------------------

def machine_info() -> dict:
    """What identifies this machine's speed: CPU model, core count, onnxruntime version."""
    import onnxruntime as ort

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key = line.split(":")[0].strip().lower()
                if key in ("model name", "hardware", "cpu part") and ":" in line:
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"machine": platform.machine(), "cpu": cpu, "cpus": os.cpu_count(), "onnxruntime": ort.__version__,
            "system": platform.system()}


def _session(model: bytes, settings: dict):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings["threads"]
    options.inter_op_num_threads = settings["inter_op_threads"]
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, {
        "disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
        "all": "ORT_ENABLE_ALL"}[settings["graph_optimization"]])
    options.enable_cpu_mem_arena = settings["memory_arena"]
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def median_ms(run, runs: int, min_time: float, warmup: int) -> float:
    """Median milliseconds of ``run()``, after ``warmup`` + 1 untimed calls; at least ``runs``
    calls and ``min_time`` seconds."""
    for _ in range(warmup + 1):
        run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < runs or time.perf_counter() - started < min_time:
        start = time.perf_counter_ns()
        run()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.median(times))


def time_model(model: bytes, input_shape: list[int], settings: dict, runs: int, min_time: float, warmup: int = 2) -> float:
    """Median milliseconds of one run of a :func:`conv_model`, after ``warmup`` runs; at least
    ``runs`` runs and ``min_time`` seconds."""
    feeds = {"x": np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}
    session = _session(model, settings)
    return median_ms(lambda: session.run(None, feeds), runs, min_time, warmup)


def time_file(path: str, settings: dict, runs: int, min_time: float, warmup: int = 5) -> float:
    """Median milliseconds of a whole ONNX model with fixed float inputs (the dense model, say)."""
    with open(path, "rb") as source:
        session = _session(source.read(), settings)
    rng = np.random.default_rng(0)
    feeds = {}
    for item in session.get_inputs():
        if not all(isinstance(d, int) for d in item.shape) or item.type != "tensor(float)":
            raise ValueError(f"{path}: input {item.name} must be float with fixed dimensions, got {item.shape}")
        feeds[item.name] = rng.standard_normal(item.shape).astype(np.float32)
    return median_ms(lambda: session.run(None, feeds), runs, min_time, warmup)


STAIRCASE_SLACK = 0.10  # a point this much faster than a smaller one, or slower than a larger one, breaks the staircase
REMEASURES = 2  # a point that breaks its neighbours' staircase is measured this many times more (the median kept)


def staircase_breaks(points: list[list[int]], times: list[float], slack: float = STAIRCASE_SLACK) -> list[int]:
    """Indices of the points (``[cin, cout]`` each) that break the staircase their neighbours in
    work (cin x cout) make: faster than the next smaller point, or slower than the next larger
    one, by more than ``slack``.

    >>> staircase_breaks([[4, 4], [4, 8], [4, 12], [4, 16]], [1.0, 2.0, 1.2, 2.4])
    [1, 2]
    """
    order = sorted(range(len(points)), key=lambda i: points[i][0] * points[i][1])
    found = []
    for k, i in enumerate(order):
        smaller = times[order[k - 1]] if k > 0 else None
        larger = times[order[k + 1]] if k + 1 < len(order) else None
        if (smaller is not None and times[i] < smaller * (1 - slack)) or (larger is not None and times[i] > larger * (1 + slack)):
            found.append(i)
    return sorted(found)


def point_key(cin: int, cout: int) -> str:
    return f"{cin},{cout}"


def check_spec(spec: object) -> dict:
    """``spec`` as a dict, or ValueError with one line saying what is wrong."""
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"not an edgeprune latency spec (expected format {SPEC_FORMAT})")
    settings = spec.get("settings", {})
    for key in ("threads", "inter_op_threads"):
        if not isinstance(settings.get(key), int) or settings[key] < 0:
            raise ValueError(f"spec settings: '{key}' must be an integer >= 0")
    if settings.get("graph_optimization") not in _OPT_LEVELS or not isinstance(settings.get("memory_arena"), bool):
        raise ValueError("spec settings: graph_optimization or memory_arena missing or invalid")
    for layer in spec.get("layers", []):
        missing = [k for k in ("key", "kernel", "stride", "padding", "dilation", "in_hw", "depthwise", "points") if k not in layer]
        if missing:
            raise ValueError(f"spec layer {layer.get('key', '?')}: missing {', '.join(missing)}")
    if not all(isinstance(m, dict) and {"key", "file"} <= set(m) for m in spec.get("models", [])):
        raise ValueError("spec models: each needs a 'key' and a 'file'")
    return spec


def measure_spec(spec: dict, runs: int = 10, min_time: float = 0.02, progress=None, folder: str = ".") -> dict:
    """Time every point of ``spec``, and its whole models (files relative to ``folder``); returns
    the table (format :data:`TABLE_FORMAT`). ``progress(done, total)`` is called after each point.
    """
    spec = check_spec(spec)
    settings = spec["settings"]
    total = sum(len(layer["points"]) for layer in spec["layers"])
    overhead = time_model(conv_model(TINY_LAYER, 1, 1), [1, 1, 1, 1], settings, runs * 5, min_time)
    entries: dict[str, dict[str, float]] = {}
    done = 0
    for layer in spec["layers"]:
        row = entries.setdefault(layer["key"], {})
        h, w = layer["in_hw"]

        def timed(cin: int, cout: int) -> float:
            return time_model(conv_model(layer, cin, cout), [1, cin, h, w], settings, runs, min_time)

        times = []
        for cin, cout in layer["points"]:
            times.append(timed(cin, cout))
            done += 1
            if progress:
                progress(done, total)
        for i in staircase_breaks(layer["points"], times):  # a noisy point: measured again, the median kept
            times[i] = float(np.median([times[i], *(timed(*layer["points"][i]) for _ in range(REMEASURES))]))
        row.update({point_key(cin, cout): t for (cin, cout), t in zip(layer["points"], times)})
    models = {m["key"]: time_file(os.path.join(folder, m["file"]), settings, runs * 3, min_time * 10)
              for m in spec.get("models", [])}
    return {"format": TABLE_FORMAT, "machine": machine_info(), "settings": settings, "overhead_ms": overhead,
            "runs": runs, "min_time": min_time, "entries": entries, "models": models}


# One run of a 1x1 conv on one pixel: what a session run costs beyond its kernels.
TINY_LAYER = {"kernel": [1, 1], "stride": [1, 1], "padding": [0, 0, 0, 0], "dilation": [1, 1], "in_hw": [1, 1],
              "depthwise": False}


def write_json_atomic(value: dict, path: str) -> None:
    temporary = f"{path}.partial-{os.getpid()}"
    with open(temporary, "w") as out:
        json.dump(value, out, indent=1)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="measure.py", description="Measure an edgeprune latency-table spec with onnxruntime.")
    parser.add_argument("spec", help="the spec JSON written by `edgeprune lut build --spec-only`")
    parser.add_argument("-o", "--output", required=True, help="the table JSON to write")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per point, at least (default 10)")
    parser.add_argument("--min-time", type=float, default=0.02, help="seconds of timed runs per point, at least")
    args = parser.parse_args(argv)
    try:
        with open(args.spec) as source:
            spec = check_spec(json.load(source))
        if args.runs < 1 or args.min_time < 0:
            raise ValueError("--runs must be >= 1 and --min-time >= 0")

        def progress(done: int, total: int) -> None:
            if done % 25 == 0 or done == total:
                print(f"measured {done}/{total} points", file=sys.stderr, flush=True)

        table = measure_spec(spec, args.runs, args.min_time, progress, os.path.dirname(os.path.abspath(args.spec)))
        write_json_atomic(table, args.output)
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"measure.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
