"""The IR verifier: it accepts valid kernels and names each kind of error."""
import pytest

from nestor.ir import (Allocate, Binary, Buffer, Call, Cast, Compare, Const, For, If, Kernel, Load, Select,
                       Seq, Store, Var, VerifyError, parse_kernel, verify)

A = Buffer("A", (8, 8))
X = Buffer("X", (10,), "int32")
Y = Buffer("Y", (8, 8))
i, j, k = Var("i"), Var("j"), Var("k")


def kernel(body, inputs=(A, X), outputs=(Y,)):
    return Kernel("kern", inputs, outputs, body)


def nest(store, kinds=("parallel", "vectorized")):
    return For("i", 8, For("j", 8, store, kinds[1]), kinds[0])


VALID = [
    """kernel dense_relu(A: f32[128, 768], W: f32[768, 3072], b: f32[3072]) -> (Y: f32[128, 3072]) {
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
    }""",
    # padding: the select and the && guard loads that would be out of bounds
    """kernel pad_conv(X: f32[8], W: f32[3]) -> (Y: f32[8]) {
      for o in 0..8 { Y[o] = 0.0
        for r in 0..3 reduce unrolled {
          Y[o] += select(o + r >= 1 && o + r - 1 < 8, X[o + r - 1], 0.0) * W[r]
        }
      }
    }""",
    """kernel guard(X: f32[10], B: bool[10]) -> (Y: f32[10]) {
      for io in 0..4 { for ii in 0..3 {
        if io * 3 + ii < 10 { Y[io * 3 + ii] = exp(X[io * 3 + ii]) }
        if io * 3 + ii < 10 && B[io * 3 + ii] { Y[0] = 1.0 }
      } }
    }""",
    """kernel index_math(X: f32[4, 8], I: i32[8], S: f64[]) -> (Y: f32[32], Z: f64[]) {
      for i in 0..4 { for j in 0..8 {
        Y[i * 8 + j] = X[(i * 8 + j) // 8, (i * 8 + j) % 8] + X[3 - i, 7 - j + (j - j)]
        Y[min(i + j, 31)] = X[I[j], max(j - 1, 0)]
        Y[i64(i) * 8:i64 + i64(j)] = f32(S[])
      } }
      Z[] = S[]
    }""",
    """kernel gpu(X: f32[64]) -> (Y: f32[64]) {
      for b in 0..2 blockIdx.x { for t in 0..32 threadIdx.x {
        alloc sh: f32[32] shared { sh[t] = X[b * 32 + t]; Y[b * 32 + t] = sh[31 - t] }
      } }
    }""",
]


@pytest.mark.parametrize("text", VALID)
def test_valid_kernels_pass(text):
    verify(parse_kernel(text))


def test_reduce_store_legal_inside_reduce_loop_through_spatial_loops():
    body = For("k", 8, nest(Store(Y, (i, j), A[i, k], "max")), axis="reduce")
    verify(kernel(body))


def fails(body, *words, inputs=(A, X), outputs=(Y,)):
    with pytest.raises(VerifyError) as info:
        verify(kernel(body, inputs, outputs))
    message = str(info.value)
    assert message.startswith("kernel kern: ")
    for word in words:
        assert word in message, message
    return message


def test_undefined_loop_variable():
    fails(For("i", 8, Store(Y, (i, k), Const(0.0, "float32"))), "undefined loop variable k", "Y[i, k] = 0.0")


def test_loop_variable_shadowing():
    fails(For("i", 8, For("i", 8, Store(Y, (i, i), Const(0.0, "float32")))), "loop variable i shadows",
          "`for i in 0..8`")


def test_sequential_loops_may_reuse_a_name():
    store = Store(Y, (i, i), Const(0.0, "float32"))
    verify(kernel(Seq((For("i", 8, store), For("i", 8, store)))))


def test_unknown_buffer():
    Q = Buffer("Q", (8,))
    fails(For("i", 8, Store(Y, (i, i), Q[i])), "buffer Q is neither a parameter nor an enclosing allocation")
    fails(For("i", 8, Store(Q, (i,), A[i, i])), "buffer Q is neither")


