"""The float32 exp/sigmoid/tanh/erf that codegen emits as arithmetic (codegen/fast_math.py):
accuracy against float64 NumPy/SciPy over their whole useful range, in scalar and vector loops,
and the special values (±inf, NaN, overflow, underflow) libm gives."""
import numpy as np
import pytest
import scipy.special

from nestor.codegen import run_kernel
from nestor.ir import Buffer, For, Kernel, Var, call, store

REFERENCE = {"exp": np.exp, "sigmoid": scipy.special.expit, "tanh": np.tanh, "erf": scipy.special.erf}
RANGE = {"exp": 87.0, "sigmoid": 30.0, "tanh": 12.0, "erf": 5.0}
SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 3e-4, -3e-4, 88.0, -87.0,
                    -104.0, 120.0, 1e4, -1e4, 0.5], dtype=np.float32)


def _kernel(fn: str, n: int, vector: bool) -> Kernel:
    X, Y = Buffer("X", (n,)), Buffer("Y", (n,))
    i, v = Var("i"), Var("v")
    if vector:
        body = For("i", n // 16, For("v", 16, store(Y, i * 16 + v, call(fn, X[i * 16 + v])), kind="vectorized"))
    else:
        body = For("i", n, store(Y, i, call(fn, X[i])))
    return Kernel(f"fast_{fn}", (X,), (Y,), body)


@pytest.mark.parametrize("vector", [False, True], ids=["scalar", "vector"])
@pytest.mark.parametrize("fn", sorted(REFERENCE))
def test_accuracy_over_range(fn, vector):
    x = np.linspace(-RANGE[fn], RANGE[fn], 4096 * 4, dtype=np.float32)
    (y,) = run_kernel(_kernel(fn, x.size, vector), [x])
    want = REFERENCE[fn](x.astype(np.float64))
    # relative for exp (its values span 1e-38 .. 1e38), absolute+relative for the bounded ones
    tol = dict(rtol=3e-7 * 8, atol=0) if fn == "exp" else dict(rtol=2e-6, atol=2e-7)
    np.testing.assert_allclose(y.astype(np.float64), want, **tol, err_msg=fn)


@pytest.mark.parametrize("fn", sorted(REFERENCE))
def test_special_values_match_libm(fn):
    x = np.resize(SPECIAL, 32)
    (y,) = run_kernel(_kernel(fn, x.size, vector=True), [x])
    with np.errstate(over="ignore"):
        want = REFERENCE[fn](x.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want), err_msg=fn)
    ok = ~np.isnan(want)
    np.testing.assert_allclose(y[ok], want[ok], rtol=3e-6, atol=1e-37, err_msg=fn)


def _pow_kernel(n: int, vector: bool) -> Kernel:
    B, P, Y = Buffer("B", (n,)), Buffer("P", (n,)), Buffer("Y", (n,))
    i, v = Var("i"), Var("v")
    if vector:
        k = i * 16 + v
        body = For("i", n // 16, For("v", 16, store(Y, k, call("pow", B[k], P[k])), kind="vectorized"))
    else:
        body = For("i", n, store(Y, i, call("pow", B[i], P[i])))
    return Kernel("fast_pow", (B, P), (Y,), body)


@pytest.mark.parametrize("vector", [False, True], ids=["scalar", "vector"])
def test_pow_accuracy_over_range(vector):
    rng = np.random.default_rng(0)
    n = 4096 * 4
    b = np.exp(rng.uniform(-20, 20, n)).astype(np.float32)   # 2e-9 .. 5e8
    p = rng.uniform(-3, 3, n).astype(np.float32)
    b[: n // 4] = rng.uniform(0.5, 3, n // 4)                  # LRN's range: base near 1, beta 0.75
    p[: n // 4] = 0.75
    (y,) = run_kernel(_pow_kernel(n, vector), [b, p])
    want = np.power(b.astype(np.float64), p.astype(np.float64))
    ok = (want > 1e-37) & (want < 3e38)
    # relative error grows with |p ln b| (up to 60 here): exp(p ln b) amplifies ln's rounding
    np.testing.assert_allclose(y[ok], want[ok], rtol=1e-5)
    np.testing.assert_allclose(y[: n // 4], want[: n // 4], rtol=1e-6)


def test_pow_special_values_match_numpy():
    bases = np.array([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, np.inf, -np.inf, np.nan, 1e-40, 3.0], np.float32)
    exps = np.array([0.0, 1.0, 2.0, 3.0, -1.0, -2.0, 0.5, -0.5, np.inf, -np.inf, np.nan], np.float32)
    b, p = (a.ravel() for a in np.meshgrid(bases, exps))
    n = -(-b.size // 16) * 16
    b, p = np.resize(b, n), np.resize(p, n)
    (y,) = run_kernel(_pow_kernel(n, vector=True), [b, p])
    with np.errstate(all="ignore"):
        want = np.power(b, p)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want), err_msg=str(list(zip(b, p, y, want))))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(y[ok], want[ok], rtol=2e-6, atol=1e-37)  # no subnormal results, as exp
