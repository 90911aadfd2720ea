"""A detector's decode, kept in float when the rest of the model goes INT8.

A decoded ``detections`` output (N x (4 + K) x A, see :mod:`edgeprune.outputs`) joins boxes in
pixels and class scores in [0, 1] in one tensor: one INT8 scale for both (hundreds / 255) rounds
every score to 0. So the nodes that compute such an output after the model's last learned layers
stay in float: the concatenations and reshapes, the DFL softmax and its fixed 0..C-1 conv, the
anchor arithmetic, the sigmoid. The convolutions before them (backbone, neck, the head's own
convs) are quantised, each output with its own scale. The rule needs the graph only: walk back
from the output through every node that is not a learned layer. onnxruntime's quantiser
(:func:`edgeprune.export.quantize_int8`) and ExecuTorch's (PT2E, XNNPACK) apply it to their own
graphs.

>>> graph = {"out": ["cat"], "cat": ["sigmoid", "mul"], "sigmoid": ["conv_cls"], "mul": ["dfl"],
...          "dfl": ["softmax"], "softmax": ["conv_box"], "conv_cls": ["x"], "conv_box": ["x"]}
>>> layers = {"conv_cls", "conv_box"}
>>> sorted(decode_nodes(["out"], lambda n: graph.get(n, []), lambda n: n in layers))
['cat', 'dfl', 'mul', 'out', 'sigmoid', 'softmax']
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Sequence, TypeVar

import numpy as np

from edgeprune.outputs import describe

Node = TypeVar("Node", bound=Hashable)

ONNX_LAYERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def detection_outputs(arrays: Sequence[np.ndarray]) -> list[int]:
    """Indices of the outputs (one N x ... array each, the float model's on real images) that are
    decoded detections, as :func:`edgeprune.outputs.describe` tells them apart."""
    infos = describe(arrays, [f"output{i}" for i in range(len(arrays))])
    return [i for i, info in enumerate(infos) if info.kind == "detections"]


def decode_nodes(outputs: Iterable[Node], inputs_of: Callable[[Node], Iterable[Node]],
                 is_layer: Callable[[Node], bool]) -> set[Node]:
    """The nodes that compute ``outputs`` after their last learned layers: every node reached
    walking back from them without passing a layer (``is_layer``; the layers themselves are not in it)."""
    found: set[Node] = set()
    stack = list(outputs)
    while stack:
        node = stack.pop()
        if node in found or is_layer(node):
            continue
        found.add(node)
        stack.extend(inputs_of(node))
    return found


def is_dfl_weight(weight: Any) -> bool:
    """Whether a convolution's weight is a DFL's: one output channel weighing its C inputs 0, 1,
    ..., C-1 (the expected bin of a distribution). It does not train: part of the decode.

    >>> is_dfl_weight(np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1)), is_dfl_weight(np.ones((1, 4, 1, 1)))
    (True, False)
    """
    weight = np.asarray(weight)
    return weight.ndim >= 2 and weight.shape[0] == 1 and weight.size == weight.shape[1] > 1 and \
        bool(np.array_equal(weight.ravel(), np.arange(weight.size)))


def onnx_decode_nodes(model: Any, outputs: Sequence[str]) -> list[str]:
    """Names of the nodes of the ONNX ``model`` that decode the outputs named ``outputs`` (see
    :func:`decode_nodes`; a Conv with a DFL weight is part of the decode). Every node must have a name."""
    from onnx import numpy_helper

    graph = model.graph
    producer = {tensor: node for node in graph.node for tensor in node.output}
    weights = {init.name: init for init in graph.initializer}

    def is_layer(name: str) -> bool:
        node = nodes[name]
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            return node.op_type in ONNX_LAYERS
        return not is_dfl_weight(numpy_helper.to_array(weights[node.input[1]]))

    nodes = {node.name: node for node in graph.node}
    starts = [producer[name].name for name in outputs if name in producer]
    found = decode_nodes(starts, lambda name: [producer[t].name for t in nodes[name].input if t in producer], is_layer)
    return [node.name for node in graph.node if node.name in found]  # in graph order
