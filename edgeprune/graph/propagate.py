"""Walk the traced graph once, giving every tensor its channel ids (see :mod:`.channels`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import fx, nn

from edgeprune.graph.channels import ChannelState, no_ids, space_ids
from edgeprune.graph.trace import Trace

log = logging.getLogger(__name__)

Handler = Callable[["Context", fx.Node], Any]


@dataclass(frozen=True)
class ParamRef:
    """A parameter or buffer, or a view of one: ``axes[i]`` is the tensor axis that this value's
    axis ``i`` runs along (``None`` for an axis of size 1 added by the view)."""

    module: str
    attr: str
    axes: tuple[int | None, ...]
    trainable: bool = True

    def axis_of(self, axis: int) -> int | None:
        return self.axes[axis] if 0 <= axis < len(self.axes) else None


class Context:
    """What a handler sees: the node's inputs' ids and shapes, the modules, the shared state."""

    def __init__(self, trace: Trace, model: nn.Module, state: ChannelState) -> None:
        self.trace = trace
        self.state = state
        self.modules = dict(model.named_modules())
        self.ids: dict[fx.Node, Any] = {}
        self.params: dict[fx.Node, ParamRef] = {}

    def val(self, node: Any) -> Any:
        return node.meta.get("val") if isinstance(node, fx.Node) else None

    def shape(self, node: Any) -> tuple[int, ...] | None:
        """``node``'s shape; a 0-d tensor counts as shape (1,), like its ids array."""
        value = self.val(node)
        return (tuple(value.shape) or (1,)) if isinstance(value, torch.Tensor) else None

    def module(self, node: fx.Node) -> nn.Module:
        return self.modules[node.target]

    def owner(self, node: fx.Node) -> str | None:
        """The innermost module that was running when ``node``'s op ran."""
        stack = node.meta.get("nn_module_stack") or {}
        return list(stack)[-1] if stack else None

    def arg(self, node: fx.Node, position: int, name: str | None = None, default: Any = None) -> Any:
        if len(node.args) > position:
            return node.args[position]
        return node.kwargs.get(name, default) if name else default

    def named(self, node: fx.Node) -> dict[str, Any]:
        """An ATen node's arguments by their schema names, defaults filled in."""
        schema = node.target._schema.arguments
        values = {a.name: a.default_value for a in schema if a.has_default_value()}
        values.update(zip((a.name for a in schema), node.args))
        values.update(node.kwargs)
        return values

    def tensor_ids(self, arg: Any) -> np.ndarray | None:
        value = self.ids.get(arg) if isinstance(arg, fx.Node) else None
        return value if isinstance(value, np.ndarray) else None

    def input_ids(self, node: fx.Node, position: int = 0) -> np.ndarray:
        ids = self.tensor_ids(node.args[position] if len(node.args) > position else None)
        return ids if ids is not None else no_ids(len(self.shape(node) or (1,)))

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if self.tensor_ids(n) is not None else None)
        return found

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"module '{node.target}' ({type(self.module(node)).__name__})"
        target = getattr(node.target, "overloadpacket", node.target)
        name = f"aten.{target.__name__}" if hasattr(target, "__name__") else str(target)
        where = f" in '{self.owner(node)}'" if self.owner(node) else ""
        return f"{name}{where}"

    def frozen_scalar(self, node: fx.Node, ndim: int | None = None) -> np.ndarray:
        """Ids for a tensor whose channels nothing may touch: one frozen id everywhere."""
        space = self.state.new_space(f"opaque:{node.name}", 1, "opaque")
        ids = space_ids(space, ndim or len(self.shape(node) or (1,)), 0)
        self.state.freeze(ids)
        return ids.reshape([1] * max(ids.ndim, 1))

    def opaque(self, node: fx.Node, reason: str | None = None) -> Any:
        """Stop pruning through ``node``: freeze its inputs; its outputs are frozen too."""
        for arg in self.tensor_inputs(node):
            self.state.freeze(self.ids[arg])
        if reason:
            self.state.warn(f"{self.describe(node)}: {reason}; channels through it are not pruned")
        value = self.val(node)
        if isinstance(value, (tuple, list)):
            return tuple(self.frozen_scalar(node, max(v.dim(), 1)) if isinstance(v, torch.Tensor) else None
                         for v in value)
        return self.frozen_scalar(node) if isinstance(value, torch.Tensor) else None


def propagate(trace: Trace, model: nn.Module, resolve: Callable[[Context, fx.Node], Handler | None]) -> ChannelState:
    """Give every node its ids using the handler ``resolve`` finds; unknown operations are opaque."""
    state = ChannelState()
    ctx = Context(trace, model, state)
    for node in trace.graph.nodes:
        if node.op == "placeholder":
            ctx.ids[node] = ctx.frozen_scalar(node)
        elif node.op == "get_attr":
            _attribute(ctx, node)
        elif node.op == "output":
            fx.node.map_arg(node.args, lambda n: state.freeze(ctx.tensor_ids(n)))
        else:
            handler = resolve(ctx, node)
            if handler is None:
                ctx.ids[node] = ctx.opaque(node, "operation not understood") if _touches_tensors(ctx, node) else None
            else:
                ctx.ids[node] = handler(ctx, node)
    _warn_unreached(ctx, model)
    return state


def _attribute(ctx: Context, node: fx.Node) -> None:
    """A parameter or buffer carries no channel ids itself; the ops that use it make its sites."""
    ctx.ids[node] = no_ids(max(len(ctx.shape(node) or ()), 1))
    if node.target.startswith("_constant"):
        return
    owner, _, attr = node.target.rpartition(".")
    ctx.params[node] = ParamRef(owner, attr, tuple(range(len(ctx.shape(node)))),
                                ctx.trace.trainable.get(node.target, True))


def _touches_tensors(ctx: Context, node: fx.Node) -> bool:
    return bool(ctx.tensor_inputs(node)) or ctx.val(node) is not None


def _warn_unreached(ctx: Context, model: nn.Module) -> None:
    used = {n.target for n in ctx.trace.graph.nodes if n.op == "call_module"}
    used |= {p.module for p in ctx.params.values()}
    for name, module in model.named_modules():
        if name and name not in used and any(True for _ in module.parameters(recurse=False)):
            if not any(u.startswith(name + ".") for u in used):
                ctx.state.warn(f"module '{name}' is not used by the traced (eval-mode) forward; it is left unchanged")
