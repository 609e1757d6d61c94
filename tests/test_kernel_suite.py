"""The benchmark's kernels are written twice (ONNX node, TVM tensor expression): both must compute
the same thing, or the comparison with MetaSchedule compares different work."""
import numpy as np
import pytest

import nestor
from nestor.autotune.kernel_suite import UNSEEN


def _te_output(suite, inputs):
    import tvm
    func = suite.prim_func()
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(x, dev) for x in inputs]
    out = tvm.runtime.tensor(np.zeros(suite.output, np.float32), dev)
    lib["main"](*args, out)
    return out.numpy()


@pytest.mark.parametrize("name", sorted(UNSEEN))
def test_unseen_kernels_onnx_and_tensor_expression_agree(name):
    suite = UNSEEN[name]
    inputs = suite.random_inputs()
    (got,) = nestor.compile(suite.onnx_model()).run(inputs)
    want = _te_output(suite, inputs)
    assert got.shape == tuple(suite.output)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_unseen_kernels_have_the_shapes_the_issue_names():
    extents = {d for k in UNSEEN.values() for _, shape in k.inputs for d in shape}
    assert {197, 77, 688, 127, 509, 251} <= extents  # no vector width divides them
    strides = [k for k in UNSEEN if k.endswith("_s2")]
    assert len(strides) >= 3 and len(UNSEEN) >= 10


def test_bench_kernels_names_default_to_the_suite_and_unseen_to_the_wider_zoos():
    from nestor.autotune.kernel_suite import SUITE, kernels_named
    from nestor.ir.errors import NestorError
    assert list(kernels_named(None)) == list(SUITE)
    assert list(kernels_named(["conv3x3", "unseen", "matmul2048"])) == ["conv3x3", *UNSEEN, "matmul2048"]
    with pytest.raises(NestorError, match=r"unknown kernel\(s\) \['bogus'\]; choose from matmul512"):
        kernels_named(["bogus"])
