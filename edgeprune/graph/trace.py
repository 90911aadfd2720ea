"""Trace a model into the ATen operations its forward runs, with shapes and module ownership.

The model's own Python forward runs once on meta tensors (shapes, no arithmetic), so any forward
that Python can run is followed: loops over ``self.model`` with from-indices, anchors made in
forward, attributes read at run time. A :class:`~torch.utils._python_dispatch.TorchDispatchMode`
records every ATen operation it reaches into an :class:`torch.fx.Graph`. Under
``torch.inference_mode`` the mode sees the ops before autograd would decompose them: the same
op set as torch.export's graph (``conv2d``, ``batch_norm``, ``linear``, ``chunk``,
``split_with_sizes``, ``view`` with the sizes the code gave), and each node carries what export's
nodes carry:

- ``meta["val"]``: the output, a meta tensor (or a tuple of them), for its shape;
- ``meta["nn_module_stack"]``: ``{module path: module type}`` of the modules that were running
  (the model itself is ``""``);
- parameters and buffers are ``get_attr`` nodes named by their qualified name.

Why not ``torch.export.export`` itself: it records the same operations but was 12-16x slower on
resnet50 / mobilenet_v2 than the torch.fx path it replaces (docs/graph.md has the figures); this
records in about the fx path's time. Modules in :data:`LEAF_MODULES` are recorded as one
``call_module`` node (their inside is hidden): edgeprune's own layers are understood whole.

:func:`replay_module` turns a trace into a :class:`torch.fx.GraphModule` that runs the recorded
ops on real tensors with the model's own weights (feature maps for data-driven criteria).
"""
from __future__ import annotations

import inspect
import linecache
import logging
import operator
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import fx, nn
from torch.nn.modules import module as module_hooks
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from edgeprune.errors import TraceError
from edgeprune.layers import ChannelSelect

log = logging.getLogger(__name__)
aten = torch.ops.aten

# edgeprune's own layers, understood as a whole (see graph/ops.py).
LEAF_MODULES: tuple[type[nn.Module], ...] = (ChannelSelect,)

# Ops whose output has their first input's shape and dtype: on meta tensors their kernels (some are
# slow Python decompositions) are skipped. Any in-place op returns its first input as is.
SAME_SHAPE = {
    aten.relu.default, aten.hardtanh.default, aten.sigmoid.default, aten.tanh.default, aten.silu.default,
    aten.gelu.default, aten.hardswish.default, aten.hardsigmoid.default, aten.leaky_relu.default,
    aten.elu.default, aten.mish.default, aten.softplus.default, aten.batch_norm.default,
}
SHAPE_CHANGING_INPLACE = {"resize_", "resize_as_", "set_", "as_strided_"}


@dataclass
class Trace:
    """The recorded graph and what it was recorded from."""

    graph: fx.Graph
    ops: list[fx.Node]  # one node per recorded ATen op (or leaf module), in the order they ran
    trainable: dict[str, bool] = field(default_factory=dict)  # parameter name -> requires_grad
    constants: dict[str, torch.Tensor] = field(default_factory=dict)  # tensors from outside the model's state
    input_shape: tuple[int, ...] = ()

    @property
    def batch(self) -> int:
        return self.input_shape[0] if self.input_shape else 1


# ---- what runs where ----------------------------------------------------------------------

