"""Reductions: ReduceSum, ReduceMean, ReduceMax, ... and ArgMax / ArgMin.

Also the loop-nest helpers every reducing op uses (conv, pooling, normalizations, softmax):
spatial loops outside, reduce loops (axis="reduce") inside, an init store before them.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ...ir import (Allocate, Binary, Buffer, Const, Expr, Kernel, Stmt, Var, as_expr, call, cast,
                   eq, ge, gt, is_float, is_int, le, logical_and, logical_or, loop_nest, lt, select, seq,
                   store)
from .common import input_buffer, normalize_axis, output_buffer
from .registry import Lowered, OpContext, register_op


def reduction(acc: Buffer, spatial: Sequence[int], reduce: Sequence[int],
              index: Callable, init, value: Callable, op: str,
              finalize: Callable | None = None, tag: str = "") -> Stmt:
    """For every spatial point s: acc[index(s)] = init, then `op`-reduce value(s, r) over the
    reduce loops r, then optionally acc[idx] = finalize(acc[idx], idx).

    `init` is a number, an Expr or a function of the acc index. Loops are named
    {tag}i0, {tag}i1, ... (spatial) and {tag}r0, ... (reduce): tags keep names unique per kernel.
    """
    wide = bool(reduce) and op in WIDENED_OPS and acc.dtype in WIDE_ACCUMULATOR
    if wide:  # accumulate in a wider temp, then round once into acc (as numpy does for f16)
        return _widened_reduction(acc, spatial, reduce, index, init, value, op, finalize, tag)

    def outer(*s: Var) -> Stmt:
        idx = index(s)
        start = as_expr(init(idx) if callable(init) else init, acc.dtype)
        end = store(acc, idx, finalize(acc[idx], idx)) if finalize else None
        if not reduce:  # nothing to reduce over (noop_with_empty_axes): no reduce store
            return seq(store(acc, idx, Binary(op, start, value(s, ()))), end)
        body = loop_nest(reduce, lambda *r: store(acc, idx, value(s, r), reduce=op),
                         prefix=tag + "r", axis="reduce")
        return seq(store(acc, idx, start), body, end)
    return loop_nest(spatial, outer, prefix=tag + "i")


# Sums and products of these dtypes accumulate in the wider one: numpy (and so onnx.reference)
# adds and multiplies float16 in float32 and rounds once at the end; a float16 accumulator
# rounds at every step and drifts by several ulps over a long reduction.
WIDE_ACCUMULATOR = {"float16": "float32"}
WIDENED_OPS = ("add", "mul")


def accumulator_dtype(dtype: str) -> str:
    return WIDE_ACCUMULATOR.get(dtype, dtype)


def widen(x: Expr) -> Expr:
    """x in its accumulator dtype: for the terms of a reduction whose products should not
    round to float16 (matmul, conv)."""
    return cast(accumulator_dtype(x.dtype), x)


def _widened_reduction(acc: Buffer, spatial, reduce, index, init, value, op, finalize,
                       tag) -> Stmt:
    wide = temp(f"{acc.name}_acc", acc.shape, WIDE_ACCUMULATOR[acc.dtype])

    def outer(*s: Var) -> Stmt:
        idx = index(s)
        start = as_expr(init(idx) if callable(init) else init, acc.dtype)
        body = loop_nest(reduce, lambda *r: store(wide, idx, cast(wide.dtype, value(s, r)),
                                                  reduce=op),
                         prefix=tag + "r", axis="reduce")
        result = cast(acc.dtype, wide[idx])
        return seq(store(wide, idx, cast(wide.dtype, start)), body,
                   store(acc, idx, finalize(result, idx) if finalize else result))
    return allocate([wide], loop_nest(spatial, outer, prefix=tag + "i"))


def reduce_axes(acc: Buffer, shape: Sequence[int], axes: Sequence[int], value: Callable,
                op: str, init, finalize: Callable | None = None, keepdims: bool = True,
                tag: str = "") -> Stmt:
    """acc = `op`-reduction of value(index) over `axes` of an iteration space of `shape`.

    value receives the full index (one expression per dim of `shape`); acc is indexed by the
    kept dims, with a 0 for each reduced dim when keepdims.
    """
    axes = sorted(axes)
    kept = [d for d in range(len(shape)) if d not in axes]

    def full(s, r):
        where = dict(zip(kept, s)) | dict(zip(axes, r))
        return tuple(where[d] for d in range(len(shape)))

    def index(s):
        where = dict(zip(kept, s))
        return tuple(where.get(d, Const(0)) for d in range(len(shape)) if keepdims or d in where)

    return reduction(acc, [shape[d] for d in kept], [shape[d] for d in axes], index, init,
                     lambda s, r: value(full(s, r)), op, finalize, tag)


def keep_index(idx: Sequence[Expr], axes: Sequence[int]) -> tuple[Expr, ...]:
    """`idx` with the reduced axes set to 0: where a keepdims-shaped result is read."""
    return tuple(Const(0) if d in axes else v for d, v in enumerate(idx))


def keep_shape(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, ...]:
    return tuple(1 if d in axes else n for d, n in enumerate(shape))


def lowest(dtype: str) -> Expr:
    """The identity of max: -inf for floats, the smallest value for ints, False for bools."""
    if dtype == "bool":
        return Const(False, "bool")
    value = float("-inf") if is_float(dtype) else int(np.iinfo(dtype).min)
    return Const(value, dtype)


def highest(dtype: str) -> Expr:
    if dtype == "bool":
        return Const(True, "bool")
    value = float("inf") if is_float(dtype) else int(np.iinfo(dtype).max)
    return Const(value, dtype)


def temp(name: str, shape: Sequence[int], dtype: str) -> Buffer:
    """An intermediate tensor between the stages of one kernel (wrapped in an Allocate)."""
    return Buffer(name, tuple(shape), dtype, "global")


def allocate(buffers: Sequence[Buffer], body: Stmt) -> Stmt:
    for b in reversed(buffers):
        body = Allocate(b, body)
    return body


def _reduce_axes_of(ctx: OpContext, rank: int) -> list[int]:
    """The reduced axes: an attribute before the opset that made them input 1 (13 for
    ReduceSum, 18 for the others); empty means all axes unless noop_with_empty_axes."""
    if ctx.opset >= (13 if ctx.op_type == "ReduceSum" else 18):
        value = ctx.const(1)
        axes = [] if value is None else [int(a) for a in np.asarray(value).ravel()]
    else:
        axes = list(ctx.attr("axes", []))
    if not axes:
        return [] if ctx.attr("noop_with_empty_axes", 0) else list(range(rank))
    return sorted({normalize_axis(ctx, a, rank) for a in axes})


def square(x: Expr) -> Expr:
    return x * x


# op type -> (reduce op, value of one element, finalize(acc, count)); init is the op's identity
_SIMPLE = {
    "ReduceSum": ("add", lambda x: x, None),
    "ReduceSumSquare": ("add", square, None),
    "ReduceL1": ("add", lambda x: call("abs", x), None),
    "ReduceL2": ("add", square, lambda acc, n: call("sqrt", acc)),
    "ReduceLogSum": ("add", lambda x: x, lambda acc, n: call("log", acc)),
    "ReduceMean": ("add", lambda x: x, lambda acc, n: acc / n),
    "ReduceProd": ("mul", lambda x: x, None),
    "ReduceMax": ("max", lambda x: x, None),
    "ReduceMin": ("min", lambda x: x, None),
}
_FLOAT_ONLY = {"ReduceL2", "ReduceLogSum", "ReduceMean", "ReduceLogSumExp"}


def _identity(op: str, dtype: str) -> Expr:
    return {"add": Const(0, dtype) if is_int(dtype) else Const(0.0, dtype),
            "mul": Const(1, dtype) if is_int(dtype) else Const(1.0, dtype),
            "max": lowest(dtype), "min": highest(dtype)}[op]


@register_op(*_SIMPLE, "ReduceLogSumExp")
def lower_reduce(ctx: OpContext) -> Lowered:
    x, out = input_buffer(ctx, 0, "X"), output_buffer(ctx)
    # bools: ReduceMax is any, ReduceMin all (opset 20); max / min of bools are or / and
    bool_ok = x.dtype == "bool" and ctx.op_type in ("ReduceMax", "ReduceMin")
    if not (is_float(x.dtype) or is_int(x.dtype) or bool_ok):
        raise ctx.unsupported(f"input type {x.dtype}")
    if ctx.op_type in _FLOAT_ONLY and not is_float(x.dtype):
        raise ctx.unsupported(f"integer input ({x.dtype})")
    axes = _reduce_axes_of(ctx, len(x.shape))
    keepdims = bool(ctx.attr("keepdims", 1))
    if ctx.op_type == "ReduceLogSumExp":
        body = _log_sum_exp(x, out, axes, keepdims)
    else:
        op, value, fin = _SIMPLE[ctx.op_type]
        count = int(np.prod([x.shape[a] for a in axes]))
        finalize = (lambda acc, idx: fin(acc, count)) if fin else None
        body = reduce_axes(out, x.shape, axes, lambda i: value(x[i]), op,
                           _identity(op, x.dtype), finalize, keepdims)
    return Lowered(Kernel(ctx.kernel_name(), (x,), (out,), body), [0])


def _log_sum_exp(x: Buffer, out: Buffer, axes, keepdims) -> Stmt:
    """log(sum(exp(x - max))) + max: the max stage keeps exp from overflowing."""
    mx = temp("Max", out.shape, x.dtype)
    out_index = (lambda i: keep_index(i, axes)) if keepdims else \
        (lambda i: tuple(v for d, v in enumerate(i) if d not in axes))
    stage_max = reduce_axes(mx, x.shape, axes, lambda i: x[i], "max", lowest(x.dtype),
                            keepdims=keepdims, tag="max_")
    stage_sum = reduce_axes(out, x.shape, axes,
                            lambda i: call("exp", x[i] - mx[out_index(i)]), "add", 0.0,
                            lambda acc, idx: call("log", acc) + mx[idx], keepdims)
    return allocate([mx], seq(stage_max, stage_sum))


def flat_position(idx: Sequence[Expr], axes: Sequence[int], shape: Sequence[int]) -> Expr:
    """Row-major position of idx within the sub-block spanned by `axes` (an int32 index)."""
    pos = None
    for a in axes:
        pos = idx[a] if pos is None else pos * shape[a] + idx[a]
    return pos


def arg_extreme(x: Buffer, mx: Buffer, arg: Buffer, axes: Sequence[int], last: bool,
                keepdims: bool = True, tag: str = "arg_") -> Stmt:
    """arg = flat position over `axes` of the first (or last) element equal to mx (the max or
    min already reduced with keepdims), as an index in arg's dtype."""
    miss = Const(-1 if last else int(np.prod([x.shape[a] for a in axes])), arg.dtype)

    def value(i):
        pos = cast(arg.dtype, flat_position(i, axes, x.shape))
        return select(eq(x[i], mx[keep_index(i, axes)]), pos, miss)
    return reduce_axes(arg, x.shape, axes, value, "max" if last else "min", miss,
                       keepdims=keepdims, tag=tag)


