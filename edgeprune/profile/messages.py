"""One-line error text from onnxruntime exceptions (stdlib only: the worker uses it too)."""
from __future__ import annotations

import re


def one_line(exc: BaseException, limit: int = 400) -> str:
    """The exception's message on one line, without onnxruntime's status-code prefix.

    >>> raw = "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from m.onnx failed:Protobuf parsing failed."
    >>> one_line(RuntimeError(raw))
    'Protobuf parsing failed.'
    """
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", " ".join(str(exc).split()))
    text = re.sub(r"^Load model from .* failed: ?", "", text) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
