"""Codegen: hand-built kernels compiled by TVM and compared with NumPy."""
import re

import ml_dtypes
import numpy as np
import pytest
import scipy.special

from nestor.codegen import (CompiledKernels, build, cuda_target, host_target, load, run_kernel,
                            to_primfunc)
from nestor.ir import (Allocate, Buffer, Const, For, If, Kernel, Var, bitwise, bitwise_not, call, cast,
                       eq, ge, gt, ne, logical_and, lt, maximum, minimum, select, seq, store, loop_nest, Not,
                       logical_or, INTRINSICS)
from nestor.ir.dtypes import NARROW_FLOATS, bits, int_range
import tvm

RNG = np.random.default_rng(0)
i, j, k = Var("i"), Var("j"), Var("k")


def rand(*shape, lo=-1.0, hi=1.0, dtype="float32"):
    return RNG.uniform(lo, hi, shape).astype(dtype)


def test_host_target():
    t = host_target()
    assert t.kind.name == "llvm" and int(t.attrs["num-cores"]) >= 1
    assert host_target() is t  # cached
    assert cuda_target().kind.name == "cuda"


def test_elementwise_broadcast():
    X = Buffer("X", (3, 4)); b = Buffer("b", (4,)); Y = Buffer("Y", (3, 4))
    body = loop_nest((3, 4), lambda i, j: store(Y, (i, j), maximum(X[i, j] + b[j], 0.0)))
    x, bb = rand(3, 4), rand(4)
    (y,) = run_kernel(Kernel("bcast", (X, b), (Y,), body), [x, bb])
    np.testing.assert_allclose(y, np.maximum(x + bb, 0), rtol=1e-6)


def test_matmul_reduce_add():
    A = Buffer("A", (5, 7)); B = Buffer("B", (7, 6)); C = Buffer("C", (5, 6))
    body = For("i", 5, For("j", 6, seq(
        store(C, (i, j), 0.0),
        For("k", 7, store(C, (i, j), A[i, k] * B[k, j], reduce="add"), axis="reduce"))),
        kind="parallel")
    a, b = rand(5, 7), rand(7, 6)
    (c,) = run_kernel(Kernel("mm", (A, B), (C,), body), [a, b])
    np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-6)


def test_reduce_max_min_mul():
    X = Buffer("X", (4, 5)); Mx = Buffer("Mx", (4,)); Mn = Buffer("Mn", (4,)); P = Buffer("P", (4,))
    body = For("i", 4, seq(
        store(Mx, i, -1e30), store(Mn, i, 1e30), store(P, i, 1.0),
        For("k", 5, seq(store(Mx, i, X[i, k], "max"), store(Mn, i, X[i, k], "min"),
                        store(P, i, X[i, k], "mul")), axis="reduce")))
    x = rand(4, 5)
    mx, mn, p = run_kernel(Kernel("red", (X,), (Mx, Mn, P), body), [x])
    np.testing.assert_allclose(mx, x.max(1)); np.testing.assert_allclose(mn, x.min(1))
    np.testing.assert_allclose(p, x.prod(1), rtol=1e-5)


def test_padded_select_load():
    # 1-d conv with padding 1: the select guards loads at X[-1] and X[8]
    X = Buffer("X", (8,)); W = Buffer("W", (3,)); Y = Buffer("Y", (8,))
    p = i + k - 1
    body = For("i", 8, seq(store(Y, i, 0.0), For("k", 3, store(
        Y, i, select(logical_and(ge(p, 0), lt(p, 8)), X[p], 0.0) * W[k], "add"), axis="reduce")))
    x, w = rand(8), rand(3)
    (y,) = run_kernel(Kernel("conv1d", (X, W), (Y,), body), [x, w])
    np.testing.assert_allclose(y, np.convolve(np.pad(x, 1), w[::-1], "valid"), rtol=1e-5)