@register_op("ArgMax", "ArgMin")
def lower_arg(ctx: OpContext) -> Lowered:
    x, out = input_buffer(ctx, 0, "X"), output_buffer(ctx)
    if not (is_float(x.dtype) or is_int(x.dtype)):
        raise ctx.unsupported(f"input type {x.dtype}")
    axis = normalize_axis(ctx, ctx.attr("axis", 0), len(x.shape))
    op = "max" if ctx.op_type == "ArgMax" else "min"
    ext = temp("Max" if op == "max" else "Min", keep_shape(x.shape, [axis]), x.dtype)
    stage_ext = reduce_axes(ext, x.shape, [axis], lambda i: x[i], op, _identity(op, x.dtype),
                            tag="ext_")
    stage_arg = arg_extreme(x, ext, out, [axis], bool(ctx.attr("select_last_index", 0)),
                            bool(ctx.attr("keepdims", 1)), tag="")
    body = allocate([ext], seq(stage_ext, stage_arg))
    return Lowered(Kernel(ctx.kernel_name(), (x,), (out,), body), [0])


@register_op("CumSum", "CumProd")
def lower_cumulative(ctx: OpContext) -> Lowered:
    """out[.., i, ..] = sum (product) of x[.., j, ..] over j <= i (j < i when exclusive; j >= i,
    j > i in reverse): a reduction over the whole axis, the other terms masked to the identity.
    Quadratic in the axis length, but it is a plain reduction the schedules know."""
    x, out = input_buffer(ctx, 0), output_buffer(ctx)
    axis = normalize_axis(ctx, int(np.asarray(ctx.const(1)).reshape(-1)[0]), len(x.shape))
    exclusive, reverse = ctx.attr("exclusive", 0), ctx.attr("reverse", 0)
    op = "add" if ctx.op_type == "CumSum" else "mul"
    cmp = {(0, 0): le, (1, 0): lt, (0, 1): ge, (1, 1): gt}[(exclusive, reverse)]

    def value(s, r):
        src = tuple(r[0] if d == axis else v for d, v in enumerate(s))
        return select(cmp(r[0], s[axis]), x[src], _identity(op, x.dtype))
    body = reduction(out, out.shape, [x.shape[axis]], lambda s: tuple(s), _identity(op, x.dtype),
                     value, op)
    return Lowered(Kernel(ctx.kernel_name(), (x,), (out,), body), [0])


