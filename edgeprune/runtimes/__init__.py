"""Runtimes beside onnxruntime that apps ship with: each turns the model into its own file, runs it,
and is checked against PyTorch and timed like the ONNX files.

One registry (:data:`RUNTIMES`); a runtime is a small object: ``missing()`` (why it cannot be used
here, or None), ``export(model, example, path)`` (in the parent, with torch) and ``open(path,
threads)`` (in a benchmark worker). Each exported file has a sidecar ``FILE.io.json`` with its
runtime, input shapes and output names, so a worker needs neither torch nor the model to run it.
"""
from edgeprune.runtimes.base import (RUNTIMES, Runtime, RuntimeFile, check_runtime, export_checked, get_runtime,
                                     read_sidecar, register_runtime, resolve_runtimes, runtime_names, runtime_of)
from edgeprune.runtimes import executorch_xnnpack, ncnn_pnnx  # noqa: F401  (registers them)

__all__ = ["RUNTIMES", "Runtime", "RuntimeFile", "check_runtime", "export_checked", "get_runtime", "read_sidecar",
           "register_runtime", "resolve_runtimes", "runtime_names", "runtime_of"]
