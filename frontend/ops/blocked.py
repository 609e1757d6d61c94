"""Ops of Nestor's own domain that the blocked-layout pass (frontend/layout.py) writes.

A blocked tensor holds a logical N, C, spatial... tensor as [N, C/b, spatial..., b]: the b
channels a vector loop walks are adjacent, so a convolution's output channels fill whole
vectors whatever the width of its feature map, and every store is a contiguous vector.

- ConvNCHWc: a group-1 Conv whose output is blocked (its block is the output's last dimension)
  and whose input is blocked (attribute `in_block`) or plain (`in_block` 0: the first conv reads
  the model's 3-channel image).
  Its weights come packed at compile time (`pack_conv_weight`): [M/bo, C/bi, kh, kw, bi, bo] or,
  for a plain input, [M/bo, C, kh, kw, bo], so a reduction step reads one contiguous vector.
- DepthwiseNCHWc: a depthwise Conv (one filter per channel) on a blocked input, its output
  blocked alike: lane l of block c reads lane l of the same input block, so every tap is one
  contiguous vector load whatever the stride (in NCHW a stride-2 row is a gather). Weights
  packed as [C/b, kh, kw, b] (`pack_depthwise_weight`).
- FromNCHWc: back to the plain layout, where a consumer needs it.
Pools, elementwise ops and Concat along the channels need no ops of their own: their lowerings
work on blocked tensors as they are (pools take their spatial dims from kernel_shape).
"""
from __future__ import annotations

import numpy as np

from ...ir import Allocate, Kernel, as_expr, loop_nest, seq, store
from .common import input_buffer, output_buffer
from .nn import _materialize_padding, _padded_load, _require_float, _windows, _with_bias
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


def pack_depthwise_weight(w: np.ndarray, block: int) -> np.ndarray:
    """[C, 1, kh, kw] depthwise weights in DepthwiseNCHWc's layout (see the module doc)."""
    c, _, *taps = w.shape
    blocked = w.reshape(c // block, block, *taps)
    return np.ascontiguousarray(np.moveaxis(blocked, 1, -1))


@register_op(f"{DOMAIN}.ConvNCHWc")
def lower_conv_nchwc(ctx: OpContext) -> Lowered:
    """Y[n, mo, o, mi] = B[mo*bo + mi] + sum over (co, k, ci) of
    X[n, co, o*s + k*d - pad, ci] * W[mo, co, k, ci, mi]; with a plain input, X[n, c, ...] and
    W[mo, c, k, mi]. Reduction loops run channel blocks, taps, then the channels of a block."""
    in_block = ctx.attr("in_block", 0)
    w = input_buffer(ctx, 1, "W")
    taps = w.shape[2:-2] if in_block else w.shape[2:-1]

    def value(x, windows, s, r):
        spatial = s[2:2 + len(taps)]
        if in_block:
            co, k, ci = r[0], r[1:-1], r[-1]
            xv = _padded_load(x, (s[0], co), windows, spatial, k, as_expr(0, x.dtype), (ci,))
            return widen(xv) * widen(w[(s[1], co, *k, ci, s[-1])])
        c, k = r[0], r[1:]
        xv = _padded_load(x, (s[0], c), windows, spatial, k, as_expr(0, x.dtype))
        return widen(xv) * widen(w[(s[1], c, *k, s[-1])])

    channels = input_buffer(ctx, 0, "X").shape[1]
    reduce = (channels, *taps, in_block) if in_block else (channels, *taps)
    return _blocked_window_sum(ctx, "conv", taps, reduce, value)


@register_op(f"{DOMAIN}.DepthwiseNCHWc")
def lower_depthwise_nchwc(ctx: OpContext) -> Lowered:
    """Y[n, c, o, l] = B[c*b + l] + sum over k of X[n, c, o*s + k*d - pad, l] * W[c, k, l]."""
    w = input_buffer(ctx, 1, "W")
    taps = w.shape[1:-1]

    def value(x, windows, s, k):
        xv = _padded_load(x, (s[0], s[1]), windows, s[2:2 + len(taps)], k, as_expr(0, x.dtype), (s[-1],))
        return widen(xv) * widen(w[(s[1], *k, s[-1])])
    return _blocked_window_sum(ctx, "depthwise", taps, taps, value)


def _blocked_window_sum(ctx: OpContext, name: str, taps, reduce, value) -> Lowered:
    """A blocked output (block = its last dim) that sums `value(input, windows, out index,
    reduce index)` over the `reduce` loops, from the optional bias input 2; the input
    zero-padded first where a window reaches outside it."""
    x, w, out = input_buffer(ctx, 0, "X"), input_buffer(ctx, 1, "W"), output_buffer(ctx)
    _require_float(ctx, x)
    nsp = len(taps)
    windows = _windows(ctx, x.shape[2:2 + nsp], taps, out.shape[2:2 + nsp])
    padded, pad_stage, windows = _materialize_padding(x, windows)
    block = out.shape[-1]
    inputs, args, init = _with_bias(ctx, [x, w], lambda idx: idx[1] * block + idx[-1])
    body = reduction(out, out.shape, reduce, lambda s: s, init, lambda s, r: value(padded, windows, s, r), "add")
    if pad_stage is not None:
        body = Allocate(padded, seq(pad_stage, body))
    return Lowered(Kernel(name, tuple(inputs), (out,), body), args)


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
