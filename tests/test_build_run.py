"""Kernels of one build run by name from it (CompiledKernels.run), checked as run_kernel checks."""
import numpy as np
import pytest

from nestor.codegen import build
from nestor.ir import parse_kernel

DOUBLE = """kernel double(X: f32[4, 3]) -> (Out: f32[4, 3]) {
  for i in 0..4 {
    for j in 0..3 { Out[i, j] = X[i, j] * 2.0 }
  }
}"""

ROW_SUMS = """kernel row_sums(X: f32[4, 3]) -> (Out: f32[4]) {
  for i in 0..4 {
    Out[i] = 0.0
    for j in 0..3 reduce { Out[i] += X[i, j] }
  }
}"""


def test_each_kernel_of_one_build_runs_by_name():
    double, row_sums = parse_kernel(DOUBLE), parse_kernel(ROW_SUMS)
    module = build([double, row_sums])
    x = np.arange(12, dtype="float32").reshape(4, 3)
    np.testing.assert_array_equal(module.run(double, [x])[0], x * 2)
    np.testing.assert_array_equal(module.run(row_sums, [x])[0], x.sum(axis=1))


def test_wrong_input_is_refused_naming_it():
    double = parse_kernel(DOUBLE)
    with pytest.raises(ValueError, match=r"input X wants float32\[4, 3\], got float32\[3, 4\]"):
        build([double]).run(double, [np.zeros((3, 4), "float32")])


def test_kernel_not_in_the_build_is_a_key_error():
    module = build([parse_kernel(DOUBLE)])
    with pytest.raises(KeyError, match="row_sums"):
        module.run(parse_kernel(ROW_SUMS), [np.zeros((4, 3), "float32")])

