"""The default schedule preserves results on the kernels the frontend makes."""
import numpy as np
import pytest
from onnx import helper

from nestor.codegen import run_kernel
from nestor.ir import verify
from nestor.passes import default_schedule
from nestor.frontend.ops import lowering_for, make_context
from nestor.frontend.ops.registry import TensorInfo
from tests.op_harness import single_node_model

CASES = [
    ("Conv", {"x": (1, 8, 14, 14), "w": (16, 8, 3, 3)}, dict(pads=[1, 1, 1, 1])),
    ("Conv", {"x": (1, 3, 20, 20), "w": (8, 3, 7, 7)}, dict(strides=[2, 2], pads=[3, 3, 3, 3])),
    ("MatMul", {"a": (2, 24, 40), "b": (40, 48)}, {}),
    ("Gemm", {"a": (3, 64), "b": (10, 64)}, dict(transB=1)),
    ("ReduceSum", {"x": (5, 12)}, dict(keepdims=1)),
    ("ReduceMean", {"x": (4, 6, 7)}, dict(axes=[1], keepdims=0)),
    ("AveragePool", {"x": (1, 4, 9, 9)}, dict(kernel_shape=[3, 3], strides=[2, 2])),
    ("Softmax", {"x": (3, 40)}, dict(axis=-1)),
    ("Relu", {"x": (2, 3, 35)}, {}),
    ("Relu", {"x": (4, 128, 64)}, {}),
    ("Softmax", {"x": (3, 197)}, dict(axis=-1)),
    ("Relu", {"x": (2, 3, 37)}, {}),
]


@pytest.mark.parametrize("op,shapes,attrs", CASES, ids=[c[0] for c in CASES])
def test_default_schedule_preserves_results(op, shapes, attrs):
    rng = np.random.default_rng(0)
    inputs = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    opset = 13 if op in ("ReduceSum", "ReduceMean") and "axes" in attrs else 17
    node = helper.make_node(op, list(inputs), ["y"], **attrs)
    model = single_node_model(node, inputs, opset=opset)
    out = model.graph.output[0].type.tensor_type
    ctx = make_context(node, op, opset, [TensorInfo(a.shape, "float32") for a in inputs.values()],
                       [TensorInfo(tuple(d.dim_value for d in out.shape.dim), "float32")])
    lowered = lowering_for(op)(ctx)
    scheduled = default_schedule(lowered.kernel)
    verify(scheduled)
    args = [inputs[node.input[i]] for i in lowered.args]
    want = run_kernel(lowered.kernel, args)
    got = run_kernel(scheduled, args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_default_schedule_annotates_big_kernels():
    from nestor.ir import For, walk_stmts
    x = np.zeros((4, 128, 64), np.float32)
    node = helper.make_node("Relu", ["x"], ["y"])
    ctx = make_context(node, "relu", 17, [TensorInfo(x.shape, "float32")], [TensorInfo(x.shape, "float32")])
    kernel = default_schedule(lowering_for("Relu")(ctx).kernel)
    kinds = {s.kind for s in walk_stmts(kernel.body) if isinstance(s, For)}
    assert {"parallel", "vectorized"} <= kinds


@pytest.mark.parametrize("width", [197, 37, 34])
def test_a_loop_no_vector_width_divides_is_vectorized_its_last_vector_guarded(width):
    """Rows of prime length (a ViT's 197 tokens) ran scalar: their exp was libm-slow per element.
    Now split by the lanes, the last vector guarded (codegen peels it off as a shorter one)."""
    from nestor.ir import For, If, walk_stmts
    node = helper.make_node("Exp", ["x"], ["y"])
    ctx = make_context(node, "exp", 17, [TensorInfo((5, width), "float32")], [TensorInfo((5, width), "float32")])
    kernel = lowering_for("Exp")(ctx).kernel
    scheduled = default_schedule(kernel)
    (vector,) = [s for s in walk_stmts(scheduled.body) if isinstance(s, For) and s.kind == "vectorized"]
    assert vector.extent == 16 and isinstance(vector.body, If)
    x = np.random.default_rng(0).standard_normal((5, width)).astype(np.float32)
    np.testing.assert_allclose(run_kernel(scheduled, [x])[0], np.exp(x), rtol=1e-5)
