"""QuantizeLinear and DequantizeLinear on integer types: elementwise, the scale and zero point
per tensor (scalars), per axis (1-D along `axis`) or per block (`block_size` along `axis`)."""
from __future__ import annotations

import numpy as np

from ...ir import Const, Kernel, call, cast, is_int, loop_nest, maximum, minimum, store
from .common import input_buffer, normalize_axis, output_buffer
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
    if not is_int(x.dtype):
        raise ctx.unsupported(f"input type {x.dtype}")
    at = _param_index(ctx, scale, len(x.shape))
    params, args = [x, scale], [0, 1]
    zp = input_buffer(ctx, 2, "ZeroPoint") if ctx.has_input(2) else None
    if zp is not None:
        params.append(zp)
        args.append(2)

    def body(*v):
        q = cast(out.dtype, x[v])
        if zp is not None:
            q = q - cast(out.dtype, zp[at(v)])
        return store(out, v, q * cast(out.dtype, scale[at(v)]))
    return Lowered(Kernel(ctx.kernel_name(), tuple(params), (out,), loop_nest(x.shape, body)), args)


@register_op("QuantizeLinear")
def lower_quantize(ctx: OpContext) -> Lowered:
    """y = saturate(round_half_even(x / scale) + zero_point) in the zero point's (or
    output_dtype's, else uint8) integer type."""
    x, scale, out = input_buffer(ctx, 0, "X"), input_buffer(ctx, 1, "Scale"), output_buffer(ctx)
    if not is_int(out.dtype):
        raise ctx.unsupported(f"output type {out.dtype}")
    at = _param_index(ctx, scale, len(x.shape))
    if ctx.attr("precision", 0):
        raise ctx.unsupported("precision")
    info = np.iinfo(np.dtype(out.dtype))
    params, args = [x, scale], [0, 1]
    zp = input_buffer(ctx, 2, "ZeroPoint") if ctx.has_input(2) else None
    if zp is not None:
        params.append(zp)
        args.append(2)
    wide = "float64" if x.dtype == "float64" else "float32"

    def body(*v):
        q = call("round", cast(wide, x[v]) / cast(wide, scale[at(v)]))
        if zp is not None:
            q = q + cast(wide, zp[at(v)])
        q = minimum(maximum(q, Const(float(info.min), wide)), Const(float(info.max), wide))
        return store(out, v, cast(out.dtype, q))
    return Lowered(Kernel(ctx.kernel_name(), tuple(params), (out,), loop_nest(x.shape, body)), args)
