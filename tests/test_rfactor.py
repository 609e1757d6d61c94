"""rfactor: a reduction split into vector lanes of partial results keeps its value, for every
reduction operator, and refuses what it cannot split."""
import numpy as np
import pytest

from nestor.codegen import run_kernel
from nestor.ir import For, parse_kernel, print_kernel, verify, walk_stmts
from nestor.passes import ScheduleError, parse_pipeline
from tests.test_passes import inputs

ROWS = """
kernel rows(X: f32[3, 64]) -> (S: f32[3], M: f32[3], P: f32[3], N: f32[3]) {
  for i in 0..3 {
    S[i] = 0.0
    for r in 0..64 reduce { S[i] += exp(X[i, r]) * 0.5 }
    M[i] = -inf
    for q in 0..64 reduce { M[i] max= X[i, q] }
    P[i] = 1.0
    for p in 0..64 reduce { P[i] *= 1.0 + X[i, p] * 0.01 }
    N[i] = inf
    for n in 0..64 reduce { N[i] min= X[i, n] }
  }
}
"""


@pytest.mark.parametrize("factor", [2, 16, 64])
def test_every_reduction_operator_keeps_its_value(factor):
    kernel = parse_kernel(ROWS)
    # loops get canonical names when a schedule applies: i -> i0, r q p n -> r0 .. r3
    steps = "; ".join(f"rfactor(r{n}, {factor}); vectorize(r{n}_i); vectorize(r{n}_z)" for n in range(4))
    split = parse_pipeline(steps + "; parallel(i0)").apply(kernel)
    verify(split)
    assert parse_kernel(print_kernel(split)) == split
    kinds = {s.var: (s.kind, s.axis, s.extent) for s in walk_stmts(split.body) if isinstance(s, For)}
    assert kinds["r0_i"] == ("vectorized", "spatial", factor)
    assert kinds["r0_o"] == ("serial", "reduce", 64 // factor) and kinds["r0_c"][1:] == ("reduce", factor)
    args = inputs(kernel)
    for got, want in zip(run_kernel(split, args), run_kernel(kernel, args)):
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_integer_max_starts_from_the_smallest_integer():
    kernel = parse_kernel("""kernel imax(X: i32[2, 16]) -> (M: i32[2]) {
      for i in 0..2 { M[i] = -2147483648; for r in 0..16 reduce { M[i] max= X[i, r] } } }""")
    x = -np.arange(32, dtype=np.int32).reshape(2, 16) - 1000
    (got,) = run_kernel(parse_pipeline("rfactor(r0, 8)").apply(kernel), [x])
    np.testing.assert_array_equal(got, x.max(axis=1))


@pytest.mark.parametrize("factor", [5, 32, 37])
def test_with_a_tail_a_factor_that_does_not_divide_keeps_the_value(factor):
    """Rows of prime length (37) on GPU threads: the last chunk's lanes past the row add nothing."""
    kernel = parse_kernel(ROWS.replace("64", "37"))
    steps = "; ".join(f"rfactor(r{n}, {factor}, tail=true)" for n in range(4))
    split = parse_pipeline(steps).apply(kernel)
    verify(split)
    assert parse_kernel(print_kernel(split)) == split
    kinds = {s.var: s.extent for s in walk_stmts(split.body) if isinstance(s, For)}
    assert kinds["r0_o"] == -(-37 // factor) and kinds["r0_i"] == factor
    args = inputs(kernel)
    for got, want in zip(run_kernel(split, args), run_kernel(kernel, args)):
        np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("step,reason", [
    ("rfactor(r0, 65, tail=true)", "or above the extent"),
    ("rfactor(i0, 4)", "serial reduction loop"),
    ("rfactor(r0, 48)", "does not divide its extent 64"),
    ("rfactor(r0, 1)", "or is below 2"),
    ("rfactor(x, 8)", "no such loop"),
])
def test_refusals_name_the_loop_and_reason(step, reason):
    with pytest.raises(ScheduleError, match=reason):
        parse_pipeline(step).apply(parse_kernel(ROWS))


def test_refuses_what_is_not_one_reduction():
    moving = parse_kernel("""kernel cum(X: f32[8]) -> (Y: f32[8]) {
      for r in 0..8 reduce { Y[r] += X[r] } }""")
    with pytest.raises(ScheduleError, match="moves with the loop"):
        parse_pipeline("rfactor(r0, 4)").apply(moving)
    two = parse_kernel("""kernel two(X: f32[8]) -> (Y: f32[1], Z: f32[1]) {
      for r in 0..8 reduce { Y[0] += X[r]; Z[0] += X[r] } }""")
    with pytest.raises(ScheduleError, match="one reduction store"):
        parse_pipeline("rfactor(r0, 4)").apply(two)
    reads = parse_kernel("""kernel rd(X: f32[8]) -> (Y: f32[1]) {
      for r in 0..8 reduce { Y[0] += X[r] * Y[0] } }""")
    with pytest.raises(ScheduleError, match="reads Y"):
        parse_pipeline("rfactor(r0, 4)").apply(reads)


def test_rfactor_into_shared_memory_and_bad_scope():
    from nestor.ir import Allocate, walk_stmts
    from nestor.passes import Rfactor, ScheduleError
    kernel = parse_kernel("""
    kernel s(X: f32[4, 64]) -> (Y: f32[4]) {
      for i in 0..4 {
        Y[i] = 0.0
        for r in 0..64 reduce { Y[i] += X[i, r] }
      }
    }""")
    out = Rfactor("r", 16, "shared").apply(kernel)
    (alloc,) = [s for s in walk_stmts(out.body) if isinstance(s, Allocate)]
    assert (alloc.buffer.shape, alloc.buffer.scope) == ((16,), "shared")
    x = np.random.default_rng(0).standard_normal((4, 64)).astype("float32")
    np.testing.assert_allclose(run_kernel(out, [x])[0], x.sum(1), rtol=1e-5)
    with pytest.raises(ScheduleError, match="scope 'global' is not one of local, shared"):
        Rfactor("r", 16, "global").apply(kernel)