class _Modules:
    """Global forward hooks that keep the stack of running modules, and hide leaf modules' insides."""

    def __init__(self, model: nn.Module, on_leaf: Callable[[str, nn.Module, tuple, Any], None]) -> None:
        self.names = {id(m): name for name, m in model.named_modules()}
        self.on_leaf = on_leaf
        self.stack: list[tuple[str, type]] = []
        self.hidden = 0

    def __enter__(self) -> "_Modules":
        self.handles = [module_hooks.register_module_forward_pre_hook(self._enter),
                        module_hooks.register_module_forward_hook(self._exit)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def _enter(self, module: nn.Module, args: tuple) -> None:
        self.stack.append((self.names.get(id(module), type(module).__name__), type(module)))
        if isinstance(module, LEAF_MODULES):
            self.hidden += 1

    def _exit(self, module: nn.Module, args: tuple, output: Any) -> None:
        path, _ = self.stack.pop()
        if isinstance(module, LEAF_MODULES):
            self.hidden -= 1
            if not self.hidden:
                self.on_leaf(path, module, args, output)

    def snapshot(self) -> dict[str, type]:
        return dict(self.stack)


class _Ops(TorchDispatchMode):
    """Calls ``on_op(func, args, kwargs, out)`` for every ATen op outside leaf modules."""

    def __init__(self, modules: _Modules, on_op: Callable) -> None:
        super().__init__()
        self.modules, self.on_op = modules, on_op
        self.func = None

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # nothing here is compiled: no torch._dynamo.disable wrapper around every op

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.modules.hidden:
            return func(*args, **kwargs)
        self.func = func  # named in the error if the op fails
        out = _on_meta(func, args, kwargs)
        self.func = None
        self.on_op(func, args, kwargs, out)
        return out


def _is_shape_preserving_inplace(func) -> bool:
    name = func.overloadpacket.__name__
    return name.endswith("_") and not name.startswith("_") and name not in SHAPE_CHANGING_INPLACE \
        and torch.Tag.inplace_view not in func.tags and len(func._schema.returns) == 1


def _on_meta(func, args, kwargs):
    """The op's output on meta tensors; kernels that cannot change a shape are skipped."""
    if args and isinstance(args[0], torch.Tensor) and args[0].device.type == "meta":
        if func in SAME_SHAPE and not (func is aten.batch_norm.default and args[5]):
            return torch.empty_like(args[0])
        if _is_shape_preserving_inplace(func):
            return args[0]
    try:
        return func(*args, **kwargs)
    except (RuntimeError, NotImplementedError) as exc:  # real constants meet meta tensors
        if "meta" not in str(exc) and "device" not in str(exc):
            raise
        return func(*_to_meta(args), **_to_meta(kwargs))


def _to_meta(value):
    return tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) and t.dim() > 0 else t, value)


# ---- recording ----------------------------------------------------------------------------

