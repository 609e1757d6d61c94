"""Element types TVM does not hold as Nestor means them (ir.dtypes.STORAGE), in TIR.

Each is one byte an element, as ml_dtypes lays out numpy arrays: its bits in the low bits, the
others zero. Sub-byte integers compute in their byte type (sign-extended when signed); narrow
floats (float8, float4) compute in float32, decoded on load and rounded and encoded on store.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import ml_dtypes
from tvm import tirx

from nestor.ir.dtypes import NARROW_FLOATS, STORAGE, bits, storage

# How a format spells NaN and infinity: 'ieee' (all-ones exponent: infinity with a zero mantissa,
# NaN otherwise), 'fn' (no infinity; all ones is NaN), 'fnuz' (no infinity, no negative zero;
# the negative zero's bits are NaN), 'none' (finite only; ml_dtypes writes NaN as -0).
_SPECIALS = {"float8_e4m3fn": "fn", "float8_e4m3fnuz": "fnuz", "float8_e5m2": "ieee",
             "float8_e5m2fnuz": "fnuz", "float4_e2m1fn": "none"}


@dataclass(frozen=True)
class _Format:
    nexp: int          # exponent bits
    nmant: int         # mantissa bits
    minexp: int        # exponent of the smallest normal value
    max: float         # the largest finite value
    quantum: float     # the smallest subnormal value
    specials: str

    @property
    def sign_shift(self) -> int:
        return self.nexp + self.nmant


@cache
def _format(dtype: str) -> _Format:
    info = ml_dtypes.finfo(getattr(ml_dtypes, dtype))
    return _Format(info.nexp, info.nmant, info.minexp, float(info.max), float(info.smallest_subnormal),
                   _SPECIALS[dtype])


def _bound(value, dtype: str, body):
    """body(v) with `value` bound to v once (a Let): the formats' bit arithmetic reads its value
    many times, and nested copies of a whole expression (quantize, round, encode) grew into a
    tree that TVM's simplifier took minutes over."""
    if isinstance(value, (tirx.Var, tirx.IntImm, tirx.FloatImm)):
        return body(value)
    var = tirx.Var("v", dtype)
    return tirx.Let(var, value, body(var))


def value_dtype(dtype: str) -> str:
    """The TVM type that holds a value of `dtype` in a register."""
    return "float32" if dtype in NARROW_FLOATS else storage(dtype)


def loaded(value, dtype: str):
    """A value loaded from memory holding `dtype` (its storage bits), as computed."""
    if dtype in NARROW_FLOATS:
        return _bound(value, storage(dtype), lambda v: _decode(v, _format(dtype)))
    if dtype in STORAGE and not dtype.startswith("u"):
        return narrowed(value, dtype)
    return value


def stored(value, dtype: str):
    """A computed value of `dtype` as memory holds it."""
    if dtype in NARROW_FLOATS:  # rounded, should arithmetic have left more bits; infinity kept
        f = _format(dtype)
        return _bound(value, "float32", lambda v: _bound(tirx.Select(tirx.isinf(v), v, _rounded(v, f)),
                                                         "float32", lambda r: _encode(r, f)))
    if dtype in STORAGE:
        return tirx.bitwise_and(value, _u(dtype, (1 << bits(dtype)) - 1))
    return value


def narrowed(value, dtype: str):
    """`value` (already of value_dtype(dtype)) cut to what `dtype` holds: a sub-byte integer's
    low bits, sign-extended when signed; a narrow float rounded and saturated."""
    if dtype in NARROW_FLOATS:
        return _bound(value, "float32", lambda v: _rounded(v, _format(dtype)))
    if dtype not in STORAGE:
        return value
    if dtype.startswith("u"):
        return tirx.bitwise_and(value, _u(dtype, (1 << bits(dtype)) - 1))
    shift = _u(dtype, 8 - bits(dtype))
    return tirx.shift_right(tirx.shift_left(value, shift), shift)


def _u(dtype: str, n: int):
    return tirx.const(n, storage(dtype))


def _u32(n: int):
    return tirx.const(n, "uint32")


def _f32(x: float):
    return tirx.const(x, "float32")


def _exponent(x):
    """floor(log2(x)) of a finite positive float32 (-127 for 0), from its bits."""
    field = tirx.bitwise_and(tirx.shift_right(tirx.reinterpret("uint32", x), _u32(23)), _u32(255))
    return tirx.Cast("int32", field) - 127


