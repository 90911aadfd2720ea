"""ExecuTorch with the XNNPACK delegate: the CPU kernels most mobile apps run.

File: ``NAME.pte``. Made with ``torch.export`` and ``to_edge_transform_and_lower`` with the
XNNPACK partitioner. ExecuTorch's Python runtime (its pybindings) imports torch, so a benchmark
worker for it does too; on a phone the same file runs from the C++ or Java/Kotlin/Swift runtime.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeprune.errors import EdgepruneError
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

    def export_files(self, model: Any, example: Any, path: Path) -> list[Path]:
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        try:
            with native_output_captured():
                program = torch.export.export(model.eval(), (example,))
                lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EdgepruneError(f"ExecuTorch could not export the model: {first[:200]}") from exc
        write_atomic(path, lowered.buffer)
        return [path]

    def open(self, path: str | Path, threads: int) -> "_ExecuTorchSession":
        return _ExecuTorchSession(path, threads)


class _ExecuTorchSession:
    def __init__(self, path: str | Path, threads: int) -> None:
        import importlib.metadata

        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime as ExecuTorch

        if threads > 0:
            portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's thread pool; 0 keeps its default
        self._torch = torch
        self.version = importlib.metadata.version("executorch")
        try:
            with native_output_captured():
                self.method = ExecuTorch.get().load_program(str(path)).load_method("forward")
        except Exception as exc:
            raise EdgepruneError(f"{path}: ExecuTorch could not load it ({type(exc).__name__})") from exc

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        outputs = self.method.execute([self._torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        return [o.numpy() for o in outputs]
