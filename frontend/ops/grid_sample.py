"""GridSample (2-D and 3-D; nearest, linear, cubic; zeros, border, reflection padding), as
onnx.reference computes it: each output point's grid coordinates are denormalized per input
dim, moved inside the borders (clamped or reflected), and the output is the sum over the taps
of every dim (1 nearest, 2 linear, 4 cubic) of the weights' product times the padded pixel."""
from __future__ import annotations

import itertools

from ...ir import (Const, Kernel, as_expr, call, cast, ge, gt, logical_and, logical_or, loop_nest,
                   lt, maximum, minimum, select, store)
from .common import input_buffer, output_buffer
from .registry import Lowered, OpContext, register_op

CUBIC_A = -0.75


def _reflect(v, lo: float, hi: float):
    """v folded back between lo and hi by its nearest border, as many times as it takes."""
    c = lambda x: as_expr(x, v.dtype)  # noqa: E731
    span = c(hi - lo)

    def fold(dx):  # r past the border after n whole spans; whether n is even
        n = call("floor", dx / span)
        return dx - n * span, lt(n - call("floor", n * 0.5) * 2, c(0.5))
    r_lo, even_lo = fold(c(lo) - v)
    r_hi, even_hi = fold(v - c(hi))
    return select(lt(v, c(lo)), select(even_lo, c(lo) + r_lo, c(hi) - r_lo),
                  select(gt(v, c(hi)), select(even_hi, c(hi) - r_hi, c(lo) + r_hi), v))


def _cubic_weights(t):
    a = CUBIC_A
    def far(u):
        return ((u * a - 5 * a) * u + 8 * a) * u - 4 * a
    def near(u):
        return (u * (a + 2) - (a + 3)) * u * u + 1
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


@register_op("GridSample")
def lower_grid_sample(ctx: OpContext) -> Lowered:
    x, grid, out = input_buffer(ctx, 0, "X"), input_buffer(ctx, 1, "Grid"), output_buffer(ctx)
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(ctx.attr("mode", "linear"), ctx.attr("mode", "linear"))
    padding, aligned = ctx.attr("padding_mode", "zeros"), bool(ctx.attr("align_corners", 0))
    if mode not in ("nearest", "linear", "cubic") or padding not in ("zeros", "border", "reflection"):
        raise ctx.unsupported(f"mode={mode}, padding_mode={padding}")
    dims = x.shape[2:]
    nd = len(dims)
    lo = [0.0 if aligned else -0.5 for _ in dims]
    hi = [d - 1.0 if aligned else d - 0.5 for d in dims]

    def body(*v):
        n, spatial = v[0], v[2:]
        taps_per_dim = []
        for i, d in enumerate(dims):
            g = grid[(n, *spatial, as_expr(nd - 1 - i))]  # the grid lists x (last dim) first
            f = (g + 1) * 0.5 * (d - 1) if aligned else ((g + 1) * d - 1) * 0.5
            if mode == "nearest":
                f = call("round", f)  # half to even, as PyTorch
            outside = logical_or(lt(f, as_expr(lo[i], f.dtype)), gt(f, as_expr(hi[i], f.dtype)))
            if padding == "border":
                f = select(outside, minimum(maximum(f, as_expr(0.0, f.dtype)), as_expr(d - 1.0, f.dtype)), f)
            elif padding == "reflection":
                f = _reflect(f, lo[i], hi[i])
            if mode == "nearest":
                taps_per_dim.append([(cast("int64", f), None)])
                continue
            base = call("floor", f)
            t = f - base
            first = cast("int64", base) - (1 if mode == "cubic" else 0)
            weights = [1 - t, t] if mode == "linear" else _cubic_weights(t)
            taps_per_dim.append([(first + k, w) for k, w in enumerate(weights)])
        total = None
        for combo in itertools.product(*taps_per_dim):
            term = _pixel(x, v[:2], [i for i, _ in combo], dims, padding, lo, hi)
            for _, w in combo:
                term = term if w is None else term * w
            total = term if total is None else total + term
        return store(out, v, total)
    kernel = Kernel(ctx.kernel_name(), (x, grid), (out,), loop_nest(out.shape, body))
    return Lowered(kernel, [0, 1])


def _pixel(x, lead, index, dims, padding, lo, hi):
    """x[lead, index] with the padding rule for indices outside the input."""
    inside = []
    fixed = []
    for i, d, a, b in zip(index, dims, lo, hi):
        if padding == "reflection":
            i = cast("int64", _reflect(cast(x.dtype, i), a, b))
        elif padding == "zeros":
            inside += [ge(i, as_expr(0, "int64")), lt(i, as_expr(d, "int64"))]
        fixed.append(minimum(maximum(i, as_expr(0, "int64")), as_expr(d - 1, "int64")))
    value = x[(*lead, *fixed)]
    return select(logical_and(*inside), value, Const(0.0, x.dtype)) if inside else value
