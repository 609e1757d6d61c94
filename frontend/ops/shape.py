"""Data-movement ONNX ops: views (Reshape & co.), Transpose, Concat, Split, Slice, Gather,
GatherElements, Expand, Tile, Pad, Trilu, DepthToSpace/SpaceToDepth, and the ops that produce
shapes or constants.

Views are Alias(0): the data is unchanged, only the (static) output shape differs. Every other op
is one loop nest per output (or per input, for Concat) that copies with rewritten indices.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import numpy_helper

from ...ir import (Buffer, Expr, Kernel, as_expr, call, cast, eq, ge, logical_and, loop_nest, lt,
                   maximum, minimum, select, seq, store)
from .common import elementwise, input_buffer, normalize_axis, output_buffer
from .registry import Alias, Lowered, OpContext, register_op


def _ints(values) -> list[int] | None:
    return None if values is None else [int(v) for v in np.asarray(values).reshape(-1)]


def _attr_or_input(ctx: OpContext, name: str, i: int, since: int) -> list[int] | None:
    """A list of ints that is attribute `name` before opset `since` and constant input `i` after."""
    return _ints(ctx.attr(name) if ctx.opset < since else ctx.const(i))


def _kernel(ctx: OpContext, inputs: list[int], outputs: list[Buffer], body) -> Lowered:
    bufs = tuple(input_buffer(ctx, i) for i in inputs)
    return Lowered(Kernel(ctx.kernel_name(), bufs, tuple(outputs), body), inputs)


# -- views ------------------------------------------------------------------------------------

def _alias(ctx: OpContext, shape) -> Alias:
    """Alias(0), once the shape the op's semantics give agrees with the inferred output shape."""
    out = tuple(ctx.outputs[0].shape)
    if tuple(shape) != out:
        raise ctx.unsupported(f"computed shape {list(shape)} differs from the inferred {list(out)}")
    return Alias(0)


@register_op("Reshape")
def lower_reshape(ctx: OpContext):
    target, in_shape = _ints(ctx.const(1)), ctx.inputs[0].shape
    if not ctx.attr("allowzero", 0):  # 0 copies the input's dimension
        target = [in_shape[i] if d == 0 else d for i, d in enumerate(target)]
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = math.prod(in_shape) // known if known else 0
    return _alias(ctx, target)


