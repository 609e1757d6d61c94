"""Matrix products: Gemm and MatMul (numpy matmul semantics), Einsum; Det of small matrices."""
from __future__ import annotations

from ...ir import Kernel, as_expr, loop_nest, store
from .common import broadcast_index, input_buffer, output_buffer
from .reduce import reduction, widen
from .registry import Lowered, OpContext, register_op


def _scaled(value, factor: float):
    return value if factor == 1 else as_expr(factor, value.dtype) * value


@register_op("Gemm")
def lower_gemm(ctx: OpContext) -> Lowered:
    """Y = alpha * A' B' + beta * C, with C (optional) broadcast to Y; the accumulator starts
    at beta * C."""
    a, b, out = input_buffer(ctx, 0, "A"), input_buffer(ctx, 1, "B"), output_buffer(ctx)
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    k_extent = a.shape[0] if trans_a else a.shape[1]
    args, inputs = [0, 1], [a, b]
    if ctx.has_input(2):
        c = input_buffer(ctx, 2, "C")
        args.append(2)
        inputs.append(c)
        init = lambda idx: _scaled(c[broadcast_index(c.shape, idx)], beta)  # noqa: E731
    else:
        init = 0

    def value(s, r):
        (i, j), (k,) = s, r
        return _scaled(widen(a[(k, i) if trans_a else (i, k)]) * widen(b[(j, k) if trans_b else (k, j)]),
                       alpha)

    body = reduction(out, out.shape, [k_extent], lambda s: s, init, value, "add")
    return Lowered(Kernel(ctx.kernel_name(), tuple(inputs), (out,), body), args)


@register_op("MatMul")
def lower_matmul(ctx: OpContext) -> Lowered:
    """Batched matmul with broadcast batch dims; a 1-D operand is a row (A) or column (B)
    vector whose unit dim is dropped from the output."""
    a, b, out = input_buffer(ctx, 0, "A"), input_buffer(ctx, 1, "B"), output_buffer(ctx)
    if len(a.shape) == 0 or len(b.shape) == 0:
        raise ctx.unsupported("scalar operand")
    a_mat, b_mat = len(a.shape) >= 2, len(b.shape) >= 2
    k_extent = a.shape[-1]

    def value(s, r):
        s, (k,) = list(s), r
        j = s.pop() if b_mat else None
        i = s.pop() if a_mat else None
        a_idx = broadcast_index(a.shape[:-2], s) + (i, k) if a_mat else (k,)
        b_idx = broadcast_index(b.shape[:-2], s) + (k, j) if b_mat else (k,)
        return widen(a[a_idx]) * widen(b[b_idx])

    body = reduction(out, out.shape, [k_extent], lambda s: s, 0, value, "add")
    return Lowered(Kernel(ctx.kernel_name(), (a, b), (out,), body), [0, 1])


@register_op("Einsum")
def lower_einsum(ctx: OpContext) -> Lowered:
    """out[output letters] = sum over the other letters of the product of the operands, each
    indexed by its letters (a repeated letter reads a diagonal); '...' stands for the leading
    dims an operand has beyond its letters. No "->": the letters used once, sorted."""
    operands = [input_buffer(ctx, i) for i in range(len(ctx.inputs))]
    out = output_buffer(ctx)
    terms, arrow, result = ctx.attr("equation").replace(" ", "").partition("->")
    terms = terms.split(",")
    ellipsis = max((len(b.shape) - len(t.replace("...", "")) for b, t in zip(operands, terms)
                    if "..." in t), default=0)
    dots = "".join(chr(ord("A") + k) for k in range(ellipsis))  # upper case: unused by ONNX
    letters = [t.replace("...", dots[ellipsis - (len(b.shape) - len(t.replace("...", ""))):])
               for b, t in zip(operands, terms)]
    if not arrow:
        used = "".join(letters)
        result = dots + "".join(sorted(c for c in set(used) - set(dots) if used.count(c) == 1))
    result = result.replace("...", dots)
    sizes = {c: n for b, t in zip(operands, letters) for c, n in zip(t, b.shape)}
    summed = sorted(set(sizes) - set(result))
    if len(result) != len(out.shape):
        raise ctx.unsupported(f"equation {ctx.attr('equation')!r}")

    def value(s, r):
        where = dict(zip(result, s)) | dict(zip(summed, r))
        product = None
        for b, t in zip(operands, letters):
            v = b[tuple(where[c] for c in t)]
            v = widen(v) if summed else v  # float16 products summed in float32
            product = v if product is None else product * v
        return product
    body = reduction(out, out.shape, [sizes[c] for c in summed], lambda s: tuple(s), 0, value, "add")
    return Lowered(Kernel(ctx.kernel_name(), tuple(operands), (out,), body), list(range(len(operands))))


MAX_DET_ORDER = 4  # Laplace expansion: n! products, 24 at order 4


@register_op("Det")
def lower_det(ctx: OpContext) -> Lowered:
    """The determinant of each trailing n x n matrix, by Laplace expansion along the first row
    (small matrices only: its cost grows as n!)."""
    a, out = input_buffer(ctx, 0, "A"), output_buffer(ctx)
    if len(a.shape) < 2 or a.shape[-2] != a.shape[-1]:
        raise ctx.unsupported(f"input of shape {list(a.shape)} is not a batch of square matrices")
    n = a.shape[-1]
    if not 1 <= n <= MAX_DET_ORDER:
        raise ctx.unsupported(f"a {n} x {n} matrix (at most {MAX_DET_ORDER} x {MAX_DET_ORDER})")

    def body(*batch):
        def det(rows: tuple[int, ...], cols: tuple[int, ...]):
            if len(rows) == 1:
                return a[(*batch, as_expr(rows[0]), as_expr(cols[0]))]
            total = None
            for k, c in enumerate(cols):
                term = a[(*batch, as_expr(rows[0]), as_expr(c))] * det(rows[1:], cols[:k] + cols[k + 1:])
                total = term if total is None else (total - term if k % 2 else total + term)
            return total
        return store(out, batch, det(tuple(range(n)), tuple(range(n))))
    return Lowered(Kernel(ctx.kernel_name(), (a,), (out,), loop_nest(out.shape, body)), [0])