@register_op("TopK")
def lower_top_k(ctx: OpContext) -> Lowered:
    """The k largest (smallest) along the axis, sorted, ties to the lower index: each element's
    rank is the count of elements before it in that order (a reduction), and output r gathers
    the element of rank r (a second one). Quadratic in the axis length."""
    x, values = input_buffer(ctx, 0, "X"), output_buffer(ctx, 0)
    wants_indices = len(ctx.outputs) > 1  # the importer passes the outputs that are read
    axis = normalize_axis(ctx, ctx.attr("axis", -1), len(x.shape))
    before = gt if ctx.attr("largest", 1) else lt
    n = x.shape[axis]
    rank = temp("Rank", x.shape, "int64")

    def at(s, j):
        return tuple(j if d == axis else v for d, v in enumerate(s))

    def ahead(s, r):  # x[j] comes before x[i] in the order
        xi, xj, j = x[tuple(s)], x[at(s, r[0])], r[0]
        return cast("int64", logical_or(before(xj, xi), logical_and(eq(xj, xi), lt(j, s[axis]))))
    stage_rank = reduction(rank, x.shape, [n], lambda s: tuple(s), 0, ahead, "add", tag="rank_")

    def picked(out, fn):
        def value(s, r):
            hit = eq(rank[at(s, r[0])], cast("int64", s[axis]))
            return select(hit, fn(s, r[0]), _identity("add", out.dtype))
        return reduction(out, out.shape, [n], lambda s: tuple(s), 0, value, "add", tag=out.name + "_")
    outs, stages = [values], [stage_rank, picked(values, lambda s, j: x[at(s, j)])]
    if wants_indices:  # (unsorted output may be in any order: sorted is one)
        outs.append(output_buffer(ctx, 1, "Indices"))
        stages.append(picked(outs[1], lambda s, j: cast("int64", j)))
    body = allocate([rank], seq(*stages))
    return Lowered(Kernel(ctx.kernel_name(), (x,), tuple(outs), body), [0])
