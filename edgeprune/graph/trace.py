"""Trace a model with torch.fx and record every node's output shape."""
from __future__ import annotations

import copy
import logging

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from edgeprune.errors import TraceError
from edgeprune.layers import ChannelSelect

log = logging.getLogger(__name__)

# Modules the graph understands as a whole even though they are not part of torch.nn.
EXTRA_LEAVES: tuple[type[nn.Module], ...] = (ChannelSelect,)


SHAPE_PRESERVING: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.GELU,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.modules.batchnorm._BatchNorm,
)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, EXTRA_LEAVES) or super().is_leaf_module(m, qualname)


class _MetaShapeProp(ShapeProp):
    """ShapeProp that runs every layer on a weightless ("meta") copy: shapes without arithmetic."""

    def __init__(self, gm: fx.GraphModule, meta_model: nn.Module) -> None:
        super().__init__(gm)
        self.meta_model = meta_model

    def call_module(self, target, args, kwargs):
        # Shape-preserving layers return their input as is: the meta kernels of some of them
        # (ReLU6 in place, for one) go through slow Python decompositions.
        if isinstance(self.fetch_attr(target), SHAPE_PRESERVING) and len(args) == 1 and not kwargs:
            return args[0]
        return super().call_module(target, args, kwargs)

    def fetch_attr(self, target: str):
        value = self.meta_model
        for part in target.split("."):
            value = getattr(value, part)
        return value


def _meta_copy(model: nn.Module) -> nn.Module:
    """The module tree again, every tensor replaced by a meta tensor (no data is copied)."""
    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _propagate_shapes(gm: fx.GraphModule, model: nn.Module, example: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            _MetaShapeProp(gm, _meta_copy(model)).propagate(example.to("meta"))
        return
    except Exception as exc:  # an op without a meta kernel: fall back to real arithmetic
        log.debug("meta shape propagation failed (%s); running the model for shapes", exc)
    with torch.no_grad():
        ShapeProp(gm).propagate(example)


def trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """Symbolically trace ``model`` and annotate each node with ``meta['tensor_meta']``.

    The model is traced in eval mode (the mode it is deployed in); its training flag is restored.
    """
    was_training = model.training
    model.eval()
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
        _propagate_shapes(gm, model, example)
    except TraceError:
        raise
    except Exception as exc:  # fx raises many types; each means "cannot follow this forward"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"cannot trace {type(model).__name__} with torch.fx: {first_line}") from exc
    finally:
        model.train(was_training)
    return gm
