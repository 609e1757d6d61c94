"""Elementwise ONNX ops: arithmetic, activations, trigonometry, comparisons, logic, bitwise ops,
Where, Cast, Identity.

Every op is one loop nest over the output with numpy broadcasting (`common.elementwise`).
Scalar constants that act as parameters (a Pow exponent, Clip bounds) are baked into the kernel.
"""
from __future__ import annotations

import math
from functools import reduce

import ml_dtypes
import numpy as np

from onnx import helper

from ...ir import (Const, Expr, Kernel, Not, as_expr, bits, bitwise, bitwise_not, call, canonical, cast,
                   eq, ge, gt, is_float, le, logical_and, logical_or, loop_nest, lt, maximum, minimum, ne,
                   select, seq, store)
from ...ir.dtypes import NARROW_FLOATS, STORAGE, int_range, itemsize
from .common import elementwise, input_buffer, output_buffer
from .registry import Alias, Lowered, OpContext, register_op


def _c(x: Expr, value) -> Expr:
    """`value` as a constant of x's dtype."""
    return as_expr(value, x.dtype)


def _trunc(x: Expr) -> Expr:
    return select(lt(x, _c(x, 0)), call("ceil", x), call("floor", x))


def _pow(x: Expr, y: Expr) -> Expr:
    """x ** y in x's dtype; integer powers go through float64 (exact up to 2**53), like numpy's
    power followed by a cast back."""
    if is_float(x.dtype):
        return call("pow", x, cast(x.dtype, y))
    return cast(x.dtype, call("pow", cast("float64", x), cast("float64", y)))


def _fmod(a: Expr, b: Expr) -> Expr:
    """C fmod: the result takes the sign of the dividend (integer `/` truncates already)."""
    q = a / b
    return a - (_trunc(q) if is_float(a.dtype) else q) * b


def _float_fmod(a: Expr, b: Expr) -> Expr:
    """C fmod for floats, with its edge cases: a finite dividend over an infinite divisor is the
    dividend (a - trunc(a/b)*b would be 0*inf = NaN there); inf over anything, anything over 0 and
    NaNs give NaN, which the quotient already does."""
    inf_b = logical_and(eq(call("abs", b), _c(b, math.inf)), ne(call("abs", a), _c(a, math.inf)))
    return select(inf_b, a, _fmod(a, b))


def _float_mod(a: Expr, b: Expr) -> Expr:
    """numpy.mod (Python %) for floats: fmod, moved by one divisor when its sign differs from the
    divisor's; a zero result takes the divisor's sign (as numpy does)."""
    r = _float_fmod(a, b)
    zero = select(lt(b, _c(b, 0)), _c(b, -0.0), _c(b, 0.0))
    moved = select(ne(lt(r, _c(r, 0)), lt(b, _c(b, 0))), r + b, r)
    return select(eq(r, _c(r, 0)), zero, moved)


def _gelu(ctx: OpContext, x: Expr) -> Expr:
    approx = ctx.attr("approximate", "none")
    if approx == "none":
        inner = call("erf", x * (1 / math.sqrt(2)))
    elif approx == "tanh":
        inner = call("tanh", (x + x * x * x * 0.044715) * math.sqrt(2 / math.pi))
    else:
        raise ctx.unsupported(f"approximate='{approx}'")
    return x * 0.5 * (inner + 1)


def _sign(x: Expr) -> Expr:
    return select(gt(x, _c(x, 0)), _c(x, 1), select(lt(x, _c(x, 0)), _c(x, -1), _c(x, 0)))


def _log1p(u: Expr) -> Expr:
    """log(1 + u) for u >= 0, accurate for small u: log(1 + u) loses the low bits of u in the
    rounding of 1 + u, so below a threshold it is the series u - u^2/2 + u^3/3 - ... (8 terms:
    a relative error under the dtype's epsilon there). The usual log(w) * u / (w - 1) trick does
    not survive TVM's simplifier, which folds (u + 1) - 1 to u."""
    threshold = 0.01 if u.dtype == "float64" else 0.1
    series = _c(u, 1 / 8)
    for k in range(7, 0, -1):  # Horner: 1/k - u * (...)
        series = _c(u, 1 / k) - u * series
    return select(lt(u, _c(u, threshold)), u * series, call("log", u + 1))


