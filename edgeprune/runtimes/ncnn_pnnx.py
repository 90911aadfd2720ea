"""ncnn, the CNN runtime common on ARM boards, through its converter pnnx.

Files: ``NAME.ncnn.param`` (the graph, text) and ``NAME.ncnn.bin`` (float32 weights). ncnn has no
batch dimension: a file takes one image (batch 1). Running a file needs ncnn and NumPy only. ncnn's
half-precision storage and arithmetic are switched off here, so the file is checked and timed in
float32 like the other runtimes (on ARMv8.2 boards half precision is ncnn's own speed-up, not used yet).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.runtimes._quiet import native_output_captured
from edgeprune.paths import write_atomic
from edgeprune.runtimes.base import Runtime, read_sidecar, register_runtime


def bin_path(param: str | Path) -> Path:
    param = Path(param)
    return param.with_name(param.name[: -len(".param")] + ".bin")


def unknown_layers(param_text: str) -> list[str]:
    """Layer types in an ncnn .param that this ncnn build cannot create (e.g. ``Tensor.slice``)."""
    import ncnn

    types = [line.split()[0] for line in param_text.splitlines()[2:] if line.strip()]
    return sorted({t for t in types if ncnn.layer_to_index(t) < 0})


def conv_files(layer: dict[str, Any], cin: int, cout: int, seed: int = 0) -> tuple[str, bytes]:
    """An ncnn ``.param`` text and ``.bin`` bytes holding one convolution (with bias) of a
    latency-table ``layer``'s geometry, written directly: ncnn's format is simple and this needs no torch."""
    group = cin if layer["depthwise"] else 1
    (kh, kw), (sh, sw), (dh, dw) = layer["kernel"], layer["stride"], layer["dilation"]
    top, left, bottom, right = layer["padding"]
    n_weights = cout * (cin // group) * kh * kw
    kind = "ConvolutionDepthWise" if layer["depthwise"] else "Convolution"
    grouped = f" 7={group}" if layer["depthwise"] else ""
    param = ("7767517\n2 2\nInput in0 0 1 in0\n"
             f"{kind} conv 1 1 in0 out0 0={cout} 1={kw} 11={kh} 2={dw} 12={dh} 3={sw} 13={sh} "
             f"4={left} 14={top} 15={right} 16={bottom} 5=1 6={n_weights}{grouped}\n")
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal(n_weights) * 0.1).astype("<f4").tobytes()
    bias = rng.standard_normal(cout).astype("<f4").tobytes()
    return param, b"\0\0\0\0" + weights + bias  # a zero flag: the weights follow as raw float32


@register_runtime
class NcnnRuntime(Runtime):
    name = "ncnn"
    packages = ("ncnn", "pnnx")
    run_packages = ("ncnn",)
    install = "pip install ncnn pnnx"
    suffix = ".ncnn.param"
    int8_missing = "ncnn's INT8 needs its ncnn2table and ncnn2int8 tools, which the pip wheel does not ship"

    def export_files(self, model: Any, example: Any, path: Path, calibration: np.ndarray | None) -> list[Path]:
        import pnnx

        # both import torch, which running an ncnn file (a benchmark worker) must not
        from edgeprune.runtimes._flat import FlatOutputs
        from edgeprune.runtimes._ncnn_layers import ncnn_ready

        if not str(path).endswith(".param"):
            raise EdgepruneError(f"{path}: an ncnn file name ends in .param (e.g. model.ncnn.param)")
        if example.shape[0] != 1:
            raise EdgepruneError(f"ncnn runs one image at a time: input shape {tuple(example.shape)} needs batch 1")
        with tempfile.TemporaryDirectory() as work:
            traced = Path(work) / "model.pt"
            failure = "no ncnn files written"
            try:
                with native_output_captured():
                    pnnx.export(FlatOutputs(ncnn_ready(model, example)).eval(), str(traced), (example,), fp16=False,
                                check_trace=False)  # the file is checked against PyTorch after
            except Exception as exc:  # pnnx re-imports a generated Python file last; the ncnn files exist by then
                failure = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            param, weights = Path(work) / "model.ncnn.param", Path(work) / "model.ncnn.bin"
            if not (param.is_file() and weights.is_file()):
                raise EdgepruneError(f"pnnx could not convert the model for ncnn: {failure}")
            unknown = unknown_layers(param.read_text())
            if unknown:
                raise EdgepruneError(f"ncnn cannot run this model: pnnx left operations ncnn lacks "
                                     f"({', '.join(unknown)})")
            return [write_atomic(bin_path(path), weights.read_bytes()), write_atomic(path, param.read_bytes())]

    def open(self, path: str | Path, threads: int) -> "_NcnnSession":
        return _NcnnSession(path, threads, len(read_sidecar(path)["outputs"]))

    def conv_times(self, layer: dict[str, Any], points: list[tuple[int, int]], threads: int, runs: int,
                   min_time: float, done: Callable[[], None] | None = None) -> list[float]:
        # edgeprune.latency's __init__ imports latency.table, which imports the runtimes: at the top,
        # importing this module would loop back into edgeprune.runtimes half made
        from edgeprune.latency.measure import median_ms

        found = []
        h, w = layer["in_hw"]
        with tempfile.TemporaryDirectory() as work:
            param = Path(work) / "conv.ncnn.param"
            for cin, cout in points:
                text, weights = conv_files(layer, cin, cout)
                param.write_text(text)
                bin_path(param).write_bytes(weights)
                session = _NcnnSession(param, threads, 1)
                x = [np.random.default_rng(0).standard_normal((1, cin, h, w)).astype(np.float32)]
                found.append(median_ms(lambda: session.run(x), runs, min_time, warmup=2))
                if done:
                    done()
        return found


class _NcnnSession:
    def __init__(self, path: str | Path, threads: int, outputs: int) -> None:
        import ncnn

        self._ncnn = ncnn
        self.version = ncnn.__version__
        self.net = ncnn.Net()
        if threads > 0:
            self.net.opt.num_threads = threads
        for reduced in ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed", "use_bf16_storage"):
            setattr(self.net.opt, reduced, False)  # float32 throughout, as the check against PyTorch assumes
        if self.net.load_param(str(path)) != 0 or self.net.load_model(str(bin_path(path))) != 0:
            raise EdgepruneError(f"{path}: ncnn could not load it")
        self.outputs = outputs

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        extractor = self.net.create_extractor()
        for i, x in enumerate(inputs):
            extractor.input(f"in{i}", self._ncnn.Mat(np.ascontiguousarray(x[0], dtype=np.float32)).clone())
        found = []
        for j in range(self.outputs):
            status, mat = extractor.extract(f"out{j}")
            if status != 0:
                raise EdgepruneError(f"ncnn could not compute output out{j}")
            found.append(np.array(mat)[None])
        return found
