"""The memory plan never lets two tensors that are live at the same time share bytes."""
import numpy as np
import pytest

import nestor
from nestor.codegen.memory import plan_memory
from nestor.ir import itemsize
from nestor.zoo import encoder_block, light_model


def storage_lifetimes(graph, plan):
    """First write .. last read of each storage owner (a tensor stored inside another counts
    for its owner: an alias for its source, an in-place Concat's input for its output)."""
    root = {t: owner for t, (owner, _) in plan.inside.items()}
    live = {}
    for pos, node in enumerate(graph.nodes):
        for t in node.inputs + node.outputs:
            owner = root.get(t, t)
            lo, hi = live.get(owner, (pos, pos))
            live[owner] = (min(lo, pos), max(hi, pos))
    for t in graph.outputs:
        owner = root.get(t, t)
        live[owner] = (live[owner][0], len(graph.nodes))
    return live


@pytest.mark.parametrize("model", [light_model("densenet121"), light_model("shufflenet"),
                                   encoder_block(seq=16, hidden=64, heads=4, ffn=128)],
                         ids=["densenet121", "shufflenet", "bert_layer"])
def test_live_tensors_never_overlap(model):
    graph = nestor.import_onnx(model)
    plan = plan_memory(graph)
    spans = []
    for t, (first, last) in storage_lifetimes(graph, plan).items():
        p = plan.placements[t]
        if p.kind != "arena":
            continue
        size = graph.types[t].size * itemsize(graph.types[t].dtype)
        assert p.key % 64 == 0
        assert p.key + size <= plan.arena_bytes
        spans.append((t, first, last, p.key, p.key + size))
    assert len(spans) > 10
    for i, (a, f1, l1, lo1, hi1) in enumerate(spans):
        for b, f2, l2, lo2, hi2 in spans[i + 1:]:
            if f1 <= l2 and f2 <= l1:
                assert hi1 <= lo2 or hi2 <= lo1, f"{a} and {b} are live together and overlap"
    assert plan.arena_bytes < plan.naive_bytes


def test_concat_inputs_are_slabs_of_its_output():
    """DenseNet's concatenations nest (each output is the next one's first input); every input
    lies inside the output, one after another. (That an elided Concat runs nothing is checked
    on a small model below; test_models runs DenseNet against ONNX Runtime.)"""
    graph = nestor.import_onnx(light_model("densenet121"))
    plan = plan_memory(graph)
    concats = [n for n in graph.nodes if n.op_type == "Concat"]
    assert concats and {n.name for n in concats} == plan.elided
    size = {t: graph.types[t].size * itemsize(graph.types[t].dtype) for t in graph.types}
    for node in concats:
        out = plan.placements[node.outputs[0]].key
        offsets = [plan.placements[t].key - out for t in node.inputs]
        assert offsets == [sum(size[t] for t in node.inputs[:k]) for k in range(len(node.inputs))]
        assert offsets[-1] + size[node.inputs[-1]] == size[node.outputs[0]]


def concat_model(batch, with_graph_input):
    """y = sigmoid(concat(relu(x), -x [, x])) along the channels."""
    from onnx import TensorProto, helper
    parts = ["a", "b"] + (["x"] if with_graph_input else [])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 16 * len(parts), 4, 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"]),
             helper.make_node("Concat", parts, ["c"], axis=1), helper.make_node("Sigmoid", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "concat", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("batch, with_graph_input, in_place", [(1, False, True), (1, True, False), (2, False, False)])
def test_concat_in_place_only_where_it_can_be(batch, with_graph_input, in_place):
    """Kernel outputs at batch 1 are written straight into the output, one after another. A
    graph input cannot be; at batch 2 an input is two slabs of the output, not one: those
    Concats still copy. Either way the result is right."""
    graph = nestor.import_onnx(concat_model(batch, with_graph_input), optimize=False)
    plan = plan_memory(graph)
    assert bool(plan.elided) == in_place
    if in_place:
        assert plan.placements["b"].key - plan.placements["a"].key == 16 * 4 * 4 * 4
        assert plan.placements["a"].key == plan.placements["c"].key
    x = np.random.default_rng(0).standard_normal((batch, 16, 4, 4)).astype(np.float32)
    parts = [np.maximum(x, 0), -x] + ([x] if with_graph_input else [])
    want = 1 / (1 + np.exp(-np.concatenate(parts, axis=1)))
    compiled = nestor.compile(graph)
    assert any(s["op"] == "Concat" for s in compiled.plan["steps"]) != in_place  # an elided one runs nothing
    np.testing.assert_allclose(compiled.run([x])[0], want, rtol=1e-5, atol=1e-6)