class _Recorder:
    """Builds the fx graph: one node per op, tensors mapped to the nodes that made them."""

    def __init__(self, names: dict[int, str], modules: _Modules) -> None:
        self.graph = fx.Graph()
        self.ops: list[fx.Node] = []
        self.names, self.modules = names, modules
        self.constants: dict[str, torch.Tensor] = {}
        self.node_of: dict[int, fx.Node] = {}
        self.pending: dict[int, tuple[fx.Node, int]] = {}  # items of tuple outputs not used yet
        self.alive: list[Any] = []  # keeps every seen tensor alive, so no id() is reused

    def bind(self, tensor: torch.Tensor, node: fx.Node) -> None:
        self.node_of[id(tensor)] = node
        self.alive.append(tensor)

    def node_for(self, tensor: torch.Tensor) -> fx.Node:
        node = self.node_of.get(id(tensor))
        if node is not None:
            return node
        if id(tensor) in self.pending:
            source, index = self.pending.pop(id(tensor))
            node = self.graph.create_node("call_function", operator.getitem, (source, index))
        else:
            name = self.names.get(id(tensor))
            if name is None:
                name = f"_constant{len(self.constants)}"
                self.constants[name] = tensor
            node = self.graph.get_attr(name)
        node.meta["val"] = tensor
        self.bind(tensor, node)
        return node

    def arg(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self.node_for(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self.arg(v) for v in value)
        return value

    def on_op(self, func, args, kwargs, out) -> None:
        node = self.graph.create_node("call_function", func, self.arg(args),
                                      {k: self.arg(v) for k, v in kwargs.items()})
        self._finish(node, out)

    def on_leaf(self, path: str, module: nn.Module, args: tuple, out: Any) -> None:
        self._finish(self.graph.create_node("call_module", path, self.arg(tuple(args))), out)

    def _finish(self, node: fx.Node, out: Any) -> None:
        node.meta["val"] = out
        node.meta["nn_module_stack"] = self.modules.snapshot()
        self.ops.append(node)
        if isinstance(out, torch.Tensor):
            self.bind(out, node)
        elif isinstance(out, (tuple, list)):
            for index, item in enumerate(out):
                if isinstance(item, torch.Tensor):
                    self.pending[id(item)] = (node, index)
                    self.alive.append(item)


def trace(model: nn.Module, example: torch.Tensor) -> Trace:
    """Record ``model``'s forward on a meta tensor shaped like ``example``.

    The model runs in eval mode (the mode it is deployed in), its tensors swapped for meta ones
    for the duration; its training flags and tensors are restored.

    >>> t = trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
    >>> [str(n.target) for n in t.ops]
    ['aten.conv2d.default', 'aten.relu.default']
    >>> tuple(t.ops[0].meta["val"].shape), list(t.ops[0].meta["nn_module_stack"])
    ((1, 4, 6, 6), ['', '0'])
    """
    require_one_input(model)
    tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    metas: dict[str, torch.Tensor] = {}
    by_id: dict[int, torch.Tensor] = {}
    for name, tensor in tensors.items():  # a tensor shared under two names stays one tensor
        metas[name] = by_id.setdefault(id(tensor), torch.empty_like(tensor, device="meta"))
    names: dict[int, str] = {}
    for name, meta in metas.items():
        names.setdefault(id(meta), name)
    recorder: _Recorder
    modules = _Modules(model, lambda *a: recorder.on_leaf(*a))
    recorder = _Recorder(names, modules)
    x = torch.empty(example.shape, dtype=example.dtype, device="meta")
    placeholder = recorder.graph.placeholder("x")
    placeholder.meta["val"] = x
    recorder.bind(x, placeholder)
    ops = _Ops(modules, recorder.on_op)
    saved = [(m, dict(m.__dict__)) for m in model.modules()]
    model.eval()
    try:
        with _reparametrize_module(model, metas), torch.inference_mode(), modules, ops:
            out = model(x)
    except TraceError:
        raise
    except Exception as exc:
        error = TraceError(_trace_failure(model, ops.func, exc))
        error.module = modules.stack[-1][0] if modules.stack else None  # where it failed
        raise error from exc
    finally:
        _restore(saved)
    recorder.graph.output(tree_map(lambda t: recorder.node_for(t) if isinstance(t, torch.Tensor) else t, out))
    trainable = {name: p.requires_grad for name, p in model.named_parameters(remove_duplicate=False)}
    return Trace(recorder.graph, recorder.ops, trainable, recorder.constants, tuple(example.shape))


def _restore(saved: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    """Undo what the traced forward assigned to its modules (a detector caching its anchors as meta
    tensors), and the training flags."""
    for module, attributes in saved:
        for name in [k for k in module.__dict__ if k not in attributes]:
            del module.__dict__[name]
        for name, value in attributes.items():
            if module.__dict__.get(name) is not value:
                module.__dict__[name] = value


# ---- running the recorded ops on real tensors ---------------------------------------------

def replay_module(model: nn.Module, trace: Trace) -> fx.GraphModule:
    """A GraphModule running ``trace``'s ops with ``model``'s own (shared) weights and modules.

    Shapes are those of the trace: give it inputs of the traced shape. Tensors the forward made
    on the meta device are made on the model's device instead.
    """
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    graph = fx.Graph()
    remap: dict[fx.Node, fx.Node] = {}
    for node in trace.graph.nodes:
        remap[node] = graph.node_copy(node, lambda n: remap[n])
        if isinstance(remap[node].kwargs.get("device"), torch.device) and remap[node].kwargs["device"].type == "meta":
            remap[node].kwargs = {**remap[node].kwargs, "device": device}
    root: dict[str, Any] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            root[node.target] = trace.constants[node.target] if node.target in trace.constants \
                else _attribute(model, node.target)
        elif node.op == "call_module":
            root[node.target] = model.get_submodule(node.target)
    return fx.GraphModule(root, graph)


def _attribute(model: nn.Module, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(model.get_submodule(owner), name)


# ---- bad input ----------------------------------------------------------------------------

def require_one_input(model: nn.Module) -> None:
    """One :class:`TraceError` line unless ``model.forward`` takes exactly one (image) tensor."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in params if p.kind in positional and p.default is inspect.Parameter.empty]
    if len(required) > 1 or (not required and not any(p.kind == p.VAR_POSITIONAL for p in params)):
        raise TraceError(f"edgeprune takes one image input; {type(model).__name__}.forward takes "
                         f"{len(required)} ({', '.join(required) or 'none'})")


_TORCH_ROOT = str(Path(torch.__file__).parent)


def _trace_failure(model: nn.Module, func, exc: Exception) -> str:
    """One line: the operation that failed and the line of the user's code that called it."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(_TORCH_ROOT) and f.filename != __file__]
    where = ""
    if frames:
        f = frames[-1]
        code = (f.line or linecache.getline(f.filename, f.lineno)).strip()
        where = f" at {Path(f.filename).name}:{f.lineno} `{code}`"
    return f"cannot trace {type(model).__name__}: {_describe_failure(func, exc)}{where}"


def _describe_failure(func, exc: Exception) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if func is not None and func.overloadpacket in (aten._local_scalar_dense, aten.item, aten.nonzero, aten.is_nonzero):
        return (f"{func.overloadpacket.__name__} reads a tensor's values in Python "
                f"(data-dependent control flow or .item()), which a shape-only trace cannot follow")
    op = f"{func.overloadpacket.__name__}: " if func is not None else ""
    return f"{op}{message}"[:240]