@register_op("Flatten")
def lower_flatten(ctx: OpContext):
    shape = ctx.inputs[0].shape
    axis = ctx.attr("axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    return _alias(ctx, (math.prod(shape[:axis]), math.prod(shape[axis:])))


@register_op("Squeeze")
def lower_squeeze(ctx: OpContext):
    shape = ctx.inputs[0].shape
    axes = _attr_or_input(ctx, "axes", 1, since=13)
    if axes is None:  # squeeze every dimension of size 1
        axes = [d for d, n in enumerate(shape) if n == 1]
    axes = {normalize_axis(ctx, a, len(shape)) for a in axes}
    if any(shape[a] != 1 for a in axes):
        raise ctx.unsupported(f"cannot squeeze axes {sorted(axes)} of shape {list(shape)}")
    return _alias(ctx, [n for d, n in enumerate(shape) if d not in axes])


@register_op("Unsqueeze")
def lower_unsqueeze(ctx: OpContext):
    shape = list(ctx.inputs[0].shape)
    axes = _attr_or_input(ctx, "axes", 1, since=13)
    rank = len(shape) + len(axes)
    for a in sorted(normalize_axis(ctx, a, rank) for a in axes):
        shape.insert(a, 1)
    return _alias(ctx, shape)


# -- copies with rewritten indices ------------------------------------------------------------

@register_op("Transpose")
def lower_transpose(ctx: OpContext):
    x, out = input_buffer(ctx, 0), output_buffer(ctx)
    perm = ctx.attr("perm") or list(reversed(range(len(x.shape))))
    if sorted(perm) != list(range(len(x.shape))):
        raise ctx.unsupported(f"perm {list(perm)} is not an order of the input's {len(x.shape)} axes")

    def body(*vs):
        idx = [None] * len(perm)
        for d, p in enumerate(perm):  # output dim d walks input dim perm[d]
            idx[p] = vs[d]
        return store(out, vs, x[tuple(idx)])
    return _kernel(ctx, [0], [out], loop_nest(out.shape, body))


def _shifted(vs, axis: int, offset) -> tuple:
    return tuple(v + offset if d == axis and offset else v for d, v in enumerate(vs))


@register_op("Concat")
def lower_concat(ctx: OpContext):
    out = output_buffer(ctx)
    axis = normalize_axis(ctx, ctx.attr("axis"), len(out.shape))
    args = [i for i in range(len(ctx.inputs)) if ctx.has_input(i)]
    nests, offset = [], 0
    for k, i in enumerate(args):
        x = input_buffer(ctx, i)
        if x.shape[axis]:
            nests.append(loop_nest(x.shape, lambda *vs, x=x, o=offset:
                                   store(out, _shifted(vs, axis, o), x[vs]), prefix=f"i{k}_"))
        offset += x.shape[axis]
    return _kernel(ctx, args, [out], seq(*nests))


@register_op("Split")
def lower_split(ctx: OpContext):
    # The split sizes (attribute, input or num_outputs) are already in the inferred output shapes.
    x = input_buffer(ctx, 0)
    axis = normalize_axis(ctx, ctx.attr("axis", 0), len(x.shape))
    outs = [output_buffer(ctx, k) for k in range(len(ctx.outputs))]
    if sum(o.shape[axis] for o in outs) != x.shape[axis]:
        raise ctx.unsupported("the output sizes do not add up to the split dimension")
    nests, offset = [], 0
    for k, out in enumerate(outs):
        if out.shape[axis]:
            nests.append(loop_nest(out.shape, lambda *vs, out=out, o=offset:
                                   store(out, vs, x[_shifted(vs, axis, o)]), prefix=f"i{k}_"))
        offset += out.shape[axis]
    return _kernel(ctx, [0], outs, seq(*nests))


def _slice_axis(dim: int, start: int, end: int, step: int) -> tuple[int, int]:
    """(first index, element count) of start:end:step on a dimension of size dim, with ONNX's
    negative-index and clamping rules."""
    start, end = (v + dim if v < 0 else v for v in (start, end))
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return start, max(0, -(-(end - start) // step))


@register_op("Slice")
def lower_slice(ctx: OpContext):
    x, out = input_buffer(ctx, 0), output_buffer(ctx)
    if ctx.opset < 10:
        names = ("starts", "ends", "axes", "steps")
        starts, ends, axes, steps = (_ints(ctx.attr(n)) for n in names)
    else:
        starts, ends, axes, steps = (_ints(ctx.const(i)) for i in (1, 2, 3, 4))
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    first, step, shape = [0] * len(x.shape), [1] * len(x.shape), list(x.shape)
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise ctx.unsupported("a step of 0")
        a = normalize_axis(ctx, a, len(x.shape))
        first[a], shape[a] = _slice_axis(x.shape[a], s, e, st)
        step[a] = st
    if tuple(shape) != out.shape:
        raise ctx.unsupported(f"computed shape {shape} differs from the inferred {list(out.shape)}")
    body = loop_nest(out.shape, lambda *vs: store(
        out, vs, x[tuple(v * st + f for v, st, f in zip(vs, step, first))]))
    return _kernel(ctx, [0], [out], body)


@register_op("Gather")
def lower_gather(ctx: OpContext):
    x, ind, out = input_buffer(ctx, 0), input_buffer(ctx, 1, "Indices"), output_buffer(ctx)
    axis = normalize_axis(ctx, ctx.attr("axis", 0), len(x.shape))
    q, dim = len(ind.shape), x.shape[axis]

    def body(*vs):
        i = cast("int32", ind[tuple(vs[axis:axis + q])])
        i = select(lt(i, 0), i + dim, i)  # negative indices count from the end
        return store(out, vs, x[tuple(vs[:axis]) + (i,) + tuple(vs[axis + q:])])
    kernel = Kernel(ctx.kernel_name(), (x, ind), (out,), loop_nest(out.shape, body))
    return Lowered(kernel, [0, 1])


@register_op("GatherElements")
def lower_gather_elements(ctx: OpContext):
    """Out[i] = X[i with i[axis] replaced by Indices[i]] (negative indices count from the end);
    the output has the shape of Indices."""
    x, ind, out = input_buffer(ctx, 0), input_buffer(ctx, 1, "Indices"), output_buffer(ctx)
    axis = normalize_axis(ctx, ctx.attr("axis", 0), len(x.shape))
    dim = x.shape[axis]

    def body(*vs):
        i = cast("int32", ind[vs])
        i = select(lt(i, 0), i + dim, i)
        return store(out, vs, x[tuple(i if d == axis else v for d, v in enumerate(vs))])
    kernel = Kernel(ctx.kernel_name(), (x, ind), (out,), loop_nest(out.shape, body))
    return Lowered(kernel, [0, 1])


@register_op("GatherND")
def lower_gather_nd(ctx: OpContext):
    """Out[b.., q.., r..] = X[b.., Indices[b.., q.., :k], r..] over batch_dims leading b
    (negative indices count from the end)."""
    x, ind, out = input_buffer(ctx, 0), input_buffer(ctx, 1, "Indices"), output_buffer(ctx)
    batch, k = ctx.attr("batch_dims", 0), ind.shape[-1]
    lead = len(ind.shape) - 1  # output dims taken from the indices (batch included)

    def body(*vs):
        picked = []
        for j in range(k):
            i = cast("int64", ind[(*vs[:lead], as_expr(j))])
            picked.append(select(lt(i, as_expr(0, "int64")), i + x.shape[batch + j], i))
        return store(out, vs, x[(*vs[:batch], *picked, *vs[lead:])])
    kernel = Kernel(ctx.kernel_name(), (x, ind), (out,), loop_nest(out.shape, body))
    return Lowered(kernel, [0, 1])


@register_op("ReverseSequence")
def lower_reverse_sequence(ctx: OpContext):
    """Each batch entry b's first sequence_lens[b] steps along time_axis reversed, the rest kept."""
    x, lens, out = input_buffer(ctx, 0), input_buffer(ctx, 1, "Lens"), output_buffer(ctx)
    batch, time = ctx.attr("batch_axis", 1), ctx.attr("time_axis", 0)

    def body(*vs):
        n, t = cast("int64", lens[vs[batch]]), cast("int64", vs[time])
        src = select(lt(t, n), n - 1 - t, t)
        return store(out, vs, x[tuple(src if d == time else v for d, v in enumerate(vs))])
    return Lowered(Kernel(ctx.kernel_name(), (x, lens), (out,), loop_nest(out.shape, body)), [0, 1])


@register_op("EyeLike")
def lower_eye_like(ctx: OpContext):
    """Ones on the k-th diagonal of a matrix shaped as the input, zeros elsewhere."""
    out, k = output_buffer(ctx), ctx.attr("k", 0)
    one, zero = as_expr(1, out.dtype), as_expr(0, out.dtype)
    body = loop_nest(out.shape, lambda i, j: store(out, (i, j), select(eq(j - i, as_expr(k)), one, zero)))
    return Lowered(Kernel(ctx.kernel_name(), (), (out,), body), [])


@register_op("Trilu")
def lower_trilu(ctx: OpContext):
    """The upper (j - i >= k) or lower (j - i <= k) triangle of the last two dims, zeros
    elsewhere; k is a constant input (default 0)."""
    x, out = input_buffer(ctx, 0), output_buffer(ctx)
    if len(x.shape) < 2:
        raise ctx.unsupported(f"input of rank {len(x.shape)}")
    k = ctx.const(1)
    k = 0 if k is None else int(np.asarray(k).item())
    upper = bool(ctx.attr("upper", 1))

    def body(*vs):
        i, j = vs[-2], vs[-1]
        keep = ge(j - i, k) if upper else ge(i - j, -k)
        zero = as_expr(False) if x.dtype == "bool" else as_expr(0, x.dtype)
        return store(out, vs, select(keep, x[vs], zero))
    return _kernel(ctx, [0], [out], loop_nest(out.shape, body))


@register_op("Expand")
def lower_expand(ctx: OpContext):
    return elementwise(ctx, lambda x: x, args=[0])


@register_op("Tile")
def lower_tile(ctx: OpContext):
    x, out = input_buffer(ctx, 0), output_buffer(ctx)
    body = loop_nest(out.shape, lambda *vs: store(out, vs, x[tuple(
        v if n == m else v % n for v, n, m in zip(vs, x.shape, out.shape))]))
    return _kernel(ctx, [0], [out], body)


def _pad_params(ctx: OpContext, rank: int) -> tuple[list[int], float]:
    """(pads as [begin..., end...] over all axes, constant value) across the opset versions."""
    if ctx.opset < 11:
        return _ints(ctx.attr("pads")), ctx.attr("value", 0.0)
    raw = _ints(ctx.const(1))
    value = ctx.inputs[2].value if ctx.has_input(2) else None  # a run-time value is loaded
    axes = _ints(ctx.const(3)) if ctx.opset >= 18 else None
    axes = [normalize_axis(ctx, a, rank) for a in axes] if axes is not None else list(range(rank))
    pads = [0] * (2 * rank)
    for k, a in enumerate(axes):
        pads[a], pads[rank + a] = raw[k], raw[len(axes) + k]
    return pads, 0 if value is None else value.item()


def _pad_index(mode: str, v: Expr, begin: int, n: int) -> Expr:
    """The input index read at output index v on a dimension of size n padded by `begin`."""
    j = v - begin
    if mode == "edge":
        return minimum(maximum(j, 0), n - 1)
    if mode == "reflect":  # a triangle wave: one reflection at each border
        return (n - 1) - call("abs", (n - 1) - call("abs", j))
    # wrap: shifted by whole periods so that the dividend is never negative (`%` is then
    # unambiguous, and the verifier can bound it)
    return (v + (n * -(-begin // n) - begin)) % n


@register_op("Pad")
def lower_pad(ctx: OpContext):
    x, out = input_buffer(ctx, 0), output_buffer(ctx)
    rank, mode = len(x.shape), ctx.attr("mode", "constant")
    pads, value = _pad_params(ctx, rank)
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise ctx.unsupported(f"mode='{mode}'")
    if mode == "reflect" and any(p > n - 1 for p, n in zip(pads, x.shape * 2)):
        raise ctx.unsupported("reflect padding wider than the dimension minus one")
    padded = [d for d in range(rank) if pads[d] or pads[rank + d]]
    args, bufs = [0], [x]
    if mode == "constant" and ctx.opset >= 11 and ctx.has_input(2) and ctx.inputs[2].value is None:
        fill = input_buffer(ctx, 2, "Value")  # a 0-d (or one-element) tensor given at run time
        if math.prod(fill.shape) != 1:
            raise ctx.unsupported(f"constant_value of shape {list(fill.shape)}")
        args.append(2)
        bufs.append(fill)
        pad_value = fill[(0,) * len(fill.shape)] if fill.shape else fill[()]
    else:
        pad_value = as_expr(value, x.dtype)

    def body(*vs):
        if mode != "constant":
            return store(out, vs, x[tuple(_pad_index(mode, v, pads[d], x.shape[d])
                                          if d in padded else v for d, v in enumerate(vs))])
        idx = [v - pads[d] if d in padded else v for d, v in enumerate(vs)]
        inside = logical_and(*(c for d in padded for c in (ge(idx[d], 0), lt(idx[d], x.shape[d]))))
        return store(out, vs, select(inside, x[tuple(idx)], pad_value))
    return Lowered(Kernel(ctx.kernel_name(), tuple(bufs), (out,), loop_nest(out.shape, body)), args)


def _depth_to_space(ctx: OpContext, x: Buffer, b: int, vs) -> Expr:
    n, c, y, w = vs
    i, j = y % b, w % b
    c_out = x.shape[1] // (b * b)
    depth = c * (b * b) + i * b + j if ctx.attr("mode", "DCR") == "CRD" else (i * b + j) * c_out + c
    return x[n, depth, y // b, w // b]


def _space_to_depth(ctx: OpContext, x: Buffer, b: int, vs) -> Expr:
    n, k, h, w = vs
    if ctx.attr("mode", "DCR") == "CRD":  # opset 28: channel-major output depth
        c, block = k // (b * b), k % (b * b)
    else:
        c, block = k % x.shape[1], k // x.shape[1]
    return x[n, c, h * b + block // b, w * b + block % b]


@register_op("DepthToSpace", "SpaceToDepth")
def lower_depth_space(ctx: OpContext):
    x, out = input_buffer(ctx, 0), output_buffer(ctx)
    read = _depth_to_space if ctx.op_type == "DepthToSpace" else _space_to_depth
    b = ctx.attr("blocksize")
    body = loop_nest(out.shape, lambda *vs: store(out, vs, read(ctx, x, b, vs)))
    return _kernel(ctx, [0], [out], body)


# -- shapes and constants: usually folded by the importer, lowered for completeness ----------

def _constant_kernel(ctx: OpContext, values) -> Lowered:
    """A kernel without inputs that stores `values` (a flat list) into output 0."""
    out = output_buffer(ctx)
    values = list(values)
    if len(values) != math.prod(out.shape):
        raise ctx.unsupported(f"{len(values)} values for an output of shape {list(out.shape)}")
    if out.shape == ():
        body = store(out, (), as_expr(values[0], out.dtype))
    else:
        body = seq(*(store(out, (k,), as_expr(v, out.dtype)) for k, v in enumerate(values)))
    return _kernel(ctx, [], [out], body)


@register_op("Shape")
def lower_shape(ctx: OpContext):
    start, end = (ctx.attr("start", 0), ctx.attr("end")) if ctx.opset >= 15 else (0, None)
    return _constant_kernel(ctx, ctx.inputs[0].shape[start:end])  # Python slicing clamps as ONNX


@register_op("Size")
def lower_size(ctx: OpContext):
    return _constant_kernel(ctx, [math.prod(ctx.inputs[0].shape)])


@register_op("ConstantOfShape")
def lower_constant_of_shape(ctx: OpContext):
    tensor = ctx.attrs.get("value")
    value = numpy_helper.to_array(tensor).item() if tensor is not None else 0.0
    out = output_buffer(ctx)
    body = loop_nest(out.shape, lambda *vs: store(out, vs, as_expr(value, out.dtype)))
    return _kernel(ctx, [], [out], body)


@register_op("Range")
def lower_range(ctx: OpContext):
    # start and delta are baked in when constant, otherwise read from scalar buffers
    args = [i for i in (0, 2) if ctx.inputs[i].value is None]
    bufs = {i: input_buffer(ctx, i) for i in args}
    start, delta = (bufs[i][()] if i in bufs
                    else as_expr(ctx.inputs[i].value.item(), ctx.inputs[i].dtype) for i in (0, 2))
    out = output_buffer(ctx)
    body = loop_nest(out.shape, lambda i: store(out, (i,), start + cast(out.dtype, i) * delta))
    return Lowered(Kernel(ctx.kernel_name(), tuple(bufs.values()), (out,), body), args)


@register_op("OneHot")
def lower_one_hot(ctx: OpContext) -> Lowered:
    """out[.., k, ..] (k on `axis`) = values[1] where the index (negative ones counted from
    depth, floats truncated) is k, else values[0]; an index out of range is all values[0]."""
    idx, values, out = input_buffer(ctx, 0, "Indices"), input_buffer(ctx, 2, "Values"), output_buffer(ctx)
    depth = int(np.asarray(ctx.const(1)).reshape(-1)[0])
    axis = normalize_axis(ctx, ctx.attr("axis", -1), len(out.shape))

    def body(*vs):
        i = cast("int64", idx[vs[:axis] + vs[axis + 1:]])
        i = select(lt(i, as_expr(0, "int64")), i + depth, i)
        return store(out, vs, select(eq(i, cast("int64", vs[axis])), values[1], values[0]))
    return Lowered(Kernel(ctx.kernel_name(), (idx, values), (out,), loop_nest(out.shape, body)), [0, 2])
