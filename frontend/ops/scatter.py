"""ScatterElements (and the older Scatter), ScatterND, TensorScatter, MaxUnpool: written as
gathers, so each output element is computed once with no racing stores: out[p] = data[p]
combined with every update aimed at p (a reduction over the updates that could hit p, the others
masked to the identity). reduction 'none' adds (update - data[p]) for the update that hits p:
the update itself where indices are unique, which ONNX requires of 'none'."""
from __future__ import annotations

import math

from ...ir import (Kernel, as_expr, cast, eq, ge, logical_and, loop_nest, lt, maximum, minimum, select,
                   store)
from .common import input_buffer, normalize_axis, output_buffer
from .reduce import _identity, flat_position, reduction
from .registry import Lowered, OpContext, register_op

_OPS = {"none": "add", "add": "add", "mul": "mul", "max": "max", "min": "min"}


def _combine(ctx: OpContext):
    kind = ctx.attr("reduction", "none")
    if kind not in _OPS:
        raise ctx.unsupported(f"reduction={kind}")
    return kind, _OPS[kind]


def _hit(index, target, size):
    """Whether `index` (negative ones counted from the end) names position `target`."""
    i = cast("int64", index)
    return eq(select(lt(i, as_expr(0, "int64")), i + size, i), cast("int64", target))


def _masked(kind, op, hit, update, current):
    value = update - current if kind == "none" else update
    return select(hit, value, _identity(op, update.dtype))


@register_op("ScatterElements", "Scatter")
def lower_scatter_elements(ctx: OpContext) -> Lowered:
    """out[p] = data[p] op updates[q] for each q equal to p off the axis whose index names p[axis]."""
    data, idx, upd = (input_buffer(ctx, i, n) for i, n in enumerate(("Data", "Indices", "Updates")))
    out = output_buffer(ctx)
    axis = normalize_axis(ctx, ctx.attr("axis", 0), len(data.shape))
    kind, op = _combine(ctx)

    def value(p, r):
        # updates may be smaller than data off the axis: positions past them read a clamped
        # (in-bounds) update and are masked out
        q = tuple(r[0] if d == axis else minimum(v, n - 1) for d, (v, n) in enumerate(zip(p, upd.shape)))
        inside = [lt(v, as_expr(n, v.dtype)) for d, (v, n) in enumerate(zip(p, upd.shape)) if d != axis]
        hit = logical_and(*inside, _hit(idx[q], p[axis], data.shape[axis]))
        return _masked(kind, op, hit, upd[q], data[tuple(p)])
    body = reduction(out, out.shape, [upd.shape[axis]], lambda s: tuple(s),
                     lambda p: data[tuple(p)], value, op)
    return Lowered(Kernel(ctx.kernel_name(), (data, idx, upd), (out,), body), [0, 1, 2])


@register_op("ScatterND")
def lower_scatter_nd(ctx: OpContext) -> Lowered:
    """out[p] = data[p] op updates[q, p[k:]] for each q whose index tuple indices[q, :k] is p[:k]."""
    data, idx, upd = (input_buffer(ctx, i, n) for i, n in enumerate(("Data", "Indices", "Updates")))
    out = output_buffer(ctx)
    k, batch = idx.shape[-1], idx.shape[:-1]
    kind, op = _combine(ctx)

    def value(p, q):
        hits = [_hit(idx[(*q, as_expr(i))], p[i], data.shape[i]) for i in range(k)]
        return _masked(kind, op, logical_and(*hits), upd[(*q, *p[k:])], data[tuple(p)])
    if math.prod(batch) == 0:
        raise ctx.unsupported("no updates")
    body = reduction(out, out.shape, batch, lambda s: tuple(s), lambda p: data[tuple(p)], value, op)
    return Lowered(Kernel(ctx.kernel_name(), (data, idx, upd), (out,), body), [0, 1, 2])


@register_op("TensorScatter")
def lower_tensor_scatter(ctx: OpContext) -> Lowered:
    """A KV cache update: out[p] = update[p with k on the axis] where k = p[axis] - write_index
    of the batch (mod the cache length when circular) is one of the update's positions, else
    past[p]."""
    past, upd, out = input_buffer(ctx, 0, "Past"), input_buffer(ctx, 1, "Update"), output_buffer(ctx)
    axis = normalize_axis(ctx, ctx.attr("axis", -2), len(past.shape))
    mode = ctx.attr("mode", "linear")
    if mode not in ("linear", "circular"):
        raise ctx.unsupported(f"mode '{mode}' (expected 'linear' or 'circular')")
    params, args = [past, upd], [0, 1]
    writes = input_buffer(ctx, 2, "WriteIndices") if ctx.has_input(2) else None
    if writes is not None:
        params.append(writes)
        args.append(2)

    def body(*p):
        k = p[axis] - (cast("int32", writes[p[0]]) if writes is not None else 0)
        if mode == "circular":
            k = k % past.shape[axis]
        inside = logical_and(ge(k, 0), lt(k, upd.shape[axis]))
        q = tuple(minimum(maximum(k, 0), upd.shape[axis] - 1) if d == axis else v for d, v in enumerate(p))
        return store(out, p, select(inside, upd[q], past[p]))
    return Lowered(Kernel(ctx.kernel_name(), tuple(params), (out,), loop_nest(out.shape, body)), args)


@register_op("MaxUnpool")
def lower_max_unpool(ctx: OpContext) -> Lowered:
    """MaxPool's inverse: each value of X goes to the flat position its index names in the
    unpooled tensor (batch and channel included, as MaxPool's Indices count), every other
    position is 0; a larger output_shape pads the end of each dim with zeros. Written as a
    gather over the inputs of the same batch and channel (indices are unique, as MaxPool's are)."""
    x, idx, out = input_buffer(ctx, 0, "X"), input_buffer(ctx, 1, "Indices"), output_buffer(ctx)
    kernel = ctx.attr("kernel_shape")
    dims = len(x.shape) - 2
    strides, pads = ctx.attr("strides", [1] * dims), ctx.attr("pads", [0] * (2 * dims))
    unpooled = list(x.shape[:2]) + [(x.shape[2 + d] - 1) * strides[d] - pads[d] - pads[dims + d] + kernel[d]
                                    for d in range(dims)]
    if any(o < u for o, u in zip(out.shape, unpooled)):
        raise ctx.unsupported(f"output shape {list(out.shape)} is smaller than the unpooled {unpooled}")
    axes = range(len(out.shape))

    def value(p, r):
        q = (p[0], p[1], *r)
        hit = eq(idx[q], cast(idx.dtype, flat_position(p, axes, unpooled)))
        inside = [lt(p[d], as_expr(unpooled[d], p[d].dtype)) for d in axes[2:] if out.shape[d] > unpooled[d]]
        return select(logical_and(*inside, hit), x[q], as_expr(0, x.dtype))
    body = reduction(out, out.shape, x.shape[2:], lambda s: tuple(s), 0, value, "add")
    return Lowered(Kernel(ctx.kernel_name(), (x, idx), (out,), body), [0, 1])