def _softplus(x: Expr) -> Expr:
    # log(1 + exp(x)) written so that exp never overflows and the small terms stay accurate
    # (numpy's logaddexp(0, x)): max(x, 0) + log1p(exp(-|x|))
    return maximum(x, 0) + _log1p(call("exp", -call("abs", x)))


def _mish(x: Expr) -> Expr:
    """x * tanh(softplus(x)) as x * n / (n + 2) with n = e^x (e^x + 2), an identity
    (tanh(log(1 + e)) = ((1 + e)^2 - 1) / ((1 + e)^2 + 1)) without the cancellation of tanh near
    0; above `big` the fraction is 1 to the dtype's precision (and n would overflow)."""
    big = 5.0 if x.dtype == "float16" else 20.0
    e = call("exp", minimum(x, _c(x, big)))
    n = e * (e + 2)
    return select(gt(x, _c(x, big)), x, x * (n / (n + 2)))


def _is_inf(ctx: OpContext, x: Expr) -> Expr:
    conds = [eq(x, _c(x, v)) for v, flag in ((math.inf, "detect_positive"),
                                             (-math.inf, "detect_negative")) if ctx.attr(flag, 1)]
    return reduce(logical_or, conds) if conds else as_expr(False)


def _selu(ctx: OpContext, x: Expr) -> Expr:
    alpha = ctx.attr("alpha", 1.67326319217681884765625)
    gamma = ctx.attr("gamma", 1.05070102214813232421875)
    return select(gt(x, _c(x, 0)), x, call("exp", x) * alpha - alpha) * gamma


