"""ONNX's own node test cases, through nestor.backend, for every op the foundation issue names.

Each op must pass all of its single-op cases that Nestor attempts; cases are skipped only for a
reason conformance.run_case gives (an element type Nestor does not compile, such as float8
E8M0 or string, or a non-tensor input). The full sweep over all 1,884 cases is
examples/onnx_node_tests.py.
"""
import pytest

from nestor.conformance import case_op, node_cases, run_case

OPS = ["Conv", "Gemm", "Relu", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool",
       "LRN", "Concat", "Dropout", "Reshape", "Flatten", "Transpose", "Softmax", "Sum",
       "ConstantOfShape", "MatMul", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Tanh",
       "Sigmoid", "ReduceMean", "LayerNormalization", "Gather", "Slice", "Squeeze", "Unsqueeze",
       "Where", "Cast", "Shape", "Expand"]


@pytest.fixture(scope="module")
def cases_by_op():
    by_op = {}
    for case in node_cases():
        by_op.setdefault(case_op(case), []).append(case)
    return by_op


@pytest.mark.parametrize("op", OPS)
def test_op_passes_its_onnx_node_cases(op, cases_by_op):
    results = [run_case(c) for c in cases_by_op.get(op, [])]
    failures = [f"{r.name}: {r.detail}" for r in results if r.status == "fail"]
    assert not failures, "\n".join(failures)
    assert any(r.status == "pass" for r in results), f"no {op} case ran"
