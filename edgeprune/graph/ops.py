"""The operator table: how each operation moves, unites, splits or pins channels.

Every entry is a short handler ``(ctx, node) -> ids``. Anything not in these tables is opaque:
pruning stops at it and a warning names it (see :func:`edgeprune.graph.propagate.propagate`).
"""
from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from edgeprune.graph.channels import along, compress, no_ids, space_ids, varying_axes
from edgeprune.graph.propagate import Context, Handler
from edgeprune.layers import ChannelSelect


def _aligned(ids: np.ndarray, ndim: int) -> np.ndarray:
    return ids.reshape((1,) * (ndim - ids.ndim) + ids.shape) if ids.ndim < ndim else ids


def _axis(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


# ---- element-wise -------------------------------------------------------------------------

def passthrough(ctx: Context, node: fx.Node) -> Any:
    """Output channels are the input's (activations, dropout, pooling, resizing, BN without params)."""
    ids, out_shape = ctx.input_ids(node), ctx.shape(node)
    in_node = ctx.arg(node, 0, "input")
    in_shape = ctx.shape(in_node) if isinstance(in_node, fx.Node) else None
    if out_shape is None or in_shape is None or len(in_shape) != len(out_shape):
        return ctx.opaque(node, "changes the number of dimensions")
    if any(ids.shape[a] > 1 and in_shape[a] != out_shape[a] for a in range(len(out_shape))):
        return ctx.opaque(node, "changes the size of a channel dimension")
    return ids


def elementwise(ctx: Context, node: fx.Node) -> Any:
    """Add, mul, sub, div, where...: operands' channels at the same position become one."""
    out_shape = ctx.shape(node)
    if out_shape is None:
        return None
    ndim = len(out_shape)
    operands = [n for n in ctx.tensor_inputs(node) if n not in ctx.params]
    aligned = [(_aligned(ctx.ids[n], ndim), (1,) * (ndim - len(ctx.shape(n))) + ctx.shape(n)) for n in operands]
    channel_axes = {a for ids, _ in aligned for a in varying_axes(ids)}
    result = no_ids(ndim)
    for ids, shape in aligned:
        if any(shape[a] == 1 and out_shape[a] > 1 for a in channel_axes):
            ctx.state.freeze(ids)  # broadcast across channels (a spatial attention map): pinned
            continue
        ctx.state.unite(result, ids)
        result = np.where(result >= 0, result, ids)
    _param_sites(ctx, node, result, out_shape)
    return compress(result)


def _param_sites(ctx: Context, node: fx.Node, result: np.ndarray, out_shape: tuple[int, ...]) -> None:
    """A parameter multiplied in (ConvNeXt's layer scale) shrinks with the channels it meets."""
    for param_node in (n for n in ctx.tensor_inputs(node) if n in ctx.params):
        shape = ctx.shape(param_node)
        owner, _, attr = ctx.params[param_node].rpartition(".")
        shift = len(out_shape) - len(shape)
        for p_axis, size in enumerate(shape):
            axis = p_axis + shift
            if size > 1 and result.shape[axis] > 1:
                channel = along(result, axis, out_shape[axis])
                if channel is None:
                    ctx.state.freeze(result)
                else:
                    ctx.state.add_site(owner, attr, p_axis, channel)


# ---- layers with weights ------------------------------------------------------------------

def conv(ctx: Context, node: fx.Node) -> Any:
    m = ctx.module(node)
    out_shape = ctx.shape(node)
    x = ctx.input_ids(node)
    channel_in = along(x, 1, m.in_channels)
    if channel_in is None:
        ctx.state.freeze(x)
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    grouped = m.groups > 1 and not depthwise
    space = ctx.state.space_for_module(node.target, m.out_channels, "conv", blocks=m.groups if grouped else 1)
    out = space_ids(space, len(out_shape), 1)
    channel_out = out.reshape(-1)
    _output_sites(ctx, node.target, m, channel_out)
    if m.groups == 1 and channel_in is not None:
        ctx.state.add_site(node.target, "weight", 1, channel_in)
    elif depthwise and channel_in is not None:
        ctx.state.unite(channel_in, channel_out)
    else:
        ctx.state.freeze(channel_in)  # grouped conv: the per-group input width stays
        if m.in_channels == m.groups:
            ctx.state.freeze(channel_out)  # depthwise with a channel multiplier
    per_pair = math.prod(m.kernel_size) * math.prod(out_shape[2:])
    layer_in = channel_in if m.groups == 1 else None
    ctx.state.layers.append(_layer(node.target, layer_in, channel_out, per_pair, m.in_channels // m.groups))
    return out


def linear(ctx: Context, node: fx.Node) -> Any:
    m = ctx.module(node)
    out_shape = ctx.shape(node)
    x = ctx.input_ids(node)
    last = len(out_shape) - 1
    channel_in = along(_aligned(x, len(out_shape)), last, m.in_features)
    if channel_in is None:
        ctx.state.freeze(x)
    else:
        ctx.state.add_site(node.target, "weight", 1, channel_in)
    space = ctx.state.space_for_module(node.target, m.out_features, "linear")
    out = space_ids(space, len(out_shape), last)
    _output_sites(ctx, node.target, m, out.reshape(-1))
    per_pair = math.prod(out_shape[1:-1])
    ctx.state.layers.append(_layer(node.target, channel_in, out.reshape(-1), per_pair, m.in_features))
    return out


def _layer(module: str, in_ids, out_ids, per_pair: int, fixed_in: int):
    from edgeprune.graph.channels import Layer

    return Layer(module, in_ids, out_ids, per_pair, fixed_in)


def _output_sites(ctx: Context, name: str, m: nn.Module, channel_out: np.ndarray) -> None:
    ctx.state.add_site(name, "weight", 0, channel_out)
    if getattr(m, "bias", None) is not None:
        ctx.state.add_site(name, "bias", 0, channel_out)


def _per_channel_sites(ctx: Context, name: str, m: nn.Module, channel: np.ndarray, names: tuple[str, ...]) -> None:
    for attr in names:
        if getattr(m, attr, None) is not None:
            ctx.state.add_site(name, attr, 0, channel)


def batchnorm(ctx: Context, node: fx.Node) -> Any:
    m = ctx.module(node)
    x = ctx.input_ids(node)
    channel = along(x, 1, m.num_features)
    if channel is None:
        return ctx.opaque(node, "channels mixed with other dimensions")
    _per_channel_sites(ctx, node.target, m, channel, ("weight", "bias", "running_mean", "running_var"))
    return x


def layer_norm_module(ctx: Context, node: fx.Node) -> Any:
    m = ctx.module(node)
    return _layer_norm(ctx, node, tuple(m.normalized_shape), lambda channel: _per_channel_sites(
        ctx, node.target, m, channel, ("weight", "bias")))


def layer_norm_function(ctx: Context, node: fx.Node) -> Any:
    shape = tuple(ctx.arg(node, 1, "normalized_shape"))
    params = [ctx.arg(node, 2, "weight"), ctx.arg(node, 3, "bias")]

    def sites(channel: np.ndarray) -> None:
        for p in params:
            if isinstance(p, fx.Node) and p in ctx.params:
                owner, _, attr = ctx.params[p].rpartition(".")
                ctx.state.add_site(owner, attr, 0, channel)
            elif isinstance(p, fx.Node):
                ctx.state.freeze(ctx.ids.get(p))

    return _layer_norm(ctx, node, shape, sites)


def _layer_norm(ctx: Context, node: fx.Node, normalized: tuple[int, ...], sites) -> Any:
    x = ctx.input_ids(node)
    ndim = len(ctx.shape(node))
    normalized_axes = range(ndim - len(normalized), ndim)
    if not any(x.shape[a] > 1 for a in normalized_axes):
        return x
    channel = along(x, ndim - 1, normalized[-1]) if len(normalized) == 1 else None
    if channel is None:
        return ctx.opaque(node, "normalises over channels and other dimensions together")
    sites(channel)
    return x


def pinned(ctx: Context, node: fx.Node) -> Any:
    """Known and valid, but its channel count is structural (GroupNorm): keep every channel."""
    x = ctx.input_ids(node)
    ctx.state.freeze(x)
    return x


def softmax(ctx: Context, node: fx.Node) -> Any:
    """Softmax / log-softmax: elementwise across other axes; the channels of the axis it normalises
    over are pinned (removing one would change every other's value)."""
    x = ctx.input_ids(node)
    if node.op == "call_module":
        dim = ctx.module(node).dim
    else:
        dim = ctx.arg(node, 1, "dim")
    ndim = len(ctx.shape(node))
    if x is not None and _aligned(x, ndim).shape[_axis(ndim - 1 if dim is None else dim, ndim)] > 1:
        ctx.state.freeze(x)
    return x


def prelu(ctx: Context, node: fx.Node) -> Any:
    m = ctx.module(node)
    if m.num_parameters == 1:
        return passthrough(ctx, node)
    channel = along(ctx.input_ids(node), 1, m.num_parameters)
    if channel is None:
        return ctx.opaque(node, "channels mixed with other dimensions")
    ctx.state.add_site(node.target, "weight", 0, channel)
    return ctx.input_ids(node)


def channel_select(ctx: Context, node: fx.Node) -> Any:
    m = ctx.module(node)
    index = m.index.cpu().numpy()
    in_shape = ctx.shape(node.args[0])
    channel_in = along(ctx.input_ids(node), 1, in_shape[1])
    if channel_in is None:
        return ctx.opaque(node, "channels mixed with other dimensions")
    padding = ctx.state.space_for_module(node.target, int((index < 0).sum()), "padding")
    out = np.empty(len(index), dtype=np.int64)
    out[index >= 0] = channel_in[index[index >= 0]]
    out[index < 0] = np.arange(padding.offset, padding.offset + padding.size)
    ctx.state.add_site(node.target, "index", 0, out)
    ctx.state.add_site(node.target, "index", 0, channel_in, action="reindex")
    return out.reshape((1, -1) + (1,) * (len(ctx.shape(node)) - 2))


# ---- shape operations ---------------------------------------------------------------------

def reshape(ctx: Context, node: fx.Node) -> Any:
    """view, reshape, flatten, squeeze, unsqueeze: reshape the ids like the tensor."""
    in_node = ctx.arg(node, 0, "input")
    ids, in_shape, out_shape = ctx.input_ids(node), ctx.shape(in_node), ctx.shape(node)
    out = compress(np.broadcast_to(_aligned(ids, len(in_shape)), in_shape).reshape(out_shape))
    axes = varying_axes(out)
    for axis in axes[:-1]:  # a channel dim split in two (channel shuffle): units are whole columns
        ctx.state.unite(out, np.take(out, [0], axis=axis))
    if _literal_channel_size(node, axes):
        ctx.state.freeze(out)
        ctx.state.warn(f"{ctx.describe(node)}: a literal size in the shape pins these channels")
    return out


def _literal_channel_size(node: fx.Node, axes: list[int]) -> bool:
    if node.target not in ("view", "reshape", torch.reshape):
        return False
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    return any(a < len(sizes) and isinstance(sizes[a], int) and sizes[a] != -1 for a in axes)


def permute(ctx: Context, node: fx.Node) -> Any:
    dims = node.args[1:] if len(node.args) > 2 else ctx.arg(node, 1, "dims")
    ids = ctx.input_ids(node)
    return np.transpose(ids, [_axis(d, ids.ndim) for d in dims])


def transpose(ctx: Context, node: fx.Node) -> Any:
    ids = ctx.input_ids(node)
    return np.swapaxes(ids, _axis(ctx.arg(node, 1, "dim0"), ids.ndim), _axis(ctx.arg(node, 2, "dim1"), ids.ndim))


def cat(ctx: Context, node: fx.Node) -> Any:
    tensors = list(ctx.arg(node, 0, "tensors"))
    out_shape = ctx.shape(node)
    axis = _axis(ctx.arg(node, 1, "dim", 0), len(out_shape))
    parts = [ctx.tensor_ids(t) for t in tensors]
    if any(p is None for p in parts):
        return ctx.opaque(node, "concatenates something without known channels")
    if not any(p.shape[axis] > 1 for p in parts):
        return elementwise(ctx, node)  # concatenating along a non-channel dim: channels are shared
    common = [max(p.shape[a] for p in parts) for a in range(len(out_shape))]
    spread = []
    for t, p in zip(tensors, parts):
        shape = list(common)
        shape[axis] = ctx.shape(t)[axis]
        spread.append(np.broadcast_to(p, shape))
    return np.concatenate(spread, axis=axis)


def split(ctx: Context, node: fx.Node) -> Any:
    """chunk, split, unbind: each piece gets its slice of ids; split channels stay whole."""
    ids = ctx.input_ids(node)
    metas = node.meta.get("tensor_meta")
    dim = ctx.arg(node, 2, "dim", 0) if node.target in ("split", torch.split, "chunk", torch.chunk) else ctx.arg(node, 1, "dim", 0)
    axis = _axis(dim, ids.ndim)
    if ids.shape[axis] == 1:
        return tuple(ids if len(m.shape) == ids.ndim else ids.reshape([s for i, s in enumerate(ids.shape) if i != axis]) for m in metas)
    ctx.state.freeze(ids)  # piece sizes are fixed by the call: the channels stay
    bounds = np.cumsum([0] + [m.shape[axis] if len(m.shape) == ids.ndim else 1 for m in metas])
    return tuple(np.take(ids, np.arange(a, b), axis=axis) for a, b in zip(bounds[:-1], bounds[1:]))


def getitem(ctx: Context, node: fx.Node) -> Any:
    source, index = node.args
    value = ctx.ids.get(source)
    if isinstance(value, tuple):
        return value[index]
    if not isinstance(value, np.ndarray):
        return None
    if not isinstance(index, tuple):
        index = (index,)
    return _index_ids(ctx, node, value, index)


def _index_ids(ctx: Context, node: fx.Node, ids: np.ndarray, index: tuple) -> Any:
    if any(isinstance(i, fx.Node) or (not isinstance(i, (int, slice)) and i is not None and i is not Ellipsis) for i in index):
        return ctx.opaque(node, "indexes with tensors")
    n_explicit = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded: list = []
    for i in index:
        expanded += [slice(None)] * (ids.ndim - n_explicit) if i is Ellipsis else [i]
    numpy_index, axis = [], 0
    for i in expanded:
        if i is None:
            numpy_index.append(None)
            continue
        if ids.shape[axis] == 1:
            numpy_index.append(0 if isinstance(i, int) else slice(None))
        else:
            if i != slice(None):
                ctx.state.freeze(ids)  # literal positions along a channel dim: pinned
            numpy_index.append(i)
        axis += 1
    return ids[tuple(numpy_index)]


def reduce(ctx: Context, node: fx.Node) -> Any:
    ids = ctx.input_ids(node)
    dims = ctx.arg(node, 1, "dim")
    keepdim = ctx.arg(node, 2, "keepdim", False)
    if dims is None:
        return ctx.opaque(node, "reduces over all dimensions")
    axes = [_axis(d, ids.ndim) for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    if any(ids.shape[a] > 1 for a in axes):
        ctx.state.freeze(ids)
        return ctx.frozen_scalar(node)
    return ids if keepdim else ids.reshape([s for a, s in enumerate(ids.shape) if a not in axes])


def pad(ctx: Context, node: fx.Node) -> Any:
    amounts = ctx.arg(node, 1, "pad")
    ids = ctx.input_ids(node)
    touched = [ids.ndim - 1 - k // 2 for k, v in enumerate(amounts) if v]
    if any(ids.shape[a] > 1 for a in touched):
        return ctx.opaque(node, "pads a channel dimension")
    return ids


def not_a_tensor(ctx: Context, node: fx.Node) -> Any:
    return None


# ---- the tables ---------------------------------------------------------------------------

PASSTHROUGH_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)

MODULE_HANDLERS: dict[type, Handler] = {
    **{t: passthrough for t in PASSTHROUGH_MODULES},
    nn.Conv1d: conv, nn.Conv2d: conv, nn.Conv3d: conv,
    nn.Linear: linear,
    nn.BatchNorm1d: batchnorm, nn.BatchNorm2d: batchnorm, nn.BatchNorm3d: batchnorm,
    nn.LayerNorm: layer_norm_module,
    nn.GroupNorm: pinned,
    nn.PReLU: prelu,
    nn.Softmax: softmax, nn.LogSoftmax: softmax,
    nn.Flatten: reshape, nn.Unflatten: reshape,
    ChannelSelect: channel_select,
}

PASSTHROUGH_FUNCTIONS = (
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.sigmoid, F.tanh, torch.sigmoid, torch.tanh, torch.relu, F.dropout,
    F.dropout2d, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate, torch.clone, torch.abs, F.softplus,
)
ELEMENTWISE_FUNCTIONS = (
    operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, operator.isub, operator.truediv,
    operator.itruediv, torch.add, torch.mul, torch.sub, torch.div, torch.maximum, torch.minimum, torch.where,
)

FUNCTION_HANDLERS: dict[Any, Handler] = {
    **{f: passthrough for f in PASSTHROUGH_FUNCTIONS},
    **{f: elementwise for f in ELEMENTWISE_FUNCTIONS},
    torch.flatten: reshape, torch.reshape: reshape, torch.squeeze: reshape, torch.unsqueeze: reshape,
    torch.cat: cat, torch.concat: cat,
    torch.chunk: split, torch.split: split, torch.unbind: split,
    operator.getitem: getitem,
    torch.permute: permute, torch.transpose: transpose,
    torch.mean: reduce, torch.sum: reduce, torch.amax: reduce,
    F.layer_norm: layer_norm_function,
    F.softmax: softmax, F.log_softmax: softmax, torch.softmax: softmax, torch.log_softmax: softmax,
    F.pad: pad,
    getattr: not_a_tensor,
}

METHOD_HANDLERS: dict[str, Handler] = {
    **{m: passthrough for m in ("contiguous", "relu", "relu_", "sigmoid", "tanh", "clone", "float", "to",
                                "detach", "abs", "type_as", "expand_as")},
    **{m: elementwise for m in ("add", "add_", "mul", "mul_", "sub", "div")},
    **{m: reshape for m in ("view", "reshape", "flatten", "squeeze", "unsqueeze")},
    "permute": permute, "transpose": transpose,
    "chunk": split, "split": split, "unbind": split,
    "mean": reduce, "sum": reduce, "amax": reduce,
    "softmax": softmax, "log_softmax": softmax,
    "size": not_a_tensor, "dim": not_a_tensor,
}


def _register_torchvision() -> None:
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:
        return
    FUNCTION_HANDLERS[stochastic_depth] = passthrough


_register_torchvision()


def resolve(ctx: Context, node: fx.Node) -> Handler | None:
    """The handler for ``node``, or ``None`` when the operation is not understood."""
    if node.op == "call_module":
        for cls in type(ctx.module(node)).__mro__:
            if cls in MODULE_HANDLERS:
                return MODULE_HANDLERS[cls]
        return None
    if node.op == "call_method":
        return METHOD_HANDLERS.get(node.target)
    if node.op == "call_function":
        return FUNCTION_HANDLERS.get(node.target)
    return None
