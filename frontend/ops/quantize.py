"""QuantizeLinear and DequantizeLinear on integer types, elementwise, the scale and zero point
per tensor (scalars), per axis (1-D along `axis`) or per block (`block_size` along `axis`);
QLinearMatMul with per-tensor scales."""
from __future__ import annotations

from ...ir import Const, Kernel, call, cast, is_int, loop_nest, maximum, minimum, seq, store
from ...ir.dtypes import NARROW_FLOATS, int_range
from .common import broadcast_index, input_buffer, normalize_axis, output_buffer
from .reduce import allocate, reduction, temp
from .registry import Lowered, OpContext, register_op


def _param_index(ctx: OpContext, param, x_rank: int):
    """Where scale / zero point is read for the output index v."""
    if not param.shape or param.shape == (1,):
        return lambda v: (Const(0),) * len(param.shape)
    axis = normalize_axis(ctx, ctx.attr("axis", 1), x_rank)
    if len(param.shape) == 1:
        return lambda v: (v[axis],)
    block = ctx.attr("block_size", 0)
    if not block:
        raise ctx.unsupported(f"a scale of shape {list(param.shape)} needs block_size")
    return lambda v: tuple(i // block if d == axis else i for d, i in enumerate(v))


@register_op("DequantizeLinear")
def lower_dequantize(ctx: OpContext) -> Lowered:
    """y = (x - zero_point) * scale, in the scale's dtype."""
    x, scale, out = input_buffer(ctx, 0, "X"), input_buffer(ctx, 1, "Scale"), output_buffer(ctx)
    if not (is_int(x.dtype) or x.dtype in NARROW_FLOATS):
        raise ctx.unsupported(f"input type {x.dtype}")
    at = _param_index(ctx, scale, len(x.shape))
    params, args = [x, scale], [0, 1]
    zp = input_buffer(ctx, 2, "ZeroPoint") if ctx.has_input(2) else None
    if zp is not None:
        params.append(zp)
        args.append(2)
        zp_at = _param_index(ctx, zp, len(x.shape))

    def body(*v):
        q = cast(out.dtype, x[v])
        if zp is not None:
            q = q - cast(out.dtype, zp[zp_at(v)])
        return store(out, v, q * cast(out.dtype, scale[at(v)]))
    return Lowered(Kernel(ctx.kernel_name(), tuple(params), (out,), loop_nest(x.shape, body)), args)


@register_op("QuantizeLinear")
def lower_quantize(ctx: OpContext) -> Lowered:
    """y = saturate(round_half_even(x / scale) + zero_point) in the zero point's (or
    output_dtype's, else uint8) integer type."""
    x, scale, out = input_buffer(ctx, 0, "X"), input_buffer(ctx, 1, "Scale"), output_buffer(ctx)
    if not (is_int(out.dtype) or out.dtype in NARROW_FLOATS):
        raise ctx.unsupported(f"output type {out.dtype}")
    at = _param_index(ctx, scale, len(x.shape))
    if ctx.attr("precision", 0):
        raise ctx.unsupported("precision")
    if out.dtype in NARROW_FLOATS and not ctx.attr("saturate", 1):
        raise ctx.unsupported("saturate=0")
    params, args = [x, scale], [0, 1]
    zp = input_buffer(ctx, 2, "ZeroPoint") if ctx.has_input(2) else None
    if zp is not None:
        params.append(zp)
        args.append(2)
        zp_at = _param_index(ctx, zp, len(x.shape))
    wide = "float64" if x.dtype == "float64" else "float32"

    def body(*v):
        q = cast(wide, x[v]) / cast(wide, scale[at(v)])
        if out.dtype in NARROW_FLOATS:  # the cast rounds and saturates (ONNX's saturate=1)
            return store(out, v, cast(out.dtype, q if zp is None else q + cast(wide, zp[zp_at(v)])))
        q = call("round", q)
        if zp is not None:
            q = q + cast(wide, zp[zp_at(v)])
        lo, hi = int_range(out.dtype)
        q = minimum(maximum(q, Const(float(lo), wide)), Const(float(hi), wide))
        return store(out, v, cast(out.dtype, q))
    return Lowered(Kernel(ctx.kernel_name(), tuple(params), (out,), loop_nest(x.shape, body)), args)


@register_op("QLinearMatMul")
def lower_qlinear_matmul(ctx: OpContext) -> Lowered:
    """y = saturate(rint((a - a_zp) @ (b - b_zp) * a_scale * b_scale / y_scale) + y_zp), as
    onnx.reference: the product in int32, the rescaling in float64; per-tensor scales."""
    names = ("A", "AScale", "AZero", "B", "BScale", "BZero", "YScale", "YZero")
    bufs = [input_buffer(ctx, i, n) for i, n in enumerate(names)]
    a, a_s, a_z, b, b_s, b_z, y_s, y_z = bufs
    out = output_buffer(ctx)
    if len(a.shape) < 2 or len(b.shape) < 2 or any(p.size != 1 for p in (a_s, a_z, b_s, b_z, y_s, y_z)):
        raise ctx.unsupported("per-row or per-column scales, or a 1-D operand")
    acc = temp("Acc", out.shape, "int32")
    one = lambda p: p[(Const(0),) * len(p.shape)]  # noqa: E731
    i32 = lambda v: cast("int32", v)  # noqa: E731

    def value(s, r):
        *batch, i, j = s
        av = a[broadcast_index(a.shape[:-2], batch) + (i, r[0])]
        bv = b[broadcast_index(b.shape[:-2], batch) + (r[0], j)]
        return (i32(av) - i32(one(a_z))) * (i32(bv) - i32(one(b_z)))
    product = reduction(acc, out.shape, [a.shape[-1]], lambda s: tuple(s), 0, value, "add")
    lo, hi = int_range(out.dtype)
    f64 = lambda v: cast("float64", v)  # noqa: E731
    scale = f64(one(a_s)) * f64(one(b_s)) / f64(one(y_s))

    def requantize(*v):
        q = call("round", f64(acc[v]) * scale + f64(one(y_z)))
        q = minimum(maximum(q, Const(float(lo), "float64")), Const(float(hi), "float64"))
        return store(out, v, cast(out.dtype, q))
    body = allocate([acc], seq(product, loop_nest(out.shape, requantize)))
    return Lowered(Kernel(ctx.kernel_name(), tuple(bufs), (out,), body), list(range(8)))
