"""Ops ONNX defines as functions (frontend/functions.py), through the whole import and compile,
against onnx.reference on small shapes."""
import numpy as np
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

import nestor.backend as backend
from nestor.frontend import import_model
from tests.op_harness import single_node_model

RNG = np.random.default_rng(0)


def model(node, inputs: dict, opset: int):
    return single_node_model(node, inputs, opset=opset)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


CASES = [
    pytest.param(helper.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1),
                 {"q": f32(1, 2, 4, 8), "k": f32(1, 2, 6, 8), "v": f32(1, 2, 6, 8)}, 23, id="causal"),
    pytest.param(helper.make_node("Attention", ["q", "k", "v", "mask"], ["y"], q_num_heads=4,
                                  kv_num_heads=2, softcap=3.0),
                 {"q": f32(2, 3, 16), "k": f32(2, 5, 8), "v": f32(2, 5, 8), "mask": f32(3, 5)}, 23,
                 id="3d-gqa-mask-softcap"),
    pytest.param(helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=-1, epsilon=1e-3),
                 {"x": f32(2, 3, 8), "s": f32(8)}, 23, id="rmsnorm"),
    pytest.param(helper.make_node("RotaryEmbedding", ["x", "cos", "sin", "pos"], ["y"], interleaved=1),
                 {"x": f32(1, 2, 3, 8), "cos": f32(4, 4), "sin": f32(4, 4),
                  "pos": np.array([[0, 2, 3]], np.int64)}, 23, id="rotary-interleaved"),
]


@pytest.mark.parametrize("node, inputs, opset", CASES)
def test_function_ops_match_the_reference(node, inputs, opset):
    m = model(node, inputs, opset)
    want = ReferenceEvaluator(m).run(None, inputs)
    got = backend.prepare(m).run(inputs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_attention_becomes_matmul_and_softmax_kernels():
    """Expanded, the products and the softmax are Nestor's own MatMul and Softmax ops (which
    the tuner's rules know), not one opaque kernel."""
    inputs = {"q": f32(1, 2, 4, 8), "k": f32(1, 2, 6, 8), "v": f32(1, 2, 6, 8)}
    g = import_model(model(helper.make_node("Attention", ["q", "k", "v"], ["y"]), inputs, 23))
    ops = [n.op_type for n in g.nodes]
    assert ops.count("MatMul") == 2 and "Softmax" in ops, ops


def test_if_on_a_constant_condition_is_its_taken_branch():
    x = f32(2, 3)
    branches = [helper.make_graph([helper.make_node(op, ["x"], ["out"])], name, [],
                                  [helper.make_tensor_value_info("out", 1, [2, 3])])
                for op, name in (("Neg", "then"), ("Abs", "else"))]
    for cond, want in ((True, -x), (False, np.abs(x))):
        node = helper.make_node("If", ["c"], ["y"], then_branch=branches[0], else_branch=branches[1])
        m = single_node_model(node, {"x": x}, {"c": np.array(cond)}, opset=17)
        assert "If" not in [n.op_type for n in import_model(m).nodes]
        np.testing.assert_allclose(backend.prepare(m).run([x])[0], want)
