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


@pytest.mark.parametrize("factor", [2, 16, 64])
def test_tree_combine_folds_the_partials_in_vector_halves(factor):
    kernel = parse_kernel(ROWS)
    steps = "; ".join(f"rfactor(r{n}, {factor}); vectorize(r{n}_i); tree_combine(r{n}_c)" for n in range(4))
    halves = [f"r0_c_h{'' if k == 0 else f'_{k}'}" for k in range(factor.bit_length() - 1)]
    folded = parse_pipeline(f"{steps}; {'; '.join(f'vectorize({h})' for h in halves)}; parallel(i0)").apply(kernel)
    verify(folded)
    assert parse_kernel(print_kernel(folded)) == folded
    loops = {s.var: (s.kind, s.extent) for s in walk_stmts(folded.body) if isinstance(s, For)}
    # 64 partials: 32, 16, ..., 1 lanes, each halving one vector step; no serial combine left
    assert [loops[h] for h in halves] == [("vectorized", factor >> (k + 1)) for k in range(len(halves))]
    assert loops["r0_c"] == ("serial", 1)
    args = inputs(kernel)
    for got, want in zip(run_kernel(folded, args), run_kernel(kernel, args)):
        np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("pipeline,reason", [
    ("rfactor(r0, 16, tail=true); tree_combine(r0_o)", "not a combine of partial results"),
    ("rfactor(r0, 32); split(r0_c, 16); tree_combine(r0_c_o)", "not a combine of partial results"),
    ("tree_combine(r0)", "not a combine of partial results"),
])
def test_tree_combine_refusals(pipeline, reason):
    with pytest.raises(ScheduleError, match=reason):
        parse_pipeline(pipeline).apply(parse_kernel(ROWS))


def test_tree_combine_needs_a_power_of_two_and_the_end_of_the_partials():
    odd = parse_kernel("""kernel odd(X: f32[12]) -> (Y: f32[1]) {
      alloc P: f32[6] local {
        for z in 0..6 { P[z] = 0.0 }
        for r in 0..12 reduce { P[r % 6] += X[r] }
        for c in 0..6 reduce { Y[0] += P[c] } } }""")
    with pytest.raises(ScheduleError, match="needs a power of two"):
        parse_pipeline("tree_combine(r1)").apply(odd)
    # P read again after its combine: the halvings would have changed it
    reread = parse_kernel("""kernel reread(X: f32[8]) -> (Y: f32[1], Z: f32[1]) {
      alloc P: f32[4] local {
        for z in 0..4 { P[z] = X[z] }
        for c in 0..4 reduce { Y[0] += P[c] }
        Z[0] = P[1] } }""")
    with pytest.raises(ScheduleError, match="last statement in the allocation of P"):
        parse_pipeline("tree_combine(r0)").apply(reread)


def test_a_loop_reading_what_no_iteration_writes_vectorizes_but_not_an_overlap():
    # the halving's shape: iteration h writes P[h] and reads P[h + 4], which no iteration writes
    text = """kernel half(X: f32[8]) -> (Y: f32[4]) {
      alloc P: f32[8] local {
        for z in 0..8 { P[z] = X[z] }
        for h in 0..4 { P[h] += P[h + OFFSET] }
        for y in 0..4 { Y[y] = P[y] } } }"""
    kernel = parse_kernel(text.replace("OFFSET", "4"))
    out = parse_pipeline("vectorize(i1)").apply(kernel)
    x = np.arange(8, dtype=np.float32)
    np.testing.assert_allclose(run_kernel(out, [x])[0], x[:4] + x[4:])
    # reading P[h + 1]: iteration h + 1 writes it, so the order matters
    with pytest.raises(ScheduleError, match="not independent"):
        parse_pipeline("vectorize(i1)").apply(parse_kernel(text.replace("OFFSET", "1")))
