"""Winograd F(2x2, 3x3) convolution in three kernels (the layout pass writes them: frontend/winograd.py).

A 3x3, stride-1 convolution computes each 2x2 output tile from a 4x4 input tile with 16
multiplications a channel pair instead of 36: V = B^T d B (input tile transform), M = V . U
for each of the 16 tile positions (U = G g G^T, the weights transformed at compile time: a
batched matmul over the channels), Y = A^T M A (output tile transform). The input transform
writes each value as its 4 signed terms; the output transform is a dense linear map
(`output_transform_matrix`, a constant input): 16 multiply-adds an output value, a few percent
of the matmul's.

- WinogradInput: X blocked [N=1, C/b, H, W, b] -> V [16, T, C] with T = (H/2)(W/2) tiles, rows
  of tiles first; the input is zero-padded by one pixel on every side.
- WinogradOutput: M [16, T, K] (and the bias) -> Y blocked [1, K/b, H, W, b].
"""
from __future__ import annotations

import numpy as np

from ...ir import Allocate, Kernel, as_expr, loop_nest, seq, store
from .common import input_buffer, output_buffer
from .nn import _materialize_padding, _require_float, _Window
from .reduce import reduction
from .registry import NESTOR_DOMAIN as DOMAIN, Lowered, OpContext, register_op

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def input_transform_matrix() -> np.ndarray:
    """[16, 16]: V[e] = sum over p of Bm[e, p] d[p], e and p row-major over 4x4 tiles."""
    return np.kron(_BT, _BT).astype(np.float32)


def output_transform_matrix() -> np.ndarray:
    """[4, 16]: Y[q] = sum over e of Am[q, e] M[e], q row-major over the 2x2 output tile."""
    return np.kron(_AT, _AT).astype(np.float32)


def transform_weights(w: np.ndarray) -> np.ndarray:
    """OIHW 3x3 weights [K, C, 3, 3] -> U [16, C, K] (G g G^T per channel pair)."""
    u = np.einsum("ai,kcij,bj->abck", _G, w.astype(np.float64), _G)
    return np.ascontiguousarray(u.reshape(16, w.shape[1], w.shape[0])).astype(np.float32)


@register_op(f"{DOMAIN}.WinogradInput")
def lower_winograd_input(ctx: OpContext) -> Lowered:
    """V[e, ty*Tw + tx, cb*b + ci] = sum over (i, j) of Bm[e, 4i + j] *
    Xpad[0, cb, 2ty + i, 2tx + j, ci], Xpad = X with a zero border of one pixel. Each of the 16
    values is written out as its 4 signed terms (Bm's other 12 entries a row are zeros)."""
    x, out = input_buffer(ctx, 0, "X"), output_buffer(ctx)
    _require_float(ctx, x)
    _, cb, h, w, b = x.shape
    th, tw = h // 2, w // 2
    # 4x4 windows at stride 2 from one pixel before the input: a copy with a one-pixel border
    windows = [_Window(h, 4, 2, 1, 1, 1, th), _Window(w, 4, 2, 1, 1, 1, tw)]
    padded, pad_stage, _ = _materialize_padding(x, windows)
    bm = input_transform_matrix()

    def tile(ty, tx, c, ci):
        d = lambda p: padded[0, c, ty * 2 + p // 4, tx * 2 + p % 4, ci]  # noqa: E731
        stores = []
        for e in range(16):
            terms = [(bm[e, p], d(p)) for p in range(16) if bm[e, p]]
            value = terms[0][1] if terms[0][0] > 0 else as_expr(0, x.dtype) - terms[0][1]
            for sign, load in terms[1:]:
                value = value + load if sign > 0 else value - load
            stores.append(store(out, (e, ty * tw + tx, c * b + ci), value))
        return seq(*stores)
    body = loop_nest((th, tw, cb, b), tile)
    return Lowered(Kernel("winograd_input", (x,), (out,), Allocate(padded, seq(pad_stage, body))), [0])


@register_op(f"{DOMAIN}.WinogradOutput")
def lower_winograd_output(ctx: OpContext) -> Lowered:
    """Y[0, kb, 2ty + dy, 2tx + dx, ki] = B[kb*b + ki] + sum over e of
    Am[2dy + dx, e] * M[e, ty*Tw + tx, kb*b + ki]."""
    m, am, out = input_buffer(ctx, 0, "M"), input_buffer(ctx, 1, "Am"), output_buffer(ctx)
    _, kb, h, w, b = out.shape
    th, tw = h // 2, w // 2
    inputs, args, init = [m, am], [0, 1], 0
    if ctx.has_input(2):
        bias = input_buffer(ctx, 2, "B")
        inputs.append(bias)
        args.append(2)
        init = lambda idx: bias[idx[1] * b + idx[4]]  # noqa: E731

    def value(s, r):
        k, ty, dy, tx, dx, ki = s
        return am[dy * 2 + dx, r[0]] * m[r[0], ty * tw + tx, k * b + ki]
    body = reduction(out, (kb, th, 2, tw, 2, b), (16,),
                     lambda s: (0, s[0], s[1] * 2 + s[2], s[3] * 2 + s[4], s[5]), init, value, "add")
    return Lowered(Kernel("winograd_output", tuple(inputs), (out,), body), args)
