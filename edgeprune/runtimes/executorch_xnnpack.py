"""ExecuTorch with the XNNPACK delegate: the CPU kernels most mobile apps run.

File: ``NAME.pte``. Made with ``torch.export`` and ``to_edge_transform_and_lower`` with the
XNNPACK partitioner. ExecuTorch's Python runtime (its pybindings) imports torch, so a benchmark
worker for it does too; on a phone the same file runs from the C++ or Java/Kotlin/Swift runtime.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.export.decode import decode_nodes, detection_outputs, is_dfl_weight
from edgeprune.outputs import flatten
from edgeprune.runtimes._quiet import native_output_captured
from edgeprune.paths import write_atomic
from edgeprune.runtimes.base import Runtime, register_runtime


@register_runtime
class ExecuTorchRuntime(Runtime):
    name = "executorch"
    packages = ("executorch", "torchao")
    run_packages = ("executorch.runtime",)
    install = ('pip install --no-deps executorch "torchao>=0.18,<0.19" && pip install flatbuffers ruamel.yaml '
               "tabulate")
    suffix = ".pte"
    imports_torch = True
    int8_missing = None  # XNNPACKQuantizer: per-channel symmetric INT8 weights, INT8 activations
    CALIBRATION_IMAGES = 128
    KIND_IMAGES = 8  # calibration images the float model's outputs are told apart on (detections or not)
    table_axis_points = 6  # lowering to XNNPACK takes about 0.8 s per convolution: a coarser grid
    METHODS_PER_FILE = 16

    def export_files(self, model: Any, example: Any, path: Path, calibration: np.ndarray | None) -> list[Path]:
        import torch

        with _export_errors():
            # a quantised module is an exported graph, which refuses eval()
            model = model.eval() if calibration is None else self._quantised(model, example, calibration)
            program = torch.export.export(model, (example,))
        write_atomic(path, _lowered({"forward": _xnnpack_ready(program)}))
        return [path]

    def _quantised(self, model: Any, example: Any, calibration: np.ndarray) -> Any:
        """PT2E static quantisation with XNNPACK's quantiser, observers fed one image at a time; the
        decode of a detector's decoded outputs stays float (:mod:`edgeprune.export.decode`)."""
        import torch
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                             get_symmetric_quantization_config)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        exported = torch.export.export(model.eval(), (example,)).module()
        with torch.no_grad():  # the exported graph, one image at a time: the model itself is left as it was
            rows = [[t.numpy() for t in flatten(exported(torch.from_numpy(np.ascontiguousarray(image[None],
                     dtype=np.float32))))] for image in calibration[:self.KIND_IMAGES]]
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        decoded = detection_outputs([np.concatenate(column) for column in zip(*rows)])
        if decoded:
            quantizer = _float_decode(quantizer, decoded)
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for image in calibration[: self.CALIBRATION_IMAGES]:
                prepared(torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32)))
        return convert_pt2e(prepared)

    def open(self, path: str | Path, threads: int) -> "_ExecuTorchSession":
        return _ExecuTorchSession(path, threads)

    def conv_times(self, layer: dict[str, Any], points: list[tuple[int, int]], threads: int, runs: int,
                   min_time: float, done: Callable[[], None] | None = None) -> list[float]:
        """One program per :attr:`METHODS_PER_FILE` points, a method per point (lowering is the slow part)."""
        import tempfile

        import torch

        # edgeprune.latency's __init__ imports latency.table, which imports the runtimes: see ncnn_pnnx
        from edgeprune.latency.measure import median_ms

        found = []
        h, w = layer["in_hw"]
        with tempfile.TemporaryDirectory() as work:
            for start in range(0, len(points), self.METHODS_PER_FILE):
                chunk = points[start:start + self.METHODS_PER_FILE]
                with _export_errors():
                    programs = {f"p{i}": torch.export.export(_conv(layer, cin, cout).eval(), (torch.zeros(1, cin, h, w),))
                                for i, (cin, cout) in enumerate(chunk)}
                path = Path(work) / f"convs{start}.pte"
                path.write_bytes(_lowered(programs))
                for i, (cin, _) in enumerate(chunk):
                    session = _ExecuTorchSession(path, threads, method=f"p{i}")
                    x = [np.random.default_rng(0).standard_normal((1, cin, h, w)).astype(np.float32)]
                    found.append(median_ms(lambda: session.run(x), runs, min_time, warmup=2))
                    if done:
                        done()
        return found


_FX_LAYERS = ("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
              "linear", "matmul", "mm", "bmm", "addmm")