def _power_of_two(e):
    """2**e for an int32 e within float32's normal exponents."""
    return tirx.reinterpret("float32", tirx.shift_left(tirx.Cast("uint32", e + 127), _u32(23)))


def _rounded(x, f: _Format):
    """x rounded to the format's precision, to nearest even, beyond its largest value saturated
    to it; NaN stays NaN. Exact: the quotient by a power of two and its product are."""
    a = tirx.min(tirx.abs(x), _f32(f.max))
    step = _power_of_two(tirx.max(_exponent(a), tirx.const(f.minexp, "int32")) - f.nmant)
    r = tirx.nearbyint(a / step) * step
    return tirx.Select(tirx.isnan(x), x, tirx.Select(tirx.LT(x, _f32(0.0)), -r, r))


def _encode(v, f: _Format):
    """The format's bits (uint8) of a float32 value it represents exactly (or NaN, infinity)."""
    sign = tirx.shift_right(tirx.reinterpret("uint32", v), _u32(31))
    a = tirx.abs(v)
    field = tirx.Cast("uint32", _exponent(a) - (f.minexp - 1))
    mantissa = tirx.bitwise_and(tirx.shift_right(tirx.reinterpret("uint32", a), _u32(23 - f.nmant)),
                                _u32((1 << f.nmant) - 1))
    normal = tirx.bitwise_or(tirx.shift_left(field, _u32(f.nmant)), mantissa)
    subnormal = tirx.Cast("uint32", a / _f32(f.quantum))
    magnitude = tirx.Select(tirx.LT(a, _f32(f.quantum * (1 << f.nmant))), subnormal, normal)
    code = tirx.bitwise_or(tirx.shift_left(sign, _u32(f.sign_shift)), magnitude)
    negative_zero = _u32(1 << f.sign_shift)
    if f.specials == "fnuz":
        code = tirx.Select(tirx.EQ(code, negative_zero), _u32(0), code)
    all_ones = (1 << f.sign_shift) - 1
    nan = {"fn": _u32(all_ones), "ieee": _u32(all_ones - 1), "fnuz": negative_zero,
           "none": negative_zero}[f.specials]
    code = tirx.Select(tirx.isnan(v), nan, code)
    if f.specials == "ieee":
        infinity = tirx.bitwise_or(tirx.shift_left(sign, _u32(f.sign_shift)),
                                   _u32(((1 << f.nexp) - 1) << f.nmant))
        code = tirx.Select(tirx.EQ(a, _f32(float("inf"))), infinity, code)
    return tirx.Cast("uint8", code)


def _decode(b, f: _Format):
    """The float32 value of the format's bits (a uint8)."""
    b = tirx.Cast("uint32", b)
    sign = tirx.bitwise_and(tirx.shift_right(b, _u32(f.sign_shift)), _u32(1))
    field = tirx.bitwise_and(tirx.shift_right(b, _u32(f.nmant)), _u32((1 << f.nexp) - 1))
    mantissa = tirx.bitwise_and(b, _u32((1 << f.nmant) - 1))
    normal = tirx.reinterpret("float32", tirx.bitwise_or(
        tirx.shift_left(field + _u32(f.minexp - 1 + 127), _u32(23)),
        tirx.shift_left(mantissa, _u32(23 - f.nmant))))
    subnormal = tirx.Cast("float32", mantissa) * _f32(f.quantum)
    magnitude = tirx.Select(tirx.EQ(field, _u32(0)), subnormal, normal)
    all_ones_exponent = tirx.EQ(field, _u32((1 << f.nexp) - 1))
    if f.specials == "ieee":
        magnitude = tirx.Select(all_ones_exponent, tirx.Select(tirx.EQ(mantissa, _u32(0)), _f32(float("inf")),
                                                               _f32(float("nan"))), magnitude)
    elif f.specials == "fn":
        nan = tirx.EQ(tirx.bitwise_and(b, _u32((1 << f.sign_shift) - 1)), _u32((1 << f.sign_shift) - 1))
        magnitude = tirx.Select(nan, _f32(float("nan")), magnitude)
    value = tirx.Select(tirx.EQ(sign, _u32(1)), -magnitude, magnitude)
    if f.specials == "fnuz":
        value = tirx.Select(tirx.EQ(b, _u32(1 << f.sign_shift)), _f32(float("nan")), value)
    return value