def test_padding_guard_in_a_vectorized_loop_stays_a_vector_select():
    # a 3-wide max over a row padded by -inf at its end, vectorized over the outputs: the guard
    # is a select of a clamped load (if_then_else is scalarized lane by lane)
    X = Buffer("X", (16,)); Y = Buffer("Y", (16,))
    p = i + k
    body = For("i", 16, seq(store(Y, i, float("-inf")), For("k", 3, store(
        Y, i, maximum(Y[i], select(lt(p, 16), X[p], float("-inf")))), axis="reduce")),
        kind="vectorized")
    kernel = Kernel("rowmax", (X,), (Y,), body)
    text = to_primfunc(kernel).script()
    assert "T.Select(" in text and "if_then_else" not in text
    x = rand(16)
    np.testing.assert_array_equal(run_kernel(kernel, [x])[0],
                                  np.max(np.lib.stride_tricks.sliding_window_view(
                                      np.pad(x, (0, 2), constant_values=-np.inf), 3), axis=1))


def test_a_tile_guard_is_peeled_but_not_one_across_vector_lanes_or_a_fused_loop():
    # 14 pixels in tiles of 6 (the last tile peeled: its guard is likely(), which TVM's loop
    # partitioning splits on), each pixel a vector of 8 lanes
    X = Buffer("X", (14, 8)); Y = Buffer("Y", (14, 8))
    io, ii, v = Var("io"), Var("ii"), Var("v")
    p = io * 6 + ii
    tile = For("io", 3, For("ii", 6, For("v", 8, If(lt(p, 14), store(Y, (p, v), X[p, v] * 2.0)),
                                         kind="vectorized"), kind="unrolled"))
    kernel = Kernel("peeled", (X,), (Y,), tile)
    assert "T.likely(" in to_primfunc(kernel).script()
    x = rand(14, 8)
    np.testing.assert_allclose(run_kernel(kernel, [x])[0], x * 2)
    # a split's tail on the lanes too (14 = 8 + 6 lanes: the last vector 6 lanes, the other
    # unguarded), one comparison a likely() where two guards meet (io + v < 7 is no tail)
    Z = Buffer("Z", (14,))
    q = io * 8 + v
    tail = Kernel("tail", (X,), (Z,), For("io", 2, For("v", 8, If(logical_and(lt(q, 14), lt(io + v, 7)), store(
        Z, q, X[q, 0] * 2.0)), kind="vectorized")))
    text = to_primfunc(tail).script()
    assert text.count("T.likely(") == 1 and "T.likely(io * 8 + v < 14)" in text
    kept = np.arange(14) != 7
    np.testing.assert_allclose(run_kernel(tail, [x])[0][kept], x[kept, 0] * 2)
    # guards across the lanes (a window's io + v) or through a fused loop's // and % stay plain
    # ifs: a peeled vector or unrolled loop of extent min(..) cannot be vectorized or unrolled
    lanes = For("io", 2, For("v", 8, If(lt(io + v, 8), store(Y, (v, io), X[v, io] + 1.0)), kind="vectorized"))
    f = Var("f")
    r = (f % 3) * 6 + ii
    fused = For("f", 6, For("ii", 6, If(lt(r, 14), store(Y, (r, f // 3), X[r, f // 3] - 1.0)),
                            kind="unrolled"), kind="parallel")
    window = np.add.outer(np.arange(8), np.arange(2)) < 8
    for body, want in ((lanes, lambda y, x: np.testing.assert_allclose(y[:8, :2][window], (x[:8, :2] + 1.0)[window])),
                       (fused, lambda y, x: np.testing.assert_allclose(y[:, :2], x[:, :2] - 1.0))):
        k = Kernel("plain", (X,), (Y,), body)
        assert "T.likely(" not in to_primfunc(k).script()
        want(run_kernel(k, [x])[0], x)


def test_allocate_local_in_parallel_loop():
    A = Buffer("A", (16, 32)); B = Buffer("B", (32, 24)); C = Buffer("C", (16, 24))
    acc = Buffer("acc", (8,), scope="local")
    jo, ji = Var("jo"), Var("ji")
    body = For("i", 16, For("jo", 3, Allocate(acc, seq(
        For("ji", 8, store(acc, ji, 0.0), kind="vectorized"),
        For("k", 32, For("ji", 8, store(acc, ji, A[i, k] * B[k, jo * 8 + ji], "add"),
                         kind="vectorized"), axis="reduce"),
        For("ji", 8, store(C, (i, jo * 8 + ji), maximum(acc[ji], 0.0)), kind="unrolled")))),
        kind="parallel")
    a, b = rand(16, 32), rand(32, 24)
    kernel = Kernel("mm_local", (A, B), (C,), body)
    (c,) = run_kernel(kernel, [a, b])
    np.testing.assert_allclose(c, np.maximum(a @ b, 0), rtol=1e-5, atol=1e-5)
    assert "alloc" in to_primfunc(kernel).script()
    # on the stack of the parallel body, not a TVMBackendAllocWorkspace call per iteration
    assert "TVMBackendAllocWorkspace" not in build([kernel]).module.inspect_source()


def test_if_and_vectorized_unrolled():
    # a split that does not divide: 10 = 3 * 4 - 2, guarded by If
    X = Buffer("X", (10,)); Y = Buffer("Y", (10,))
    io, ii = Var("io"), Var("ii")
    idx = io * 4 + ii
    body = For("io", 3, For("ii", 4, If(lt(idx, 10), store(Y, idx, X[idx] * 2.0),
                                        None), kind="unrolled"))
    x = rand(10)
    (y,) = run_kernel(Kernel("split", (X,), (Y,), body), [x])
    np.testing.assert_allclose(y, x * 2)
    body = For("i", 10, If(gt(X[i], 0.0), store(Y, i, 1.0), store(Y, i, -1.0)), kind="vectorized")
    (y,) = run_kernel(Kernel("sign", (X,), (Y,), body), [x])
    np.testing.assert_allclose(y, np.where(x > 0, 1.0, -1.0))


def test_int64_bool_cast_logic():
    X = Buffer("X", (6,), "int64"); F = Buffer("F", (6,)); M = Buffer("M", (6,), "bool")
    Yi = Buffer("Yi", (6,), "int64"); Yb = Buffer("Yb", (6,), "bool"); Yf = Buffer("Yf", (6,))
    body = For("i", 6, seq(
        store(Yi, i, X[i] * 3 + cast("int64", F[i])),
        store(Yb, i, logical_or(logical_and(M[i], gt(X[i], 0)), Not(M[i]))),
        store(Yf, i, cast("float32", M[i]) + cast("float32", X[i]))))
    x = np.array([-5, -1, 0, 2, 3, 1 << 40], "int64")
    f = np.array([1.7, -2.7, 0.0, 3.2, -0.5, 9.9], "float32")
    m = np.array([True, False, True, True, False, True])
    yi, yb, yf = run_kernel(Kernel("types", (X, F, M), (Yi, Yb, Yf), body), [x, f, m])
    np.testing.assert_array_equal(yi, x * 3 + f.astype("int64"))
    np.testing.assert_array_equal(yb, (m & (x > 0)) | ~m)
    np.testing.assert_allclose(yf, m.astype("float32") + x.astype("float32"))
    assert yb.dtype == np.bool_ and yi.dtype == np.int64


def test_int_division_negative():
    A = Buffer("A", (8,), "int32"); B = Buffer("B", (8,), "int32")
    Q = Buffer("Q", (8,), "int32"); R = Buffer("R", (8,), "int32"); D = Buffer("D", (8,), "int32")
    body = For("i", 8, seq(store(Q, i, A[i] // B[i]), store(R, i, A[i] % B[i]),
                           store(D, i, A[i] / B[i])))
    a = np.array([7, -7, 7, -7, 0, 5, -9, 9], "int32")
    b = np.array([2, 2, -2, -2, 3, 5, 4, -4], "int32")
    q, r, d = run_kernel(Kernel("idiv", (A, B), (Q, R, D), body), [a, b])
    np.testing.assert_array_equal(q, a // b)
    np.testing.assert_array_equal(r, a % b)
    np.testing.assert_array_equal(d, np.trunc(a / b).astype("int32"))  # C / ONNX Div


def test_float_floordiv_mod():
    A = Buffer("A", (6,)); B = Buffer("B", (6,)); Q = Buffer("Q", (6,)); R = Buffer("R", (6,))
    body = For("i", 6, seq(store(Q, i, A[i] // B[i]), store(R, i, A[i] % B[i])))
    a = np.array([7.5, -7.5, 7.5, -7.5, 1.0, 0.0], "float32")
    b = np.array([2.0, 2.0, -2.0, -2.0, 3.0, 4.0], "float32")
    q, r = run_kernel(Kernel("fdiv", (A, B), (Q, R), body), [a, b])
    np.testing.assert_allclose(q, a // b)
    np.testing.assert_allclose(r, np.mod(a, b), atol=1e-6)


def test_zero_dim_buffers():
    X = Buffer("X", ()); V = Buffer("V", (5,)); Y = Buffer("Y", ()); Z = Buffer("Z", (5,))
    body = seq(store(Y, (), X[()] * 2.0), For("i", 5, store(Z, i, V[i] + X[()])))
    x, v = np.array(1.5, "float32"), rand(5)
    y, z = run_kernel(Kernel("zerod", (X, V), (Y, Z), body), [x, v])
    assert y.shape == () and y == 3.0
    np.testing.assert_allclose(z, v + 1.5)


_NP = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "rsqrt": lambda x: 1 / np.sqrt(x),
       "tanh": np.tanh, "erf": scipy.special.erf, "sigmoid": scipy.special.expit, "abs": np.abs,
       "floor": np.floor, "ceil": np.ceil, "round": np.round, "pow": np.power, "sin": np.sin,
       "cos": np.cos, "neg": np.negative}
_POSITIVE = {"log", "sqrt", "rsqrt", "pow"}


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-5), ("float64", 1e-12), ("float16", 2e-3)])
def test_intrinsics_one_build(dtype, tol):
    assert set(_NP) == set(INTRINSICS)
    n = 16
    halves = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, -3.5])
    kernels, cases = [], []
    for fn in INTRINSICS:
        X = Buffer("X", (n,), dtype); E = Buffer("E", (n,), dtype); Y = Buffer("Y", (n,), dtype)
        args = (X[i], E[i]) if fn == "pow" else (X[i],)
        kernels.append(Kernel(f"k_{fn}", (X, E), (Y,), For("i", n, store(Y, i, call(fn, *args)))))
        x = rand(n, lo=0.1, hi=3.0, dtype=dtype) if fn in _POSITIVE else rand(n, lo=-4, hi=4,
                                                                               dtype=dtype)
        if fn == "round":
            x[:8] = halves
        cases.append((fn, x, rand(n, lo=-2.0, hi=2.0, dtype=dtype)))
    mod = build(kernels)
    dev = tvm.cpu()
    for fn, x, e in cases:
        y = tvm.runtime.tensor(np.zeros(n, dtype), dev)
        mod.get(f"k_{fn}")(tvm.runtime.tensor(x, dev), tvm.runtime.tensor(e, dev), y)
        x64, e64 = x.astype("float64"), e.astype("float64")
        want = _NP[fn](x64, e64) if fn == "pow" else _NP[fn](x64)
        np.testing.assert_allclose(y.numpy().astype("float64"), want, rtol=tol, atol=tol,
                                   err_msg=f"{fn} {dtype}")


def test_int_abs_neg_minmax():
    X = Buffer("X", (5,), "int64"); Y = Buffer("Y", (5,), "int64"); Z = Buffer("Z", (5,), "int64")
    body = For("i", 5, seq(store(Y, i, call("abs", X[i])),
                           store(Z, i, minimum(maximum(-X[i], Const(-2, "int64")), 3))))
    x = np.array([-7, -1, 0, 2, 9], "int64")
    y, z = run_kernel(Kernel("iabs", (X,), (Y, Z), body), [x])
    np.testing.assert_array_equal(y, np.abs(x))
    np.testing.assert_array_equal(z, np.clip(-x, -2, 3))


@pytest.mark.parametrize("dtype", ["int64", "uint8", "bool"])
def test_bitwise_ops(dtype):
    X = Buffer("X", (6,), dtype); S = Buffer("S", (6,), dtype)
    outs = [Buffer(f"Y{k}", (6,), dtype) for k in range(6 if dtype != "bool" else 4)]
    exprs = [bitwise("bitand", X[i], S[i]), bitwise("bitor", X[i], S[i]), bitwise("bitxor", X[i], S[i]),
             bitwise_not(X[i]), bitwise("shl", X[i], S[i]), bitwise("shr", X[i], S[i])]
    body = For("i", 6, seq(*[store(y, i, e) for y, e in zip(outs, exprs)]), kind="vectorized")
    if dtype == "bool":
        x, s = np.array([0, 1, 0, 1, 1, 0], bool), np.array([0, 0, 1, 1, 1, 1], bool)
    else:
        x, s = np.array([-100, -1, 0, 5, 77, 120]).astype(dtype), np.array([0, 1, 2, 3, 5, 7], dtype)
    got = run_kernel(Kernel("bits", (X, S), tuple(outs), body), [x, s])
    want = [x & s, x | s, x ^ s, ~x, x << s, x >> s]  # >> of a signed integer keeps its sign
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_bfloat16_vector_loops():
    """Arithmetic and a stored constant in vectorized bfloat16 loops (TVM's legalization fails on
    a vector of a bfloat16 constant: that loop is lowered serial)."""
    X = Buffer("X", (8,), "bfloat16"); Y = Buffer("Y", (8,), "bfloat16"); Z = Buffer("Z", (8,), "bfloat16")
    body = seq(For("i", 8, store(Y, i, X[i] * X[i] + Const(0.5, "bfloat16")), kind="vectorized"),
               For("i", 8, store(Z, i, Const(-1.5, "bfloat16")), kind="vectorized"))
    x = np.linspace(-3, 3, 8).astype(ml_dtypes.bfloat16)
    y, z = run_kernel(Kernel("bf16", (X,), (Y, Z), body), [x])
    assert y.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(y, (x * x).astype(ml_dtypes.bfloat16) + ml_dtypes.bfloat16(0.5))
    np.testing.assert_array_equal(z.astype("float32"), np.full(8, -1.5, "float32"))


@pytest.mark.parametrize("dtype", ["int4", "uint4", "int2", "uint2"])
def test_sub_byte_integers(dtype):
    """A sub-byte integer is held in a byte, its value in the low bits (ml_dtypes' layout): loads
    sign-extend, stores keep the low bits, casts into the type wrap."""
    np_type = getattr(ml_dtypes, dtype)
    lo, hi = int_range(dtype)
    n = hi - lo + 1
    X = Buffer("X", (n,), dtype); Y = Buffer("Y", (n,), "int32"); Z = Buffer("Z", (n,), dtype)
    body = For("i", n, seq(store(Y, i, cast("int32", X[i])),
                           store(Z, i, cast(dtype, cast("int32", X[i]) + Const(n + 1, "int32")))),
               kind="vectorized")
    x = np.arange(lo, hi + 1).astype(np_type)
    y, z = run_kernel(Kernel("subbyte", (X,), (Y, Z), body), [x])
    np.testing.assert_array_equal(y, np.arange(lo, hi + 1))
    assert z.dtype == np_type  # x + n + 1 wraps to x + 1, and hi to lo
    np.testing.assert_array_equal(z.astype("int32"), np.roll(np.arange(lo, hi + 1), -1))
    assert (z.view("uint8") < n).all()


@pytest.mark.parametrize("dtype", NARROW_FLOATS)
def test_narrow_floats(dtype):
    """Every bit pattern of a float8 / float4 format decodes to ml_dtypes' value and encodes back
    to the same value; a float32 cast into the format rounds to nearest even and saturates."""
    np_type = getattr(ml_dtypes, dtype)
    n = 1 << bits(dtype)
    codes = np.arange(n, dtype="uint8").view(np_type)
    scaled = RNG.uniform(-2, 2, 200) * 2.0 ** RNG.integers(-20, 17, 200)  # subnormals to beyond the largest
    x = np.concatenate([RNG.uniform(-600, 600, 200), scaled,
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e-30]]).astype("float32")
    C = Buffer("C", (n,), dtype); X = Buffer("X", (len(x),), "float32")
    F = Buffer("F", (n,), "float32"); B = Buffer("B", (n,), dtype); Y = Buffer("Y", (len(x),), dtype)
    body = seq(For("i", n, seq(store(F, i, cast("float32", C[i])), store(B, i, C[i])), kind="vectorized"),
               For("i", len(x), store(Y, i, cast(dtype, X[i]))))
    f, b, y = run_kernel(Kernel("narrow", (C, X), (F, B, Y), body), [codes, x])
    want = codes.astype("float32")
    np.testing.assert_array_equal(f, want)  # (NaNs where ml_dtypes has them)
    np.testing.assert_array_equal(b.astype("float32"), want)
    largest = float(ml_dtypes.finfo(np_type).max)
    want = np.clip(x, -largest, largest).astype(np_type)
    assert y.dtype == np_type
    np.testing.assert_array_equal(y.astype("float32"), want.astype("float32"))


def _scale_kernel(name, factor, n=8):
    X = Buffer("X", (n,)); Y = Buffer("Y", (n,))
    return Kernel(name, (X,), (Y,), For("i", n, store(Y, i, X[i] * factor), kind="parallel"))


def test_build_export_load_roundtrip(tmp_path):
    mod = build([_scale_kernel("twice", 2.0), _scale_kernel("thrice", 3.0)])
    assert isinstance(mod, CompiledKernels)
    path = mod.export(tmp_path / "kernels.so")
    again = load(path)
    dev = tvm.cpu()
    x = rand(8)
    for name, f in (("twice", 2.0), ("thrice", 3.0)):
        y = tvm.runtime.tensor(np.zeros(8, "float32"), dev)
        again.get(name)(tvm.runtime.tensor(x, dev), y)
        np.testing.assert_allclose(y.numpy(), x * f)


def test_duplicate_names_rejected():
    with pytest.raises(ValueError, match="unique"):
        build([_scale_kernel("same", 2.0), _scale_kernel("same", 3.0)])


def test_views_into_one_arena():
    # memory planning: tensors living at byte offsets in one arena are accepted by kernels
    dev = tvm.cpu()
    arena = tvm.runtime.empty((256,), "uint8", dev)
    x_view = arena._create_view((8,), "float32", 0)
    y_view = arena._create_view((8,), "float32", 64)
    x = rand(8)
    x_view.copyfrom(x)
    mod = build([_scale_kernel("twice_v", 2.0)])
    mod.get("twice_v")(x_view, y_view)
    np.testing.assert_allclose(y_view.numpy(), x * 2)
    np.testing.assert_allclose(arena.numpy()[64:96].view("float32"), x * 2)
    # a view at an unaligned offset works too; a tensor of another shape (same size) does not,
    # but a reshaping view of it does
    odd = arena._create_view((8,), "float32", 132)
    mod.get("twice_v")(x_view, odd)
    np.testing.assert_allclose(odd.numpy(), x * 2)
    square = tvm.runtime.tensor(x.reshape(2, 4), dev)
    with pytest.raises(ValueError, match="ndim"):
        mod.get("twice_v")(square, y_view)
    mod.get("twice_v")(square._create_view((8,)), y_view)
    np.testing.assert_allclose(y_view.numpy(), x * 2)
    with pytest.raises(KeyError):
        mod.get("nope")


def test_cuda_codegen_source():
    X = Buffer("X", (1024,)); Y = Buffer("Y", (1024,))
    bx, tx = Var("bx"), Var("tx")
    body = For("bx", 8, For("tx", 128, store(Y, bx * 128 + tx, call("exp", X[bx * 128 + tx])),
                            kind="threadIdx.x"), kind="blockIdx.x")
    # block sum through shared memory; the 1-thread loop must be guarded, as TVM launches
    # threadIdx.x with the largest extent bound to it
    A = Buffer("A", (8, 128)); S = Buffer("S", (8,)); sh = Buffer("sh", (128,), scope="shared")
    acc = Buffer("acc", (1,), scope="local")
    total = For("bx", 8, Allocate(sh, seq(
        For("tx", 128, store(sh, tx, A[bx, tx]), kind="threadIdx.x"),
        For("tx", 1, Allocate(acc, seq(
            store(acc, 0, 0.0), For("k", 128, store(acc, 0, sh[k], "add"), axis="reduce"),
            store(S, bx, acc[0]))), kind="threadIdx.x"))), kind="blockIdx.x")
    if tvm.get_global_func("target.build.cuda", allow_missing=True) is None:
        pytest.skip("TVM built without CUDA codegen")
    try:
        mod = build([Kernel("gpu_exp", (X,), (Y,), body), Kernel("gpu_sum", (A,), (S,), total)],
                    cuda_target())
    except Exception as err:  # e.g. nvcc missing
        pytest.skip(f"CUDA build unavailable: {err}")
    src = "".join(m.inspect_source() for m in mod.module.imports)
    assert "__global__" in src and "gpu_exp_kernel" in src and "gpu_sum_kernel" in src
    assert "__shared__" in src and "__syncthreads" in src and "threadIdx.x) < 1" in src


def test_bool_compare_arith_and_nan_semantics():
    A = Buffer("A", (4,), "bool"); B = Buffer("B", (4,), "bool")
    EQ, NE, MX = (Buffer(n, (4,), "bool") for n in ("EQ", "NE", "MX"))
    body = For("i", 4, seq(store(EQ, i, eq(A[i], B[i])), store(NE, i, ne(A[i], B[i])),
                           store(MX, i, maximum(A[i], B[i]))), kind="vectorized")
    a, b = np.array([1, 0, 1, 0], bool), np.array([1, 1, 0, 0], bool)
    e, n, m = run_kernel(Kernel("bools", (A, B), (EQ, NE, MX), body), [a, b])
    np.testing.assert_array_equal(e, a == b); np.testing.assert_array_equal(n, a != b)
    np.testing.assert_array_equal(m, a | b)
    # NaN: x != x is true (IsNaN), not (x == 0) is true, comparisons with NaN are false
    X = Buffer("X", (5,)); outs = [Buffer(f"O{n}", (5,), "bool") for n in range(6)]
    x = X[i]
    exprs = [ne(x, x), eq(x, x), Not(eq(x, 0.0)), ne(x, 0.0), Not(lt(x, 1.0)), cast("bool", x)]
    body = For("i", 5, seq(*[store(o, i, ex) for o, ex in zip(outs, exprs)]))
    xv = np.array([np.nan, 0.0, 1.0, -0.0, np.inf], "float32")
    got = run_kernel(Kernel("nans", (X,), tuple(outs), body), [xv])
    with np.errstate(invalid="ignore"):
        want = [xv != xv, xv == xv, ~(xv == 0), xv != 0, ~(xv < 1), xv.astype(bool)]
    for g, w, ex in zip(got, want, exprs):
        np.testing.assert_array_equal(g, w, err_msg=str(ex))


def test_huge_page_buffer_is_aligned_and_advised():
    from nestor.codegen.pages import HUGE_PAGE, huge_page_buffer
    nbytes = 3 * HUGE_PAGE + 100
    raw, at = huge_page_buffer(nbytes, tvm.cpu())
    start = raw.data_ptr() + at
    assert start % HUGE_PAGE == 0 and at + nbytes <= raw.shape[0]
    view = raw._create_view((nbytes // 4,), "float32", at)
    x = rand(nbytes // 4)
    view.copyfrom(x)
    np.testing.assert_array_equal(view.numpy(), x)
    small, at_small = huge_page_buffer(1000, tvm.cpu())
    assert at_small == 0 and small.shape[0] >= 1000
    try:
        mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
        smaps = open("/proc/self/smaps").read()
    except OSError:
        pytest.skip("no transparent huge pages here")
    if "[never]" in mode:
        pytest.skip("transparent huge pages are off")
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps):  # one block per mapping
        lo, hi = (int(v, 16) for v in block.split()[0].split("-"))
        if lo <= start < hi:
            assert re.search(r"THPeligible:\s+1", block) and " hg" in block  # hg: advised
            break
    else:
        pytest.fail("the buffer is in no mapping")