def _float_decode(quantizer: Any, outputs: list[int]) -> Any:
    """``quantizer`` that leaves in float the decode of the outputs numbered ``outputs``: its
    annotations are removed from those nodes after it has annotated the graph. (XNNPACKQuantizer's
    filter function cannot do it: its cat annotator and its propagation along views ignore it.)"""
    from torchao.quantization.pt2e.quantizer import Quantizer
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    class FloatDecode(Quantizer):
        def transform_for_annotation(self, model: Any) -> Any:
            return quantizer.transform_for_annotation(model)

        def annotate(self, model: Any) -> Any:
            model = quantizer.annotate(model)
            for node in _fx_decode(model.graph, outputs):
                node.meta.pop(Q_ANNOTATION_KEY, None)
            return model

        def validate(self, model: Any) -> None:
            quantizer.validate(model)

    return FloatDecode()


def _fx_decode(graph: Any, outputs: list[int]) -> set[Any]:
    """The nodes of an exported FX ``graph`` that decode its flattened outputs numbered ``outputs``
    (see :func:`edgeprune.export.decode.decode_nodes`; a convolution with a DFL weight is part of it)."""
    import functools

    from torch.utils._pytree import tree_leaves

    module = graph.owning_module
    returned = tree_leaves(next(n for n in graph.nodes if n.op == "output").args[0])

    def weight(node: Any) -> Any:
        arg = node.args[1] if len(node.args) > 1 else None
        if getattr(arg, "op", None) != "get_attr":
            return None
        return functools.reduce(getattr, arg.target.split("."), module).detach().cpu().numpy()

    def is_layer(node: Any) -> bool:
        name = getattr(getattr(node.target, "_overloadpacket", node.target), "__name__", "")
        if node.op != "call_function" or name not in _FX_LAYERS:
            return False
        return not ("conv" in name and is_dfl_weight(weight(node)))

    return decode_nodes([returned[i] for i in outputs], lambda node: node.all_input_nodes, is_layer)


def _prelu_off_4d(x: Any, weight: Any) -> Any:
    """PReLU on a tensor that is not N x C x H x W (e.g. after a Linear) as ``relu(x) + w * (x - relu(x))``:
    the same numbers (``x - relu(x)`` is ``min(x, 0)`` exactly) in operators XNNPACK lays out freely.
    XNNPACK's own PReLU is channels-last only: its layout pass stops on any other rank."""
    import torch

    if x.dim() == 4:
        return NotImplemented  # keep XNNPACK's PReLU
    if weight.numel() > 1 and x.dim() > 2:  # the weight runs along dim 1
        weight = weight.reshape(-1, *[1] * (x.dim() - 2))
    positive = torch.relu(x)
    return positive + weight * (x - positive)


def _xnnpack_ready(program: Any) -> Any:
    """``program`` with the operators XNNPACK's lowering refuses rewritten into ones it takes, exactly."""
    import torch

    rewrites = {torch.ops.aten.prelu.default: _prelu_off_4d}
    used = {node.target for node in program.graph.nodes if node.op == "call_function"}
    return program.run_decompositions({op: f for op, f in rewrites.items() if op in used}) if used & set(rewrites) else program


def _conv(layer: dict[str, Any], cin: int, cout: int) -> Any:
    from torch import nn

    top, left, bottom, right = layer["padding"]
    if (top, left) != (bottom, right):
        raise EdgepruneError(f"ExecuTorch tables time symmetric paddings only, not {layer['padding']}")
    return nn.Conv2d(cin, cout, tuple(layer["kernel"]), tuple(layer["stride"]), (top, left), tuple(layer["dilation"]),
                     groups=cin if layer["depthwise"] else 1)


@contextmanager
def _export_errors():
    try:
        with native_output_captured():
            yield
    except EdgepruneError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgepruneError(f"ExecuTorch could not export the model: {first[:200]}") from exc


def _lowered(programs: dict[str, Any]) -> bytes:
    """The ``.pte`` bytes of ``programs`` (method name -> exported program), delegated to XNNPACK."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with _export_errors():
        return to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


class _ExecuTorchSession:
    def __init__(self, path: str | Path, threads: int, method: str = "forward") -> None:
        import importlib.metadata

        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime as ExecuTorch

        if threads > 0:
            with native_output_captured():
                portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's thread pool; 0 keeps its default
        self._torch = torch
        self.version = importlib.metadata.version("executorch")
        try:
            with native_output_captured():
                self.method = ExecuTorch.get().load_program(str(path)).load_method(method)
        except Exception as exc:
            raise EdgepruneError(f"{path}: ExecuTorch could not load it ({type(exc).__name__})") from exc

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        outputs = self.method.execute([self._torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        return [o.numpy() for o in outputs]
