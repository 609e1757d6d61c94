"""The IR text form (printer + parser round trip, errors) and the structural hash."""
import math
import os
import pathlib
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from nestor.ir import (BINARY_OPS, COMPARE_OPS, INTRINSICS, LOOP_KINDS, REDUCE_OPS, Allocate, Binary,
                       Buffer, Call, Cast, Compare, Const, For, If, IRSyntaxError, Kernel, Load, Logic,
                       Not, Select, Seq, Store, Var, parse_kernel, print_expr, print_kernel,
                       structural_equal, structural_hash)
from nestor.ir.dtypes import SHORT

A = Buffer("A", (8, 8))
B = Buffer("B", (8,), "int64")
M = Buffer("M", (8,), "bool")
S = Buffer("S", (), "float64")
H = Buffer("H", (4,), "float16", "shared")
Y = Buffer("Y", (8, 8))
Z = Buffer("Z", (8,), "int32")
i, j, k = Var("i"), Var("j"), Var("k")


def roundtrip(kernel: Kernel) -> Kernel:
    text = print_kernel(kernel)
    back = parse_kernel(text)
    assert back == kernel, text
    assert print_kernel(back) == text
    return back


def kernel_of(*stmts, inputs=(A, B, M, S, H), outputs=(Y, Z)) -> Kernel:
    return Kernel("k", inputs, outputs, Seq(stmts) if len(stmts) != 1 else stmts[0])


def test_dense_relu_text():
    acc = Buffer("acc", (32,), scope="local")
    W, b, Yd = Buffer("W", (768, 3072)), Buffer("b", (3072,)), Buffer("Y", (128, 3072))
    A2 = Buffer("A", (128, 768))
    jo, ji = Var("jo"), Var("ji")
    body = For("i", 128, For("jo", 96, Allocate(acc, Seq((
        For("ji", 32, Store(acc, (ji,), Const(0.0, "float32")), "vectorized"),
        For("k", 768, For("ji", 32, Store(acc, (ji,), A2[i, k] * W[k, jo * 32 + ji], "add"), "vectorized"),
            axis="reduce"),
        For("ji", 32, Store(Yd, (i, jo * 32 + ji), Binary("max", acc[ji] + b[jo * 32 + ji], Const(0.0, "float32"))),
            "vectorized"))))), "parallel")
    kernel = Kernel("dense_relu", (A2, W, b), (Yd,), body)
    assert print_kernel(kernel) == """\
kernel dense_relu(A: f32[128, 768], W: f32[768, 3072], b: f32[3072]) -> (Y: f32[128, 3072]) {
  for i in 0..128 parallel {
    for jo in 0..96 {
      alloc acc: f32[32] local {
        for ji in 0..32 vectorized { acc[ji] = 0.0 }
        for k in 0..768 reduce {
          for ji in 0..32 vectorized { acc[ji] += A[i, k] * W[k, jo * 32 + ji] }
        }
        for ji in 0..32 vectorized { Y[i, jo * 32 + ji] = max(acc[ji] + b[jo * 32 + ji], 0.0) }
      }
    }
  }
}
"""
    roundtrip(kernel)


def test_every_loop_kind_and_axis():
    for kind in LOOP_KINDS:
        for axis in ("spatial", "reduce"):
            loop = For("i", 8, Store(Z, (i,), Const(1, "int32")), kind, axis)
            text = print_kernel(roundtrip(kernel_of(loop)))
            assert ("reduce" in text) == (axis == "reduce")
            assert (kind in text) == (kind != "serial")


def test_constants_of_every_dtype():
    values = {"bool": [True, False]}
    floats = [0.0, -0.0, 1.5, -2.25, 0.1, 1e-300, 1.5e300, 3e-45, math.inf, -math.inf, math.nan]
    ints = [0, 1, -1, 127, -128, 2**31 - 1, -2**31]
    stmts = []
    for dtype in SHORT:
        vals = values.get(dtype) or (floats if dtype.startswith("float") else ints)
        for v in vals:
            stmts.append(Store(Z, (Const(0, "int32"),), Cast("int32", Const(v, dtype))))
    kernel = kernel_of(*stmts)
    roundtrip(kernel)
    text = print_kernel(kernel)
    assert "i32(1.5:f64)" in text and "i32(-inf)" in text and "i32(-128:i8)" in text
    assert "i32(true)" in text and "i32(nan:f16)" in text and "i32(1.5)" in text


