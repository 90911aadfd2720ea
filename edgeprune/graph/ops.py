"""The operator table: how each ATen op moves, unites, splits or pins channels.

One entry per ATen op (keyed by its overload packet, e.g. ``aten.conv2d``), plus edgeprune's
own layers understood whole (:data:`MODULE_HANDLERS`). Every entry is a short handler
``(ctx, node) -> ids``. Anything not in the table is opaque: pruning stops at it and a warning
names it (see :func:`edgeprune.graph.propagate.propagate`).
"""
from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
from torch import fx

from edgeprune.graph.channels import Layer, along, compress, no_ids, space_ids, varying_axes
from edgeprune.graph.propagate import Context, Handler, ParamRef
from edgeprune.layers import ChannelSelect

aten = torch.ops.aten


def _aligned(ids: np.ndarray, ndim: int) -> np.ndarray:
    return ids.reshape((1,) * (ndim - ids.ndim) + ids.shape) if ids.ndim < ndim else ids


def _axis(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _dims(value: Any) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


# ---- element-wise -------------------------------------------------------------------------

def passthrough(ctx: Context, node: fx.Node) -> Any:
    """Output channels are the first input's (activations, pooling, resizing, copies)."""
    ids, out_shape = ctx.input_ids(node), _first_shape(ctx, node)
    in_shape = ctx.shape(node.args[0])
    if out_shape is None or in_shape is None or len(in_shape) != len(out_shape):
        return ctx.opaque(node, "changes the number of dimensions")
    if any(ids.shape[a] > 1 and in_shape[a] != out_shape[a] for a in range(min(ids.ndim, len(out_shape)))):
        return ctx.opaque(node, "changes the size of a channel dimension")
    if isinstance(ctx.val(node), (tuple, list)):  # (values, indices) of max pooling
        return tuple(ids for _ in ctx.val(node))
    return ids


def _first_shape(ctx: Context, node: fx.Node) -> tuple[int, ...] | None:
    value = ctx.val(node)
    value = value[0] if isinstance(value, (tuple, list)) else value
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def elementwise(ctx: Context, node: fx.Node) -> Any:
    """add, mul, sub, div, where...: operands' channels at the same position become one.

    A parameter operand (ConvNeXt's layer scale, a bias added by hand) shrinks with the channels
    it meets; any other constant spanning a channel dimension pins those channels.
    """
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
    for ids, shape in aligned:
        if (ids < 0).all() and any(shape[a] > 1 for a in channel_axes):
            ctx.state.freeze(result)  # a constant with one value per channel: it cannot shrink
    _param_sites(ctx, node, result, out_shape)
    return compress(result)


def _param_sites(ctx: Context, node: fx.Node, result: np.ndarray, out_shape: tuple[int, ...]) -> None:
    for param_node in (n for n in ctx.tensor_inputs(node) if n in ctx.params):
        ref, shape = ctx.params[param_node], ctx.shape(param_node)
        shift = len(out_shape) - len(shape)
        for p_axis, size in enumerate(shape):
            axis = p_axis + shift
            if size > 1 and result.shape[axis] > 1:
                channel = along(result, axis, out_shape[axis])
                if channel is None or ref.axis_of(p_axis) is None:
                    ctx.state.freeze(result)
                else:
                    _site(ctx, ref, ref.axis_of(p_axis), channel)


def _site(ctx: Context, ref: ParamRef, axis: int, channel: np.ndarray) -> None:
    """``ref``'s tensor shrinks along ``axis`` with ``channel``; a frozen parameter pins them."""
    if ref.trainable:
        ctx.state.add_site(ref.module, ref.attr, axis, channel)
    else:
        ctx.state.freeze(channel)
        ctx.state.add_site(ref.module, ref.attr, axis, channel)


# ---- layers with weights ------------------------------------------------------------------

def _weight(ctx: Context, node: fx.Node, name: str = "weight") -> tuple[ParamRef | None, fx.Node | None]:
    value = ctx.named(node).get(name)
    return (ctx.params.get(value), value) if isinstance(value, fx.Node) else (None, None)


def conv(ctx: Context, node: fx.Node) -> Any:
    """``conv1d/2d/3d(x, weight, bias, stride, padding, dilation, groups)`` (and ``convolution``)."""
    args = ctx.named(node)
    weight, weight_node = _weight(ctx, node)
    groups = args.get("groups", 1)
    if weight is None or args.get("transposed") or weight.axes != tuple(range(len(weight.axes))):
        return ctx.opaque(node, "a convolution whose weight is not a parameter, or a transposed one")
    out_shape = ctx.shape(node)
    w_shape = ctx.shape(weight_node)
    out_channels, in_channels = w_shape[0], w_shape[1] * groups
    x = ctx.input_ids(node)
    channel_in = along(_aligned(x, len(out_shape)), 1, in_channels)
    if channel_in is None:
        ctx.state.freeze(x)
    depthwise = groups > 1 and groups == in_channels == out_channels
    grouped = groups > 1 and not depthwise
    space = ctx.state.space_for_module(weight.module, out_channels, "conv", blocks=groups if grouped else 1)
    out = space_ids(space, len(out_shape), 1)
    channel_out = out.reshape(-1)
    _output_sites(ctx, node, weight, channel_out)
    if grouped:
        ctx.state.balance(np.split(channel_out, groups))
    if groups == 1 and channel_in is not None:
        _site(ctx, weight, 1, channel_in)
    elif depthwise and channel_in is not None:
        ctx.state.unite(channel_in, channel_out)
    else:
        ctx.state.freeze(channel_in)  # grouped conv: the per-group input width stays
        if in_channels == groups:
            ctx.state.freeze(channel_out)  # depthwise with a channel multiplier
    per_pair = math.prod(w_shape[2:]) * math.prod(out_shape[2:])
    ctx.state.layers.append(Layer(weight.module, channel_in if groups == 1 else None, channel_out, per_pair,
                                  in_channels // groups))
    return out


def conv_transpose(ctx: Context, node: fx.Node) -> Any:
    """``conv_transpose1d/2d/3d(x, weight, bias, ...)``: the weight is (in, out / groups, k...)."""
    args = ctx.named(node)
    weight, weight_node = _weight(ctx, node)
    if weight is None or args.get("groups", 1) != 1 or weight.axes != tuple(range(len(weight.axes))):
        return ctx.opaque(node, "a transposed convolution with groups, or whose weight is not a parameter")
    out_shape, in_shape, w_shape = ctx.shape(node), ctx.shape(node.args[0]), ctx.shape(weight_node)
    x = ctx.input_ids(node)
    channel_in = along(_aligned(x, len(out_shape)), 1, w_shape[0])
    if channel_in is None:
        ctx.state.freeze(x)
    else:
        _site(ctx, weight, 0, channel_in)
    space = ctx.state.space_for_module(weight.module, w_shape[1], "conv")
    out = space_ids(space, len(out_shape), 1)
    _output_sites(ctx, node, weight, out.reshape(-1), axis=1)
    per_pair = math.prod(w_shape[2:]) * math.prod(in_shape[2:])  # every input position meets the whole kernel
    ctx.state.layers.append(Layer(weight.module, channel_in, out.reshape(-1), per_pair, w_shape[0]))
    return out


def _output_sites(ctx: Context, node: fx.Node, weight: ParamRef, channel_out: np.ndarray, axis: int = 0) -> None:
    _site(ctx, weight, axis, channel_out)
    bias, bias_node = _weight(ctx, node, "bias")
    if bias is not None:
        _site(ctx, bias, 0, channel_out)
    elif bias_node is not None:
        ctx.state.freeze(channel_out)


def linear(ctx: Context, node: fx.Node) -> Any:
    """``linear(x, weight, bias)``."""
    weight, weight_node = _weight(ctx, node)
    if weight is None or weight.axes != (0, 1):
        return ctx.opaque(node, "a linear layer whose weight is not a parameter")
    return _dense(ctx, node, ctx.arg(node, 0), weight, ctx.shape(weight_node)[1])


def matmul(ctx: Context, node: fx.Node) -> Any:
    """``matmul``/``mm``/``bmm``: by a transposed parameter, a linear layer; between two
    activations (attention), channels through it are pinned."""
    left, right = ctx.arg(node, 0), ctx.arg(node, 1)
    weight = ctx.params.get(right)
    if weight is None or left in ctx.params or weight.axes != (1, 0):
        return ctx.opaque(node, "a product of two activations (attention) or of a reshaped weight")
    return _dense(ctx, node, left, weight, ctx.shape(right)[0])


def _dense(ctx: Context, node: fx.Node, x_node: fx.Node, weight: ParamRef, in_features: int) -> np.ndarray:
    out_shape = ctx.shape(node)
    last = len(out_shape) - 1
    x = ctx.tensor_ids(x_node)
    channel_in = along(_aligned(x, len(out_shape)), last, in_features) if x is not None else None
    if channel_in is None:
        ctx.state.freeze(x)
    else:
        _site(ctx, weight, 1, channel_in)
    space = ctx.state.space_for_module(weight.module, out_shape[-1], "linear")
    out = space_ids(space, len(out_shape), last)
    _output_sites(ctx, node, weight, out.reshape(-1))
    per_pair = math.prod(out_shape[1:-1])
    ctx.state.layers.append(Layer(weight.module, channel_in, out.reshape(-1), per_pair, in_features))
    return out


def _norm_sites(ctx: Context, node: fx.Node, channel: np.ndarray, names: tuple[str, ...]) -> None:
    args = ctx.named(node)
    for name in names:
        value = args.get(name)
        ref = ctx.params.get(value) if isinstance(value, fx.Node) else None
        if ref is not None and ref.axes == (0,):
            _site(ctx, ref, 0, channel)
        elif isinstance(value, fx.Node):
            ctx.state.freeze(channel)


def batchnorm(ctx: Context, node: fx.Node) -> Any:
    """``batch_norm(x, weight, bias, running_mean, running_var, ...)``."""
    x = ctx.input_ids(node)
    channel = along(_aligned(x, len(ctx.shape(node))), 1, ctx.shape(node)[1])
    if channel is None:
        return ctx.opaque(node, "channels mixed with other dimensions")
    _norm_sites(ctx, node, channel, ("weight", "bias", "running_mean", "running_var"))
    return x


def layer_norm(ctx: Context, node: fx.Node) -> Any:
    """``layer_norm(x, normalized_shape, weight, bias, eps)``: over the last dimension only."""
    x = ctx.input_ids(node)
    normalized = tuple(ctx.named(node)["normalized_shape"])
    ndim = len(ctx.shape(node))
    x = _aligned(x, ndim)
    if not any(x.shape[a] > 1 for a in range(ndim - len(normalized), ndim)):
        return x
    channel = along(x, ndim - 1, normalized[-1]) if len(normalized) == 1 else None
    if channel is None:
        return ctx.opaque(node, "normalises over channels and other dimensions together")
    _norm_sites(ctx, node, channel, ("weight", "bias"))
    return x


def pinned(ctx: Context, node: fx.Node) -> Any:
    """Known and valid, but its channel count is structural (group norm): keep every channel."""
    x = ctx.input_ids(node)
    ctx.state.freeze(x)
    return x


def softmax(ctx: Context, node: fx.Node) -> Any:
    """Softmax / log-softmax: the channels of the axis it normalises over are pinned (removing
    one would change every other's value)."""
    x = ctx.input_ids(node)
    ndim = len(ctx.shape(node))
    if _aligned(x, ndim).shape[_axis(ctx.named(node)["dim"], ndim)] > 1:
        ctx.state.freeze(x)
    return x


def prelu(ctx: Context, node: fx.Node) -> Any:
    """``prelu(x, weight)``: one slope, or one per channel."""
    weight_node = ctx.arg(node, 1)
    if ctx.shape(weight_node) in ((1,), ()):
        return passthrough(ctx, node)
    ref = ctx.params.get(weight_node)
    channel = along(ctx.input_ids(node), 1, ctx.shape(weight_node)[0])
    if channel is None or ref is None:
        return ctx.opaque(node, "channels mixed with other dimensions")
    _site(ctx, ref, 0, channel)
    return ctx.input_ids(node)


def channel_select(ctx: Context, node: fx.Node) -> Any:
    """edgeprune's :class:`~edgeprune.layers.ChannelSelect`: a gather with zero channels."""
    index = ctx.module(node).index.cpu().numpy()
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

def _source(node: fx.Node) -> Any:
    return node.args[0] if node.args else None


def reshape(ctx: Context, node: fx.Node) -> Any:
    """view, reshape, flatten, unflatten, squeeze, unsqueeze: reshape the ids like the tensor."""
    source = _source(node)
    ids, in_shape, out_shape = ctx.input_ids(node), ctx.shape(source), ctx.shape(node)
    ids = _aligned(ids, len(in_shape))
    out = compress(np.broadcast_to(ids, in_shape).reshape(out_shape))
    axes = varying_axes(out)
    for axis in axes[:-1]:  # a channel dim split in two (channel shuffle): units are whole columns
        ctx.state.unite(out, np.take(out, [0], axis=axis))
    if node.target.overloadpacket in (aten.view, aten.reshape) and _literal_channel_size(node.args[1], ids, in_shape, out):
        ctx.state.freeze(out)
        ctx.state.warn(f"{ctx.describe(node)}: a literal size in the shape pins these channels")
    return out


def _literal_channel_size(sizes: Any, ids: np.ndarray, in_shape: tuple[int, ...], out: np.ndarray) -> bool:
    """Whether the code wrote a channel dimension's size as a number (``view(-1, 128)``).

    A size that carries one input dimension through unchanged (``view(b, c, -1)``, ``c`` read
    from ``x.shape``) adapts when channels go, and is not counted as literal.
    """
    for axis in varying_axes(out):
        if axis >= len(sizes) or sizes[axis] == -1:
            continue
        carried = [a for a in varying_axes(ids) if in_shape[a] == out.shape[axis] == sizes[axis]
                   and np.array_equal(np.unique(ids.take(range(in_shape[a]), axis=a)), np.unique(out))]
        if not carried:
            return True
    return False


def restride(ctx: Context, node: fx.Node) -> Any:
    """``as_strided`` to the same shape (a memory-format change): channels where they were."""
    if ctx.shape(node) != ctx.shape(_source(node)):
        return ctx.opaque(node, "as_strided to another shape")
    return ctx.input_ids(node)


def expand(ctx: Context, node: fx.Node) -> Any:
    """Broadcast to a larger shape (``expand``, ``expand_as``): channels where they were."""
    out_shape = ctx.shape(node)
    source_shape = ctx.shape(_source(node))
    in_shape = (1,) * (len(out_shape) - len(source_shape)) + source_shape
    aligned = _aligned(ctx.input_ids(node), len(out_shape))
    if any(aligned.shape[a] > 1 and in_shape[a] != out_shape[a] for a in range(len(out_shape))):
        return ctx.opaque(node, "expands a channel dimension")
    return aligned


def permute(ctx: Context, node: fx.Node) -> Any:
    ndim = len(ctx.shape(node))
    return np.transpose(_aligned(ctx.input_ids(node), ndim), [_axis(d, ndim) for d in ctx.named(node)["dims"]])


def transpose(ctx: Context, node: fx.Node) -> Any:
    ndim = len(ctx.shape(node))
    ids = _aligned(ctx.input_ids(node), ndim)
    if node.target.overloadpacket in (aten.t, aten.numpy_T):
        return ids.T
    args = ctx.named(node)
    return np.swapaxes(ids, _axis(args["dim0"], ndim), _axis(args["dim1"], ndim))


def cat(ctx: Context, node: fx.Node) -> Any:
    args = ctx.named(node)
    tensors = list(args["tensors"])
    out_shape = ctx.shape(node)
    axis = _axis(args["dim"], len(out_shape))
    parts = [_aligned(ctx.tensor_ids(t), len(out_shape)) if ctx.tensor_ids(t) is not None else None for t in tensors]
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


def stack(ctx: Context, node: fx.Node) -> Any:
    """Stack along a new dimension: each input's ids along it, as a concatenation would."""
    args = ctx.named(node)
    tensors = list(args["tensors"])
    ndim = len(ctx.shape(node))
    axis = _axis(args["dim"], ndim)
    parts = [ctx.tensor_ids(t) for t in tensors]
    if any(p is None for p in parts):
        return ctx.opaque(node, "stacks something without known channels")
    parts = [np.expand_dims(_aligned(p, ndim - 1), axis) for p in parts]
    if not any((p >= 0).any() for p in parts):
        return no_ids(ndim)
    common = [max(p.shape[a] for p in parts) for a in range(ndim)]
    common[axis] = 1
    return np.concatenate([np.broadcast_to(p, common) for p in parts], axis=axis)


def split(ctx: Context, node: fx.Node) -> Any:
    """``chunk`` / ``split`` / ``split_with_sizes`` / ``unbind``: each piece gets its slice of ids.

    Pieces along channels are pruned, each keeping its own count, where their sizes follow the
    channels when they go: ``chunk(k)`` (equal pieces, so they lose equal numbers), or sizes
    read from int attributes of the module that runs the split (``split((self.c, self.c), 1)``),
    which the surgery updates. Other sizes (numbers in the code, ``unbind``) pin the channels.
    """
    args = ctx.named(node)
    pieces = ctx.val(node)
    ndim = len(ctx.shape(_source(node)))
    ids = _aligned(ctx.input_ids(node), ndim)
    axis = _axis(args.get("dim", 0), ndim)
    unbind = node.target.overloadpacket is aten.unbind
    if ids.shape[axis] == 1:
        return tuple(ids.reshape([s for i, s in enumerate(ids.shape) if i != axis]) if unbind else ids for _ in pieces)
    sizes = [1] * len(pieces) if unbind else [p.shape[axis] for p in pieces]
    bounds = np.cumsum([0] + sizes)
    parts = [np.take(ids, np.arange(a, b), axis=axis) for a, b in zip(bounds[:-1], bounds[1:])]
    reason = _split_follows(ctx, node, sizes, [along(p, axis, s) for p, s in zip(parts, sizes)])
    if reason is not None:
        ctx.state.freeze(ids)
        ctx.state.warn(f"{ctx.describe(node)}: {reason}; the split channels are not pruned")
    if unbind:
        return tuple(np.take(ids, b, axis=axis) for b in bounds[:-1])
    return tuple(parts)


def _split_follows(ctx: Context, node: fx.Node, sizes: list[int], channels: list) -> str | None:
    """``None`` when the pieces' sizes will follow the pruned channels (recording how), else why not."""
    packet = node.target.overloadpacket
    if packet is aten.unbind:
        return "unbind along channels makes one tensor per channel"
    if any(c is None for c in channels):
        return "channels mixed with other dimensions"
    if packet is aten.chunk:
        if len(set(sizes)) > 1:
            return "chunk into unequal pieces"
        ctx.state.balance(channels)
        return None
    owner = ctx.owner(node)
    attributes = _int_attributes(ctx.modules.get(owner)) if owner is not None else {}
    names = [[a for a, v in attributes.items() if v == s] for s in sizes]
    if isinstance(ctx.named(node).get("split_size"), int) and sizes[-1] != sizes[0]:
        return f"split size {sizes[0]} leaves a shorter last piece"
    if any(len(n) != 1 for n in names):
        where = f"module '{owner}'" if owner else "the model"
        return f"split sizes {sizes} are not each one int attribute of {where}, so they cannot follow pruning"
    for piece, (attr,) in zip(channels, names):
        ctx.state.add_site(owner, attr, 0, piece, action="attribute")
    return None


def _int_attributes(module: Any) -> dict[str, int]:
    if module is None:
        return {}
    return {k: v for k, v in vars(module).items() if type(v) is int and not k.startswith("_")}


def getitem(ctx: Context, node: fx.Node) -> Any:
    """An item of a tuple-valued op (split pieces, max pooling's values)."""
    source, index = node.args
    value = ctx.ids.get(source)
    return value[index] if isinstance(value, tuple) else ctx.opaque(node, "indexes an unknown tuple")


def slice_(ctx: Context, node: fx.Node) -> Any:
    """``x[..., a:b:c]`` along one dimension: literal positions along channels pin them."""
    args = ctx.named(node)
    ndim = len(ctx.shape(node))
    ids = _aligned(ctx.input_ids(node), ndim)
    axis = _axis(args["dim"], ndim)
    size = ids.shape[axis]
    if size == 1:
        return ids
    start, end, step = args.get("start"), args.get("end"), args.get("step", 1)
    if start in (None, 0) and (end is None or end >= size) and step == 1:
        return ids
    ctx.state.freeze(ids)
    return np.take(ids, np.arange(size)[slice(start, end, step)], axis=axis)


def select(ctx: Context, node: fx.Node) -> Any:
    """``x[:, i]``: one position of a dimension; along channels it pins them."""
    args = ctx.named(node)
    in_ndim = len(ctx.shape(_source(node)))
    ids = _aligned(ctx.input_ids(node), in_ndim)
    axis = _axis(args["dim"], in_ndim)
    if ids.shape[axis] > 1:
        ctx.state.freeze(ids)
        return np.take(ids, args["index"], axis=axis)
    return np.take(ids, 0, axis=axis)


def reduce(ctx: Context, node: fx.Node) -> Any:
    """mean / sum / amax over some dimensions: reducing over channels pins them."""
    value = ctx.val(node)
    first = value[0] if isinstance(value, (tuple, list)) else value
    in_ndim = len(ctx.shape(_source(node)))
    ids = _aligned(ctx.input_ids(node), in_ndim)
    dims = ctx.named(node).get("dim")
    if dims is None or dims == [] or first.dim() == 0:
        return ctx.opaque(node, "reduces over all dimensions")
    keepdim = first.dim() == in_ndim
    axes = [_axis(d, in_ndim) for d in _dims(dims)]
    if any(ids.shape[a] > 1 for a in axes):
        ctx.state.freeze(ids)
        out = ctx.frozen_scalar(node, first.dim())
    else:
        out = ids if keepdim else ids.reshape([s for a, s in enumerate(ids.shape) if a not in axes])
    return (out, out) if isinstance(value, (tuple, list)) else out


def pad(ctx: Context, node: fx.Node) -> Any:
    args = ctx.named(node)
    amounts = args.get("pad", args.get("padding"))
    ndim = len(ctx.shape(node))
    ids = _aligned(ctx.input_ids(node), ndim)
    touched = [ndim - 1 - k // 2 for k, v in enumerate(amounts) if v]
    if any(ids.shape[a] > 1 for a in touched):
        return ctx.opaque(node, "pads a channel dimension")
    return ids


def constant(ctx: Context, node: fx.Node) -> Any:
    """A tensor made from sizes and values only (arange, zeros, new_full, meshgrid): no channels."""
    value = ctx.val(node)
    if isinstance(value, (tuple, list)):
        return tuple(no_ids(max(v.dim(), 1)) for v in value)
    return no_ids(max(value.dim(), 1)) if isinstance(value, torch.Tensor) else None


def scalar(ctx: Context, node: fx.Node) -> Any:
    """A tensor's value read into Python (``item``, a stride tensor used as a fill value)."""
    return None


def param_view(ctx: Context, node: fx.Node) -> Any:
    """A view of a parameter (a weight transposed, a scale unsqueezed): still that parameter."""
    ref = ctx.params[_source(node)]
    packet = node.target.overloadpacket
    in_shape, out_shape = ctx.shape(_source(node)), ctx.shape(node)
    if packet in (aten.t, aten.numpy_T, aten.transpose, aten.permute):
        axes = list(ref.axes)
        if packet is aten.permute:
            axes = [axes[d] for d in ctx.named(node)["dims"]]
        elif packet is aten.transpose:
            axes = _swap(axes, ctx.named(node)["dim0"], ctx.named(node)["dim1"])
        else:
            axes = axes[::-1]
    elif packet in (aten.expand, aten.expand_as):
        axes = [None] * (len(out_shape) - len(in_shape)) + [a if s > 1 else None for s, a in zip(in_shape, ref.axes)]
    else:  # view / reshape / unsqueeze / squeeze / copies: only size-1 dimensions may come or go
        real = [(s, a) for s, a in zip(in_shape, ref.axes) if s > 1]
        if [s for s in out_shape if s > 1] != [s for s, _ in real]:
            return constant(ctx, node)  # reshaped for real: no longer a tensor we can slice
        rest = iter(real)
        axes = [next(rest)[1] if s > 1 else None for s in out_shape]
    ctx.params[node] = ParamRef(ref.module, ref.attr, tuple(axes), ref.trainable)
    return no_ids(max(len(out_shape), 1))


def _swap(axes: list, a: int, b: int) -> list:
    a, b = _axis(a, len(axes)), _axis(b, len(axes))
    axes[a], axes[b] = axes[b], axes[a]
    return axes


# ---- the table ----------------------------------------------------------------------------

PASSTHROUGH = (
    aten.relu, aten.relu_, aten.relu6, aten.hardtanh, aten.hardtanh_, aten.leaky_relu, aten.leaky_relu_,
    aten.elu, aten.elu_, aten.selu, aten.selu_, aten.celu, aten.celu_, aten.gelu, aten.gelu_, aten.silu,
    aten.silu_, aten.mish, aten.mish_, aten.hardswish, aten.hardswish_, aten.hardsigmoid, aten.hardsigmoid_,
    aten.sigmoid, aten.sigmoid_, aten.tanh, aten.tanh_, aten.softplus, aten.abs, aten.neg, aten.exp,
    aten.log, aten.sqrt, aten.rsqrt, aten.reciprocal, aten.erf, aten.clone, aten.alias, aten.detach,
    aten.contiguous, aten.to, aten._to_copy, aten.type_as, aten.lift_fresh, aten.dropout, aten.dropout_,
    aten.feature_dropout, aten.feature_dropout_, aten.alpha_dropout, aten.clamp, aten.clamp_,
    aten.clamp_min, aten.clamp_min_, aten.clamp_max, aten.clamp_max_, aten.max_pool1d, aten.max_pool2d,
    aten.max_pool3d, aten.max_pool2d_with_indices, aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d,
    aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d, aten.adaptive_avg_pool3d,
    aten.adaptive_max_pool1d, aten.adaptive_max_pool2d, aten.upsample_nearest1d, aten.upsample_nearest2d,
    aten.upsample_nearest3d, aten._upsample_nearest_exact2d, aten.upsample_bilinear2d,
    aten._upsample_bilinear2d_aa, aten.upsample_bicubic2d, aten.upsample_linear1d, aten.roll,
)
ELEMENTWISE = (
    aten.add, aten.add_, aten.sub, aten.sub_, aten.rsub, aten.mul, aten.mul_, aten.div, aten.div_,
    aten.maximum, aten.minimum, aten.where, aten.pow, aten.eq, aten.ne, aten.gt, aten.ge, aten.lt, aten.le,
    aten.logical_and, aten.logical_or, aten.logical_not, aten.masked_fill, aten.masked_fill_, aten.copy_,
    aten.addcmul, aten.lerp,
)
CONSTANT = (
    aten.arange, aten.full, aten.zeros, aten.ones, aten.empty, aten.empty_strided, aten.scalar_tensor,
    aten.tensor, aten.new_zeros, aten.new_ones, aten.new_full, aten.new_empty, aten.new_empty_strided,
    aten.zeros_like, aten.ones_like, aten.full_like, aten.empty_like, aten.linspace, aten.lift_fresh_copy,
    aten.fill_, aten.zero_, aten.meshgrid, aten.rand, aten.randn, aten.rand_like, aten.randn_like,
)
PARAM_VIEWS = (
    aten.t, aten.numpy_T, aten.transpose, aten.permute, aten.view, aten._unsafe_view, aten.reshape,
    aten.unsqueeze, aten.squeeze, aten.expand, aten.expand_as, aten.alias, aten.detach, aten.clone,
    aten._to_copy, aten.to, aten.contiguous, aten.type_as,
)

OP_HANDLERS: dict[Any, Handler] = {
    **{op: passthrough for op in PASSTHROUGH},
    **{op: elementwise for op in ELEMENTWISE},
    **{op: constant for op in CONSTANT},
    aten.conv1d: conv, aten.conv2d: conv, aten.conv3d: conv, aten.convolution: conv,
    aten.conv_transpose1d: conv_transpose, aten.conv_transpose2d: conv_transpose, aten.conv_transpose3d: conv_transpose,
    aten.linear: linear, aten.matmul: matmul, aten.mm: matmul, aten.bmm: matmul,
    aten.batch_norm: batchnorm, aten.layer_norm: layer_norm, aten.group_norm: pinned, aten.prelu: prelu,
    aten.softmax: softmax, aten.log_softmax: softmax, aten._softmax: softmax, aten._log_softmax: softmax,
    aten.view: reshape, aten._unsafe_view: reshape, aten.reshape: reshape, aten.flatten: reshape,
    aten.unflatten: reshape, aten.squeeze: reshape, aten.unsqueeze: reshape,
    aten.expand: expand, aten.expand_as: expand, aten.as_strided: restride, aten.as_strided_: restride,
    aten.permute: permute, aten.transpose: transpose, aten.t: transpose, aten.numpy_T: transpose,
    aten.cat: cat, aten.concat: cat, aten.concatenate: cat, aten.stack: stack,
    aten.chunk: split, aten.split: split, aten.split_with_sizes: split, aten.unbind: split,
    aten.slice: slice_, aten.select: select,
    aten.mean: reduce, aten.sum: reduce, aten.amax: reduce, aten.amin: reduce, aten.max: reduce,
    aten.pad: pad, aten.constant_pad_nd: pad, aten.reflection_pad1d: pad, aten.reflection_pad2d: pad,
    aten.replication_pad1d: pad, aten.replication_pad2d: pad,
    aten.item: scalar, aten._local_scalar_dense: scalar,
    operator.getitem: getitem,
}

MODULE_HANDLERS: dict[type, Handler] = {ChannelSelect: channel_select}


def resolve(ctx: Context, node: fx.Node) -> Handler | None:
    """The handler for ``node``, or ``None`` when the operation is not understood."""
    if node.op == "call_module":
        return next((MODULE_HANDLERS[c] for c in type(ctx.module(node)).__mro__ if c in MODULE_HANDLERS), None)
    packet = getattr(node.target, "overloadpacket", node.target)
    if packet in PARAM_VIEWS and _source(node) in ctx.params:
        return param_view
    return OP_HANDLERS.get(packet)
