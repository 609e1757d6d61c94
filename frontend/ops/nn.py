"""Neural-network ops: Conv, pooling, normalizations, LRN, Softmax / LogSoftmax / Hardmax."""
from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...ir import (INDEX, Allocate, Buffer, Expr, Kernel, Stmt, Var, as_expr, call, cast, eq, ge,
                   is_float, is_int, logical_and, loop_nest, lt, maximum, minimum, select, seq,
                   store)
from .common import broadcast_index, input_buffer, normalize_axis, output_buffer
from .reduce import (allocate, arg_extreme, flat_position, keep_index, keep_shape, lowest,
                     reduce_axes, reduction, square, temp, widen)
from .registry import NESTOR_DOMAIN, Lowered, OpContext, register_op


def _requested(ctx: OpContext, i: int) -> bool:
    return i < len(ctx.node.output) and ctx.node.output[i] != ""


def _requested_output(ctx: OpContext, i: int, name: str) -> Buffer:
    """The buffer of node output i, counting only the outputs the node asks for (the
    importer's ctx.outputs lists those alone; the op harness puts None for the others)."""
    infos = [o for o in ctx.outputs if o is not None]
    info = infos[sum(_requested(ctx, j) for j in range(i))]
    return Buffer(name, tuple(info.shape), info.dtype)


def _group(ctx: OpContext, channels: int) -> int:
    """The `group` attribute, a divisor of the `channels` it splits."""
    group = ctx.attr("group", 1)
    if group < 1 or channels % group:
        raise ctx.unsupported(f"group {group} does not divide its {channels} channels")
    return group


def _require_float(ctx: OpContext, buf: Buffer):
    if not is_float(buf.dtype):
        raise ctx.unsupported(f"input type {buf.dtype}")


# -- sliding windows (Conv, MaxPool, AveragePool) --------------------------------------------