def test_every_expression_node():
    x = A[i, j]
    exprs = [Binary(op, x, Const(2.0, "float32")) for op in BINARY_OPS]
    exprs += [Select(Compare(op, i, j), x, Const(0.0, "float32")) for op in COMPARE_OPS]
    exprs += [Call(fn, (x, x) if fn == "pow" else (x,)) for fn in INTRINSICS]
    exprs += [Select(Logic("or", Logic("and", M[i], Not(Compare("lt", i, j))), Const(False, "bool")), x, -x),
              Cast("float32", B[i] // Const(3, "int64") % Const(2, "int64")),
              Cast("float32", S[()]), Cast("float32", H[Const(0, "int32")]),
              Call("neg", (Const(3.0, "float32"),)), Call("neg", (Call("neg", (x,)),)),
              Binary("mul", Const(-3.0, "float32"), Call("neg", (x,)))]
    kernel = kernel_of(*[Store(Y, (i, j), e) for e in exprs])
    roundtrip(kernel)
    assert "-(3.0)" in print_kernel(kernel)


def test_precedence_needs_only_necessary_parentheses():
    a, b, c = Var("a"), Var("b"), Var("c")
    cases = {a - (b - c): "a - (b - c)", (a - b) - c: "a - b - c", (a + b) * c: "(a + b) * c",
             a + b * c: "a + b * c", a // (b * c): "a // (b * c)", a * b % c: "a * b % c",
             a - Const(-3): "a - -3", Call("neg", (a + b,)) * c: "-(a + b) * c",
             Not(Compare("lt", a, b)): "!(a < b)",
             Compare("eq", Compare("lt", a, b), Compare("lt", b, c)): "(a < b) == (b < c)",
             Logic("and", Logic("or", Compare("lt", a, b), Compare("lt", b, c)), Compare("lt", a, c)):
                 "(a < b || b < c) && a < c",
             Logic("or", Compare("lt", a, b), Logic("or", Compare("lt", b, c), Compare("lt", a, c))):
                 "a < b || (b < c || a < c)"}
    for expr, text in cases.items():
        assert print_expr(expr) == text
        roundtrip(kernel_of(Store(Z, (Const(0),), Cast("int32", expr))))


def test_statements_if_alloc_seq_and_reductions():
    t = Buffer("t", (2, 2), "float32", "shared")
    s0 = Buffer("s0", (), "int32", "local")
    store = Store(Z, (i,), Const(1))
    body = For("i", 8, Seq((
        If(Compare("lt", i, Const(4)), store),
        If(Compare("lt", i, Const(4)), store, Seq(())),
        If(Compare("lt", i, Const(2)), store, If(Compare("lt", i, Const(4)), Seq((store, store)), store)),
        Seq((store,)), Seq(()), Seq((Seq((store, store)),)), Seq((store, Seq((store,)))),
        Allocate(t, Store(t, (Const(0), Const(1)), Const(1.0, "float32"))),
        Allocate(s0, Seq((Store(s0, (), Const(0)),
                          For("k", 8, Seq(tuple(Store(s0, (), Cast("int32", B[k]), op) for op in REDUCE_OPS)),
                              "unrolled", "reduce"),
                          Store(Z, (i,), s0[()])))),
    )))
    roundtrip(kernel_of(body))
    roundtrip(kernel_of(Seq(())))
    roundtrip(kernel_of(Seq((store,))))
    roundtrip(Kernel("empty", (), (), Seq(())))
    for op in ("+=", "*=", "max=", "min="):
        assert op in print_kernel(kernel_of(body))


def test_hand_written_text():
    text = """
    # a comment
    kernel copy(A: f32[8, 8], B: i64[8],) -> (Y: f32[8, 8]) {
      for i in 0..8 parallel { for j in 0..8 { Y[i, j] = 0.0; } }
      for k in 0..8 unrolled reduce {   # annotations in any order
        for i in 0..8 { Y[i, k] += A[k, i] * f32(B[i]) + -1.5:f64 * 2 }
      }
      if 1 < 2 && !false { Y[0, 0] = exp(-Y[0, 0]) } else if true { } else { Y[0, 0] max= 1e3 }
    }"""
    kernel = parse_kernel(text)
    assert kernel.name == "copy" and kernel.inputs == (A, B) and kernel.outputs == (Y,)
    first, second, third = kernel.body.stmts
    assert first == For("i", 8, For("j", 8, Store(Y, (i, j), Const(0.0, "float32"))), "parallel")
    assert (second.kind, second.axis) == ("unrolled", "reduce")
    value = second.body.body.value
    assert value == Binary("add", Binary("mul", A[k, i], Cast("float32", B[i])),
                           Binary("mul", Const(-1.5, "float64"), Const(2)))
    assert third.otherwise == If(Const(True, "bool"), Seq(()), Store(Y, (Const(0), Const(0)), Const(1000.0, "float32"), "max"))
    assert third.then.value == Call("exp", (Call("neg", (Y[Const(0), Const(0)],)),))


@pytest.mark.parametrize("text, line, column, words", [
    ("kernel k() -> () {\n  for i in 0..4 {\n}\n", 3, 2, ["end of input", "'}'", "a statement"]),
    ("kernel k(A: f32[4]) -> () {\n  A[0] = \n}", 3, 1, ["'}'", "an expression"]),
    ("kernel k(A: f32[4]) -> () {\n  A[0] = 1 +* 2\n}", 2, 13, ["'*'", "an expression"]),
    ("kernel k() -> () {\n  for i in 0..4 fast { }\n}", 2, 17, ["unknown loop annotation 'fast'"]),
    ("kernel k() -> () {\n  for i in 1..4 { }\n}", 2, 12, ["loops start at 0"]),
    ("kernel k(A: f32[4]) -> () {\n  A[0] = Q[1]\n}", 2, 10, ["undefined buffer 'Q'"]),
    ("kernel k(A: f32[4]) -> () {\n  alloc t: f32[1] local { }\n  t[0] = 1.0\n}", 3, 3, ["undefined buffer 't'"]),
    ("kernel k(A: f31[4]) -> () { }", 1, 13, ["unknown element type 'f31'"]),
    ("kernel k(A: f32[4]) -> () { A[0] = foo(1.0) }", 1, 36, ["unknown function 'foo'"]),
    ("kernel k(A: i32[4]) -> () { A[0] = 1.5:i32 }", 1, 36, ["1.5 is not an integer"]),
    ("kernel k(A: f32[4]) -> () { A[0] = select(true, 1.0) }", 1, 36, ["select() takes 3 arguments"]),
    ("kernel k(A: f32[4]) -> () { A[0] = 1.0 $ }", 1, 40, ["unexpected character '$'"]),
])
def test_parse_errors_say_where_and_what(text, line, column, words):
    with pytest.raises(IRSyntaxError) as info:
        parse_kernel(text)
    err = info.value
    assert (err.line, err.column) == (line, column), str(err)
    assert str(err).startswith(f"line {line}, column {column}: ")
    for word in words:
        assert word in str(err)


# Random expression trees survive print -> parse.

_names = st.sampled_from(["i", "j", "k"])
_consts = st.one_of(
    st.builds(Const, st.integers(-2**40, 2**40), st.sampled_from(["int32", "int64", "int8", "uint16"])),
    st.builds(Const, st.floats(allow_nan=False), st.sampled_from(["float32", "float64", "float16"])),
    st.just(Const(math.nan, "float32")),
    st.builds(Const, st.booleans(), st.just("bool")))
_leaves = st.one_of(_consts, st.builds(Var, _names))


def _extend(children):
    two = st.tuples(children, children)
    return st.one_of(
        st.builds(lambda op, ab: Binary(op, *ab), st.sampled_from(BINARY_OPS), two),
        st.builds(lambda op, ab: Compare(op, *ab), st.sampled_from(COMPARE_OPS), two),
        st.builds(lambda op, ab: Logic(op, *ab), st.sampled_from(["and", "or"]), two),
        st.builds(Not, children),
        st.builds(lambda c, ab: Select(c, *ab), children, two),
        st.builds(Cast, st.sampled_from(list(SHORT)), children),
        st.builds(lambda fn, a: Call(fn, (a,)), st.sampled_from(INTRINSICS), children),
        st.builds(lambda ab: Call("pow", ab), two),
        st.builds(lambda ab: Load(A, ab), two),
        st.builds(lambda a: Load(S, ()), children))


@settings(max_examples=150, deadline=None)
@given(st.recursive(_leaves, _extend, max_leaves=12))
def test_random_expressions_roundtrip(expr):
    out = Buffer("out", (3,), "float32")
    kernel = Kernel("r", (A, S), (out,), For("i", 3, Store(out, (Var("i"),), expr), "vectorized"))
    roundtrip(kernel)


# Structural hash and equality.

def conv(names, extent=3, dtype="float32", kind="parallel", axis="reduce", bias=0.0, extra=False):
    x, w, y, acc = names
    X, Wt = Buffer(x, (1, 10), dtype), Buffer(w, (4, 3), dtype)
    Yc, T = Buffer(y, (4, 8), dtype), Buffer(acc, (1,), dtype, "local")
    o, p, r = Var(o_name := names[0] + "o"), Var(p_name := names[1] + "p"), Var(r_name := names[2] + "r")
    update = Store(T, (Const(0),), X[Const(0), p + r] * Wt[o, r], "add")
    body = For(o_name, 4, For(p_name, 8, Allocate(T, Seq((
        Store(T, (Const(0),), Const(bias, dtype)),
        For(r_name, extent, Seq((update, update)) if extra else update, axis=axis),
        Store(Yc, (o, p), T[Const(0)]))))), kind)
    return Kernel("conv_" + x, (X, Wt), (Yc,), body)


def test_hash_ignores_names():
    a, b = conv(("x", "w", "y", "acc")), conv(("data", "weight", "out", "tmp"))
    assert a != b
    assert structural_hash(a) == structural_hash(b) and structural_equal(a, b)
    assert len(structural_hash(a)) == 64


@pytest.mark.parametrize("change", [dict(extent=4), dict(dtype="float64"), dict(kind="serial"),
                                    dict(axis="spatial"), dict(bias=1.0), dict(extra=True)])
def test_hash_sees_every_difference(change):
    a, b = conv(("x", "w", "y", "acc")), conv(("x", "w", "y", "acc"), **change)
    assert structural_hash(a) != structural_hash(b) and not structural_equal(a, b)


def test_hash_sees_which_parameter_is_read():
    A2 = Buffer("A2", (8, 8))
    body = Store(Z, (Const(0),), Cast("int32", A[Const(0), Const(1)]))
    assert structural_hash(Kernel("k", (A, A2), (Z,), body)) != structural_hash(Kernel("k", (A2, A), (Z,), body))


def test_hash_is_stable_across_processes():
    kernel = conv(("x", "w", "y", "acc"))
    root = pathlib.Path(__file__).resolve().parents[1]
    # `ir` imports nothing outside itself, so it loads as a top-level package in a fresh process.
    code = (f"import sys; sys.path.insert(0, {str(root)!r}); import ir; "
            "print(ir.structural_hash(ir.parse_kernel(sys.stdin.read())))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], input=print_kernel(kernel), text=True,
                             capture_output=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.stdout.strip() == structural_hash(kernel)