def test_buffer_used_after_its_allocation():
    t = Buffer("t", (8,), scope="local")
    body = For("i", 8, Seq((Allocate(t, Store(t, (i,), Const(0.0, "float32"))), Store(Y, (i, i), t[i]))))
    fails(body, "buffer t is neither")


def test_buffer_that_does_not_match_its_declaration():
    fails(For("i", 8, Store(Y, (i, i), Load(Buffer("A", (8, 9)), (i, i)))), "A is used as f32[8, 9]",
          "declared as f32[8, 8]")


def test_wrong_number_of_indices():
    fails(For("i", 8, Store(Y, (i,), Const(0.0, "float32"))), "Y has 2 dimensions but is indexed with 1")


def test_store_into_input():
    fails(nest(Store(A, (i, j), Const(0.0, "float32"))), "store into input buffer A", "`A[i, j] = 0.0`")


def test_reduce_store_outside_reduce_loop():
    fails(nest(Store(Y, (i, j), A[i, j], "add")), "reduction store outside any reduce loop", "Y[i, j] += A[i, j]")


def test_dtype_mismatches():
    zero = Const(0.0, "float32")
    fails(nest(Store(Y, (i, j), A[i, j] + Cast("float32", X[i]) * Const(2.0, "float64"))),
          "operands of mul have different dtypes float32 and float64")
    fails(nest(Store(Y, (i, j), Cast("int32", A[i, j]))), "stores a int32 value into Y of dtype float32")
    fails(nest(If(X[i], Store(Y, (i, j), zero))), "if condition has dtype int32, not bool")
    fails(nest(Store(Y, (i, j), Select(A[i, j], zero, zero))), "select condition has dtype float32")
    fails(nest(Store(Y, (i, j), Select(Compare("lt", i, j), zero, X[i]))), "select branches have different")
    fails(nest(Store(Y, (Cast("float32", i), j), zero)), "index f32(i) of Y has dtype float32")
    fails(nest(Store(Y, (i, j), Call("pow", (A[i, j],)))), "pow takes 2 argument")
    fails(nest(Store(Y, (i, j), Binary("bitand", A[i, j], zero))), "bitand of float32 operands")
    fails(nest(Store(Y, (i, j), Cast("float32", Binary("shl", Compare("lt", i, j), Const(True, "bool"))))),
          "shl of bool operands")


def test_non_positive_extent():
    fails(For("i", 0, Store(Y, (i, i), Const(0.0, "float32"))), "loop i has non-positive extent 0")
    fails(For("i", -2, Store(Y, (i, i), Const(0.0, "float32"))), "non-positive extent -2")


@pytest.mark.parametrize("index, words", [
    (i + 8, ["index i + 8 of Y (dimension 0, size 8) ranges over [8, 15] and is always out of bounds"]),
    (i - 9, ["ranges over [-9, -2] and is always"]),
    (i + 1, ["ranges over [1, 8] and is sometimes out of bounds"]),
    (i * 2, ["ranges over [0, 14] and is sometimes"]),
    (Binary("max", i, j + 1), ["ranges over [1, 8]"]),
    (i // 2 + j, ["ranges over [0, 10]"]),
])
def test_out_of_bounds(index, words):
    fails(nest(Store(Y, (index, j), Const(0.0, "float32"))), *words)
    fails(nest(Store(Y, (i, j), A[j, index])), *words[:-1], "of A (dimension 1")


def test_guarded_partial_out_of_bounds_is_accepted():
    zero = Const(0.0, "float32")
    in_range = Compare("lt", i + 1, Const(8))
    verify(kernel(nest(If(in_range, Store(Y, (i + 1, j), zero)))))
    verify(kernel(nest(If(Compare("ge", i, Const(8)), Seq(()), Store(Y, (i + 1, j), zero)))))
    verify(kernel(nest(Store(Y, (i, j), Select(in_range, A[i + 1, j], zero)))))


def test_index_loaded_from_memory_is_not_bounds_checked():
    verify(kernel(nest(Store(Y, (X[i] * 100, j), Const(0.0, "float32")))))
