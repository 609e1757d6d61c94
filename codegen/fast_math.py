"""float32 exp, sigmoid, tanh, erf and pow as plain TIR arithmetic, so that vector loops stay vector.

TVM lowers `tirx.exp` & co. to LLVM intrinsics that x86 has no vector form of: LLVM splits a
16-lane exp into 16 calls of libm's expf (measured here: a vectorized exp over 128×3072 floats
ran 23× slower than a multiply). These are the polynomial and rational approximations of TVM's
own topi `fast_exp` / `fast_tanh` / `fast_erf` (Cephes' exp, Eigen's tanh and erf), within a few
float32 ulp of libm, plus what those leave out: NaN in gives NaN out, exp(±inf) is inf / 0.
"""
from __future__ import annotations

from tvm import tirx

F32 = "float32"


def _c(value: float):
    return tirx.const(value, F32)


def _poly(x, coefficients):
    """Horner's rule, highest power first."""
    acc = _c(coefficients[0])
    for c in coefficients[1:]:
        acc = acc * x + _c(c)
    return acc


def _keep_nan(x, result):
    return tirx.Select(tirx.isnan(x), x, result)


def fast_exp(x):
    clamped = tirx.Max(tirx.Min(x, _c(88.3762626647950)), _c(-88.3762626647949))
    n = tirx.floor(clamped * _c(1.44269504088896341) + _c(0.5))     # x = n ln2 + f, |f| <= ln2 / 2
    f = clamped - n * _c(0.693147180559945)
    y = _poly(f, (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                  1.6666665459e-1, 5.0000001201e-1)) * f * f + f + _c(1.0)
    two_n = tirx.reinterpret(F32, tirx.shift_left(tirx.Cast("int32", n + _c(127.0)), tirx.const(23, "int32")))
    # clamped at -88.38 the exponent field is 0: exp(-inf) = 0; at +88.38 it is 255: +inf
    return _keep_nan(x, two_n * y)


def fast_sigmoid(x):
    return _c(1.0) / (_c(1.0) + fast_exp(-x))


def fast_tanh(x):
    clamped = tirx.Max(tirx.Min(x, _c(9.0)), _c(-9.0))
    x2 = clamped * clamped
    p = _poly(x2, (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                   5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                   4.89352455891786e-03)) * clamped
    q = _poly(x2, (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                   4.89352518554385e-03))
    # below 4e-4 tanh(x) = x to float precision; the rational form loses relative accuracy there
    return _keep_nan(x, tirx.Select(tirx.abs(x) < _c(0.0004), x, p / q))


def fast_erf(x):
    clamped = tirx.Max(tirx.Min(x, _c(4.0)), _c(-4.0))
    x2 = clamped * clamped
    p = _poly(x2, (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                   -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                   -1.60960333262415e-02)) * clamped
    q = _poly(x2, (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                   -7.37332916720468e-03, -1.42647390514189e-02))
    return _keep_nan(x, p / q)


def _let(name: str, value, body, dtype: str = F32):
    """`body(v)` with v bound once to `value`: these formulas use each intermediate many times,
    and TIR expressions are trees (a shared subexpression is emitted at every use: pow written
    without bindings ran 20x slower than libm's)."""
    var = tirx.Var(name, dtype)
    return tirx.Let(var, value, body(var))


def _log_positive(a):
    """ln(a) for finite a > 0 (Cephes' logf: a = m 2^e with m in [sqrt(1/2), sqrt(2)), a
    polynomial in m - 1); subnormal a scaled by 2^23 first."""
    def scaled(tiny):
        def with_bits(bits):
            e = tirx.Cast(F32, tirx.shift_right(bits, tirx.const(23, "int32")) - tirx.const(126, "int32"))
            e = tirx.Select(tiny, e - _c(23.0), e)
            m = tirx.reinterpret(F32, tirx.bitwise_or(tirx.bitwise_and(bits, tirx.const(0x007FFFFF, "int32")),
                                                      tirx.const(0x3F000000, "int32")))   # [0.5, 1)

            def with_m(m):
                low = m < _c(0.707106781186547524)
                return _let("log_e", tirx.Select(low, e - _c(1.0), e), lambda e: _let(
                    "log_f", tirx.Select(low, m + m, m) - _c(1.0), lambda f: _let(
                        "log_z", f * f, lambda z: f + (_poly(f, (
                            7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                            1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                            3.3333331174e-1)) * f * z + e * _c(-2.12194440e-4) - z * _c(0.5))
                        + e * _c(0.693359375))))
            return _let("log_m", m, with_m)
        return _let("log_bits", tirx.reinterpret("int32", tirx.Select(tiny, a * _c(8388608.0), a)), with_bits,
                    "int32")
    return _let("log_tiny", a < _c(1.17549435e-38), scaled, "bool")


def fast_pow(b, p):
    """b ** p as exp(p ln|b|), with C's pow for the rest: a negative base takes an integer
    exponent's sign (else NaN; pow(-inf, y) = ±inf or ±0 as C's), zero and infinite bases,
    pow(x, 0) = pow(1, y) = 1, NaN in gives NaN out. (LRN's denominator: a scalar powf per
    element was its whole cost.)"""
    inf, nan, one, zero = _c(float("inf")), _c(float("nan")), _c(1.0), _c(0.0)

    def body(b, p):
        def with_a(a):
            mag = fast_exp(p * _log_positive(tirx.Max(a, _c(1e-45))))
            mag = tirx.Select(a == zero, tirx.Select(p > zero, zero, inf), mag)
            mag = tirx.Select(tirx.isinf(a), tirx.Select(p > zero, inf, zero), mag)
            mag = tirx.Select(a == one, one, mag)
            integer = tirx.floor(p) == p
            odd = tirx.And(integer, tirx.floor(p * _c(0.5)) * _c(2.0) != p)
            negative = tirx.reinterpret("int32", b) < tirx.const(0, "int32")   # the sign bit: -0.0 too

            def signed(mag):
                r = tirx.Select(tirx.And(negative, odd), -mag, mag)
                r = tirx.Select(tirx.And(tirx.And(b < zero, tirx.Not(integer)), tirx.Not(tirx.isinf(b))), nan, r)
                r = tirx.Select(tirx.Or(tirx.isnan(b), tirx.isnan(p)), nan, r)
                return tirx.Select(tirx.Or(p == zero, b == one), one, r)
            return _let("pow_mag", mag, signed)
        return _let("pow_a", tirx.abs(b), with_a)
    return _let("pow_b", b, lambda b: _let("pow_p", p, lambda p: body(b, p)))


FAST_FLOAT32 = {"exp": fast_exp, "sigmoid": fast_sigmoid, "tanh": fast_tanh, "erf": fast_erf, "pow": fast_pow}