@dataclass(frozen=True)
class _Window:
    """One spatial dim of a sliding window: output o reads input o*stride + k*dilation - begin
    for taps k < kernel; positions outside [0, size) are padding."""
    size: int
    kernel: int
    stride: int
    dilation: int
    begin: int
    end: int
    out: int

    def pos(self, o: Expr, k: Expr | None = None) -> Expr:
        p = o if self.stride == 1 else o * self.stride
        if k is not None:
            p = p + (k if self.dilation == 1 else k * self.dilation)
        return p - self.begin if self.begin else p

    @property
    def first(self) -> int:
        return -self.begin

    @property
    def last(self) -> int:
        return (self.out - 1) * self.stride + (self.kernel - 1) * self.dilation - self.begin

    def inside(self, pos: Expr) -> list[Expr]:
        """Conditions for 0 <= pos < size, leaving out those no output and tap can break."""
        low = [ge(pos, 0)] if self.first < 0 else []
        return low + ([lt(pos, self.size)] if self.last >= self.size else [])

    def count(self, o: Expr, lo: int, hi: int) -> Expr | int:
        """How many taps of window o fall in [lo, hi): the AveragePool divisor."""
        if self.first >= lo and self.last < hi:
            return self.kernel
        base, d = self.pos(o), self.dilation
        k_lo = k_hi = None
        if self.first < lo:  # first tap inside: ceil((lo - base) / d), at least 0
            k_lo = maximum((as_expr(lo + d - 1) - base) // d if d > 1 else lo - base, 0)
        if self.last >= hi:  # last tap inside: floor((hi - 1 - base) / d), at most kernel-1
            k_hi = minimum((as_expr(hi - 1) - base) // d if d > 1 else hi - 1 - base,
                           self.kernel - 1)
        if k_lo is None:
            return k_hi + 1
        return (self.kernel - k_lo) if k_hi is None else k_hi - k_lo + 1


def _windows(ctx: OpContext, sizes, kernel, outs) -> list[_Window]:
    """Windows from strides, dilations and pads / auto_pad (SAME_* pads split the total as
    ONNX says: the extra one at the end for SAME_UPPER, at the beginning for SAME_LOWER)."""
    n = len(sizes)
    strides = list(ctx.attr("strides", None) or [1] * n)
    dilations = list(ctx.attr("dilations", None) or [1] * n)
    auto_pad = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto_pad == "NOTSET":
        pads = list(ctx.attr("pads", None) or [0] * 2 * n)
        begins, ends = pads[:n], pads[n:]
    elif auto_pad == "VALID":
        begins = ends = [0] * n
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [max(0, (o - 1) * s + (k - 1) * d + 1 - i)
                  for i, k, s, d, o in zip(sizes, kernel, strides, dilations, outs)]
        small = [t // 2 for t in totals]
        big = [t - t // 2 for t in totals]
        begins, ends = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    else:
        raise ctx.unsupported(f"auto_pad={auto_pad}")
    return [_Window(*args) for args in zip(sizes, kernel, strides, dilations, begins, ends, outs)]


def _padded_load(x: Buffer, lead: Sequence[Expr], windows, outs, taps, pad_value,
                 trail: Sequence[Expr] = ()) -> Expr:
    """x[lead..., window positions, trail...], or pad_value where a position is padding (Select
    is lazy: the load is not evaluated there). `trail`: a blocked layout's channel lane."""
    positions = [w.pos(o, k) for w, o, k in zip(windows, outs, taps)]
    conds = [c for w, p in zip(windows, positions) for c in w.inside(p)]
    value = x[(*lead, *positions, *trail)]
    return select(logical_and(*conds), value, pad_value) if conds else value


@register_op("Conv")
def lower_conv(ctx: OpContext) -> Lowered:
    """Y[n, m, o] = B[m] + sum over (c, k) of X[n, g*Cg + c, o*s + k*d - pad] * W[m, c, k],
    with g = m // Mg; grouped convs loop over (g, m within group) so indices stay affine."""
    x, w, out = input_buffer(ctx, 0, "X"), input_buffer(ctx, 1, "W"), output_buffer(ctx)
    _require_float(ctx, x)
    nsp = len(x.shape) - 2
    windows = _windows(ctx, x.shape[2:], w.shape[2:], out.shape[2:])
    group = _group(ctx, out.shape[1])
    m_per_group, c_per_group = out.shape[1] // group, w.shape[1]
    grouped = group > 1
    spatial = ((out.shape[0], group, m_per_group) if grouped else out.shape[:2]) + out.shape[2:]

    def index(s):
        return (s[0], s[1] * m_per_group + s[2], *s[3:]) if grouped else s

    padded, pad_stage, windows = _materialize_padding(x, windows)

    def value(s, r):
        c, taps = r[0], r[1:]
        channel = s[1] * c_per_group + c if grouped else c
        xv = _padded_load(padded, (s[0], channel), windows, s[-nsp:], taps, as_expr(0, x.dtype))
        return widen(xv) * widen(w[(index(s)[1], c, *taps)])

    inputs, args, init = _with_bias(ctx, [x, w])
    body = reduction(out, spatial, (c_per_group, *w.shape[2:]), index, init, value, "add")
    if pad_stage is not None:
        body = Allocate(padded, seq(pad_stage, body))
    return Lowered(Kernel(ctx.kernel_name(), tuple(inputs), (out,), body), args)


@register_op("ConvTranspose")
def lower_conv_transpose(ctx: OpContext) -> Lowered:
    """Y[n, m, o] = B[m] + sum over (c, k) of X[n, g*Cg + c, i] * W[g*Cg + c, m - g*Mg, k] for
    the i with i*s + k*d - pad = o: the taps where (o + pad - k*d) is a multiple of the stride
    inside the input (the gradient of Conv, gathered per output instead of scattered)."""
    x, w, out = input_buffer(ctx, 0, "X"), input_buffer(ctx, 1, "W"), output_buffer(ctx)
    _require_float(ctx, x)
    n, sizes, kernel = len(x.shape) - 2, x.shape[2:], w.shape[2:]
    strides = list(ctx.attr("strides", None) or [1] * n)
    dilations = list(ctx.attr("dilations", None) or [1] * n)
    begins = _transpose_pads(ctx, sizes, kernel, strides, dilations)
    group = _group(ctx, x.shape[1])
    c_per_group, m_per_group = x.shape[1] // group, w.shape[1]

    # Kernel no wider than the stride, no dilation (a UNet's k = s = 2 upsampling): each output
    # point has one tap per dim at most, its phase (o + pad) % s, and the reduction runs over
    # channels alone instead of masking out all taps but one.
    phased = all(d == 1 and k <= st and b >= 0 for d, k, st, b in zip(dilations, kernel, strides, begins))

    def value(s, r):
        c, taps = r[0], r[1:]
        channel = s[1] // m_per_group * c_per_group + c
        if phased:
            ts = [o + b for o, b in zip(s[2:], begins)]
            taps = [t % st if st > 1 else as_expr(0) for t, st in zip(ts, strides)]
            pos = [t // st if st > 1 else t for t, st in zip(ts, strides)]
            conds = [lt(t, k) for t, k, st in zip(taps, kernel, strides) if k < st]
            conds += [lt(p, n) for p, n, last, b, st in zip(pos, sizes, out.shape[2:], begins, strides)
                      if (last - 1 + b) // st >= n]
        else:
            ts = [o + b - k * d for o, b, k, d in zip(s[2:], begins, taps, dilations)]
            conds, pos = _strided_taps(ts, strides, sizes)
        term = widen(x[(s[0], channel, *pos)]) * widen(w[(channel, s[1] % m_per_group, *taps)])
        return select(logical_and(*conds), term, as_expr(0, term.dtype)) if conds else term

    inputs, args, init = _with_bias(ctx, [x, w])
    body = reduction(out, out.shape, (c_per_group,) + (() if phased else tuple(kernel)), lambda s: tuple(s),
                     init, value, "add")
    return Lowered(Kernel(ctx.kernel_name(), tuple(inputs), (out,), body), args)


@register_op("Col2Im")
def lower_col2im(ctx: OpContext) -> Lowered:
    """Y[n, c, p] = sum over block offsets k of X[n, c*B + flat(k), flat(l)] for the block
    positions l with l*s + k*d - pad = p (the sliding blocks that cover p), as ConvTranspose."""
    x, out = input_buffer(ctx, 0, "X"), output_buffer(ctx)
    image, block = [int(v) for v in ctx.const(1)], [int(v) for v in ctx.const(2)]
    n = len(image)
    strides = list(ctx.attr("strides", None) or [1] * n)
    dilations = list(ctx.attr("dilations", None) or [1] * n)
    pads = list(ctx.attr("pads", None) or [0] * 2 * n)
    counts = [(i + pads[d] + pads[d + n] - dl * (b - 1) - 1) // s + 1
              for d, (i, b, s, dl) in enumerate(zip(image, block, strides, dilations))]

    def value(sp, r):
        ts = [p + pad - k * dl for p, pad, k, dl in zip(sp[2:], pads[:n], r, dilations)]
        conds, pos = _strided_taps(ts, strides, counts)
        channel = sp[1] * math.prod(block) + flat_position(r, range(n), block)
        return select(logical_and(*conds), x[(sp[0], channel, flat_position(pos, range(n), counts))], as_expr(0, x.dtype))
    body = reduction(out, out.shape, block, lambda sp: tuple(sp), 0, value, "add")
    return Lowered(Kernel(ctx.kernel_name(), (x,), (out,), body), [0])


def _transpose_pads(ctx: OpContext, sizes, kernel, strides, dilations) -> list[int]:
    """The leading pads of a ConvTranspose: given, or for SAME_* split from the total that makes
    the output output_shape (default: input * stride), as onnx.reference does."""
    n = len(sizes)
    auto_pad = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    pads = ctx.attr("pads", None)
    if pads is not None or auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return list(pads or [0] * 2 * n)[:n]
    outs = list(ctx.attr("output_shape", None) or [i * s for i, s in zip(sizes, strides)])[-n:]
    extra = list(ctx.attr("output_padding", None) or [0] * n)
    totals = [s * (i - 1) + e + (k - 1) * d + 1 - o
              for i, k, s, d, o, e in zip(sizes, kernel, strides, dilations, outs, extra)]
    return [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]


def _with_bias(ctx: OpContext, inputs: list, channel=lambda idx: idx[1]):
    """A conv's kernel inputs, their node input indices, and the accumulator's start: the
    optional bias B (input 2) at the output channel `channel(output index)`, else 0."""
    if not ctx.has_input(2):
        return inputs, [0, 1], 0
    b = input_buffer(ctx, 2, "B")
    return inputs + [b], [0, 1, 2], lambda idx: b[channel(idx)]


def _strided_taps(ts, strides, counts):
    """For offsets t = p + pad - k*d of the output points from a tap: the conditions that t
    lands on one of `counts` input positions a stride apart, and those positions."""
    conds = [c for t, st, cnt in zip(ts, strides, counts)
             for c in ((ge(t, 0), lt(t, st * cnt)) + ((eq(t % st, 0),) if st > 1 else ()))]
    return conds, [t // st if st > 1 else t for t, st in zip(ts, strides)]


def _materialize_padding(x: Buffer, windows):
    """A zero-padded copy of the input when any window reaches outside it (TOPI's pad_temp):
    the conv's hot loop then reads in-bounds, contiguous data with no per-tap condition, which
    vectorizes (a lane-dependent lazy select does not). Returns (buffer to read, the stage that
    fills it or None, windows over that buffer). Dimensions after the windows' (a blocked
    layout's channel lane) are copied as they are."""
    if not any(w.first < 0 or w.last >= w.size for w in windows):
        return x, None, windows
    nsp = len(windows)
    sizes = [w.begin + max(w.size, w.last + 1) for w in windows]
    padded = Buffer(f"{x.name}_pad", (*x.shape[:2], *sizes, *x.shape[2 + nsp:]), x.dtype)

    def fill(*v):
        src = [p - w.begin if w.begin else p for p, w in zip(v[2:2 + nsp], windows)]
        conds = [c for w, p in zip(windows, src) for c in w.inside(p)]
        value = x[(*v[:2], *src, *v[2 + nsp:])]
        return store(padded, v, select(logical_and(*conds), value, as_expr(0, x.dtype)) if conds else value)

    stage = loop_nest(padded.shape, fill, prefix="p")
    inner = [_Window(size, w.kernel, w.stride, w.dilation, 0, 0, w.out) for size, w in zip(sizes, windows)]
    return padded, stage, inner


@register_op("MaxPool", "AveragePool", "LpPool")
def lower_pool(ctx: OpContext) -> Lowered:
    """A window reduction per output; padding is -inf (MaxPool) or 0 (AveragePool, LpPool), the
    average divides by the taps inside the input (or inside the padded input when
    count_include_pad), LpPool sums |x|^p and takes the p-th root."""
    x, out = input_buffer(ctx, 0, "X"), output_buffer(ctx)
    if ctx.op_type == "LpPool":
        return _lp_pool(ctx, x, out)
    is_max = ctx.op_type == "MaxPool"
    if not (is_float(x.dtype) or (is_max and is_int(x.dtype))):
        raise ctx.unsupported(f"input type {x.dtype}")
    kernel = ctx.attr("kernel_shape")
    if not kernel:
        raise ctx.unsupported("missing kernel_shape")
    nsp = len(kernel)  # fewer than the input's dims after N, C: NCHW<b>c (frontend/layout.py)
    windows = _windows(ctx, x.shape[2:2 + nsp], kernel, out.shape[2:2 + nsp])
    pad = lowest(x.dtype) if is_max else as_expr(0, x.dtype)

    def value(s, taps):
        return _padded_load(x, s[:2], windows, s[2:2 + nsp], taps, pad, s[2 + nsp:])

    finalize = None if is_max else _average_divisor(ctx, windows, x.dtype)
    body = reduction(out, out.shape, kernel, lambda s: s, pad, value,
                     "max" if is_max else "add", finalize)
    outputs = [out]
    if is_max and _requested(ctx, 1):
        indices = _requested_output(ctx, 1, "Indices")
        outputs.append(indices)
        body = seq(body, _maxpool_indices(ctx, x, out, indices, windows, kernel))
    return Lowered(Kernel(ctx.kernel_name(), (x,), tuple(outputs), body), [0])


def _lp_pool(ctx: OpContext, x: Buffer, out: Buffer) -> Lowered:
    _require_float(ctx, x)
    kernel, p = ctx.attr("kernel_shape"), ctx.attr("p", 2)
    windows = _windows(ctx, x.shape[2:], kernel, out.shape[2:])
    zero = as_expr(0, x.dtype)

    def value(s, taps):
        return _lp_term(_padded_load(x, s[:2], windows, s[2:], taps, zero), p)
    body = reduction(out, out.shape, kernel, lambda s: s, zero, value, "add",
                     lambda acc, idx: _lp_root(acc, p))
    return Lowered(Kernel(ctx.kernel_name(), (x,), (out,), body), [0])


def _lp_term(v: Expr, p) -> Expr:
    return square(v) if p == 2 else call("abs", v) if p == 1 else call("pow", call("abs", v), as_expr(p, v.dtype))


def _lp_root(v: Expr, p) -> Expr:
    return call("sqrt", v) if p == 2 else v if p == 1 else call("pow", v, as_expr(1 / p, v.dtype))


@register_op("LpNormalization")
def lower_lp_normalization(ctx: OpContext) -> Lowered:
    """Y = X / ||X||_p along the axis (p = 1 or 2), 0 where the norm is 0 (as onnx.reference)."""
    x, out = input_buffer(ctx, 0, "X"), output_buffer(ctx)
    _require_float(ctx, x)
    axis, p = normalize_axis(ctx, ctx.attr("axis", -1), len(x.shape)), ctx.attr("p", 2)
    if p not in (1, 2):
        raise ctx.unsupported(f"p={p}")
    norm = temp("Norm", keep_shape(x.shape, [axis]), x.dtype)
    stage = reduce_axes(norm, x.shape, [axis], lambda i: _lp_term(x[i], p), "add", 0,
                        lambda acc, idx: _lp_root(acc, p), tag="norm_")

    def divide(*v: Var):
        n = norm[keep_index(v, [axis])]
        return store(out, v, select(eq(n, as_expr(0, n.dtype)), as_expr(0, x.dtype), x[v] / n))
    body = allocate([norm], seq(stage, loop_nest(x.shape, divide)))
    return Lowered(Kernel(ctx.kernel_name(), (x,), (out,), body), [0])


def _maxpool_indices(ctx: OpContext, x: Buffer, out: Buffer, indices: Buffer, windows,
                     kernel) -> Stmt:
    """MaxPool's Indices: the flat index into X (batch and channel included) of the first tap,
    in window order, that holds the max. Window order is row-major over the positions, so the
    first such tap is the one with the smallest row-major index; storage_order=1 then rewrites
    that index column-major over the spatial dims (as onnx.reference does: n, c stay outer)."""
    storage_order = ctx.attr("storage_order", 0)
    if storage_order not in (0, 1):
        raise ctx.unsupported(f"storage_order={storage_order}")
    dt = indices.dtype
    sizes = x.shape[2:]
    spatial = int(np.prod(sizes))
    row = [int(np.prod(sizes[k + 1:])) for k in range(len(sizes))]   # row-major strides
    col = [int(np.prod(sizes[:k])) for k in range(len(sizes))]       # column-major strides
    miss = as_expr(int(np.prod(x.shape)), dt)                        # beyond every index

    def base(s):
        return (cast(dt, s[0]) * x.shape[1] + cast(dt, s[1])) * spatial

    def value(s, taps):
        positions = [w.pos(o, k) for w, o, k in zip(windows, s[2:], taps)]
        flat = base(s)
        for p, stride in zip(positions, row):
            flat = flat + cast(dt, p) * stride
        conds = [c for w, p in zip(windows, positions) for c in w.inside(p)]
        hit = select(eq(x[(*s[:2], *positions)], out[s]), flat, miss)  # lazy: no padded load
        return select(logical_and(*conds), hit, miss) if conds else hit

    finalize = None
    if storage_order == 1 and len(sizes) > 1:
        def finalize(acc, idx):
            b = base(idx)
            rel, res = acc - b, b
            for n, r, c in zip(sizes, row, col):
                res = res + (rel // r) % n * c
            return select(eq(acc, miss), acc, res)
    return reduction(indices, out.shape, kernel, lambda s: s, miss, value, "min", finalize,
                     tag="idx_")


def _average_divisor(ctx: OpContext, windows, dtype: str):
    include_pad = bool(ctx.attr("count_include_pad", 0))

    def finalize(acc, idx):
        counts = [w.count(o, *((-w.begin, w.size + w.end) if include_pad else (0, w.size)))
                  for w, o in zip(windows, idx[2:])]
        total = functools.reduce(operator.mul, counts)  # an int when no window is clipped
        return acc / (total if isinstance(total, int) else cast(dtype, total))
    return finalize


@register_op("GlobalAveragePool", "GlobalMaxPool", f"{NESTOR_DOMAIN}.GlobalAveragePoolNCHWc",
             f"{NESTOR_DOMAIN}.GlobalMaxPoolNCHWc")
def lower_global_pool(ctx: OpContext) -> Lowered:
    """Over every spatial dim; the NCHWc forms (frontend/layout.py) keep the channel lane last."""
    x, out = input_buffer(ctx, 0, "X"), output_buffer(ctx)
    _require_float(ctx, x)
    spatial = x.shape[2:-1] if ctx.op_type.endswith("NCHWc") else x.shape[2:]
    axes = list(range(2, 2 + len(spatial)))
    if ctx.op_type.startswith("GlobalMaxPool"):
        body = reduce_axes(out, x.shape, axes, lambda i: x[i], "max", lowest(x.dtype))
    else:
        count = int(np.prod(spatial))
        body = reduce_axes(out, x.shape, axes, lambda i: x[i], "add", 0,
                           lambda acc, idx: acc / count)
    return Lowered(Kernel(ctx.kernel_name(), (x,), (out,), body), [0])


# -- normalizations ---------------------------------------------------------------------------

@register_op("BatchNormalization")
def lower_batchnorm(ctx: OpContext) -> Lowered:
    """Inference form: Y = scale * (X - mean) / sqrt(var + epsilon) + B, per channel (dim 1)."""
    if ctx.attr("training_mode", 0):
        raise ctx.unsupported("training_mode=1")
    if any(_requested(ctx, i) for i in range(1, 5)):
        raise ctx.unsupported("the training outputs (running / saved mean and variance)")
    x, out = input_buffer(ctx, 0, "X"), output_buffer(ctx)
    _require_float(ctx, x)
    if len(x.shape) < 2:
        raise ctx.unsupported("input of rank < 2")
    scale, b, mean, var = (input_buffer(ctx, i, n) for i, n in
                           enumerate(("Scale", "B", "Mean", "Var"), start=1))
    eps = as_expr(ctx.attr("epsilon", 1e-5), x.dtype)

    def body(*v: Var):
        p = lambda buf: cast(x.dtype, buf[v[1]])  # noqa: E731  (T1/T2 may differ from T)
        return store(out, v, p(scale) * (x[v] - p(mean)) / call("sqrt", p(var) + eps) + p(b))

    kernel = Kernel(ctx.kernel_name(), (x, scale, b, mean, var), (out,), loop_nest(x.shape, body))
    return Lowered(kernel, [0, 1, 2, 3, 4])


@register_op("InstanceNormalization")
def lower_instancenorm(ctx: OpContext) -> Lowered:
    """Y = scale * (X - mean) / sqrt(var + epsilon) + B with mean and (biased) variance over the
    spatial dims of each (n, c): a mean stage, a variance stage, then the elementwise stage."""
    x, scale, b = (input_buffer(ctx, i, n) for i, n in enumerate(("X", "Scale", "B")))
    out = output_buffer(ctx)
    _require_float(ctx, x)
    eps = as_expr(ctx.attr("epsilon", 1e-5), x.dtype)
    axes = list(range(2, len(x.shape)))
    count = int(np.prod(x.shape[2:]))
    mean, var = temp("Mean", x.shape[:2], x.dtype), temp("Var", x.shape[:2], x.dtype)
    average = lambda acc, idx: acc / count  # noqa: E731
    stage_mean = reduce_axes(mean, x.shape, axes, lambda i: x[i], "add", 0, average,
                             keepdims=False, tag="mean_")
    stage_var = reduce_axes(var, x.shape, axes, lambda i: square(x[i] - mean[i[:2]]), "add",
                            0, average, keepdims=False, tag="var_")

    def normalize(*v: Var):
        c = v[:2]
        return store(out, v, scale[v[1]] * (x[v] - mean[c]) / call("sqrt", var[c] + eps) + b[v[1]])

    body = allocate([mean, var], seq(stage_mean, stage_var, loop_nest(x.shape, normalize)))
    return Lowered(Kernel(ctx.kernel_name(), (x, scale, b), (out,), body), [0, 1, 2])


@register_op("LayerNormalization")
def lower_layernorm(ctx: OpContext) -> Lowered:
    """Normalizes over dims axis.. : Y = (X - Mean) * InvStdDev * Scale + B, with Scale and B
    broadcast to X. Mean and InvStdDev are outputs when requested, else intermediates."""
    x, scale, out = input_buffer(ctx, 0, "X"), input_buffer(ctx, 1, "Scale"), output_buffer(ctx)
    _require_float(ctx, x)
    if ctx.attr("stash_type", 1) != 1:
        raise ctx.unsupported(f"stash_type={ctx.attr('stash_type')}")
    rank = len(x.shape)
    axis = normalize_axis(ctx, ctx.attr("axis", -1), rank)
    axes = list(range(axis, rank))
    count = int(np.prod(x.shape[axis:]))
    eps = as_expr(ctx.attr("epsilon", 1e-5), x.dtype)
    stats, outputs = [], [out]
    for i, name in ((1, "Mean"), (2, "InvStdDev")):
        if _requested(ctx, i):
            stats.append(_requested_output(ctx, i, name))
            outputs.append(stats[-1])
            if stats[-1].dtype != x.dtype:
                raise ctx.unsupported(f"{name} of type {stats[-1].dtype} for input {x.dtype}")
        else:
            stats.append(temp(name, keep_shape(x.shape, axes), x.dtype))
    mean, inv = stats

    stage_mean = reduce_axes(mean, x.shape, axes, lambda i: x[i], "add", 0,
                             lambda acc, idx: acc / count, tag="mean_")
    stage_inv = reduce_axes(inv, x.shape, axes,
                            lambda i: square(x[i] - mean[keep_index(i, axes)]), "add", 0,
                            lambda acc, idx: 1 / call("sqrt", acc / count + eps), tag="var_")
    inputs, args = [x, scale], [0, 1]
    b = None
    if ctx.has_input(2):
        b = input_buffer(ctx, 2, "B")
        inputs.append(b)
        args.append(2)

    def normalize(*v: Var):
        k = keep_index(v, axes)
        y = (x[v] - mean[k]) * inv[k] * scale[broadcast_index(scale.shape, v)]
        return store(out, v, y + b[broadcast_index(b.shape, v)] if b is not None else y)

    temps = [s for s in stats if s not in outputs]
    body = allocate(temps, seq(stage_mean, stage_inv, loop_nest(x.shape, normalize)))
    return Lowered(Kernel(ctx.kernel_name(), tuple(inputs), tuple(outputs), body), args)


@register_op("LRN")
def lower_lrn(ctx: OpContext) -> Lowered:
    """Y = X / (bias + alpha / size * sum of X^2 over channels c - (size-1)//2 ..
    c + ceil((size-1)/2))^beta; the sum accumulates in Y itself."""
    x, out = input_buffer(ctx, 0, "X"), output_buffer(ctx)
    _require_float(ctx, x)
    size = ctx.attr("size")
    if not size:
        raise ctx.unsupported("missing size")
    alpha, beta, bias = (as_expr(ctx.attr(n, d), x.dtype) for n, d in
                         (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)))
    before, channels = (size - 1) // 2, x.shape[1]

    def value(s, r):
        pos = s[1] + r[0] - before if before else s[1] + r[0]
        conds = [ge(pos, 0)] if before else []
        conds += [lt(pos, channels)] if size - 1 > before else []
        v = x[(s[0], pos, *s[2:])]
        return select(logical_and(*conds), v * v, as_expr(0, x.dtype)) if conds else v * v

    def finalize(acc, idx):
        return x[idx] / call("pow", bias + alpha / as_expr(size, x.dtype) * acc, beta)

    body = reduction(out, out.shape, [size], lambda s: s, 0, value, "add", finalize)
    return Lowered(Kernel(ctx.kernel_name(), (x,), (out,), body), [0])


# -- softmax family ---------------------------------------------------------------------------

@register_op("Softmax", "LogSoftmax", "Hardmax")
def lower_softmax(ctx: OpContext) -> Lowered:
    """Over `axis` (opset >= 13, default -1) or over all dims from `axis` on (older opsets,
    the input coerced to 2-D, default 1). Stages: max, then sum of exp(x - max) (Softmax,
    LogSoftmax) or the first position of the max (Hardmax), then the elementwise result.
    On a CPU, Softmax keeps exp(x - max) in a temporary, summed then divided, so each exp is
    computed once: there a vector exp costs far more than the extra store and load, which the
    row rule keeps in cache (it merges the stages per row). On a GPU exp is one special-function
    instruction and memory traffic is the cost: it is computed twice."""
    x, out = input_buffer(ctx, 0, "X"), output_buffer(ctx)
    _require_float(ctx, x)
    rank = len(x.shape)
    axis = normalize_axis(ctx, ctx.attr("axis", -1 if ctx.opset >= 13 else 1), rank)
    axes = [axis] if ctx.opset >= 13 else list(range(axis, rank))
    reduced = keep_shape(x.shape, axes)
    mx = temp("Max", reduced, x.dtype)
    stage_max = reduce_axes(mx, x.shape, axes, lambda i: x[i], "max", lowest(x.dtype), tag="max_")

    def k(v):
        return keep_index(v, axes)

    if ctx.op_type == "Hardmax":
        mid = temp("Arg", reduced, INDEX)
        temps = [mx, mid]
        stage = arg_extreme(x, mx, mid, axes, last=False)

        def result(v):
            first = eq(flat_position(v, axes, x.shape), mid[k(v)])
            return select(first, as_expr(1, x.dtype), as_expr(0, x.dtype))
    elif ctx.op_type == "Softmax" and not ctx.gpu:
        mid, ex = temp("Sum", reduced, x.dtype), temp("Exp", x.shape, x.dtype)
        temps = [mx, mid, ex]
        stage_exp = loop_nest(x.shape, lambda *v: store(ex, v, call("exp", x[v] - mx[k(v)])))
        stage = seq(stage_exp, reduce_axes(mid, x.shape, axes, lambda i: ex[i], "add", 0, tag="sum_"))

        def result(v):
            return ex[v] / mid[k(v)]
    else:
        mid = temp("Sum", reduced, x.dtype)
        temps = [mx, mid]
        stage = reduce_axes(mid, x.shape, axes, lambda i: call("exp", x[i] - mx[k(i)]), "add", 0,
                            tag="sum_")

        def result(v):
            if ctx.op_type == "Softmax":
                return call("exp", x[v] - mx[k(v)]) / mid[k(v)]
            return x[v] - mx[k(v)] - call("log", mid[k(v)])

    final = loop_nest(x.shape, lambda *v: store(out, v, result(v)))
    body = allocate(temps, seq(stage_max, stage, final))
    return Lowered(Kernel(ctx.kernel_name(), (x,), (out,), body), [0])
