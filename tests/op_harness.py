"""Run one ONNX node through Nestor's lowering and codegen, and through ONNX's reference.

Used by the op tests: `check_node(node, {name: array}, opset=17)` asserts that Nestor's result
matches onnx.reference.ReferenceEvaluator's on the same inputs.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from nestor.frontend.ops import lowering_for
from nestor.frontend.ops.registry import Alias, TensorInfo, make_context
from nestor.ir import canonical


def single_node_model(node, inputs: dict, consts: dict | None = None, opset: int = 17):
    consts = consts or {}
    vis = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for n, a in inputs.items()]
    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in consts.items()]
    outs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output]
    graph = helper.make_graph([node], "g", vis, outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return shape_inference.infer_shapes(model, strict_mode=True)


def run_nestor_node(node, inputs: dict, consts: dict | None = None, opset: int = 17):
    from nestor.codegen import run_kernel
    consts = consts or {}
    model = single_node_model(node, inputs, consts, opset)
    infos = {vi.name: vi for vi in list(model.graph.output) + list(model.graph.value_info)}

    def info_of(name):
        if name == "":
            return None
        if name in inputs:
            return TensorInfo(tuple(inputs[name].shape), canonical(inputs[name].dtype))
        if name in consts:
            v = np.asarray(consts[name])
            return TensorInfo(tuple(v.shape), canonical(v.dtype), v)
        t = infos[name].type.tensor_type
        return TensorInfo(tuple(d.dim_value for d in t.shape.dim),
                          canonical(helper.tensor_dtype_to_np_dtype(t.elem_type)))

    ctx = make_context(node, node.name or node.op_type, opset,
                       [info_of(n) for n in node.input], [info_of(n) for n in node.output])
    lowered = lowering_for(node.op_type)(ctx)
    values = {**inputs, **consts}
    if isinstance(lowered, Alias):
        src = values[node.input[lowered.input_index]]
        return [np.reshape(src, ctx.outputs[0].shape)]
    args = [np.asarray(values[node.input[i]]) for i in lowered.args]
    return run_kernel(lowered.kernel, args)


def run_reference(node, inputs: dict, consts: dict | None = None, opset: int = 17):
    model = single_node_model(node, inputs, consts, opset)
    return ReferenceEvaluator(model).run(None, inputs)


def check_node(node, inputs: dict, consts: dict | None = None, opset: int = 17,
               rtol: float = 1e-5, atol: float = 1e-5):
    got = run_nestor_node(node, inputs, consts, opset)
    want = run_reference(node, inputs, consts, opset)
    assert len(got) >= 1
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert g.shape == w.shape, (g.shape, w.shape)
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
