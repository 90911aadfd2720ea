"""Walk the traced graph once, giving every tensor its channel ids (see :mod:`.channels`)."""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
from torch import fx, nn

from edgeprune.graph.channels import ChannelState, no_ids, space_ids

log = logging.getLogger(__name__)

Handler = Callable[["Context", fx.Node], Any]


class Context:
    """What a handler sees: the node's inputs' ids and shapes, the modules, the shared state."""

    def __init__(self, gm: fx.GraphModule, state: ChannelState) -> None:
        self.gm = gm
        self.state = state
        self.modules = dict(gm.named_modules())
        self.ids: dict[fx.Node, Any] = {}
        self.params: dict[fx.Node, str] = {}

    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def module(self, node: fx.Node) -> nn.Module:
        return self.modules[node.target]

    def arg(self, node: fx.Node, position: int, name: str | None = None, default: Any = None) -> Any:
        if len(node.args) > position:
            return node.args[position]
        return node.kwargs.get(name, default) if name else default

    def tensor_ids(self, arg: Any) -> np.ndarray | None:
        value = self.ids.get(arg) if isinstance(arg, fx.Node) else None
        return value if isinstance(value, np.ndarray) else None

    def input_ids(self, node: fx.Node, position: int = 0) -> np.ndarray:
        ids = self.tensor_ids(self.arg(node, position, "input"))
        return ids if ids is not None else no_ids(len(self.shape(node) or (1,)))

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if self.tensor_ids(n) is not None else None)
        return found

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"module '{node.target}' ({type(self.module(node)).__name__})"
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        stack = node.meta.get("nn_module_stack") or {}
        where = f" in '{list(stack)[-1]}'" if stack else ""
        return f"{node.op} '{target}' (node {node.name}){where}"

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
        meta = node.meta.get("tensor_meta")
        if meta is None:
            return None
        if isinstance(meta, (tuple, list)) and not hasattr(meta, "shape"):  # items (TensorMetadata is a tuple too)
            return tuple(self.frozen_scalar(node, len(getattr(m, "shape", ())) or 1) for m in meta)
        return self.frozen_scalar(node)


def propagate(gm: fx.GraphModule, resolve: Callable[[Context, fx.Node], Handler | None],
              model: nn.Module | None = None) -> ChannelState:
    """Give every node its ids using the handler ``resolve`` finds; unknown operations are opaque."""
    state = ChannelState()
    ctx = Context(gm, state)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            ctx.ids[node] = ctx.frozen_scalar(node) if ctx.shape(node) else None
        elif node.op == "get_attr":
            ctx.params[node] = node.target
            ctx.ids[node] = no_ids(len(ctx.shape(node) or (1,))) if ctx.shape(node) else None
        elif node.op == "output":
            fx.node.map_arg(node.args, lambda n: state.freeze(ctx.tensor_ids(n)))
            fx.node.map_arg(node.args, lambda n: [state.freeze(i) for i in ctx.ids.get(n) or ()]
                            if isinstance(ctx.ids.get(n), tuple) else None)
        else:
            handler = resolve(ctx, node)
            if handler is None:
                ctx.ids[node] = ctx.opaque(node, "operation not understood") if _touches_tensors(ctx, node) else None
            else:
                ctx.ids[node] = handler(ctx, node)
    _warn_unreached(ctx, model if model is not None else gm)
    return state


def _touches_tensors(ctx: Context, node: fx.Node) -> bool:
    return bool(ctx.tensor_inputs(node)) or node.meta.get("tensor_meta") is not None


def _warn_unreached(ctx: Context, model: nn.Module) -> None:
    used = {n.target for n in ctx.gm.graph.nodes if n.op == "call_module"}
    used |= {p.rsplit(".", 1)[0] for p in ctx.params.values() if "." in p}
    for name, module in model.named_modules():
        if name and name not in used and any(True for _ in module.parameters(recurse=False)):
            if not any(u.startswith(name + ".") for u in used):
                ctx.state.warn(f"module '{name}' is not used by the traced (eval-mode) forward; it is left unchanged")
