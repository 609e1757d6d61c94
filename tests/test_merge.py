"""merge: consecutive sibling loops run as one when each iteration only needs its own row."""
import numpy as np
import pytest

from nestor.codegen import run_kernel
from nestor.ir import For, parse_kernel, print_kernel, verify, walk_stmts
from nestor.passes import ScheduleError, parse_pipeline
from tests.test_passes import inputs

ROWS = """
kernel norm(X: f32[6, 32]) -> (Y: f32[6, 32]) {
  alloc M: f32[6, 1] global {
    for i in 0..6 { M[i, 0] = 0.0; for r in 0..32 reduce { M[i, 0] += X[i, r] } }
    for j in 0..6 { for c in 0..32 { Y[j, c] = X[j, c] - M[j, 0] / 32.0 } }
  }
}
"""


def test_row_nests_merge_and_keep_results():
    kernel = parse_kernel(ROWS)
    merged = parse_pipeline("merge(i0, i1); parallel(i0)").apply(kernel)  # canonical: i -> i0, j -> i1
    verify(merged)
    assert parse_kernel(print_kernel(merged)) == merged
    top = [s for s in walk_stmts(merged.body) if isinstance(s, For) and s.extent == 6]
    assert [l.var for l in top] == ["i0"] and top[0].kind == "parallel"
    args = inputs(kernel)
    np.testing.assert_allclose(run_kernel(merged, args)[0], run_kernel(kernel, args)[0], rtol=1e-6)


@pytest.mark.parametrize("steps", ["parallel(i0); parallel(i1)", "parallel(i0)"])
def test_parallel_loops_merge_into_a_parallel_loop(steps):
    kernel = parse_kernel(ROWS)
    merged = parse_pipeline(steps + "; merge(i0, i1)").apply(kernel)
    kinds = {s.var: s.kind for s in walk_stmts(merged.body) if isinstance(s, For)}
    assert kinds["i0"] == "parallel" and "i1" not in kinds
    args = inputs(kernel)
    np.testing.assert_allclose(run_kernel(merged, args)[0], run_kernel(kernel, args)[0], rtol=1e-6)


@pytest.mark.parametrize("text,step,reason", [
    # the second nest reads the next row of M: it is not made yet in a merged loop
    (ROWS.replace("M[j, 0] / 32.0", "M[(j + 1) % 6, 0] / 32.0"), "merge(i0, i1)", "another iteration's data"),
    (ROWS, "merge(i0, r0)", "only equal loops merge"),
    (ROWS, "unroll(i1); merge(i0, i1)", "only equal loops merge"),
    # a serial second loop whose iterations depend on each other cannot join a parallel one
    (ROWS.replace("Y[j, c] = X[j, c] - M[j, 0] / 32.0", "Y[0, c] += X[j, c] - M[j, 0] / 32.0"),
     "parallel(i0); merge(i0, i1)", "not independent"),
    (ROWS, "merge(i1, i0)", "not the statement right after"),
])
def test_refusals(text, step, reason):
    with pytest.raises(ScheduleError, match=reason):
        parse_pipeline(step).apply(parse_kernel(text))


# heads x tokens fused into one loop over rows: the statistics indexed by i // 5 and i % 5
FUSED_ROWS = """
kernel norm(X: f32[3, 5, 32]) -> (Y: f32[3, 5, 32]) {
  alloc M: f32[3, 5, 1] global {
    for i in 0..15 { M[i // 5, i % 5, 0] = 0.0; for r in 0..32 reduce { M[i // 5, i % 5, 0] += X[i // 5, i % 5, r] } }
    for j in 0..15 { for c in 0..32 { Y[j // 5, j % 5, c] = X[j // 5, j % 5, c] - M[j // 5, j % 5, 0] / 32.0 } }
  }
}
"""


def test_rows_of_a_fused_loop_merge():
    kernel = parse_kernel(FUSED_ROWS)
    merged = parse_pipeline("merge(i0, i1); parallel(i0)").apply(kernel)
    assert [s.var for s in walk_stmts(merged.body) if isinstance(s, For) and s.extent == 15] == ["i0"]
    args = inputs(kernel)
    np.testing.assert_allclose(run_kernel(merged, args)[0], run_kernel(kernel, args)[0], rtol=1e-6)


@pytest.mark.parametrize("text", [
    # a head's statistic read by every row of the head, while each row writes its own
    FUSED_ROWS.replace("M[j // 5, j % 5, 0] / 32.0", "M[j // 5, 0, 0] / 32.0"),
    # the next head's row
    FUSED_ROWS.replace("M[j // 5, j % 5, 0] / 32.0", "M[(j + 5) % 15 // 5, (j + 5) % 15 % 5, 0] / 32.0"),
    # the same expressions of the row everywhere, but five rows share each slot of M
    FUSED_ROWS.replace("M[i // 5, i % 5, 0]", "M[i // 5, 0, 0]").replace("M[j // 5, j % 5, 0]", "M[j // 5, 0, 0]"),
])
def test_fused_rows_that_share_data_do_not_merge(text):
    with pytest.raises(ScheduleError, match="another iteration's data"):
        parse_pipeline("merge(i0, i1)").apply(parse_kernel(text))