def _atan(x: Expr) -> Expr:
    """atan from TIR's arithmetic (codegen has no atan intrinsic): Cephes' atanf, its argument
    reduced to |x| <= tan(pi/8) by atan(x) = pi/2 - atan(1/x) and pi/4 + atan((x-1)/(x+1));
    within a few float32 ulps (float64 gets float32's accuracy)."""
    a = call("abs", x)
    big, mid = gt(a, _c(a, 2.414213562373095)), gt(a, _c(a, 0.4142135623730950))
    y = select(big, _c(a, -1) / a, select(mid, (a - 1) / (a + 1), a))
    base = select(big, _c(a, math.pi / 2), select(mid, _c(a, math.pi / 4), _c(a, 0)))
    z = y * y
    poly = ((_c(z, 8.05374449538e-2) * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z
    r = base + (poly - 3.33329491539e-1) * z * y + y
    return select(lt(x, _c(x, 0)), -r, r)


def _asin(x: Expr) -> Expr:
    return _atan(x / call("sqrt", (1 - x) * (1 + x)))  # +-1 divides by 0: atan(+-inf) = +-pi/2


def _acos(x: Expr) -> Expr:
    # 2 atan(sqrt((1-x)/(1+x))), not pi/2 - asin(x), which cancels near x = 1
    return _atan(call("sqrt", (1 - x) / (1 + x))) * 2


def _odd(x: Expr, f) -> Expr:
    """f(|x|) with x's sign, for odd functions whose formula is accurate for x >= 0 only."""
    r = f(call("abs", x))
    return select(lt(x, _c(x, 0)), -r, r)


def _sinh(x: Expr) -> Expr:
    # (e^a - e^-a) / 2 cancels below |x| ~ 0.1: there the series x + x^3/6 + x^5/120 + x^7/5040
    def f(a):
        z = a * a
        series = a + a * z * (_c(z, 1 / 6) + z * (_c(z, 1 / 120) + z * (1 / 5040)))
        e = call("exp", a)
        return select(lt(a, _c(a, 0.1)), series, (e - 1 / e) * 0.5)
    return _odd(x, f)


def _beyond_square(a: Expr, small: Expr) -> Expr:
    """`small` (a formula squaring a), or log(2a) above 1e9, where a^2 may overflow and
    a + sqrt(a^2 +- 1) is 2a to float64 precision."""
    return select(gt(a, _c(a, 1e9)), call("log", a) + math.log(2), small)


def _asinh(x: Expr) -> Expr:
    # log(a + sqrt(a^2 + 1)) = log1p(a + a^2 / (1 + sqrt(a^2 + 1))), accurate for small a
    return _odd(x, lambda a: _beyond_square(a, _log1p(a + a * a / (call("sqrt", a * a + 1) + 1))))


def _acosh(x: Expr) -> Expr:
    # log(x + sqrt(x^2 - 1)) as log1p, near x = 1 as well (x - 1 is exact there)
    return _beyond_square(x, _log1p(x - 1 + call("sqrt", (x - 1) * (x + 1))))


def _atanh(x: Expr) -> Expr:
    return _odd(x, lambda a: _log1p(a * 2 / (1 - a)) * 0.5)  # 0.5 log((1 + a) / (1 - a))


def _shrink(ctx: OpContext, x: Expr) -> Expr:
    lambd, bias = ctx.attr("lambd", 0.5), ctx.attr("bias", 0.0)
    return select(lt(x, _c(x, -lambd)), x + _c(x, bias),
                  select(gt(x, _c(x, lambd)), x - _c(x, bias), _c(x, 0)))


# Unary ops: fn(ctx, x) -> expression for one element.
UNARY = {
    "Relu": lambda ctx, x: maximum(x, 0),
    "LeakyRelu": lambda ctx, x: select(lt(x, _c(x, 0)), x * ctx.attr("alpha", 0.01), x),
    "Elu": lambda ctx, x: select(lt(x, _c(x, 0)), (call("exp", x) - 1) * ctx.attr("alpha", 1.0), x),
    "Selu": _selu,
    "Celu": lambda ctx, x: maximum(x, 0) + minimum(
        (call("exp", x / ctx.attr("alpha", 1.0)) - 1) * ctx.attr("alpha", 1.0), 0),
    "HardSigmoid": lambda ctx, x: maximum(
        minimum(x * ctx.attr("alpha", 0.2) + ctx.attr("beta", 0.5), 1), 0),
    "HardSwish": lambda ctx, x: x * maximum(minimum(x * (1 / 6) + 0.5, 1), 0),
    "Sigmoid": lambda ctx, x: call("sigmoid", x),
    "Tanh": lambda ctx, x: call("tanh", x),
    "Erf": lambda ctx, x: call("erf", x),
    "Sqrt": lambda ctx, x: call("sqrt", x),
    "Exp": lambda ctx, x: call("exp", x),
    "Log": lambda ctx, x: call("log", x),
    "Abs": lambda ctx, x: call("abs", x),
    "Neg": lambda ctx, x: -x,
    "Reciprocal": lambda ctx, x: 1 / x,
    "Floor": lambda ctx, x: call("floor", x),
    "Ceil": lambda ctx, x: call("ceil", x),
    "Round": lambda ctx, x: call("round", x),
    "Sign": lambda ctx, x: _sign(x),
    "Softplus": lambda ctx, x: _softplus(x),
    "Softsign": lambda ctx, x: x / (call("abs", x) + 1),
    "Mish": lambda ctx, x: _mish(x),
    "Gelu": _gelu,
    "Not": lambda ctx, x: Not(x),
    "BitwiseNot": lambda ctx, x: bitwise_not(x),
    "IsInf": _is_inf,
    "IsNaN": lambda ctx, x: ne(x, x),
    "Sin": lambda ctx, x: call("sin", x),
    "Cos": lambda ctx, x: call("cos", x),
    "Tan": lambda ctx, x: call("sin", x) / call("cos", x),
    "Atan": lambda ctx, x: _atan(x),
    "Asin": lambda ctx, x: _asin(x),
    "Acos": lambda ctx, x: _acos(x),
    "Sinh": lambda ctx, x: _sinh(x),
    "Cosh": lambda ctx, x: (call("exp", x) + call("exp", -x)) * 0.5,
    "Asinh": lambda ctx, x: _asinh(x),
    "Acosh": lambda ctx, x: _acosh(x),
    "Atanh": lambda ctx, x: _atanh(x),
    "Shrink": _shrink,
    "ThresholdedRelu": lambda ctx, x: select(gt(x, _c(x, ctx.attr("alpha", 1.0))), x, _c(x, 0)),
    "Swish": lambda ctx, x: x * call("sigmoid", x * ctx.attr("alpha", 1.0)),
}

# Binary ops with numpy broadcasting: fn(a, b).
BINARY = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a / b,  # integer division truncates (C), as ONNX wants
    "Equal": eq,
    "Less": lt,
    "LessOrEqual": le,
    "Greater": gt,
    "GreaterOrEqual": ge,
    "And": logical_and,
    "Or": logical_or,
    "Xor": ne,
    "PRelu": lambda x, slope: select(lt(x, _c(x, 0)), x * slope, x),
    "BitwiseAnd": lambda a, b: bitwise("bitand", a, b),
    "BitwiseOr": lambda a, b: bitwise("bitor", a, b),
    "BitwiseXor": lambda a, b: bitwise("bitxor", a, b),
}

# Variadic ops folded left to right.
VARIADIC = {"Max": maximum, "Min": minimum, "Sum": lambda a, b: a + b}


@register_op(*UNARY)
def lower_unary(ctx: OpContext):
    fn = UNARY[ctx.op_type]
    return elementwise(ctx, lambda x: fn(ctx, x), args=[0])


@register_op(*BINARY)
def lower_binary(ctx: OpContext):
    return elementwise(ctx, BINARY[ctx.op_type], args=[0, 1])


@register_op(*VARIADIC)
def lower_variadic(ctx: OpContext):
    return elementwise(ctx, lambda *xs: reduce(VARIADIC[ctx.op_type], xs))


@register_op("BitShift")
def lower_bit_shift(ctx: OpContext):
    direction = ctx.attr("direction")
    if direction not in ("LEFT", "RIGHT"):
        raise ctx.unsupported(f"direction {direction!r} (expected 'LEFT' or 'RIGHT')")
    op = "shl" if direction == "LEFT" else "shr"

    def shift(x, y):
        # a shift by a negative amount or by the bit width or more (undefined in C) shifts every
        # bit out: 0, or the sign in every bit for a right shift of a signed integer
        width = bits(x.dtype)
        in_range = logical_and(ge(y, _c(y, 0)), lt(y, _c(y, width)))
        if op == "shr" and not x.dtype.startswith("u"):
            return bitwise(op, x, select(in_range, y, _c(y, width - 1)))
        return select(in_range, bitwise(op, x, y), _c(x, 0))
    return elementwise(ctx, shift, args=[0, 1])


@register_op("Mean")
def lower_mean(ctx: OpContext):
    return elementwise(ctx, lambda *xs: reduce(lambda a, b: a + b, xs) / len(xs))


@register_op("Mod")
def lower_mod(ctx: OpContext):
    # fmod=0 is the sign of the divisor (Python), which the IR's `mod` is for integers; floats
    # spell it out to get numpy's results on infinities, zeros and NaNs
    if is_float(ctx.inputs[0].dtype):
        fn = _float_fmod if ctx.attr("fmod", 0) else _float_mod
    else:
        fn = _fmod if ctx.attr("fmod", 0) else (lambda a, b: a % b)
    return elementwise(ctx, fn, args=[0, 1])


@register_op("Where")
def lower_where(ctx: OpContext):
    return elementwise(ctx, select, args=[0, 1, 2])


@register_op("Pow")
def lower_pow(ctx: OpContext):
    exponent = ctx.inputs[1].value
    broadcasts = tuple(ctx.outputs[0].shape) != tuple(ctx.inputs[0].shape)
    if exponent is None or exponent.size != 1 or broadcasts:
        return elementwise(ctx, _pow, args=[0, 1])
    e = exponent.item()
    if e in (2, 3, 4):  # GPT-2's GELU has x ** 3: multiplications, not exp(3 log|x|) with its sign fix
        return elementwise(ctx, lambda x: _product([x] * int(e)), args=[0])
    if e == 0.5 and is_float(ctx.inputs[0].dtype):
        return elementwise(ctx, lambda x: call("sqrt", x), args=[0])
    return elementwise(ctx, lambda x: _pow(x, as_expr(e, "float64")), args=[0])


def _product(factors: list[Expr]) -> Expr:
    out = factors[0]
    for f in factors[1:]:
        out = out * f
    return out


def _clip_bound(ctx: OpContext, i: int, x: Expr, loaded: dict) -> Expr | None:
    """Clip's min (i=1) or max (i=2): an attribute before opset 11, then an optional input that
    is baked in when constant and otherwise loaded from its buffer."""
    if i in loaded:
        return loaded[i]
    if ctx.opset < 11:
        value = ctx.attrs.get(("min", "max")[i - 1])
    else:
        value = ctx.const(i)
        value = None if value is None else value.item()
    return None if value is None else _c(x, value)


@register_op("Clip")
def lower_clip(ctx: OpContext):
    buffers = [i for i in (1, 2) if ctx.opset >= 11 and ctx.has_input(i)
               and ctx.inputs[i].value is None]

    def fn(x, *vals):
        loaded = dict(zip(buffers, vals))
        lo, hi = (_clip_bound(ctx, i, x, loaded) for i in (1, 2))
        x = x if lo is None else maximum(x, lo)
        return x if hi is None else minimum(x, hi)
    return elementwise(ctx, fn, args=[0] + buffers)


def _target_dtype(ctx: OpContext) -> str:
    if ctx.op_type == "CastLike":
        return ctx.inputs[1].dtype
    to = ctx.attr("to")
    try:
        return canonical(helper.tensor_dtype_to_np_dtype(to))
    except (ValueError, KeyError, TypeError):
        raise ctx.unsupported(f"cast to {helper.tensor_dtype_to_string(to)}") from None


@register_op("Cast", "CastLike")
def lower_cast(ctx: OpContext):
    # The IR's casts are ONNX's: float -> int truncates toward zero, x -> bool is x != 0.
    dtype = _target_dtype(ctx)
    if dtype in NARROW_FLOATS and not ctx.attr("saturate", 1) and is_float(ctx.inputs[0].dtype):
        return elementwise(ctx, lambda x: _overflowing(x, dtype), args=[0])
    if dtype in STORAGE and is_float(ctx.inputs[0].dtype) and dtype not in NARROW_FLOATS:
        return elementwise(ctx, lambda x: _float_to_sub_byte(x, dtype), args=[0])
    return elementwise(ctx, lambda x: cast(dtype, x), args=[0])


def _overflowing(x: Expr, dtype: str) -> Expr:
    """A cast to a narrow float without saturation: a value that rounds beyond the largest finite
    one (to nearest even: a tie goes up when that one's mantissa is odd) becomes infinity where
    the format has it, else NaN."""
    np_type = getattr(ml_dtypes, dtype)
    info = ml_dtypes.finfo(np_type)
    largest = float(info.max)
    mantissa = int(np.array(largest, np_type).view(np.uint8)) & ((1 << info.nmant) - 1)
    bound = _c(x, largest + 2.0 ** (math.floor(math.log2(largest)) - info.nmant - 1))
    beyond = ge(call("abs", x), bound) if mantissa & 1 else gt(call("abs", x), bound)
    if np.isinf(np.array(np.inf, np.float32).astype(np_type).astype(np.float32)):
        special = select(lt(x, _c(x, 0)), Const(-math.inf, dtype), Const(math.inf, dtype))
    else:
        special = Const(math.nan, dtype)
    return select(beyond, special, cast(dtype, x))


def _float_to_sub_byte(x: Expr, dtype: str) -> Expr:
    """A float cast to a sub-byte integer: truncated toward zero, and 0 where that is out of
    the type's range or x is NaN (ONNX leaves it undefined; this is what its reference, through
    ml_dtypes, gives)."""
    lo, hi = int_range(dtype)
    in_range = logical_and(gt(x, _c(x, lo - 1)), lt(x, _c(x, hi + 1)))
    return select(in_range, cast(dtype, x), Const(0, dtype))


@register_op("Identity")
def lower_identity(ctx: OpContext):
    return Alias(0)


@register_op("BitCast")
def lower_bit_cast(ctx: OpContext):
    """The input's bytes read as the output's type: a view, no kernel."""
    src, dst = ctx.inputs[0].dtype, ctx.outputs[0].dtype
    if itemsize(src) != itemsize(dst) or bits(src) != bits(dst):
        raise ctx.unsupported(f"{src} and {dst} differ in width")
    return Alias(0)


@register_op("Dropout")
def lower_dropout(ctx: OpContext):
    training = ctx.opset >= 12 and ctx.has_input(2) and bool(ctx.const(2).item())
    if training and float(ctx.const(1, 0.5)) != 0:  # with ratio 0, training drops nothing
        raise ctx.unsupported("training_mode=True is not supported")
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        return _identity_with_mask(ctx)
    return Alias(0)


def _identity_with_mask(ctx: OpContext) -> Lowered:
    """Inference-mode Dropout asked for its mask: Out = X, and the mask keeps every element."""
    x, out, mask = input_buffer(ctx, 0), output_buffer(ctx, 0), output_buffer(ctx, 1, "Mask")
    body = loop_nest(x.shape, lambda *v: seq(store(out, v, x[v] if v else x[()]),
                                             store(mask, v, Const(True, "bool"))))
    return Lowered(Kernel(ctx.kernel_name(), (x,), (out, mask), body), [0])
