"""The memory plan never lets two tensors that are live at the same time share bytes."""
import pytest

import nestor
from nestor.codegen.memory import plan_memory
from nestor.ir import itemsize
from nestor.zoo import encoder_block, light_model


def storage_lifetimes(graph):
    root = {}
    for node in graph.nodes:
        if node.is_alias:
            root[node.outputs[0]] = root.get(node.inputs[0], node.inputs[0])
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
    for t, (first, last) in storage_lifetimes(graph).items():
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
