"""Ops of Nestor's own domain that the blocked-layout pass (frontend/layout.py) writes.

A blocked tensor holds a logical N, C, spatial... tensor as [N, C/b, spatial..., b]: the b
channels a vector loop walks are adjacent, so a convolution's output channels fill whole
vectors whatever the width of its feature map, and every store is a contiguous vector.

- ConvNCHWc: a group-1 Conv whose output is blocked (its block is the output's last dimension)
  and whose input is blocked (attribute `in_block`) or plain (`in_block` 0: the first conv reads
  the model's 3-channel image).
  Its weights come packed at compile time (`pack_conv_weight`): [M/bo, C/bi, kh, kw, bi, bo] or,
  for a plain input, [M/bo, C, kh, kw, bo], so a reduction step reads one contiguous vector.
- FromNCHWc: back to the plain layout, where a consumer needs it.
Pools, elementwise ops and Concat along the channels need no ops of their own: their lowerings
work on blocked tensors as they are (pools take their spatial dims from kernel_shape).
"""
from __future__ import annotations

import numpy as np

from ...ir import Allocate, Kernel, as_expr, loop_nest, seq, store
from .common import input_buffer, output_buffer
from .nn import _materialize_padding, _padded_load, _require_float, _windows
from .reduce import reduction, widen
from .registry import NESTOR_DOMAIN as DOMAIN, Lowered, OpContext, register_op


def pack_conv_weight(w: np.ndarray, in_block: int, out_block: int) -> np.ndarray:
    """OIHW weights in ConvNCHWc's layout (see the module doc)."""
    m, c = w.shape[:2]
    taps = w.shape[2:]
    if in_block:
        blocked = w.reshape(m // out_block, out_block, c // in_block, in_block, *taps)
        order = (0, 2, *range(4, 4 + len(taps)), 3, 1)
    else:
        blocked = w.reshape(m // out_block, out_block, c, *taps)
        order = (0, 2, *range(3, 3 + len(taps)), 1)
    return np.ascontiguousarray(blocked.transpose(order))


@register_op(f"{DOMAIN}.ConvNCHWc")
def lower_conv_nchwc(ctx: OpContext) -> Lowered:
    """Y[n, mo, o, mi] = B[mo*bo + mi] + sum over (co, k, ci) of
    X[n, co, o*s + k*d - pad, ci] * W[mo, co, k, ci, mi]; with a plain input, X[n, c, ...] and
    W[mo, c, k, mi]. Reduction loops run channel blocks, taps, then the channels of a block."""
    x, w, out = input_buffer(ctx, 0, "X"), input_buffer(ctx, 1, "W"), output_buffer(ctx)
    _require_float(ctx, x)
    in_block = ctx.attr("in_block", 0)
    taps = w.shape[2:-2] if in_block else w.shape[2:-1]
    nsp = len(taps)
    windows = _windows(ctx, x.shape[2:2 + nsp], taps, out.shape[2:2 + nsp])
    padded, pad_stage, windows = _materialize_padding(x, windows)
    out_block = out.shape[-1]
    zero = as_expr(0, x.dtype)

    def value(s, r):
        spatial = s[2:2 + nsp]
        if in_block:
            co, k, ci = r[0], r[1:-1], r[-1]
            xv = _padded_load(padded, (s[0], co), windows, spatial, k, zero, (ci,))
            return widen(xv) * widen(w[(s[1], co, *k, ci, s[-1])])
        c, k = r[0], r[1:]
        xv = _padded_load(padded, (s[0], c), windows, spatial, k, zero)
        return widen(xv) * widen(w[(s[1], c, *k, s[-1])])

    reduce = (x.shape[1], *taps, in_block) if in_block else (x.shape[1], *taps)
    inputs, args, init = [x, w], [0, 1], 0
    if ctx.has_input(2):
        b = input_buffer(ctx, 2, "B")
        inputs.append(b)
        args.append(2)
        init = lambda idx: b[idx[1] * out_block + idx[-1]]  # noqa: E731
    body = reduction(out, out.shape, reduce, lambda s: s, init, value, "add")
    if pad_stage is not None:
        body = Allocate(padded, seq(pad_stage, body))
    return Lowered(Kernel("conv", tuple(inputs), (out,), body), args)


@register_op(f"{DOMAIN}.FromNCHWc")
def lower_from_nchwc(ctx: OpContext) -> Lowered:
    """Y[n, co*b + ci, s...] = X[n, co, s..., ci], looping (n, co, ci, s...): contiguous stores
    along the last spatial dim."""
    x, out = input_buffer(ctx, 0, "X"), output_buffer(ctx)
    b = x.shape[-1]
    extents = (x.shape[0], x.shape[1], b, *x.shape[2:-1])

    def body(n, co, ci, *s):
        return store(out, (n, co * b + ci, *s), x[(n, co, *s, ci)])
    return Lowered(Kernel("from_nchwc", (x,), (out,), loop_nest(extents, body)), [0])
