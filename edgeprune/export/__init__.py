"""Deployment files: ONNX export with simplification and a numerical check, INT8, ORT format.

The ONNX-side functions need only onnx and onnxruntime: PyTorch is imported when
:func:`export_onnx` is first used, so INT8 and ORT conversion also run where torch is absent.
Each step writes into a hidden folder beside its output and publishes only when its checks pass.

>>> import tempfile, torch
>>> from edgeprune.export import export_onnx
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
>>> result = export_onnx(net, (1, 3, 16, 16), tempfile.mkdtemp() + "/net.onnx")
>>> result.nodes_after <= result.nodes_before, load_onnx_checked(result.path).graph.input[0].name
(True, 'input')
"""
from __future__ import annotations

from typing import Any

from edgeprune.export.checks import Diff, load_onnx_checked, op_counts
from edgeprune.export.ort_format import to_ort_format
from edgeprune.export.quantize import METHODS, QuantResult, quantize_int8
from edgeprune.export.runtime import make_session, onnx_accuracy, run_all, run_batches

__all__ = [
    "Diff",
    "EXPORTERS",
    "ExportResult",
    "METHODS",
    "QuantResult",
    "export_onnx",
    "load_onnx_checked",
    "make_session",
    "onnx_accuracy",
    "op_counts",
    "quantize_int8",
    "run_all",
    "run_batches",
    "to_ort_format",
    "with_preprocessing",
]

_NEED_TORCH = {"EXPORTERS", "ExportResult", "export_onnx", "with_preprocessing"}


def __getattr__(name: str) -> Any:
    if name == "with_preprocessing":
        from edgeprune.export.baked import with_preprocessing

        return with_preprocessing
    if name in _NEED_TORCH:
        from edgeprune.export import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
